"""Encoders f_theta: input -> embedding z in R^D (SPEC §2.2).

- ``mlp``: vectors (digits, feature files).
- ``cnn``: a 6-layer convolutional network for small images, trained from scratch.
- ``cnn5``: ``cnn`` without its second full-resolution layer (32-64-64-128-128), the CPU
  default for images: on 2 CPU cores about 1.4x as fast per run as ``cnn`` at about the
  same accuracy (Fashion-MNIST, 15 epochs without augmentation, float MAP@all 0.8076 /
  0.7995 on seeds 0 / 1 against 0.8045 / 0.8075 for ``cnn``).
- ``lightcnn``: three conv layers (32-64-128 channels), about twice as fast as ``cnn`` on a
  CPU (measured on Fashion-MNIST, 2 busy cores: 12 s vs 30 s per epoch) but weaker (float
  MAP@all 0.759 after 20 epochs vs 0.806 for ``cnn`` after 15, both without augmentation).
- ``resnet18``: a ResNet-18-style network for 32x32 images, trained from scratch.
- ``alexnet`` / ``vgg16``: torchvision backbones with ImageNet weights (needs torchvision and
  the weights on disk or downloadable), followed by a bottleneck of width D.

:func:`build_network` builds the one a run's engine parameters describe, on its device.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from qbench.core.errors import QbenchError

ENCODERS = ("auto", "mlp", "lightcnn", "cnn5", "cnn", "resnet18", "alexnet", "vgg16")


class MLP(nn.Module):
    def __init__(self, in_dim: int, dim: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
            nn.Linear(hidden, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))  # images are flattened


def _conv(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class ConvNet(nn.Module):
    """Stages of 3x3 conv layers (``stages``: the widths of each stage's layers), 2x2 max
    pooling between stages, global average pooling, a bottleneck of width D."""

    def __init__(self, channels: int, dim: int, stages: tuple[tuple[int, ...], ...]):
        super().__init__()
        layers: list[nn.Module] = []
        cin = channels
        for i, widths in enumerate(stages):
            if i:
                layers.append(nn.MaxPool2d(2))
            for cout in widths:
                layers += _conv(cin, cout)
                cin = cout
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


CNN_STAGES = {"cnn": ((32, 32), (64, 64), (128, 128)), "cnn5": ((32,), (64, 64), (128, 128)),
              "lightcnn": ((32,), (64,), (128,))}
"""``cnn``: six layers 32-32-64-64-128-128; ``cnn5``: five, 32-64-64-128-128; ``lightcnn``:
three, 32-64-128."""


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.skip = nn.Identity()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.b1(self.c1(x)))
        return F.relu(self.b2(self.c2(out)) + self.skip(x))


class ResNet18(nn.Module):
    """ResNet-18 layout (2-2-2-2 basic blocks, 64..512 channels) with a 3x3 stem for 32x32."""

    def __init__(self, channels: int, dim: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, 64, 3, 1, 1, bias=False),
                                   nn.BatchNorm2d(64), nn.ReLU()]
        cin = 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [_Block(cin, cout, stride), _Block(cout, cout, 1)]
            cin = cout
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(512, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class TorchvisionBackbone(nn.Module):
    """AlexNet or VGG16 (ImageNet weights with ``pretrained``, else random initialisation);
    the last classifier layer becomes the bottleneck of width D."""

    def __init__(self, arch: str, dim: int, pretrained: bool = True):
        super().__init__()
        try:
            import torchvision
        except ImportError:
            raise QbenchError(
                f"encoder {arch} needs torchvision (pip install torchvision); "
                "allowed without it: mlp, cnn, resnet18"
            ) from None
        builders = {"alexnet": ("alexnet", "AlexNet_Weights"), "vgg16": ("vgg16", "VGG16_Weights")}
        fn_name, weights_name = builders[arch]
        weights = getattr(torchvision.models, weights_name).IMAGENET1K_V1 if pretrained else None
        try:
            net = getattr(torchvision.models, fn_name)(weights=weights)
        except Exception as exc:  # noqa: BLE001 - any download/cache failure is the same to a user
            raise QbenchError(
                f"ImageNet weights for {arch} are not on disk and could not be downloaded "
                f"({type(exc).__name__}); put them in the torch hub cache ($TORCH_HOME) "
                "or use encoder=cnn|resnet18"
            ) from None
        in_features = net.classifier[-1].in_features
        net.classifier[-1] = nn.Linear(in_features, dim)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (n, C, H, W) already standardised per channel by the engine (as ImageNet
        inputs are, with the dataset's own statistics), resized to 224x224."""
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        return self.net(F.interpolate(x, size=224, mode="bilinear", align_corners=False))


def resolve_encoder(name: str, modality: str, device: str) -> str:
    """'auto' -> mlp for vectors, resnet18 for images on a GPU, cnn5 for images on a CPU."""
    if name not in ENCODERS:
        raise QbenchError(f"unknown encoder {name!r}; allowed: {', '.join(ENCODERS)}")
    if name == "auto":
        if modality == "vector":
            return "mlp"
        return "resnet18" if device.startswith("cuda") else "cnn5"
    if modality == "vector" and name != "mlp":
        raise QbenchError(f"encoder {name!r} needs images; vector datasets use encoder=mlp")
    return name


def build_encoder(name: str, input_shape: tuple[int, ...], dim: int, hidden: int = 256,
                  tanh: bool = False, weights: str = "none") -> nn.Module:
    """Instantiate encoder ``name`` (already resolved) for inputs of ``input_shape``.

    ``weights``: "none" (random initialisation) or "imagenet" (alexnet and vgg16 only).
    """
    if weights not in ("none", "imagenet"):
        raise QbenchError(f"unknown weights {weights!r}; allowed: imagenet, none")
    if weights == "imagenet" and name not in ("alexnet", "vgg16"):
        raise QbenchError(f"weights=imagenet needs encoder=alexnet or vgg16, not {name!r}")
    if name == "mlp":
        body: nn.Module = MLP(math.prod(input_shape), dim, hidden)
    elif name in CNN_STAGES:
        body = ConvNet(input_shape[0], dim, CNN_STAGES[name])
    elif name == "resnet18":
        body = ResNet18(input_shape[0], dim)
    else:
        body = TorchvisionBackbone(name, dim, pretrained=weights == "imagenet")
    return nn.Sequential(body, nn.Tanh()) if tanh else body


class Network(NamedTuple):
    """An encoder ready to train: the module on its device (channels-last for image
    networks when asked), its resolved name and the autocast its forward passes run in."""

    model: nn.Module
    name: str
    channels_last: bool
    autocast: torch.autocast


def build_network(params: dict, modality: str, device: str, input_shape: tuple[int, ...],
                  dim: int, tanh: bool) -> Network:
    """The encoder the engine parameters ``params`` describe (``encoder``, ``hidden``,
    ``weights``, ``channels_last``, ``precision``) for inputs of ``input_shape``; its
    initial weights come from torch's generator."""
    name = resolve_encoder(params["encoder"], modality, device)
    model = build_encoder(name, input_shape, dim, params["hidden"], tanh,
                          params["weights"]).to(torch.device(device))
    channels_last = params["channels_last"] and modality == "image"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16,
                              enabled=params["precision"] == "bf16")
    return Network(model, name, channels_last, autocast)
