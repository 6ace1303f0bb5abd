"""The frozen-backbone regime (``--regime head``): one backbone per seed, cached features,
the same head for every method, each method's mechanism acting on the head."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from qbench.core.errors import QbenchError
from qbench.data.protocols import make_splits
from qbench.methods import RunContext
from qbench.registry import DATASETS, METHODS
from qbench.run.pipeline import RunRequest, prepare, run_experiment
from qbench.train.backbone import (
    backbone_context,
    feature_extractor,
    resolve_backbone_params,
)
from qbench.train.encoder_cache import EncoderCache
from qbench.train.encoders import build_encoder

BACKBONE = {"epochs": 3}
HEAD_EPOCHS = 3


def head_request(tmp_path, method: str, **changes) -> RunRequest:
    fields = dict(method=method, dataset="digits", bits=16, epochs=HEAD_EPOCHS,
                  device="cpu", out=tmp_path / "out", cache_dir=tmp_path / "cache",
                  regime="head", backbone=dict(BACKBONE))
    fields.update(changes)
    return RunRequest(**fields)


@pytest.mark.parametrize("name,shape", [("mlp", (64,)), ("lightcnn", (1, 12, 12)),
                                        ("cnn5", (3, 8, 8)), ("resnet18", (3, 8, 8))])
@pytest.mark.parametrize("tanh", [False, True])
def test_features_are_the_input_of_the_embedding_layer(name, shape, tanh):
    torch.manual_seed(0)
    model = build_encoder(name, shape, dim=16, hidden=32, tanh=tanh).eval()
    net, width = feature_extractor(model)
    x = torch.randn(5, *shape)
    body = model[0] if tanh else model
    last = body.net[-1] if name == "mlp" else body.head
    with torch.no_grad():
        features = net(x)
        assert features.shape == (5, width)
        out = last(features)
        torch.testing.assert_close(torch.tanh(out) if tanh else out, model(x))


def test_backbone_is_trained_once_for_all_methods_of_a_seed(tmp_path, monkeypatch):
    from qbench.train import backbone as backbone_module

    computed = []
    real = backbone_module._features
    monkeypatch.setattr(backbone_module, "_features",
                        lambda *a, **k: computed.append(1) or real(*a, **k))
    records = [run_experiment(head_request(tmp_path, m))[1]
               for m in ("float", "dqn", "lsh", "itq", "two-stage-pq")]
    statuses = [r["backbone"]["cache"] for r in records]
    assert statuses == ["miss"] + ["hit"] * 4  # one training for every method of the seed
    assert [r["backbone"]["features_cache"] for r in records] == ["miss"] + ["hit"] * 4
    assert len(computed) == 1  # the features too are computed once
    assert len({r["backbone"]["key"] for r in records}) == 1
    for r in records:
        assert r["regime"] == "head"
        assert r["backbone"]["params"] == resolve_backbone_params(BACKBONE)
        assert r["backbone"]["feature_dim"] == 256  # the MLP backbone's hidden width
    other_seed = run_experiment(head_request(tmp_path, "float", seed=1))[1]
    assert other_seed["backbone"]["cache"] == "miss"  # a backbone per training seed
    assert other_seed["backbone"]["key"] != records[0]["backbone"]["key"]
    # the head regime's results never overwrite the full regime's
    assert records[0]["schema_version"] and (tmp_path / "out").glob("*-head.json")


def test_every_method_trains_the_same_head(tmp_path):
    """Same head width, epochs, optimiser settings and seed for every learned method: the
    engine parameters the runs record agree."""
    from qbench.train.params import STAGE1_KEYS

    engine = []
    for m in ("float", "dqn", "ssm", "gsl", "householder"):
        params = run_experiment(head_request(tmp_path, m))[1]["params"]
        engine.append({k: params[k] for k in STAGE1_KEYS})
    assert all(e == engine[0] for e in engine)
    assert engine[0]["epochs"] == HEAD_EPOCHS


@pytest.fixture(scope="module")
def head_ctx(tmp_path_factory):
    plugin = DATASETS.get("digits")({}, None)
    ds = plugin.load()
    splits = make_splits(ds, plugin.protocol("standard"), seed=0)
    ctx = RunContext(ds, splits, bits=16, seed=0,
                     cache=EncoderCache(tmp_path_factory.mktemp("cache")))
    return backbone_context(ctx, resolve_backbone_params(BACKBONE))


def test_head_context_holds_the_frozen_features(head_ctx):
    ctx, record = head_ctx
    assert ctx.dataset.modality == "vector"
    assert ctx.dataset.X.shape == (1797, record["feature_dim"])
    assert isinstance(ctx.dataset.X, np.memmap) and not ctx.dataset.X.flags.writeable
    assert record["epoch"] == BACKBONE["epochs"] - 1  # frozen at its last epoch


def test_dqn_penalty_acts_on_the_head(head_ctx, monkeypatch):
    from qbench.methods.dqn import PenaltyHooks

    ctx, _ = head_ctx
    penalties = []
    real = PenaltyHooks.extra_loss

    def spy(self, z, idx, epoch):
        out = real(self, z, idx, epoch)
        penalties.append(None if out is None else float(out.detach()))
        return out

    monkeypatch.setattr(PenaltyHooks, "extra_loss", spy)
    method = METHODS.get("dqn")(METHODS.resolve_params("dqn", {"epochs": 4, "warmup": 1}))
    method.run(ctx)
    assert any(p is not None and p > 0 for p in penalties)  # the penalty is in the loss


def test_ssm_velocity_moves_on_the_head(head_ctx, monkeypatch):
    from qbench.methods.ssm import ShuttleHooks

    ctx, _ = head_ctx
    seen = []
    real = ShuttleHooks.on_train_start

    def spy(self, trainer):
        real(self, trainer)
        seen.append(self)

    monkeypatch.setattr(ShuttleHooks, "on_train_start", spy)
    method = METHODS.get("ssm")(METHODS.resolve_params("ssm", {"epochs": 3, "warmup": 0}))
    method.run(ctx)
    (hooks,) = seen
    assert hooks.velocity.shape == (len(ctx.splits.train), 64)
    assert float(hooks.velocity.norm()) > 0  # the per-sample velocity state moved


def test_corrupt_features_are_recomputed(tmp_path, capsys):
    run_experiment(head_request(tmp_path, "lsh"))
    (feature_file,) = (tmp_path / "cache" / "encoders").glob("*/features-e*.npy")
    feature_file.write_bytes(feature_file.read_bytes()[:-8] + b"\0" * 8)
    record = run_experiment(head_request(tmp_path, "lsh"))[1]
    assert record["backbone"]["features_cache"] == "miss"
    assert "fail their checksum" in capsys.readouterr().err


@pytest.mark.parametrize("changes,message", [
    ({"regime": "half"}, "--regime 'half'"),
    ({"regime": "full", "backbone": {"epochs": 2}}, "--backbone applies to --regime head"),
    ({"backbone": {"depth": 2}}, "unknown backbone parameter 'depth'"),
    ({"backbone": {"epochs": -1}}, "epochs"),
])
def test_bad_regime_input_is_a_one_line_error(tmp_path, changes, message):
    with pytest.raises(QbenchError) as err:
        prepare(head_request(tmp_path, "float", **changes))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_compare_never_mixes_regimes(tmp_path):
    from qbench.report.compare import prepare as prepare_compare
    from qbench.report.compare import run_compare

    full = run_experiment(head_request(tmp_path, "lsh", regime="full", backbone={}))[0]
    head = run_experiment(head_request(tmp_path, "lsh"))[0]
    assert full != head and full.is_file() and head.is_file()
    _, agg, _, _ = prepare_compare([full, head])
    assert sorted(c["regime"] for c in agg.conventions.values()) == ["full", "head"]
    text = run_compare([full, head], fmt="md").replace('"', "")
    assert "regime head" in text and "regime full" in text  # each table says its regime


def test_grid_block_regime_and_backbone(tmp_path):
    from qbench.grid.gridfile import expand_grid, load_grid
    from qbench.grid.worker import stage1_group

    grid = {"methods": ["float", "dqn"], "bits": [16], "seeds": [0, 1],
            "datasets": {"digits": {"regime": "head", "backbone": {"epochs": 2}}}}
    path = tmp_path / "g.json"
    path.write_text(json.dumps(grid))
    cells = expand_grid(load_grid(path), "digits")
    assert {c.regime for c in cells} == {"head"} and all(c.filename.endswith("-head.json")
                                                         for c in cells)
    groups = {stage1_group(c) for c in cells}
    assert len(groups) == 2  # one backbone per seed, shared by both methods
    grid["datasets"]["digits"] = {"backbone": {"epochs": 2}}
    path.write_text(json.dumps(grid))
    with pytest.raises(QbenchError, match="'backbone' applies to"):
        load_grid(path)
    grid["datasets"]["digits"] = {"regime": "frozen"}
    path.write_text(json.dumps(grid))
    with pytest.raises(QbenchError, match="'frozen'"):
        load_grid(path)


def test_a_finished_head_grid_is_done_on_a_rerun(tmp_path):
    """Head results record the raw data's checksum (the features' is under ``backbone``),
    so resuming a head-regime grid redoes nothing."""
    from qbench.grid.runner import run_grid

    grid = {"methods": ["float", "lsh"], "bits": [16], "seeds": [0], "pool_size": 300,
            "datasets": {"digits": {"regime": "head", "epochs": 2,
                                    "backbone": {"epochs": 2}}}}
    path = tmp_path / "g.json"
    path.write_text(json.dumps(grid))
    out = tmp_path / "out"
    first = run_grid(path, out=out, progress=False)
    assert len(first.done) == 2
    result = json.loads(next(out.glob("*-float-*.json")).read_text())
    assert result["dataset_checksum"] == result["backbone"]["data_checksum"]
    assert result["backbone"]["features_checksum"] != result["dataset_checksum"]
    assert run_grid(path, out=out, dry_run=True).endswith("2 done, 0 to run, 0 stale (rerun)")
    again = run_grid(path, out=out, progress=False)
    assert again.done == [] and len(again.skipped) == 2
