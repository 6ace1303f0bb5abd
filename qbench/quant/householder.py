"""The Householder rotation of H²Q stage 2 (:class:`HouseholderRotation`): an orthogonal
product of reflections (:func:`householder_product`) learned in torch so that sign codes
lose little, on embeddings rescaled to norm √B (:func:`rescale_to_sqrt_dim`).

Layer: imports ``qbench.core`` and torch only; its small SGD loop is its own, not the
training engine's (``qbench.train``); no method.
"""

from __future__ import annotations

import numpy as np
import torch

from qbench.core.codes import signs_to_bits
from qbench.core.errors import QbenchError


def householder_product(v: torch.Tensor) -> torch.Tensor:
    """U = H_1 H_2 ⋯ H_n, H_i = I − 2 v_i v_iᵀ / ‖v_i‖², from the rows v_i of v (n, B).

    Returns (B, B); differentiable in v. Uses the compact WY form of a product of
    reflections: with Y = vᵀ (B, n) and G = YᵀY, U = I − Y S⁻¹ Yᵀ where S is the upper
    triangle of G with its diagonal halved -- a few matrix products and one triangular
    solve instead of n sequential reflections.
    """
    y = v.T
    gram = y.T @ y
    s = torch.triu(gram, 1) + torch.diag(torch.diagonal(gram) / 2)
    eye = torch.eye(v.shape[1], dtype=v.dtype, device=v.device)
    return eye - y @ torch.linalg.solve_triangular(s, y.T, upper=True)


def rescale_to_sqrt_dim(z: np.ndarray) -> np.ndarray:
    """Rows of z (n, B) scaled to norm √B, so sign codes (±1 entries) have the same norm."""
    z = np.asarray(z, dtype=np.float64)
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    return z / np.maximum(norms, 1e-12) * np.sqrt(z.shape[1])


class HouseholderRotation:
    """H²Q stage 2: an orthogonal U = H_1 ⋯ H_B bringing each coordinate of Uz near its sign.

    Follows the H²Q paper (Schwengber et al., "Deep Hashing via Householder Quantization"):
    U is a product of B Householder reflections with vectors v_1..v_B (the parameter, B×B),
    initialised to the identity matrix rows (so each H_i flips axis i and U = −I); the loss is
    the mean over items and coordinates of (Uz − sign(Uz))² (``loss="l2"``) or of
    |Uz − sign(Uz)| (``"l1"``); plain SGD, lr 0.1, batch 128; the parameters with the lowest
    validation loss are kept. The paper trains 300 epochs; the default here is 100 to keep
    CPU runs short. The caller rescales embeddings to norm √B (:func:`rescale_to_sqrt_dim`).
    Computation in float64 so U stays orthogonal to ~1e-12.
    ``loss_history`` (mean training loss per epoch) and ``val_history`` (validation loss
    after each epoch) are recorded, entry 0 of each at initialisation.
    """

    def __init__(self, *, epochs: int = 100, lr: float = 0.1, batch_size: int = 128,
                 loss: str = "l2", seed: int = 0, device: str = "cpu"):
        if loss not in ("l2", "l1"):
            raise QbenchError(f"unknown rotation loss {loss!r}; allowed: l1, l2")
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.loss = loss
        self.seed = seed
        self.device = torch.device(device)
        self.vectors: np.ndarray | None = None  # (B, B) Householder vectors, rows
        self.loss_history: list[float] = []
        self.val_history: list[float] = []
        self.best_epoch = 0

    def _loss(self, z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        r = z @ householder_product(v).T
        gap = r - torch.sign(r).detach()
        return (gap ** 2).mean() if self.loss == "l2" else gap.abs().mean()

    def fit(self, z: np.ndarray, z_val: np.ndarray | None = None) -> HouseholderRotation:
        """Learn U on z (n, B); select on z_val (m, B) (on z itself when None)."""
        threads = torch.get_num_threads()
        if self.device.type == "cpu":
            torch.set_num_threads(1)  # B x B matrices: thread overhead outweighs the work
        try:
            return self._fit(z, z_val)
        finally:
            torch.set_num_threads(threads)

    def _fit(self, z: np.ndarray, z_val: np.ndarray | None) -> HouseholderRotation:
        zt = torch.as_tensor(np.asarray(z, dtype=np.float64), device=self.device)
        zv = zt if z_val is None else torch.as_tensor(np.asarray(z_val, dtype=np.float64),
                                                      device=self.device)
        b = zt.shape[1]
        v = torch.eye(b, dtype=torch.float64, device=self.device).requires_grad_(True)
        opt = torch.optim.SGD([v], lr=self.lr)
        gen = torch.Generator().manual_seed(self.seed)
        n = len(zt)
        bs = max(1, min(self.batch_size, n))
        with torch.no_grad():
            best = float(self._loss(zv, v))
            self.loss_history = [float(self._loss(zt, v))]
        best_v = v.detach().clone()
        self.val_history = [best]
        self.best_epoch = 0
        for epoch in range(1, self.epochs + 1):
            order = torch.randperm(n, generator=gen).to(self.device)
            total = 0.0
            for start in range(0, n, bs):
                batch = zt[order[start:start + bs]]
                loss = self._loss(batch, v)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(batch)
            self.loss_history.append(total / n)
            with torch.no_grad():
                val = float(self._loss(zv, v))
            self.val_history.append(val)
            if val < best:
                best, best_v, self.best_epoch = val, v.detach().clone(), epoch
        self.vectors = best_v.cpu().numpy()
        return self

    def matrix(self) -> np.ndarray:
        """U (B, B) float64, orthogonal."""
        return householder_product(torch.as_tensor(self.vectors)).numpy()

    def transform(self, z: np.ndarray) -> np.ndarray:
        """(n, B) rotated embeddings U z (rows: z @ Uᵀ), float64."""
        return np.asarray(z, dtype=np.float64) @ self.matrix().T

    def encode(self, z: np.ndarray) -> np.ndarray:
        """(n, B) uint8 bits of sign(U z)."""
        return signs_to_bits(self.transform(z))

    def quantization_loss(self, z: np.ndarray) -> float:
        """The training objective on z (n, B) with the current U."""
        with torch.no_grad():
            zt = torch.as_tensor(np.asarray(z, dtype=np.float64))
            return float(self._loss(zt, torch.as_tensor(self.vectors)))
