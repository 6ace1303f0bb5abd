"""The network's inputs: standardisation with the training split's statistics, the memory
layout (:class:`InputScaler`) and image augmentation (:func:`flip_and_crop`)."""

from __future__ import annotations

import numpy as np
import torch


class InputScaler:
    """Raw inputs -> standardised float tensors on the device, in the network's layout.

    ``mean`` and ``std`` are per feature for vectors and per channel (1, C, 1, 1) for
    images (uint8 images are first scaled to [0, 1]); ``channels_last``: the network's
    memory format (image networks).
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, device: torch.device,
                 channels_last: bool = False):
        self.mean = mean
        self.std = std
        self.device = device
        self.channels_last = channels_last

    @classmethod
    def fit(cls, x_train: np.ndarray, modality: str, device: torch.device,
            channels_last: bool = False) -> InputScaler:
        """The scaling of the training inputs ``x_train``: vectors (n, d), images (n, C, H, W)."""
        x = x_train.astype(np.float32)
        if modality == "image":
            if x_train.dtype == np.uint8:
                x = x / 255.0
            axes = (0, 2, 3)
            mean = torch.tensor(x.mean(axis=axes), device=device).view(1, -1, 1, 1)
            std = torch.tensor(x.std(axis=axes) + 1e-6, device=device).view(1, -1, 1, 1)
        else:
            mean = torch.tensor(x.mean(axis=0), device=device)
            std = torch.tensor(x.std(axis=0) + 1e-2, device=device)
        return cls(mean, std, device, channels_last)

    def to_device(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Raw inputs -> standardised float tensor on the device."""
        if isinstance(x, np.ndarray) and not x.flags.writeable:
            x = np.array(x)  # a batch of a read-only memory map (torch wants writable)
        t = torch.as_tensor(x).to(self.device, non_blocking=True)
        t = t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
        return self.layout((t - self.mean) / self.std)

    def layout(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` in the network's memory format (indexing and augmentation return NCHW)."""
        return t.contiguous(memory_format=torch.channels_last) if self.channels_last else t


def flip_and_crop(x: torch.Tensor, rng: np.random.Generator, pad: int = 4) -> torch.Tensor:
    """Random horizontal flip and random crop after zero padding (per image), x: (n, C, H, W)."""
    n, _, h, w = x.shape
    flip = torch.as_tensor(rng.random(n) < 0.5, device=x.device)
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = rng.integers(0, 2 * pad + 1, n)
    dx = rng.integers(0, 2 * pad + 1, n)
    rows = torch.as_tensor(dy[:, None] + np.arange(h)[None, :], device=x.device)
    cols = torch.as_tensor(dx[:, None] + np.arange(w)[None, :], device=x.device)
    idx_n = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()
