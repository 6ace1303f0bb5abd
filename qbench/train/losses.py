"""Similarity losses shared by every method (SPEC §2.3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pair_targets(labels: torch.Tensor) -> torch.Tensor:
    """s_ij = +1 if items i and j share a label, else -1. labels: (n,) ids or (n, L) multi-hot."""
    if labels.ndim == 1:
        same = labels[:, None] == labels[None, :]
    else:
        hot = labels.float()
        same = (hot @ hot.T) > 0
    return same.float() * 2 - 1


def _off_diagonal_mean(values: torch.Tensor) -> torch.Tensor:
    n = values.shape[0]
    if n < 2:
        return values.sum() * 0
    mask = ~torch.eye(n, dtype=torch.bool, device=values.device)
    return values[mask].mean()


def cosine_pairwise_loss(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """DQN's pairwise cosine loss: mean over pairs i != j of (s_ij - cos(z_i, z_j))^2.

    z: (n, D) embeddings; labels: (n,) class ids or (n, L) multi-hot.
    """
    u = F.normalize(z, dim=1, eps=1e-8)
    return _off_diagonal_mean((pair_targets(labels) - u @ u.T) ** 2)


def inner_product_pairwise_loss(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Inner-product ablation (DQN_ip): mean over pairs i != j of (s_ij - <z_i, z_j> / D)^2.

    Dividing by D keeps the target scale of tanh-bounded outputs comparable to cosine.
    """
    return _off_diagonal_mean((pair_targets(labels) - (z @ z.T) / z.shape[1]) ** 2)


SIMILARITY_LOSSES = {"cosine": cosine_pairwise_loss, "ip": inner_product_pairwise_loss}
