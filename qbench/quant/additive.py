"""Additive quantization: residual quantization (RQ) and LSQ++ (local search quantization),
faiss's additive quantizers, behind the same ``fit`` / ``encode`` / ``decode`` /
``distortion`` face as :class:`qbench.quant.ProductQuantizer`.

An additive quantizer with M codebooks of K = 2^b full-width codewords reconstructs a vector
as the sum of one codeword per codebook, c_1[i_1] + ... + c_M[i_M]: M * b bits per item,
the same budget as PQ with M subspaces of 2^b codewords. RQ fits the codebooks greedily,
each on the residuals the previous ones leave (beam search over the codes); LSQ++ fits all
codebooks jointly, alternating least squares for the codebooks with iterated local search
for the codes.

Layer: imports ``qbench.core`` and :mod:`qbench.quant.parallel` only; no training engine,
no method.
"""

from __future__ import annotations

import contextlib
import threading

import faiss
import numpy as np

from qbench.core.errors import QbenchError, choice_error
from qbench.quant.parallel import fit_threads

KINDS = ("rq", "lsq")

_LSQ_LOCK = threading.Lock()
"""faiss's LocalSearchQuantizer times its steps in one process-wide timer (``lsq_timer``,
hash maps with no lock) that every ``train`` clears: two LSQ fits or encodings in two
threads at once (model selection fits candidates side by side) race on it and crash the
process. Every LSQ call holds this lock; RQ keeps no shared state and runs in parallel."""


class AdditiveQuantizer:
    """RQ (``kind="rq"``) or LSQ++ (``kind="lsq"``): M codebooks of 2^nbits codewords.

    ``beam``: RQ's beam width (faiss's ``max_beam_size``; 1 is greedy residual encoding);
    ``train_iters``: LSQ's alternations of codebook update and code search. After
    :meth:`fit`, ``codebooks`` is (M, K, D) float32.
    """

    def __init__(self, kind: str, codebooks: int, nbits: int, *, seed: int = 0,
                 beam: int = 5, train_iters: int = 25):
        if kind not in KINDS:
            raise choice_error("additive quantizer", kind, KINDS)
        self.kind = kind
        self.codebook_count = codebooks
        self.nbits = nbits
        self.seed = seed
        self.beam = beam
        self.train_iters = train_iters
        self.codebooks: np.ndarray | None = None  # (M, K, D)
        self._faiss = None

    @property
    def codewords(self) -> int:
        return 1 << self.nbits

    def _make(self, d: int):
        if self.kind == "rq":
            aq = faiss.ResidualQuantizer(d, self.codebook_count, self.nbits)
            aq.max_beam_size = self.beam
            aq.cp.seed = self.seed
            aq.cp.min_points_per_centroid = 1
        else:
            aq = faiss.LocalSearchQuantizer(d, self.codebook_count, self.nbits)
            aq.random_seed = self.seed
            aq.train_iters = self.train_iters
        # the norm of a reconstruction is computed from the codes where the search needs it
        aq.search_type = faiss.AdditiveQuantizer.ST_decompress
        return aq

    def _exclusive(self) -> contextlib.AbstractContextManager:
        return _LSQ_LOCK if self.kind == "lsq" else contextlib.nullcontext()

    def fit(self, x: np.ndarray) -> AdditiveQuantizer:
        """Learn the codebooks on x (n, D)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if len(x) < self.codewords:
            raise QbenchError(f"{self.kind} with {self.codewords} codewords needs at least "
                              f"{self.codewords} training vectors, got {len(x)}")
        aq = self._make(x.shape[1])
        with self._exclusive(), fit_threads(x):
            aq.train(x)
        self._faiss = aq
        self.codebooks = (faiss.vector_to_array(aq.codebooks)
                          .reshape(self.codebook_count, self.codewords, x.shape[1])
                          .astype(np.float32))
        return self

    def encode(self, x: np.ndarray) -> np.ndarray:
        """(n, M) int64 codeword ids (faiss's encoder: RQ's beam search, LSQ's local search)."""
        if self._faiss is None:
            raise QbenchError(f"{self.kind}: encode before fit")
        x = np.ascontiguousarray(x, dtype=np.float32)
        with self._exclusive(), fit_threads(x):
            packed = self._faiss.compute_codes(x)
        return faiss.unpack_bitstrings(packed, self.codebook_count,
                                       self.nbits).astype(np.int64)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """(n, D) float32 reconstruction: the sum of each item's codewords."""
        out = np.zeros((len(codes), self.codebooks.shape[2]), dtype=np.float32)
        for m in range(self.codebook_count):
            out += self.codebooks[m][codes[:, m]]
        return out

    def distortion(self, x: np.ndarray) -> float:
        """Mean squared quantization error per vector."""
        x = np.asarray(x, dtype=np.float32)
        return float(((x - self.decode(self.encode(x))) ** 2).sum(1).mean())
