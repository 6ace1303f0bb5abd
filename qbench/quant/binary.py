"""Binary quantizers: bits from signs of projections, with a learned rotation (:class:`ITQ`),
random hyperplanes (:class:`LSH`) or none (:class:`SignQuantizer`).

Layer: imports ``qbench.core`` only; no training engine, no method.
"""

from __future__ import annotations

import numpy as np

from qbench.core.codes import signs_to_bits
from qbench.core.errors import QbenchError


def _signs(x: np.ndarray) -> np.ndarray:
    """+1 where x > 0, else -1 (float64)."""
    return np.where(x > 0, 1.0, -1.0)


class ITQ:
    """Iterative quantization (Gong & Lazebnik): centre, PCA to B dims, learned rotation.

    fit: V = (x - mean) @ P with P (D, B) the top-B principal directions (identity when
    D == B); then, from a random orthogonal R (B, B), alternate
    B = sign(V R) and R = argmax_R tr(Bᵀ V R) over orthogonal R, which is
    R = S Ŝᵀ for the SVD Vᵀ B = S Ω Ŝᵀ (orthogonal Procrustes). Each step does not increase
    the quantization loss ‖B − V R‖²_F, recorded per iteration in ``loss_history``
    (entry 0: the random start).
    """

    def __init__(self, bits: int, *, iters: int = 50, seed: int = 0):
        self.bits = bits
        self.iters = iters
        self.seed = seed
        self.mean: np.ndarray | None = None  # (D,)
        self.projection: np.ndarray | None = None  # (D, B)
        self.rotation: np.ndarray | None = None  # (B, B)
        self.loss_history: list[float] = []

    def fit(self, x: np.ndarray) -> ITQ:
        """Learn mean, projection and rotation on x (n, D) with D >= B."""
        x = np.asarray(x, dtype=np.float64)
        d = x.shape[1]
        if d < self.bits:
            raise QbenchError(f"ITQ needs input dimension >= bits; got dimension {d} for "
                              f"{self.bits} bits")
        self.mean = x.mean(axis=0)
        xc = x - self.mean
        if d > self.bits:
            _, _, vt = np.linalg.svd(xc, full_matrices=False)
            self.projection = vt[: self.bits].T
        else:
            self.projection = np.eye(d)
        v = xc @ self.projection
        rng = np.random.default_rng(self.seed)
        r, _ = np.linalg.qr(rng.standard_normal((self.bits, self.bits)))
        self.loss_history = [float(((_signs(v @ r) - v @ r) ** 2).sum())]
        for _ in range(self.iters):
            b = _signs(v @ r)
            s, _, sht = np.linalg.svd(v.T @ b)
            r = s @ sht
            self.loss_history.append(float(((b - v @ r) ** 2).sum()))
        self.rotation = r
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        """(n, B) float32 rotated projections (x - mean) @ P @ R."""
        xc = np.asarray(x, dtype=np.float64) - self.mean
        return (xc @ self.projection @ self.rotation).astype(np.float32)

    def encode(self, x: np.ndarray) -> np.ndarray:
        """(n, B) uint8 bits."""
        return signs_to_bits(self.transform(x))


class LSH:
    """Random-hyperplane LSH (Charikar's SimHash): bit j = [<x - c, w_j> > 0], w_j ~ N(0, I).

    ``centre``: c is the training mean (hyperplanes through the data's centre); otherwise
    c = 0 (hyperplanes through the origin, the classic form). Seeded: the same seed and
    input dimension give the same hyperplanes.
    """

    def __init__(self, bits: int, *, seed: int = 0, centre: bool = True):
        self.bits = bits
        self.seed = seed
        self.centre = centre
        self.mean: np.ndarray | None = None  # (D,)
        self.hyperplanes: np.ndarray | None = None  # (D, B)

    def fit(self, x: np.ndarray) -> LSH:
        """Draw the hyperplanes for x (n, D); the data only sets the centre."""
        x = np.asarray(x, dtype=np.float32)
        self.mean = x.mean(axis=0) if self.centre else np.zeros(x.shape[1], np.float32)
        rng = np.random.default_rng(self.seed)
        self.hyperplanes = rng.standard_normal((x.shape[1], self.bits)).astype(np.float32)
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        """(n, B) float32 projections."""
        return (np.asarray(x, dtype=np.float32) - self.mean) @ self.hyperplanes

    def encode(self, x: np.ndarray) -> np.ndarray:
        """(n, B) uint8 bits."""
        return signs_to_bits(self.transform(x))


class SignQuantizer:
    """Bit j of x is 1 where x_j > 0, else 0: no parameters."""

    def fit(self, x: np.ndarray) -> SignQuantizer:
        return self

    def encode(self, x: np.ndarray) -> np.ndarray:
        """(n, D) uint8 bits."""
        return signs_to_bits(x)
