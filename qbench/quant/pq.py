"""Product quantization: k-means codebooks per subspace, encoding and decoding
(:class:`ProductQuantizer`), and OPQ's learned rotation in front of it (:class:`OPQ`),
faiss underneath.

Layer: imports ``qbench.core`` and :mod:`qbench.quant.parallel` only; no training engine,
no method.
"""

from __future__ import annotations

import faiss
import numpy as np

from qbench.core.errors import QbenchError
from qbench.quant.parallel import fit_threads


def kmeans(x: np.ndarray, k: int, *, seed: int = 0, niter: int = 25,
           init: np.ndarray | None = None) -> np.ndarray:
    """(k, d) float32 k-means centroids of x (n, d) with faiss; ``init`` warm-starts."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if len(x) < k:
        raise QbenchError(f"k-means with {k} codewords needs at least {k} training vectors, "
                          f"got {len(x)}; use fewer bits per subspace (-p subspaces=...)")
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=1 << 30)
    with fit_threads(x):
        if init is not None:
            km.train(x, init_centroids=np.ascontiguousarray(init, dtype=np.float32))
        else:
            km.train(x)
    return km.centroids.astype(np.float32)


def assign_subspaces(x: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """(n, M) int64 nearest-codeword ids per subspace; x: (n, D), codebooks: (M, K, D/M)."""
    m_count, _, dsub = codebooks.shape
    x = np.asarray(x, dtype=np.float32).reshape(len(x), m_count, dsub)
    codes = np.empty((len(x), m_count), dtype=np.int64)
    for m in range(m_count):
        c = codebooks[m]
        dist = (c * c).sum(1)[None, :] - 2 * x[:, m] @ c.T
        codes[:, m] = dist.argmin(1)
    return codes


def decode_subspaces(codes: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """(n, D) float32 reconstruction from (n, M) codes."""
    parts = codebooks[np.arange(codebooks.shape[0])[None, :], codes]
    return parts.reshape(len(codes), -1).astype(np.float32)


class ProductQuantizer:
    """PQ: M subspaces, 2^nbits codewords each, per-subspace k-means (faiss)."""

    def __init__(self, subspaces: int, nbits: int, *, seed: int = 0, niter: int = 25):
        self.subspaces = subspaces
        self.nbits = nbits
        self.seed = seed
        self.niter = niter
        self.codebooks: np.ndarray | None = None  # (M, K, D/M)

    @property
    def codewords(self) -> int:
        return 1 << self.nbits

    def fit(self, x: np.ndarray, init: np.ndarray | None = None) -> ProductQuantizer:
        """Learn codebooks on x (n, D); ``init`` (M, K, D/M) warm-starts k-means."""
        d = x.shape[1]
        if d % self.subspaces:
            raise QbenchError(f"dimension {d} is not divisible by {self.subspaces} subspaces")
        dsub = d // self.subspaces
        books = []
        for m in range(self.subspaces):
            part = x[:, m * dsub:(m + 1) * dsub]
            books.append(kmeans(part, self.codewords, seed=self.seed + m, niter=self.niter,
                                init=None if init is None else init[m]))
        self.codebooks = np.stack(books).astype(np.float32)
        return self

    def encode(self, x: np.ndarray) -> np.ndarray:
        return assign_subspaces(x, self.codebooks)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return decode_subspaces(codes, self.codebooks)

    def distortion(self, x: np.ndarray) -> float:
        """Mean squared quantization error per vector."""
        return float(((x - self.decode(self.encode(x))) ** 2).sum(1).mean())


class OPQ:
    """Optimized product quantization: an orthogonal rotation R followed by PQ.

    The rotation is learned by faiss ``OPQMatrix`` (alternating PQ training and orthogonal
    Procrustes); the codebooks are then refit with :class:`ProductQuantizer` on the rotated
    data. Convention: ``transform(x) = x @ rotation.T`` (each row is rotated by R), and codes,
    codebooks and ADC queries all live in the rotated space.
    """

    def __init__(self, subspaces: int, nbits: int, *, iters: int = 50, seed: int = 0,
                 niter: int = 25):
        self.subspaces = subspaces
        self.nbits = nbits
        self.iters = iters
        self.seed = seed
        self.pq = ProductQuantizer(subspaces, nbits, seed=seed, niter=niter)
        self.rotation: np.ndarray | None = None  # (D, D) orthogonal

    @property
    def codewords(self) -> int:
        return 1 << self.nbits

    @property
    def codebooks(self) -> np.ndarray | None:
        """(M, K, D/M) float32 codebooks in the rotated space."""
        return self.pq.codebooks

    def fit(self, x: np.ndarray) -> OPQ:
        """Learn R (D, D) and the codebooks on x (n, D)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        d = x.shape[1]
        if d % self.subspaces:
            raise QbenchError(f"dimension {d} is not divisible by {self.subspaces} subspaces")
        if len(x) < self.codewords:
            raise QbenchError(f"OPQ with {self.codewords} codewords needs at least "
                              f"{self.codewords} training vectors, got {len(x)}")
        opq = faiss.OPQMatrix(d, self.subspaces)
        opq.niter = self.iters
        inner = faiss.ProductQuantizer(d, self.subspaces, self.nbits)
        inner.cp.min_points_per_centroid = 1
        inner.cp.seed = self.seed
        opq.pq = inner  # faiss keeps a raw pointer: ``inner`` must outlive train()
        with fit_threads(x):
            opq.train(x)
        self.rotation = faiss.vector_to_array(opq.A).reshape(d, d).astype(np.float32)
        self.pq.fit(self.transform(x))
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        """(n, D) float32 rotated vectors x @ R.T."""
        return (np.asarray(x, dtype=np.float32) @ self.rotation.T).astype(np.float32)

    def encode(self, x: np.ndarray) -> np.ndarray:
        """(n, M) int64 codes of the rotated vectors."""
        return self.pq.encode(self.transform(x))

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """(n, D) float32 reconstruction in the rotated space."""
        return self.pq.decode(codes)

    def distortion(self, x: np.ndarray) -> float:
        """Mean squared quantization error per vector (the rotation preserves it)."""
        return self.pq.distortion(self.transform(x))
