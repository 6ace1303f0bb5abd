"""The method plugin interface: what a quantization strategy receives and returns.

A method is one class in ``methods/``, registered with ``@METHODS.register``, with
``name``, ``description``, ``params`` (tuple of :class:`qbench.registry.Param`), ``family``
("pq", "binary" or "float") and ``run(ctx) -> MethodOutput``. It never evaluates: the
pipeline hands its codes to the one evaluator.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from qbench.core.codes import Codes, FloatCodes
from qbench.core.errors import QbenchError
from qbench.data.context import RunContext

FAMILIES = ("pq", "binary", "float")

MAX_BITS = 4096
"""The largest code budget a run may ask for (512 bytes per item): ``--bits`` is the storage
per item of every family (PQ: M*b with b <= 12; binary: B sign bits, the network's output
width where a method trains one; float: recorded beside the quantized runs of that budget)."""


@dataclass
class MethodOutput:
    """Codes for query and database, plus what the result file records about them.

    float_codes: the method's own unquantized embeddings (for retention); None when the
    method has none (e.g. unsupervised baselines on raw input use the raw input).
    info: quantizer layout and anything worth recording (subspaces, codewords, ...).
    timings: seconds: train_s, select_s, fit_s, encode_s.
    selection: the :class:`qbench.train.selection.Selection` record (dict) of a method that
    trains or fits anything, else None. encoder: ``{"key", "cache"}`` of the stage-1
    encoder it used, else None.
    """

    codes: Codes | None  # None only after selection alone (RunContext.selection_only)
    float_codes: FloatCodes | None = None
    info: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    selection: dict | None = None
    encoder: dict | None = None


class Method:
    """Base of method plugins. ``params`` on the instance is the resolved dict."""

    name: str = ""
    description: str = ""
    params: tuple = ()
    family: str = "float"
    selects: bool = True
    """Whether the method selects among candidates on validation data (``--select``,
    ``--pool-size``); False for the baselines that fit once and train nothing."""

    def __init__(self, params: dict):
        self.params = params

    def check_bits(self, bits: int) -> None:
        """Raise :class:`QbenchError` when ``bits`` is not a code length this method can make."""
        if not 1 <= bits <= MAX_BITS:
            raise QbenchError(f"--bits {bits} is not allowed; allowed: a positive integer up "
                              f"to {MAX_BITS} (bits per item)")
        if self.family == "pq":
            pq_layout(bits, self.params.get("subspaces", 0))

    def run(self, ctx: RunContext) -> MethodOutput:
        raise NotImplementedError

    def stage1_spec(self, bits: int) -> tuple[int, bool] | None:
        """(D, tanh) of the shared stage-1 encoder this method trains or warm-starts from at
        ``bits``, or None when it trains none (what a grid groups runs by)."""
        return None

    def run_selection(self, ctx: RunContext) -> MethodOutput:
        """Train and select only (``MethodOutput.selection``, no codes): the tuning
        objective. Methods stop after selection when ``ctx.selection_only`` is set."""
        return self.run(replace(ctx, selection_only=True))


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
"""The default embedding width D of learned methods: one width for every PQ bit length, so
float, two-stage-pq/opq, itq and the joint methods share one stage-1 encoder per seed. When
M does not divide D (M = 3, 6), the quantization space is the embedding zero-padded to the
next multiple of M (:func:`pad_columns`; zero columns change no distance)."""


def pad_columns(x: np.ndarray, multiple: int) -> np.ndarray:
    """x (n, d) with zero columns appended up to a multiple of ``multiple`` (float32)."""
    x = np.asarray(x, dtype=np.float32)
    extra = -x.shape[1] % multiple
    return np.pad(x, ((0, 0), (0, extra))) if extra else x


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)
