"""Mechanisms of the joint strategies (DQN, SSM, GSL) and their shared codebook hooks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

from qbench.core.codes import FloatCodes, PQCodes
from qbench.core.errors import QbenchError
from qbench.data.protocols import make_splits
from qbench.methods import CodebookHooks, RunContext, joint_layout, l2_normalise
from qbench.methods.gsl import SnappingHooks, snap_correction
from qbench.methods.ssm import ShuttleHooks
from qbench.quant import assign_subspaces, decode_subspaces
from qbench.registry import DATASETS, METHODS
from qbench.train.params import ENGINE_PARAMS
from qbench.train.trained_encoder import TrainedEncoder
from qbench.train.trainer import Trainer

SCHEDULE = {"warmup": 0, "refit_every": 1, "seed": 0}


@pytest.fixture(scope="module")
def digits():
    plugin = DATASETS.get("digits")({}, None)
    ds = plugin.load()
    return ds, make_splits(ds, plugin.protocol("standard"), seed=0)


def digits_ctx(digits, bits: int = 32) -> RunContext:
    ds, splits = digits
    return RunContext(ds, splits, bits=bits, seed=0)


def engine_params(**overrides) -> dict:
    params = {p.name: p.default for p in ENGINE_PARAMS}
    params.update(overrides)
    return params


def run_method(name: str, ctx: RunContext, **overrides):
    method = METHODS.get(name)(METHODS.resolve_params(name, overrides))
    return method.run(ctx)


def fixed_hooks(cls, books: np.ndarray, normalise: bool, **kwargs):
    """Hooks of ``cls`` with codebooks (M, K, D/M) set by hand, active from epoch 0."""
    m_count, k_count, _ = books.shape
    hooks = cls(m_count, int(np.log2(k_count)), normalise=normalise, **SCHEDULE, **kwargs)
    hooks.codebooks = torch.as_tensor(books, dtype=torch.float32)
    return hooks


# ---------------------------------------------------------------------------- layout
def test_layout_follows_the_code_budget_and_auto_dim():
    assert joint_layout(12, {}) == (2, 6, 64)
    assert joint_layout(32, {}) == (4, 8, 64)
    assert joint_layout(48, {}) == (6, 8, 64)  # zero-padded to 66 in the quantization space


@pytest.mark.parametrize("name, overrides", [
    ("gsl", {"alpha": 1.5}), ("gsl", {"alpha": -0.1}), ("ssm", {"momentum": 1.0}),
    ("dqn", {"lam": -1.0}), ("dqn", {"refit_every": -1}), ("dqn", {"warmup": -2}),
])
def test_out_of_range_parameters_are_user_errors(name, overrides):
    with pytest.raises(QbenchError, match=next(iter(overrides))):
        METHODS.get(name)(METHODS.resolve_params(name, overrides))


def test_refit_schedule_waits_for_warmup_then_repeats():
    hooks = CodebookHooks(2, 2, warmup=2, refit_every=3, normalise=True)
    assert [e for e in range(10) if hooks.refit_due(e)] == [2, 5, 8]
    assert not hooks.active(5)  # no codebooks yet


# ---------------------------------------------------------------------------- refit
def test_refit_is_per_subspace_kmeans_with_nearest_assignments(digits):
    ctx = digits_ctx(digits)
    trainer = Trainer(ctx, engine_params(epochs=2), 64).fit()
    hooks = CodebookHooks(4, 5, normalise=True, **SCHEDULE)
    hooks.refit(trainer)
    x = l2_normalise(trainer.embed(trainer.ctx.x("train")))
    books = hooks.codebooks.numpy()
    codes = hooks.assignments.numpy()
    assert books.shape == (4, 32, 16) and codes.shape == (len(x), 4)
    np.testing.assert_array_equal(codes, assign_subspaces(x, books))
    parts = x.reshape(len(x), 4, 16)
    brute = ((parts[:, :, None, :] - books[None]) ** 2).sum(-1).argmin(-1)
    np.testing.assert_array_equal(codes, brute)
    distortion = ((x - decode_subspaces(codes, books)) ** 2).sum(1).mean()
    reference = sum(KMeans(32, n_init=3, random_state=0).fit(parts[:, m]).inertia_
                    for m in range(4)) / len(x)
    assert distortion <= 1.05 * reference
    assert distortion < 0.5 * ((x - x.mean(0)) ** 2).sum(1).mean()


def test_selection_reuses_the_training_embeddings_of_refits_at_candidate_weights(digits):
    ctx = digits_ctx(digits)
    hooks = CodebookHooks(4, 5, normalise=True, warmup=1, refit_every=1, seed=0)
    trainer = Trainer(ctx, engine_params(epochs=20), 64, hooks=hooks).fit()
    candidates = sorted(trainer.candidates)
    assert candidates == list(range(1, 20, 2))  # every second epoch after the warm-up
    # a refit before epoch e sees the weights after e - 1: kept where those are a candidate's
    assert hooks.refits == 19 and sorted(trainer.train_tables) == candidates[:-1]
    encoder = TrainedEncoder(trainer, trainer.candidates, trainer.summary(), trainer.train_s)
    embed, embedded = trainer.embed, []
    trainer.embed = lambda x, **kw: (embedded.append(len(x)), embed(x, **kw))[1]
    train, pool = ctx.splits.train, ctx.pool.pool
    kept = {epoch: encoder.embeddings(epoch, train) for epoch in candidates[:-1]}
    assert embedded == []  # no second embedding of the split with the same weights
    encoder.embeddings(candidates[0], pool)
    assert embedded == [len(pool)]  # only the split was filled in
    for epoch, values in kept.items():
        trainer.model.load_state_dict(trainer.candidates[epoch])
        np.testing.assert_allclose(values, embed(ctx.x("train")), rtol=1e-5, atol=1e-6)
    encoder.embeddings(candidates[-1], train)  # no refit after the last epoch: embedded here
    assert embedded == [len(pool), len(train)]


# ---------------------------------------------------------------------------- SSM
def test_ssm_without_momentum_and_force_is_plain_training_step_for_step(digits):
    ctx = digits_ctx(digits)
    params = engine_params(epochs=3)
    plain = Trainer(ctx, params, 64).fit()
    hooks = ShuttleHooks(4, 8, momentum=0.0, eta=1.0, gamma=0.0, k_nearest=1,
                         force="spring", eps=1e-3, normalise=True, **SCHEDULE)
    shuttle = Trainer(ctx, params, 64, hooks=hooks).fit()
    assert hooks.refits == 3
    for key, value in plain.model.state_dict().items():
        torch.testing.assert_close(shuttle.model.state_dict()[key], value, atol=1e-6, rtol=0)


def test_ssm_without_momentum_and_force_scales_the_gradient_by_eta():
    hooks = ShuttleHooks(2, 2, momentum=0.0, eta=0.25, gamma=0.0, k_nearest=1,
                         force="spring", eps=1e-3, normalise=True, **SCHEDULE)
    hooks.velocity = torch.randn(10, 4)
    g = torch.randn(3, 4)
    out = hooks.output_gradient(g, torch.randn(3, 4), torch.tensor([1, 5, 7]), 0)
    torch.testing.assert_close(out, 0.25 * g)


class RecordingShuttle(ShuttleHooks):
    """Keeps the velocities at the end of epoch 0 and the first update of epoch 1."""

    def output_gradient(self, g, z, idx, epoch):
        before = self.velocity[idx].clone()
        out = super().output_gradient(g, z, idx, epoch)
        if epoch == 0:
            self.end_of_epoch0 = self.velocity.clone()
        elif not hasattr(self, "first_of_epoch1"):
            self.first_of_epoch1 = (idx.clone(), before, g.clone(), out.clone())
        return out


def test_ssm_velocity_persists_across_epochs(digits):
    ctx = digits_ctx(digits)
    hooks = RecordingShuttle(4, 8, momentum=0.7, eta=1.0, gamma=0.0, k_nearest=1,
                             force="spring", eps=1e-3, normalise=True, **SCHEDULE)
    Trainer(ctx, engine_params(epochs=2), 64, hooks=hooks).fit()
    assert hooks.velocity.shape == (len(ctx.splits.train), 64)
    assert (hooks.end_of_epoch0.norm(dim=1) > 0).all()  # every item was visited
    idx, before, g, out = hooks.first_of_epoch1
    torch.testing.assert_close(before, hooks.end_of_epoch0[idx], atol=0, rtol=0)
    torch.testing.assert_close(out, -(0.7 * before - g))


@pytest.mark.parametrize("normalise", [False, True])
def test_ssm_force_alone_moves_output_monotonically_to_its_nearest_codeword(normalise):
    gen = torch.Generator().manual_seed(0)
    books = torch.randn(2, 16, 4, generator=gen)
    if normalise:
        books = 0.8 * books / books.norm(dim=-1, keepdim=True)  # codewords of unit vectors
    defaults = {p.name: p.default for p in METHODS.get("ssm").params}
    hooks = fixed_hooks(ShuttleHooks, books.numpy(), normalise, momentum=defaults["momentum"],
                        eta=defaults["eta"], gamma=defaults["gamma"],
                        k_nearest=defaults["k_nearest"], force=defaults["force"],
                        eps=defaults["eps"])
    n = 20
    hooks.velocity = torch.zeros(n, 8)
    idx = torch.arange(n)
    z = (1.0 if normalise else 3.0) * torch.randn(n, 8, generator=gen)
    q = hooks.to_space(z).reshape(n, 2, 4)
    nearest = ((q[:, :, None] - books[None]) ** 2).sum(-1).argmin(-1)
    target = books[torch.arange(2)[None, :], nearest].reshape(n, 8)

    def distance(z):
        return (hooks.to_space(z) - target).norm(dim=1)

    # plain SGD on the outputs with the hook's gradient; steps inside the overdamped range
    # (the force is divided by the batch's mean squared norm: 1 on the unit sphere)
    lr = 5.0 if normalise else 4.0
    dists = [distance(z)]
    for _ in range(25):
        step = lr * float(hooks.scale(hooks.to_space(z)))
        z = z - step * hooks.output_gradient(torch.zeros_like(z), z, idx, epoch=0)
        dists.append(distance(z))
    steps = torch.stack(dists)  # (26, n)
    assert (steps[1:] < steps[:-1]).all()
    assert (steps[-1] < 0.9 * steps[0]).all()


@pytest.mark.parametrize("normalise", [False, True])
@pytest.mark.parametrize("force", ["spring", "gravity"])
def test_ssm_force_sums_the_force_law_over_the_k_nearest_codewords(normalise, force):
    gen = torch.Generator().manual_seed(3)
    books = torch.randn(2, 8, 3, generator=gen)
    hooks = fixed_hooks(ShuttleHooks, books.numpy(), normalise, momentum=0.0, eta=1.0,
                        gamma=1.0, k_nearest=3, force=force, eps=0.05)
    z = 2 * torch.randn(6, 6, generator=gen, dtype=torch.float64)
    q = (z / z.norm(dim=1, keepdim=True) if normalise else z).numpy()
    expected = np.zeros_like(q)
    for i in range(len(q)):
        for m in range(2):
            offsets = books[m].double().numpy() - q[i, 3 * m:3 * m + 3]
            r2 = (offsets ** 2).sum(1)
            for c in np.argsort(r2)[:3]:
                weight = 1.0 if force == "spring" else 1.0 / (r2[c] + 0.05)
                expected[i, 3 * m:3 * m + 3] += weight * offsets[c]
    expected /= (q ** 2).sum(1).mean()  # scale-free: divided by the mean squared norm
    if normalise:  # the negative gradient through z / |z|
        radial = (expected * q).sum(1, keepdims=True) * q
        expected = (expected - radial) / z.norm(dim=1, keepdim=True).numpy()
    hooks.codebooks = hooks.codebooks.double()
    np.testing.assert_allclose(hooks.codeword_force(z).numpy(), expected, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------- GSL
def random_snapping_case(n: int = 4000, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    books = torch.randn(4, 16, 3, generator=gen)
    z = torch.randn(n, 12, generator=gen)
    g = torch.randn(n, 12, generator=gen)
    g[:50] = 0
    g[50:100, :3] = 0  # one subspace without gradient
    return books.numpy(), z, g


@pytest.mark.parametrize("normalise", [False, True])
@pytest.mark.parametrize("alpha", [0.3, 1.0])
def test_gsl_snapped_gradient_is_a_descent_direction(normalise, alpha):
    books, z, g = random_snapping_case()
    hooks = fixed_hooks(SnappingHooks, books, normalise, alpha=alpha, k_nearest=5)
    out = hooks.output_gradient(g, z, torch.arange(len(z)), 0)
    nonzero = g.norm(dim=1) > 0
    assert ((out * g).sum(1)[nonzero] > 0).all()
    assert (out[~nonzero] == 0).all()
    assert not torch.allclose(out[nonzero], g[nonzero])


@pytest.mark.parametrize("normalise", [False, True])
def test_gsl_alpha_zero_is_the_identity(normalise):
    books, z, g = random_snapping_case()
    hooks = fixed_hooks(SnappingHooks, books, normalise, alpha=0.0, k_nearest=5)
    assert torch.equal(hooks.output_gradient(g, z, torch.arange(len(z)), 0), g)
    candidates = hooks.nearest_codewords(z, 5)
    assert torch.equal(g + snap_correction(g, z, candidates, 0.0), g)


def test_gsl_snaps_towards_the_best_aligned_of_the_k_nearest_codewords():
    books, z, g = random_snapping_case(n=300, seed=1)
    alpha, k = 0.6, 4
    hooks = fixed_hooks(SnappingHooks, books, False, alpha=alpha, k_nearest=k)
    out = hooks.output_gradient(g, z, torch.arange(len(z)), 0).numpy()
    zn, gn = z.numpy().astype(np.float64), g.numpy().astype(np.float64)
    expected = gn.copy()
    snapped = 0
    for i in range(len(zn)):
        for m in range(4):
            part, grad = zn[i, 3 * m:3 * m + 3], gn[i, 3 * m:3 * m + 3]
            dist = np.linalg.norm(books[m] - part, axis=1)
            best, best_cos = None, 0.0
            for c in np.argsort(dist)[:k]:
                offset = books[m, c] - part
                if np.linalg.norm(grad) == 0:
                    break
                cos = -grad @ offset / (np.linalg.norm(grad) * np.linalg.norm(offset))
                if cos > best_cos:
                    best, best_cos = offset, cos
            if best is not None:
                snapped += 1
                expected[i, 3 * m:3 * m + 3] = ((1 - alpha) * grad - alpha * np.linalg.norm(grad)
                                                * best / np.linalg.norm(best))
    assert snapped > 300
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_gsl_keeps_the_gradient_where_no_codeword_is_aligned():
    books = np.zeros((2, 4, 2), dtype=np.float32)
    books[0] = [[1, 0], [2, 1], [1, -1], [3, 0]]  # all in front of g_0 = (1, 0)
    books[1] = [[-1, 1], [2, 1], [1, -1], [3, 0]]  # only (-1, 1) lies behind g_1 = (1, 0)
    hooks = fixed_hooks(SnappingHooks, books, False, alpha=0.5, k_nearest=4)
    z = torch.zeros(1, 4)
    g = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    out = hooks.output_gradient(g, z, torch.tensor([0]), 0)
    torch.testing.assert_close(out[0, :2], g[0, :2], atol=0, rtol=0)
    half = 0.5 / 2**0.5
    torch.testing.assert_close(out[0, 2:], torch.tensor([0.5 + half, -half]))


# ---------------------------------------------------------------------------- DQN
def test_dqn_penalty_lowers_the_quantization_error(digits):
    ctx = digits_ctx(digits, bits=12)
    common = {"epochs": 10, "warmup": 2, "refit_every": 2}
    without = run_method("dqn", ctx, lam=0.0, **common).info["train_distortion"]
    with_penalty = run_method("dqn", ctx, lam=1.0, **common).info["train_distortion"]
    assert with_penalty < 0.8 * without


def test_dqn_penalty_gradient_pulls_towards_the_assigned_codewords():
    from qbench.methods.dqn import PenaltyHooks

    books = np.random.default_rng(0).normal(size=(2, 4, 3)).astype(np.float32)
    hooks = PenaltyHooks(2, 2, lam=0.5, warmup=3, refit_every=1, normalise=False)
    hooks.codebooks = torch.as_tensor(books)
    hooks.assignments = torch.tensor([[0, 1], [2, 3], [1, 1]])
    idx = torch.tensor([2, 0])
    z = torch.randn(2, 6, requires_grad=True)
    assert hooks.extra_loss(z, idx, 2) is None  # still warming up
    (grad,) = torch.autograd.grad(hooks.extra_loss(z, idx, 3), z)
    target = torch.as_tensor(np.concatenate([books[0, [1, 0]], books[1, [1, 1]]], axis=1))
    torch.testing.assert_close(hooks.assigned_codewords(idx), target)
    scale = (z.detach() ** 2).sum(1).mean()  # the penalty is divided by the mean |q|^2
    torch.testing.assert_close(grad, 0.5 * 2 * (z - target).detach() / 2 / scale)


def test_dqn_penalty_is_scale_free():
    from qbench.methods.dqn import PenaltyHooks

    books = np.random.default_rng(1).normal(size=(2, 4, 3)).astype(np.float32)
    hooks = PenaltyHooks(2, 2, lam=0.5, warmup=0, refit_every=1, normalise=False)
    hooks.assignments = torch.tensor([[0, 1], [2, 3]])
    idx = torch.tensor([0, 1])
    z = torch.randn(2, 6)
    hooks.codebooks = torch.as_tensor(books)
    small = hooks.extra_loss(z, idx, 0)
    hooks.codebooks = torch.as_tensor(books) * 12.0
    large = hooks.extra_loss(z * 12.0, idx, 0)  # everything 12x larger (inner-product scale)
    torch.testing.assert_close(large, small)


# ---------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("name", ["dqn", "ssm", "gsl"])
@pytest.mark.parametrize("bits, layout", [(12, (2, 64)), (32, (4, 256))])
def test_joint_method_returns_pq_codes_of_the_budget(digits, name, bits, layout):
    ctx = digits_ctx(digits, bits)
    out = run_method(name, ctx, epochs=3, warmup=1, refit_every=1)
    m_count, k_count = layout
    assert isinstance(out.codes, PQCodes)
    assert out.codes.codebooks.shape == (m_count, k_count, 64 // m_count)
    assert out.codes.bits == bits
    assert out.codes.db_codes.shape == (len(ctx.splits.database), m_count)
    assert 0 <= out.codes.db_codes.min() and out.codes.db_codes.max() < k_count
    assert out.codes.query.shape == (len(ctx.splits.query), 64)
    np.testing.assert_allclose(np.linalg.norm(out.codes.query, axis=1), 1, atol=1e-5)
    assert isinstance(out.float_codes, FloatCodes) and out.float_codes.metric == "cosine"
    assert out.info["subspaces"] == m_count and out.info["codewords"] == k_count
    assert out.info["bits_per_subspace"] == bits // m_count
    assert out.info["refits"] == 2  # before epochs 1 and 2
    assert out.info["train_distortion"] > 0
    assert set(out.timings) == {"train_s", "select_s", "fit_s", "encode_s"}
    assert out.selection["epochs"] == [1, 2]  # candidates only after the warm-up
    assert "ADC" in out.selection["criterion"]


@pytest.mark.parametrize("epochs, warmup, refit_every", [(60, 10, 5), (5, 0, 1), (24, 4, 2)])
def test_automatic_schedule_scales_with_the_epochs(digits, epochs, warmup, refit_every):
    method = METHODS.get("dqn")(METHODS.resolve_params("dqn", {"epochs": epochs}))
    kwargs = method.hook_kwargs(digits_ctx(digits))
    assert (kwargs["warmup"], kwargs["refit_every"]) == (warmup, refit_every)
    explicit = METHODS.get("dqn")(METHODS.resolve_params("dqn", {"warmup": 3, "refit_every": 7}))
    kwargs = explicit.hook_kwargs(digits_ctx(digits))
    assert (kwargs["warmup"], kwargs["refit_every"]) == (3, 7)
