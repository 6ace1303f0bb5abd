"""Quantizer mechanisms: PQ, OPQ, ITQ, LSH, sign and the Householder rotation."""

import numpy as np
import pytest
import torch

from qbench.core.errors import QbenchError
from qbench.quant import (
    ITQ,
    LSH,
    OPQ,
    HouseholderRotation,
    ProductQuantizer,
    SignQuantizer,
    householder_product,
    kmeans,
    rescale_to_sqrt_dim,
)


def _correlated(n=2000, d=16, seed=0):
    """Anisotropic Gaussian data turned by a random rotation: dimensions correlated across
    PQ subspaces, the case OPQ's rotation is meant for."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    scales = np.geomspace(4.0, 0.05, d)
    return ((rng.standard_normal((n, d)) * scales) @ q.T).astype(np.float32)


def _clustered(n=600, d=16, classes=8, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, d))
    return centres[rng.integers(0, classes, n)] + 0.3 * rng.standard_normal((n, d))


def _pairwise(x):
    return np.linalg.norm(x[:, None, :] - x[None, :, :], axis=-1)


# -- PQ / k-means -----------------------------------------------------------------------
def test_pq_encode_decode_consistent_with_codebooks():
    x = _correlated(n=500, d=8)
    pq = ProductQuantizer(2, 4, seed=0).fit(x)
    codes = pq.encode(x)
    assert codes.shape == (500, 2) and codes.min() >= 0 and codes.max() < 16
    recon = pq.decode(codes)
    expected = np.concatenate([pq.codebooks[m][codes[:, m]] for m in range(2)], axis=1)
    np.testing.assert_allclose(recon, expected)
    # each subspace's code is its nearest codeword
    for m in range(2):
        part = x[:, m * 4:(m + 1) * 4]
        dist = ((part[:, None, :] - pq.codebooks[m][None]) ** 2).sum(-1)
        np.testing.assert_array_equal(codes[:, m], dist.argmin(1))
    assert pq.distortion(x) == pytest.approx(((x - recon) ** 2).sum(1).mean(), rel=1e-5)


def test_kmeans_with_fewer_points_than_codewords_is_a_user_error():
    with pytest.raises(QbenchError, match="at least 16"):
        kmeans(np.zeros((10, 4), np.float32), 16)


def test_pq_rejects_dimension_not_divisible_by_subspaces():
    with pytest.raises(QbenchError, match="not divisible"):
        ProductQuantizer(3, 2).fit(np.zeros((100, 8), np.float32))


# -- OPQ ----------------------------------------------------------------------------------
def test_opq_rotation_is_orthogonal_and_beats_pq_on_correlated_data():
    x = _correlated()
    opq = OPQ(4, 4, iters=20, seed=0).fit(x)
    r = opq.rotation
    assert r.shape == (16, 16)
    assert np.abs(r @ r.T - np.eye(16)).max() < 1e-5
    np.testing.assert_allclose(opq.transform(x), x @ r.T, atol=1e-5)
    pq_distortion = ProductQuantizer(4, 4, seed=0).fit(x).distortion(x)
    assert opq.distortion(x) < 0.9 * pq_distortion
    # distortion is measured in the rotated space, where the codebooks live
    recon = opq.decode(opq.encode(x))
    assert opq.distortion(x) == pytest.approx(
        ((opq.transform(x) - recon) ** 2).sum(1).mean(), rel=1e-5)


def test_opq_with_too_few_training_vectors_is_a_user_error():
    with pytest.raises(QbenchError, match="at least 256"):
        OPQ(2, 8).fit(np.zeros((100, 8), np.float32))


# -- ITQ ----------------------------------------------------------------------------------
def test_itq_loss_never_increases_and_rotation_is_orthogonal():
    x = _clustered(d=32)
    itq = ITQ(16, iters=30, seed=0).fit(x)
    losses = np.array(itq.loss_history)
    assert len(losses) == 31
    assert np.all(np.diff(losses) <= 1e-9 * losses[0])
    assert losses[-1] < losses[0]
    r = itq.rotation
    assert np.abs(r @ r.T - np.eye(16)).max() < 1e-9
    assert itq.projection.shape == (32, 16)
    bits = itq.encode(x)
    assert bits.shape == (600, 16) and set(np.unique(bits)) <= {0, 1}


def test_itq_rotation_is_the_procrustes_maximiser():
    """For the final codes B, no orthogonal R' gives a larger tr(Bᵀ V R') than the learned R
    (checked against random rotations and small perturbations of R)."""
    x = _clustered(d=8)
    itq = ITQ(8, iters=1, seed=0).fit(x)
    v = (x - itq.mean) @ itq.projection
    rng = np.random.default_rng(1)
    r0, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((8, 8)))
    b = np.where(v @ r0 > 0, 1.0, -1.0)  # the codes the single R-step saw
    best = np.trace(b.T @ v @ itq.rotation)
    for _ in range(50):
        a = rng.standard_normal((8, 8)) * 0.05
        turn, _ = np.linalg.qr(np.eye(8) + a - a.T)
        assert np.trace(b.T @ v @ itq.rotation @ turn) <= best + 1e-9
        rand, _ = np.linalg.qr(rng.standard_normal((8, 8)))
        assert np.trace(b.T @ v @ rand) <= best + 1e-9


def test_itq_beats_its_random_start_on_clustered_data():
    x = _clustered(d=16)
    itq = ITQ(16, iters=50, seed=3).fit(x)
    assert itq.loss_history[-1] < 0.9 * itq.loss_history[0]


def test_itq_needs_at_least_as_many_dimensions_as_bits():
    with pytest.raises(QbenchError, match="dimension 8 for 16 bits"):
        ITQ(16).fit(np.zeros((50, 8)))


# -- LSH and sign ---------------------------------------------------------------------------
def test_lsh_is_deterministic_per_seed_and_differs_across_seeds():
    x = _clustered(d=16)
    a = LSH(24, seed=5).fit(x).encode(x)
    b = LSH(24, seed=5).fit(x).encode(x)
    c = LSH(24, seed=6).fit(x).encode(x)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    assert a.shape == (600, 24) and a.dtype == np.uint8


def test_lsh_centre_moves_hyperplanes_to_the_training_mean():
    x = np.abs(_clustered(d=16)) + 5.0  # all positive: origin hyperplanes see one side
    centred = LSH(32, seed=0, centre=True).fit(x).encode(x)
    origin = LSH(32, seed=0, centre=False).fit(x).encode(x)
    assert abs(centred.mean() - 0.5) < 0.1
    assert np.abs(origin.mean(0) - 0.5).mean() > np.abs(centred.mean(0) - 0.5).mean()


def test_sign_quantizer_maps_positive_to_one():
    bits = SignQuantizer().fit(None).encode(np.array([[0.5, -0.1, 0.0, 2.0]]))
    assert bits.tolist() == [[1, 0, 0, 1]]


# -- Householder rotation (H²Q stage 2) -----------------------------------------------------
def test_householder_product_matches_sequential_reflections():
    rng = np.random.default_rng(0)
    v = torch.as_tensor(rng.standard_normal((6, 6)))
    u = torch.eye(6, dtype=torch.float64)
    for i in range(6):
        u = u @ (torch.eye(6, dtype=torch.float64) - 2 * torch.outer(v[i], v[i]) / (v[i] @ v[i]))
    torch.testing.assert_close(householder_product(v), u)


def test_householder_rotation_starts_at_minus_identity():
    z = rescale_to_sqrt_dim(_clustered(n=200, d=12))
    rot = HouseholderRotation(epochs=0).fit(z)
    np.testing.assert_allclose(rot.matrix(), -np.eye(12), atol=1e-12)
    assert rot.loss_history == [rot.val_history[0]]


def test_householder_training_lowers_the_loss_and_keeps_u_orthogonal():
    x = _clustered(n=700, d=16, classes=6, seed=2)
    z = rescale_to_sqrt_dim(x - x.mean(0))
    rot = HouseholderRotation(epochs=60, seed=0).fit(z[:500], z[500:])
    assert rot.loss_history[-1] < rot.loss_history[0] - 0.02
    assert min(rot.val_history) < rot.val_history[0]
    assert rot.val_history[rot.best_epoch] == min(rot.val_history)
    assert rot.quantization_loss(z[500:]) == pytest.approx(min(rot.val_history))
    u = rot.matrix()
    assert np.abs(u.T @ u - np.eye(16)).max() < 1e-5
    assert np.abs(u + np.eye(16)).max() > 0.1  # it moved away from the start
    # an orthogonal U leaves every pairwise distance unchanged
    np.testing.assert_allclose(_pairwise(rot.transform(z[:100])), _pairwise(z[:100]), atol=1e-5)
    bits = rot.encode(z)
    assert bits.shape == (700, 16) and bits.dtype == np.uint8


def test_householder_l1_loss_and_bad_loss_name():
    z = rescale_to_sqrt_dim(_clustered(n=300, d=8))
    rot = HouseholderRotation(epochs=5, loss="l1").fit(z)
    assert rot.loss_history[-1] < rot.loss_history[0]
    with pytest.raises(QbenchError, match="l1, l2"):
        HouseholderRotation(loss="huber")


def test_rescale_to_sqrt_dim_sets_norms():
    z = rescale_to_sqrt_dim(np.random.default_rng(0).standard_normal((10, 25)))
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 5.0)


def test_small_fits_run_on_one_openmp_thread_and_restore_the_count():
    import faiss

    from qbench.quant import SMALL_PROBLEM, fit_threads

    saved = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(2)
    try:
        with fit_threads(np.zeros((100, 8), np.float32)):
            assert faiss.omp_get_max_threads() == 1
        assert faiss.omp_get_max_threads() == 2
        with fit_threads(np.zeros(SMALL_PROBLEM + 1, np.float32)):
            assert faiss.omp_get_max_threads() == 2
        with pytest.raises(RuntimeError):
            with fit_threads(np.zeros((10, 8), np.float32)):
                raise RuntimeError("fit failed")
        assert faiss.omp_get_max_threads() == 2
    finally:
        faiss.omp_set_num_threads(saved)
