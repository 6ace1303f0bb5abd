"""The frozen-backbone regime (``regime: head``): train one network, freeze it, and let every
method train the same small head on its cached penultimate features.

Two training regimes:

- ``full`` (the default, the papers' setting and the GPU path): every method trains its
  encoder end to end on the dataset's inputs.
- ``head``: per (dataset, protocol, split, training seed, backbone parameters) one
  *backbone* is trained with the shared similarity loss -- exactly a stage-1 training
  (:func:`qbench.train.encoder_cache.stage1_encoder`, so it is cached like any stage-1
  encoder) -- and frozen at its last epoch. Its penultimate features (the input of its
  embedding layer) are computed once for every item and cached beside the encoder
  (:meth:`qbench.train.encoder_cache.EncoderCache.features`, memory-mapped, checksummed).
  The run then sees a *vector* dataset whose inputs are those features: every method
  trains its usual network on them, which for vectors is the engine's MLP, so all methods
  share one head (width ``hidden``, Adam, batch size, epochs, initialisation seed = the
  run's seed) and each method's mechanism acts on the head's output as it acts on the
  network's output in ``full``. Splits, the selection pool, selection, tuning and the
  evaluator are unchanged.

The backbone's parameters (:data:`BACKBONE_PARAMS`: the engine's parameters and the width
D of its training embedding) are fixed per grid and recorded in every result.
"""

from __future__ import annotations

import hashlib
import time

import numpy as np
from torch import nn

from qbench.core.errors import QbenchError, choice_error
from qbench.data.context import RunContext
from qbench.data.dataset import Dataset
from qbench.registry import Param
from qbench.train.embedder import Embedder
from qbench.train.encoders import MLP, ConvNet, ResNet18
from qbench.train.params import ENGINE_PARAMS

REGIMES = ("full", "head")

BACKBONE_DIM = 64
BACKBONE_PARAMS = tuple(p for p in ENGINE_PARAMS if p.name not in ("lr", "weight_decay")) + (
    Param("lr", float, 1e-3, "Adam learning rate of the backbone", minimum=1e-12),
    Param("weight_decay", float, 1e-5, "Adam weight decay of the backbone", minimum=0.0),
    Param("dim", int, BACKBONE_DIM, "width D of the backbone's training embedding (the head "
          "reads the features before it)", minimum=1, maximum=4096),
)
"""What determines a backbone: the engine's parameters (not tuned: every method shares the
backbone, so tuning it changes no comparison) and its embedding width."""


def check_regime(regime: str) -> str:
    if regime not in REGIMES:
        raise choice_error("--regime", regime, REGIMES)
    return regime


def resolve_backbone_params(overrides: dict | None) -> dict:
    """The backbone's parameters: :data:`BACKBONE_PARAMS` defaults updated by ``overrides``
    (``--backbone KEY=VALUE`` strings or a grid's values); unknown keys are an error."""
    declared = {p.name: p for p in BACKBONE_PARAMS}
    out = {p.name: p.default for p in BACKBONE_PARAMS}
    for key, value in (overrides or {}).items():
        if key not in declared:
            raise QbenchError(f"unknown backbone parameter {key!r}; allowed: "
                              + ", ".join(sorted(declared)))
        out[key] = declared[key].parse(value, owner="backbone")
    return out


def feature_extractor(model: nn.Module) -> tuple[nn.Module, int]:
    """(module computing the penultimate features of ``model``, their width): the input of
    its embedding layer. The module shares ``model``'s weights."""
    body = model[0] if isinstance(model, nn.Sequential) and isinstance(model[-1], nn.Tanh) \
        else model
    if isinstance(body, (ConvNet, ResNet18)):
        return nn.Sequential(body.features, nn.Flatten(1)), body.head.in_features
    if isinstance(body, MLP):
        return nn.Sequential(nn.Flatten(1), *list(body.net)[:-1]), body.net[-1].in_features
    raise QbenchError(f"regime head: backbone {type(body).__name__} has no penultimate "
                      "features here; allowed backbone encoders: mlp, lightcnn, cnn5, cnn, "
                      "resnet18")


def _features(encoder, epoch: int, x: np.ndarray, modality: str) -> np.ndarray:
    """(n, F) float32 penultimate features of every item of ``x`` under candidate ``epoch``."""
    trainer = encoder.trainer
    trainer.load_weights(encoder.states[epoch])
    net, width = feature_extractor(trainer.model)
    embedder = Embedder(net, trainer.scaler, trainer.autocast, trainer.device, width, modality)
    return embedder.embed(x)


def backbone_context(ctx: RunContext, params: dict) -> tuple[RunContext, dict]:
    """The run's context in the head regime: ``ctx`` with its dataset replaced by the
    frozen backbone's features (a vector dataset, same items, labels and splits), and the
    backbone's record (``backbone`` in results)."""
    from dataclasses import replace

    from qbench.train.encoder_cache import stage1_encoder

    started = time.perf_counter()
    dataset = ctx.dataset
    if ctx.dataset.modality == "vector" and params["encoder"] not in ("auto", "mlp"):
        raise QbenchError(f"backbone encoder {params['encoder']!r} needs images; "
                          f"dataset {dataset.name} holds vectors (use encoder=mlp)")
    encoder = stage1_encoder(ctx, params, params["dim"])
    epoch = encoder.candidates[-1]
    modality = dataset.modality

    def compute() -> np.ndarray:
        return _features(encoder, epoch, dataset.X, modality)

    if ctx.cache is not None:
        features, feature_status = ctx.cache.features(encoder.cache_key, epoch, compute)
    else:
        features, feature_status = compute(), "off"
    checksum = hashlib.sha256(f"{dataset.checksum}:{encoder.cache_key}:{epoch}".encode()
                              ).hexdigest()
    head_data = Dataset(dataset.name, features, dataset.y, "vector",
                        source=f"{dataset.source} (features of backbone {encoder.cache_key} "
                               f"at epoch {epoch})",
                        class_names=list(dataset.class_names), known_checksum=checksum)
    record = {
        "key": encoder.cache_key,
        "cache": encoder.cache_status,
        "features_cache": feature_status,
        "data_checksum": dataset.checksum,
        "features_checksum": checksum,
        "epoch": int(epoch),
        "encoder": encoder.summary["encoder"],
        "feature_dim": int(features.shape[1]),
        "params": dict(params),
        "train_s": encoder.train_s,
        "final_loss": encoder.summary.get("final_loss"),
        "seconds": time.perf_counter() - started,
    }
    return replace(ctx, dataset=head_data), record
