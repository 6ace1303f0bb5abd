"""GreedyHash, CSQ and OrthoHash: their mechanisms, and a short run of each on digits."""

import numpy as np
import pytest
import torch

from qbench.core.codes import BinaryCodes
from qbench.data.protocols import make_splits
from qbench.eval.evaluator import mean_average_precision
from qbench.methods import RunContext
from qbench.registry import DATASETS, METHODS


@pytest.fixture(scope="module")
def digits():
    plugin = DATASETS.get("digits")({}, None)
    ds = plugin.load()
    return ds, make_splits(ds, plugin.protocol("standard"), seed=0)


def _digits_map(digits, name, bits=32, **params):
    ds, splits = digits
    method = METHODS.get(name)(METHODS.resolve_params(name, {"epochs": 8, **params}))
    out = method.run(RunContext(ds, splits, bits=bits, seed=0))
    assert isinstance(out.codes, BinaryCodes)
    assert out.codes.db_bits.shape == (len(splits.database), bits)
    assert out.codes.query_bits.shape == (len(splits.query), bits)
    assert set(np.unique(out.codes.db_bits)) <= {0, 1}
    assert out.selection is not None
    return mean_average_precision(out.codes, ds.y[splits.query], ds.y[splits.database])


# -- GreedyHash ---------------------------------------------------------------------------
def test_greedyhash_sign_forward_and_straight_through_backward():
    from qbench.methods.greedyhash import SignStraightThrough

    h = torch.tensor([[-2.0, -0.1, 0.0, 0.3, 5.0]], requires_grad=True)
    b = SignStraightThrough.apply(h)
    assert torch.equal(b, torch.tensor([[-1.0, -1.0, 1.0, 1.0, 1.0]]))
    incoming = torch.tensor([[0.5, -3.0, 2.0, 7.0, -0.25]])
    b.backward(incoming)
    assert torch.equal(h.grad, incoming)


def test_greedyhash_penalty_is_zero_at_plus_minus_one():
    from qbench.methods.greedyhash import greedy_penalty

    assert float(greedy_penalty(torch.tensor([[1.0, -1.0]]), 0.5)) == 0.0
    assert float(greedy_penalty(torch.tensor([[3.0, 0.0]]), 0.5)) == pytest.approx(
        0.5 * (8 + 1) / 2)


def test_greedyhash_on_digits(digits):
    assert _digits_map(digits, "greedyhash") > 0.3


# -- CSQ ----------------------------------------------------------------------------------
def test_csq_hadamard_centres_are_at_least_half_the_bits_apart():
    from qbench.methods.csq import hash_centres

    centres = hash_centres(10, 16)
    assert centres.shape == (10, 16)
    assert set(np.unique(centres)) == {-1.0, 1.0}
    hamming = (centres[:, None, :] != centres[None, :, :]).sum(-1)
    off = hamming[~np.eye(10, dtype=bool)]
    assert off.min() >= 8


def test_csq_centres_fall_back_to_seeded_random_when_hadamard_does_not_fit():
    from qbench.methods.csq import hash_centres

    a, b = hash_centres(10, 12, seed=3), hash_centres(10, 12, seed=3)
    assert a.shape == (10, 12) and np.array_equal(a, b)
    assert set(np.unique(a)) == {-1.0, 1.0}
    assert hash_centres(40, 16).shape == (40, 16)  # 2B < classes: random too


def test_csq_multi_label_centre_is_the_sign_of_the_mean_ties_plus_one():
    from qbench.methods.csq import item_centres

    centres = torch.tensor([[1.0, 1.0, -1.0], [1.0, -1.0, -1.0], [-1.0, -1.0, 1.0]])
    labels = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 1]])
    expected = torch.tensor([[1.0, 1.0, -1.0], [1.0, -1.0, -1.0], [-1.0, -1.0, 1.0]])
    assert torch.equal(item_centres(labels, centres), expected)
    assert torch.equal(item_centres(torch.tensor([2, 0]), centres), centres[[2, 0]])


def test_csq_gradient_step_moves_the_output_toward_its_centre():
    from qbench.methods.csq import csq_loss, hash_centres

    centre = torch.as_tensor(hash_centres(10, 16)[[3]])
    h = torch.zeros(1, 16).uniform_(-0.5, 0.5, generator=torch.Generator().manual_seed(0))
    h.requires_grad_(True)
    before = csq_loss(h, centre, 1e-4)
    before.backward()
    stepped = (h - 0.5 * h.grad).detach()
    assert float(csq_loss(stepped, centre, 1e-4)) < float(before.detach())
    def gap(x):
        return float((torch.tanh(x.detach()) - centre).norm())

    assert gap(stepped) < gap(h)
    assert torch.all(torch.sign(h.grad) == -centre)  # every bit pushed toward the centre


def test_csq_on_digits(digits):
    assert _digits_map(digits, "csq") > 0.3


# -- OrthoHash ----------------------------------------------------------------------------
def test_orthohash_codewords_are_orthogonal():
    from qbench.methods.orthohash import class_codewords

    for classes, bits in ((10, 16), (10, 32), (16, 16)):
        c = class_codewords(classes, bits)
        assert c.shape == (classes, bits)
        np.testing.assert_array_equal(c @ c.T, bits * np.eye(classes))
    random = class_codewords(10, 12, seed=1)  # 12 is no power of two: seeded random ±1
    assert np.array_equal(random, class_codewords(10, 12, seed=1))
    assert set(np.unique(random)) == {-1.0, 1.0}


def test_orthohash_margin_lowers_the_target_logit_by_s_times_m():
    from qbench.methods.orthohash import class_codewords, margin_logits, target_distribution

    codewords = torch.as_tensor(class_codewords(10, 16))
    h = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 3, 9, 3])
    positive = target_distribution(labels, 10)
    s, m = 8.0, 0.25
    plain = margin_logits(h, codewords, positive, s, 0.0)
    margined = margin_logits(h, codewords, positive, s, m)
    torch.testing.assert_close(plain - margined, s * m * positive)
    cos = torch.nn.functional.cosine_similarity(h[:, None, :], codewords[None], dim=2)
    torch.testing.assert_close(plain, s * cos)


def test_orthohash_multi_label_target_is_uniform_over_the_positive_classes():
    from qbench.methods.orthohash import target_distribution

    t = target_distribution(torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0]]), 4)
    torch.testing.assert_close(t, torch.tensor([[0.5, 0, 0.5, 0], [0, 0, 0, 0]]))


def test_orthohash_on_digits(digits):
    assert _digits_map(digits, "orthohash") > 0.3
