"""The method plugin interface: what a quantization strategy receives and returns.

A method is one class in ``methods/``, registered with ``@METHODS.register``, with
``name``, ``description``, ``params`` (tuple of :class:`qbench.registry.Param`), ``family``
("pq", "binary" or "float") and ``run(ctx) -> MethodOutput``. It never evaluates: the
pipeline hands its codes to the one evaluator.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from qbench.codes import Codes, FloatCodes
from qbench.data import Dataset
from qbench.errors import QbenchError
from qbench.protocols import Splits

FAMILIES = ("pq", "binary", "float")


@dataclass
class RunContext:
    """Everything a method may use: data, splits, code budget, seed, device."""

    dataset: Dataset
    splits: Splits
    bits: int
    seed: int = 0
    device: str = "cpu"
    progress: bool = False

    def x(self, split: str) -> np.ndarray:
        """Inputs of a split ("train", "val", "query", "database")."""
        return self.dataset.X[getattr(self.splits, split)]

    def y(self, split: str) -> np.ndarray:
        """Labels of a split."""
        return self.dataset.y[getattr(self.splits, split)]

    def flat_x(self, split: str) -> np.ndarray:
        """(n, d) float32 raw inputs of a split, images flattened (unsupervised baselines)."""
        x = self.x(split)
        return x.reshape(len(x), -1).astype(np.float32)


@dataclass
class MethodOutput:
    """Codes for query and database, plus what the result file records about them.

    float_codes: the method's own unquantized embeddings (for retention); None when the
    method has none (e.g. unsupervised baselines on raw input use the raw input).
    info: quantizer layout and anything worth recording (subspaces, codewords, ...).
    timings: seconds, e.g. train_s, encode_s.
    """

    codes: Codes
    float_codes: FloatCodes | None = None
    info: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)


def trained_output(codes: Codes, trainer, query_emb: np.ndarray, db_emb: np.ndarray, *,
                   info: dict, encode_s: float, extra_train_s: float = 0.0) -> MethodOutput:
    """The output of a method built on a trained encoder (``trainer``: a
    :class:`qbench.engine.Trainer`).

    float_codes rank the method's own embeddings ``query_emb`` / ``db_emb`` by cosine (for
    retention); info gains the training summary; timings are train_s (training plus
    ``extra_train_s``) and encode_s.
    """
    return MethodOutput(
        codes=codes,
        float_codes=FloatCodes(np.asarray(query_emb, dtype=np.float32),
                               np.asarray(db_emb, dtype=np.float32), metric="cosine"),
        info={**info, "training": trainer.summary()},
        timings={"train_s": trainer.train_s + extra_train_s, "encode_s": encode_s},
    )


class Method:
    """Base of method plugins. ``params`` on the instance is the resolved dict."""

    name: str = ""
    description: str = ""
    params: tuple = ()
    family: str = "float"

    def __init__(self, params: dict):
        self.params = params

    def check_bits(self, bits: int) -> None:
        """Raise :class:`QbenchError` when ``bits`` is not a code length this method can make."""
        if bits <= 0:
            raise QbenchError(f"--bits must be a positive integer, got {bits}")
        if self.family == "pq":
            pq_layout(bits, self.params.get("subspaces", 0))

    def run(self, ctx: RunContext) -> MethodOutput:
        raise NotImplementedError


def pq_layout(bits: int, subspaces: int = 0) -> tuple[int, int]:
    """(M, b): M subspaces of 2^b codewords with M*b = bits (SPEC §2, code budget).

    Default: b = 8 when 8 divides bits, else the largest b <= 8 dividing bits
    (12 -> 2x6, 24 -> 3x8, 32 -> 4x8, 48 -> 6x8). ``subspaces`` > 0 fixes M, which must
    divide bits with bits/M between 1 and 12.
    """
    if bits <= 0:
        raise QbenchError(f"--bits must be a positive integer, got {bits}")
    if subspaces:
        if subspaces < 0 or bits % subspaces or not 1 <= bits // subspaces <= 12:
            allowed = [m for m in range(1, bits + 1) if bits % m == 0 and bits // m <= 12]
            raise QbenchError(
                f"subspaces={subspaces} does not fit {bits} bits; allowed: "
                + ", ".join(map(str, allowed))
            )
        return subspaces, bits // subspaces
    b = next(b for b in range(8, 0, -1) if bits % b == 0)
    return bits // b, b


DEFAULT_DIM = 64
"""The default embedding width D of learned methods."""


def default_pq_dim(subspaces: int) -> int:
    """The smallest multiple of ``subspaces`` that is >= :data:`DEFAULT_DIM` (D must be
    divisible by M: 64 for M = 2, 4; 66 for M = 3, 6)."""
    return -(-DEFAULT_DIM // subspaces) * subspaces


def check_divisible(dim: int, subspaces: int, what: str = "embedding dim") -> None:
    if dim % subspaces:
        raise QbenchError(
            f"{what} {dim} is not divisible by {subspaces} subspaces; choose a dim that is "
            f"a multiple of {subspaces} (e.g. -p dim={subspaces * max(1, round(dim / subspaces))})"
        )


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)
