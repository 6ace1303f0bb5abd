"""Quantizers: small objects with one job each (fit / encode / decode), faiss underneath.

Methods combine them; the evaluator never sees them, only the codes they produce.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import faiss
import numpy as np
import torch

from qbench.core.codes import signs_to_bits
from qbench.core.cores import cpu_share, keep_to_one_core
from qbench.core.errors import QbenchError

SMALL_PROBLEM = 1 << 21
"""Training sets of at most this many floats (n * d) are fitted on one OpenMP thread."""


@contextlib.contextmanager
def fit_threads(x: np.ndarray) -> Iterator[None]:
    """Fit on one faiss (OpenMP) thread when ``x`` is small, then restore the count.

    The training sets of this benchmark are small (at most tens of thousands of vectors):
    each OPQ or k-means iteration is milliseconds of work, and with two threads the OpenMP
    barriers cost more than they save -- much more when other processes share the cores
    (OPQ of 1,000 x 66 vectors on 2 busy cores: 1.6-1.8 s on one thread, 9.9-11.9 s on two).
    """
    threads = faiss.omp_get_max_threads()
    small = x.size <= SMALL_PROBLEM and threads > 1
    if small:
        faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        if small:
            faiss.omp_set_num_threads(threads)


def fit_workers(size: int, fits: int) -> int:
    """How many fits of ``size`` floats each to run side by side (:func:`side_by_side`):
    one per core of this process's share (:func:`qbench.core.cores.cpu_share`) when they are
    small; 0 when they are not (one at a time in the caller, each on every thread)."""
    if size > SMALL_PROBLEM:
        return 0
    return max(1, min(fits, cpu_share()))


def _one_thread_each() -> None:
    faiss.omp_set_num_threads(1)
    keep_to_one_core()  # the evaluator scoring a fit opens no thread pool of its own


@contextlib.contextmanager
def side_by_side(workers: int) -> Iterator[ThreadPoolExecutor]:
    """A pool of ``workers`` threads for small independent fits: faiss and the evaluator
    (per thread) and BLAS (for the block) on one thread each.

    Two fits on two threads then overlap without thread barriers between them, and share
    busy cores gracefully; faiss and numpy release the GIL in their loops. Every fit runs
    single-threaded and seeded whatever ``workers`` is, so results do not depend on the
    pool's size or on the order fits finish in. On an error, fits not yet started are
    cancelled.
    """
    from threadpoolctl import threadpool_limits

    pool = ThreadPoolExecutor(workers, initializer=_one_thread_each)
    try:
        with threadpool_limits(1, user_api="blas"):
            yield pool
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)


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
