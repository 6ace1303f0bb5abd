"""The shared training engine: losses, encoders, augmentation, the training loop, snapshots,
the trained encoder and the training thread policy."""

import numpy as np
import pytest
import torch

from qbench.core.errors import QbenchError
from qbench.data.dataset import Dataset
from qbench.data.protocols import make_splits
from qbench.methods import RunContext
from qbench.registry import DATASETS
from qbench.train.encoders import build_encoder, resolve_encoder
from qbench.train.inputs import flip_and_crop
from qbench.train.losses import cosine_pairwise_loss, inner_product_pairwise_loss, pair_targets
from qbench.train.params import ENGINE_PARAMS, candidate_epochs
from qbench.train.trained_encoder import TrainedEncoder
from qbench.train.trainer import Hooks, Trainer


def _brute_cosine_loss(z, labels):
    n = len(z)
    total, count = 0.0, 0
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            if labels.ndim == 1:
                same = labels[i] == labels[j]
            else:
                same = bool((labels[i] * labels[j]).sum() > 0)
            s = 1.0 if same else -1.0
            cos = z[i] @ z[j] / (np.linalg.norm(z[i]) * np.linalg.norm(z[j]))
            total += (s - cos) ** 2
            count += 1
    return total / count


def test_cosine_loss_matches_the_pairwise_definition():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((9, 5))
    labels = rng.integers(0, 3, 9)
    got = cosine_pairwise_loss(torch.tensor(z), torch.tensor(labels)).item()
    assert got == pytest.approx(_brute_cosine_loss(z, labels), abs=1e-9)
    hot = (rng.random((9, 4)) < 0.4).astype(np.uint8)
    got = cosine_pairwise_loss(torch.tensor(z), torch.tensor(hot)).item()
    assert got == pytest.approx(_brute_cosine_loss(z, hot), abs=1e-9)


def test_pair_targets_and_inner_product_loss():
    labels = torch.tensor([0, 1, 0])
    assert pair_targets(labels).tolist() == [[1, -1, 1], [-1, 1, -1], [1, -1, 1]]
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    # pairs (0,1),(1,2): s=-1, ip=0 -> 1 each; (0,2): s=1, ip/D = 0.5 -> 0.25; both orders
    assert inner_product_pairwise_loss(z, labels).item() == pytest.approx((1 + 1 + 0.25) / 3)


@pytest.mark.parametrize("name, shape", [("mlp", (64,)), ("cnn", (1, 28, 28)),
                                         ("lightcnn", (1, 28, 28)), ("cnn5", (1, 28, 28)),
                                         ("resnet18", (3, 32, 32))])
def test_encoders_produce_embeddings_of_width_d(name, shape):
    net = build_encoder(name, shape, dim=24, tanh=True).eval()
    out = net(torch.randn(2, *shape))
    assert out.shape == (2, 24)
    assert out.abs().max() < 1


@pytest.mark.parametrize("name, widths", [("cnn", [32, 32, 64, 64, 128, 128]),
                                           ("cnn5", [32, 64, 64, 128, 128]),
                                           ("lightcnn", [32, 64, 128])])
def test_small_image_networks_have_their_documented_conv_widths(name, widths):
    net = build_encoder(name, (1, 28, 28), dim=8)
    assert [m.out_channels for m in net.modules() if isinstance(m, torch.nn.Conv2d)] == widths


def test_encoder_resolution_and_mismatch_errors():
    assert resolve_encoder("auto", "vector", "cpu") == "mlp"
    assert resolve_encoder("auto", "image", "cpu") == "cnn5"
    assert resolve_encoder("auto", "image", "cuda") == "resnet18"
    with pytest.raises(QbenchError, match="needs images"):
        resolve_encoder("cnn", "vector", "cpu")
    with pytest.raises(QbenchError, match="unknown encoder 'vit'"):
        resolve_encoder("vit", "image", "cpu")


def test_flip_and_crop_keeps_shape_and_content():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6) + 1
    out = flip_and_crop(x, np.random.default_rng(0), pad=2)
    assert out.shape == x.shape
    for i in range(2):
        kept = set(out[i].flatten().tolist()) - {0.0}
        assert kept <= set(x[i].flatten().tolist())
    same = flip_and_crop(x, np.random.default_rng(0), pad=0)
    for i in range(2):
        assert torch.equal(same[i], x[i]) or torch.equal(same[i], x[i].flip(2))


class RecordingContext(RunContext):
    """A context that records which splits were read."""

    def x(self, split):
        self.read.add(split)
        return super().x(split)

    def y(self, split):
        self.read.add(split)
        return super().y(split)


def _digits_ctx(cls=RunContext, seed=0):
    plugin = DATASETS.get("digits")({}, None)
    ds = plugin.load()
    ctx = cls(ds, make_splits(ds, plugin.protocol("standard"), seed), bits=32, seed=seed)
    ctx.read = set()
    return ctx


def _params(**overrides):
    params = {p.name: p.default for p in ENGINE_PARAMS}
    params.update(overrides)
    return params


def test_training_never_reads_the_query_or_database_split():
    ctx = _digits_ctx(RecordingContext)
    trainer = Trainer(ctx, _params(epochs=4), dim=16).fit()
    assert "query" not in ctx.read and "database" not in ctx.read
    assert trainer.loss_curve[-1] < trainer.loss_curve[0]


def test_training_is_deterministic_per_seed():
    ctx = _digits_ctx()
    a = Trainer(ctx, _params(epochs=2), dim=8).fit().embed(ctx.x("val"))
    b = Trainer(ctx, _params(epochs=2), dim=8).fit().embed(ctx.x("val"))
    np.testing.assert_array_equal(a, b)


def test_candidates_are_kept_every_tenth_of_the_epochs_and_at_the_end():
    assert candidate_epochs(60) == list(range(5, 60, 6))
    assert candidate_epochs(7) == list(range(7))
    assert candidate_epochs(15) == [1, 3, 5, 7, 9, 11, 13, 14]
    assert candidate_epochs(25) == [2, 5, 8, 11, 14, 17, 20, 23, 24]


def test_select_from_keeps_only_the_later_candidates():
    assert candidate_epochs(8, 0.5) == [4, 5, 6, 7]
    assert candidate_epochs(60, 0.5) == [35, 41, 47, 53, 59]
    assert candidate_epochs(15, 0.5) == [7, 9, 11, 13, 14]
    assert candidate_epochs(8, 0.99) == [7]  # the last epoch is always a candidate
    assert candidate_epochs(8, 0.0) == candidate_epochs(8)
    trainer = Trainer(_digits_ctx(), _params(epochs=6, select_from=0.5), dim=8).fit()
    assert sorted(trainer.candidates) == [3, 4, 5]
    assert trainer.summary()["candidate_epochs"] == [3, 4, 5]


def test_resuming_from_a_snapshot_equals_an_uninterrupted_run():
    ctx = _digits_ctx()
    whole = Trainer(ctx, _params(epochs=6), dim=8).fit(snapshot_at=2)
    resumed = Trainer(ctx, _params(epochs=6), dim=8).fit(resume=whole.snapshot)
    assert whole.snapshot.epoch == 2
    np.testing.assert_array_equal(whole.embed(ctx.x("val")), resumed.embed(ctx.x("val")))
    assert resumed.loss_curve == whole.loss_curve
    for epoch in (3, 4, 5):
        for key, value in whole.candidates[epoch].items():
            assert torch.equal(value, resumed.candidates[epoch][key])


def test_trained_encoder_embeds_each_item_once_per_candidate():
    ctx = _digits_ctx()
    trainer = Trainer(ctx, _params(epochs=3), dim=8).fit()
    encoder = TrainedEncoder.from_trainer(trainer)
    calls = []
    original = trainer.embed
    trainer.embed = lambda x, **kw: calls.append(len(x)) or original(x, **kw)
    first = encoder.embeddings(2, ctx.splits.val)
    again = encoder.embeddings(2, ctx.splits.val)
    np.testing.assert_array_equal(first, again)
    assert calls == [len(ctx.splits.val)]
    trainer.model.load_state_dict(trainer.candidates[0])
    np.testing.assert_allclose(encoder.embeddings(0, ctx.splits.val[:5]),
                               original(ctx.x("val")[:5]), rtol=1e-6)


def test_output_gradient_hook_replaces_the_back_propagated_gradient():
    class Zero(Hooks):
        def output_gradient(self, g, z, idx, epoch):
            return torch.zeros_like(g)

    ctx = _digits_ctx()
    trainer = Trainer(ctx, _params(epochs=1, weight_decay=0.0), dim=8,
                      hooks=Zero())
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.fit()
    after = list(trainer.model.parameters())
    # zero gradient and no weight decay: Adam leaves every parameter where it was
    assert all(torch.equal(b, a.detach()) for b, a in zip(before, after))


def test_imagenet_weights_need_a_torchvision_backbone():
    with pytest.raises(QbenchError, match="weights=imagenet needs encoder=alexnet or vgg16"):
        build_encoder("cnn", (3, 32, 32), dim=8, weights="imagenet")


def test_torchvision_backbone_without_torchvision_or_weights_is_a_clean_error():
    try:
        import torchvision  # noqa: F401
    except ImportError:
        with pytest.raises(QbenchError, match="needs torchvision"):
            build_encoder("alexnet", (3, 32, 32), dim=8, weights="imagenet")
    else:
        pytest.skip("torchvision is installed here")


def test_only_selectable_epochs_become_candidates():
    class LateOnly(Hooks):
        def selectable(self, epoch):
            return epoch >= 6

    ctx = _digits_ctx()
    trainer = Trainer(ctx, _params(epochs=8), dim=8, hooks=LateOnly()).fit()
    assert sorted(trainer.candidates) == [6, 7]


def test_bf16_autocast_trains_and_embeds_in_float32():
    ctx = _digits_ctx()
    trainer = Trainer(ctx, _params(epochs=2, precision="bf16"), dim=8).fit()
    emb = trainer.embed(ctx.x("val"))
    assert emb.dtype == np.float32 and np.isfinite(emb).all()
    assert np.isfinite(trainer.loss_curve).all()


def test_channels_last_is_the_image_default_and_changes_only_the_layout():
    plugin = DATASETS.get("digits")({}, None)
    digits = plugin.load()
    images = Dataset("digit-images", (digits.X.reshape(-1, 1, 8, 8) / 16).astype(np.float32),
                     digits.y, "image")
    ctx = RunContext(images, make_splits(images, plugin.protocol("standard"), 0), bits=32)
    assert _params()["channels_last"] is True
    untrained, trained = {}, {}
    for layout in (True, False):
        params = _params(epochs=1, encoder="lightcnn", augment=False, channels_last=layout)
        trainer = Trainer(ctx, params, dim=8)
        convs = [m.weight for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d)]
        assert convs and all(w.is_contiguous(memory_format=torch.channels_last) == layout
                             for w in convs if w.shape[1] > 1)
        untrained[layout] = trainer.embed(ctx.x("val"))
        trained[layout] = trainer.fit().embed(ctx.x("val"))
    # the same weights give the same embeddings up to float rounding; after training the
    # rounding differences have grown a little, the directions stay the same
    np.testing.assert_allclose(untrained[True], untrained[False], rtol=1e-5, atol=1e-6)
    a, b = (t / np.linalg.norm(t, axis=1, keepdims=True) for t in trained.values())
    assert (a * b).sum(axis=1).min() > 0.999


def test_trained_encoder_from_a_trainer_and_its_provenance():
    ctx = _digits_ctx()
    trainer = Trainer(ctx, _params(epochs=3), dim=8).fit(snapshot_at=1)
    encoder = TrainedEncoder.from_trainer(trainer, progress=True)
    assert encoder.trainer is trainer and encoder.states is trainer.candidates
    assert encoder.candidates == [0, 1, 2] and encoder.dim == 8 and encoder.progress
    assert encoder.summary == trainer.summary() and encoder.train_s == trainer.train_s
    assert encoder.snapshot is trainer.snapshot and encoder.snapshot.epoch == 1
    assert encoder.provenance == {"key": None, "cache": "off"}
    encoder.cache_key, encoder.cache_status = "abc", "hit"
    assert encoder.provenance == {"key": "abc", "cache": "hit"}


def test_training_threads_are_one_inside_fit_and_embedding_and_restored_after():
    from qbench.core.threads import training_threads

    seen = []

    class Record(Hooks):
        def on_epoch_start(self, epoch, trainer):
            seen.append(torch.get_num_threads())
            trainer.embed_train()  # nested: still one thread, and the count is kept
            seen.append(torch.get_num_threads())

    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ctx = _digits_ctx()
        trainer = Trainer(ctx, _params(epochs=2), dim=8, hooks=Record())
        assert torch.get_num_threads() == 2  # constructing sets nothing
        trainer.fit()
        assert seen == [1, 1, 1, 1] and torch.get_num_threads() == 2
        original = trainer.embedder._embed
        trainer.embedder._embed = lambda *a: (seen.append(torch.get_num_threads()),
                                              original(*a))[1]
        trainer.embed(ctx.x("val"))
        assert seen[-1] == 1 and torch.get_num_threads() == 2
        with training_threads("image", "cpu"), training_threads("vector", "cuda"):
            assert torch.get_num_threads() == 2  # only vectors on the CPU
    finally:
        torch.set_num_threads(saved)
