"""The training engine's parameters and epoch schedule: what every learned method accepts
(:data:`ENGINE_PARAMS`), which of them determine a stage-1 training (:data:`STAGE1_KEYS`),
how many epochs a run trains, which epochs are selection candidates and the joint methods'
default warm-up."""

from __future__ import annotations

from qbench.registry import Param, Space
from qbench.train.encoders import ENCODERS
from qbench.train.losses import SIMILARITY_LOSSES

DEFAULT_EPOCHS = {"vector": 60, "image": 30}

ENGINE_PARAMS = (
    Param("encoder", str, "auto", "network: auto (mlp for vectors; resnet18 on GPU / cnn5 on "
          "CPU for images), mlp, lightcnn, cnn5, cnn, resnet18, alexnet, vgg16",
          choices=ENCODERS),
    Param("weights", str, "none", "backbone weights for alexnet/vgg16: none or imagenet",
          choices=("none", "imagenet")),
    Param("epochs", int, 0, "training epochs (0: 60 for vectors, 30 for images)", minimum=0),
    Param("batch_size", int, 128, "mini-batch size", minimum=2, maximum=65536),
    Param("lr", float, 1e-3, "Adam learning rate", minimum=1e-12,
          tune=Space(1e-4, 1e-2, log=True, shared=True)),
    Param("weight_decay", float, 1e-5, "Adam weight decay", minimum=0.0,
          tune=Space(1e-6, 1e-3, log=True, shared=True)),
    Param("loss", str, "cosine", "similarity loss: cosine (DQN) or ip (inner product)",
          choices=tuple(SIMILARITY_LOSSES)),
    Param("hidden", int, 256, "MLP hidden width", minimum=1, maximum=16384),
    Param("augment", bool, True, "random flip + crop for images"),
    Param("precision", str, "fp32", "fp32, or bf16 autocast for the network on a GPU",
          choices=("fp32", "bf16")),
    Param("select_from", float, 0.0, "where selection candidates start, as a fraction of "
          "the training epochs (0: every candidate epoch; 0.5: the second half only; the "
          "last epoch is always one)", minimum=0.0, maximum=0.99),
    Param("channels_last", bool, True, "channels-last memory format for image networks "
          "(results equal up to float rounding; CPU inference about 1.3x faster; ignored "
          "for vectors)"),
)

STAGE1_KEYS = tuple(p.name for p in ENGINE_PARAMS)
"""The parameters that determine a stage-1 training (with D, tanh and the data)."""


def training_epochs(params: dict, modality: str) -> int:
    """The number of epochs a run trains: the ``epochs`` parameter, or the modality's default."""
    return params["epochs"] or DEFAULT_EPOCHS[modality]


def candidate_epochs(epochs: int, select_from: float = 0.0) -> list[int]:
    """The epochs (0-based) after which a model is kept as a selection candidate: every
    ceil(epochs / 10)-th and the last, so at most 11 (each is embedded and scored), and of
    those only the ones from epoch ``floor(select_from * epochs)`` on (``select_from``, the
    engine parameter: 0.5 keeps the second half; the last epoch is always kept)."""
    every = max(1, -(-epochs // 10))
    first = int(select_from * epochs)
    return [e for e in range(epochs)
            if e + 1 == epochs or (e >= first and (e + 1) % every == 0)]


def warmup_epochs(epochs: int) -> int:
    """The joint methods' default warm-up: a sixth of the epochs (10 of 60)."""
    return epochs // 6
