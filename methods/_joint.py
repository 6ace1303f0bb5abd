"""What the joint-learning strategies (DQN, SSM, GSL) share (SPEC §3).

All three train the encoder with the shared similarity loss while product-quantization
codebooks C (M, K, D/M) are refit periodically on the current training embeddings; they
differ only in how the codebooks act on the network (a loss penalty, a velocity, a snapped
gradient). This module holds:

- :data:`JOINT_PARAMS` -- the engine's parameters plus the code layout and refit schedule;
- :class:`CodebookHooks` -- engine hooks owning C, the assignments h of the training items
  (n_train, M), the refit schedule (``warmup`` epochs without codebooks, then a refit every
  ``refit_every`` epochs), the quantization space and the penalty's scale;
- :class:`JointMethod` -- the ``run`` every joint method shares: layout, training (warm-started
  from the shared stage-1 encoder's warm-up state when the cache is on), then selection and
  PQ codes exactly as two-stage-pq makes them (:class:`qbench.methods._trained.PQRepresentation`).

The quantization space. What is quantized is what the similarity loss sees: with the cosine
loss (the default) the outputs' norm carries no information, so codebooks are fit on, forces
act on, and the database is encoded from the L2-normalised outputs z/|z| (SPEC §2: normalise
before PQ/ADC); with the inner-product loss the raw outputs are quantized. The same space is
used during training, for model selection and for the final encoding.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from qbench.data.context import RunContext
from qbench.methods._base import (
    DEFAULT_DIM,
    MAX_BITS,
    Method,
    MethodOutput,
    l2_normalise,
    pad_columns,
    pq_layout,
)
from qbench.methods._trained import PQRepresentation, live_scoring, select_and_encode
from qbench.quant import ProductQuantizer
from qbench.registry import Param, Space
from qbench.train.encoder_cache import stage1_encoder
from qbench.train.params import ENGINE_PARAMS, training_epochs, warmup_epochs
from qbench.train.trained_encoder import TrainedEncoder
from qbench.train.trainer import Hooks, Trainer

REFIT_NITER = 15
"""k-means iterations per refit; refits after the first are warm-started from the last C."""

JOINT_PARAMS = ENGINE_PARAMS + (
    Param("dim", int, DEFAULT_DIM, "embedding width D (the quantization space is zero-padded "
          "to a multiple of M)", minimum=1, maximum=MAX_BITS),
    Param("subspaces", int, 0, "PQ subspaces M (0: from --bits, 8 bits per subspace when "
          "possible; M must divide --bits)", minimum=0),
    Param("warmup", int, -1, "epochs of similarity-only training before the first codebook "
          "fit (-1: a sixth of the epochs, 10 of 60)", minimum=-1),
    Param("refit_every", int, 0, "epochs between codebook refits (per-subspace k-means on the "
          "training embeddings, eval mode; 0: a twelfth of the epochs, 5 of 60)", minimum=0,
          tune=Space(1, 12)),
)


def joint_layout(bits: int, params: dict) -> tuple[int, int, int]:
    """(M, b, D): M subspaces of 2^b codewords (M*b = bits) and the embedding width D."""
    subspaces, nbits = pq_layout(bits, params.get("subspaces", 0))
    return subspaces, nbits, params.get("dim", DEFAULT_DIM)


def quantizes_normalised(params: dict) -> bool:
    """True when the quantization space is the unit sphere (cosine similarity loss)."""
    return params.get("loss", "cosine") == "cosine"


def tangent_part(z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """v (n, D) minus its component along z (n, D): what changes z/|z| to first order."""
    unit = F.normalize(z, dim=1, eps=1e-12)
    return v - unit * (unit * v).sum(1, keepdim=True)


class CodebookHooks(Hooks):
    """Engine hooks holding PQ codebooks and the training items' assignments.

    codebooks: (M, K, D/M) float tensor, None until the first refit; assignments: (n_train, M)
    int64 nearest-codeword ids of the training items at the last refit. ``normalise`` selects
    the quantization space (see the module docstring). Subclasses act on the network through
    ``extra_loss`` or ``output_gradient`` while :meth:`active` is true.
    """

    def __init__(self, subspaces: int, nbits: int, *, warmup: int, refit_every: int,
                 normalise: bool, seed: int = 0, niter: int = REFIT_NITER):
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {warmup}")
        if refit_every < 1:
            raise ValueError(f"refit_every must be >= 1, got {refit_every}")
        self.subspaces = subspaces
        self.nbits = nbits
        self.warmup = warmup
        self.refit_every = refit_every
        self.normalise = normalise
        self.seed = seed
        self.niter = niter
        self.codebooks: torch.Tensor | None = None
        self.assignments: torch.Tensor | None = None
        self.refits = 0

    # -- spaces ---------------------------------------------------------------------
    def to_space(self, z: torch.Tensor) -> torch.Tensor:
        """Network outputs (n, D) -> the quantization space (n, D'), D' = D zero-padded to a
        multiple of M."""
        q = F.normalize(z, dim=1, eps=1e-12) if self.normalise else z
        return F.pad(q, (0, -q.shape[1] % self.subspaces))

    def to_space_np(self, emb: np.ndarray) -> np.ndarray:
        """Embeddings (n, D) numpy -> the quantization space (n, D'), float32."""
        return l2_normalise(emb) if self.normalise else np.asarray(emb, dtype=np.float32)

    @staticmethod
    def scale(q: torch.Tensor) -> torch.Tensor:
        """The batch's mean squared norm of q (n, D'), detached: the quantization terms are
        divided by it, so one lambda or gamma means the same under either similarity loss
        (it is 1 for the cosine loss's unit-norm space)."""
        return (q.detach() ** 2).sum(1).mean().clamp_min(1e-12)

    def pull_back(self, z: torch.Tensor, force: torch.Tensor) -> torch.Tensor:
        """A force (n, D') on the quantized point, as the force on the output z (n, D).

        If ``force`` = -dU/dq for a potential U of q = z/|z|, the result is -dU/dz =
        (I - q q^T) force / |z|; without normalisation it is ``force`` itself. Padding
        columns carry no force back.
        """
        force = force[:, :z.shape[1]]
        if not self.normalise:
            return force
        return tangent_part(z, force) / z.norm(dim=1, keepdim=True).clamp_min(1e-12)

    # -- codebooks ------------------------------------------------------------------
    def selectable(self, epoch: int) -> bool:
        """Only models trained with the quantization strategy active (after warm-up) are
        candidates: otherwise selection could quietly return a two-stage model."""
        return epoch >= self.warmup

    def active(self, epoch: int) -> bool:
        """Whether the codebooks act on the network during ``epoch``."""
        return self.codebooks is not None and epoch >= self.warmup

    def refit_due(self, epoch: int) -> bool:
        """Whether C and h are refit before ``epoch``: at ``warmup``, then every ``refit_every``."""
        return epoch >= self.warmup and (epoch - self.warmup) % self.refit_every == 0

    def on_epoch_start(self, epoch: int, trainer: Trainer) -> None:
        if self.refit_due(epoch):
            self.refit(trainer)

    def refit(self, trainer: Trainer) -> None:
        """Refit C and h on the current training embeddings (eval mode)."""
        train = self.to_space_np(trainer.embed_train())
        self.fit_codebooks(pad_columns(train, self.subspaces), trainer.device)

    def _fit_pq(self, x: np.ndarray) -> ProductQuantizer:
        init = None if self.codebooks is None else self.codebooks.cpu().numpy()
        return ProductQuantizer(self.subspaces, self.nbits, seed=self.seed,
                                niter=self.niter).fit(x, init=init)

    def fit_codebooks(self, x: np.ndarray, device: torch.device | str = "cpu") -> None:
        """Per-subspace k-means on x (n_train, D), already in the quantization space.

        Warm-started from the current codebooks when there are any; h becomes the nearest
        codeword of each row in each subspace.
        """
        pq = self._fit_pq(x)
        self.codebooks = torch.as_tensor(pq.codebooks, device=device)
        self.assignments = torch.as_tensor(pq.encode(x), device=device)
        self.refits += 1

    def assigned_codewords(self, idx: torch.Tensor) -> torch.Tensor:
        """(n, D) concatenated codewords C_m h_im of training items idx (n,)."""
        books = self.codebooks
        m = torch.arange(books.shape[0], device=books.device)
        return books[m[None, :], self.assignments[idx]].reshape(len(idx), -1)

    def nearest_codewords(self, q: torch.Tensor, k: int) -> torch.Tensor:
        """(n, M, k, D/M): the k nearest codewords of each subspace of q (n, D), nearest first."""
        books = self.codebooks
        n = q.shape[0]
        m_count, _, dsub = books.shape
        parts = q.reshape(n, m_count, dsub)
        dist = ((books * books).sum(-1)[None]
                - 2 * torch.einsum("nmd,mkd->nmk", parts, books))  # + |q_m|^2, rank-neutral
        ids = dist.topk(min(k, books.shape[1]), dim=-1, largest=False).indices  # (n, M, k)
        m = torch.arange(m_count, device=books.device)
        return books[m[None, :, None], ids]


class JointMethod(Method):
    """Base of the joint methods: train with hooks, select, encode with PQ.

    Subclasses implement :meth:`build_hooks` and may override :meth:`use_tanh`.
    """

    family = "pq"
    params = JOINT_PARAMS

    def check_bits(self, bits: int) -> None:
        """Also checks that the embedding width fits the layout, before any data is loaded."""
        super().check_bits(bits)
        joint_layout(bits, self.params)

    def stage1_spec(self, bits: int) -> tuple[int, bool] | None:
        """The stage-1 encoder it warm-starts from (None with a non-default warm-up)."""
        if self.params["warmup"] >= 0:
            return None
        return joint_layout(bits, self.params)[2], self.use_tanh()

    def build_hooks(self, subspaces: int, nbits: int, ctx: RunContext) -> CodebookHooks:
        """The method's hooks for M = ``subspaces`` codebooks of 2^``nbits`` codewords."""
        raise NotImplementedError

    def use_tanh(self) -> bool:
        return False

    def hook_kwargs(self, ctx: RunContext) -> dict:
        """Constructor arguments of :class:`CodebookHooks` from the shared parameters; the
        automatic schedule scales with the epochs, so short runs still train quantized."""
        epochs = training_epochs(self.params, ctx.dataset.modality)
        warmup = self.params["warmup"]
        refit_every = self.params["refit_every"]
        return {"warmup": warmup_epochs(epochs) if warmup < 0 else warmup,
                "refit_every": refit_every or max(1, epochs // 12),
                "normalise": quantizes_normalised(self.params), "seed": ctx.seed}

    def run(self, ctx: RunContext) -> MethodOutput:
        """Train with the hooks (warm-started from the shared stage-1 training's state at
        the warm-up epoch when the cache is on and the warm-up is the default), then select
        by ADC MAP of PQ codes fitted on each candidate, as two-stage-pq does."""
        subspaces, nbits, dim = joint_layout(ctx.bits, self.params)
        hooks = self.build_hooks(subspaces, nbits, ctx)
        tanh = self.use_tanh()
        trainer = Trainer(ctx, self.params, dim, tanh=tanh, hooks=hooks)
        warm, stage1_s, used = None, 0.0, {"key": None, "cache": "off"}
        if ctx.cache is not None and hooks.warmup == warmup_epochs(trainer.epochs):
            base = stage1_encoder(ctx, self.params, dim, tanh=tanh)
            warm, stage1_s = base.snapshot, base.train_s
            used = base.provenance
        pq = PQRepresentation(lambda: ProductQuantizer(subspaces, nbits, seed=ctx.seed),
                              subspaces, hooks.to_space_np)
        scored = live_scoring(ctx, trainer, pq.represent)  # a tuning trial's pruning
        trainer.fit(resume=warm)
        encoder = TrainedEncoder.from_trainer(trainer, progress=ctx.progress)
        encoder.cache_key, encoder.cache_status = used["key"], used["cache"]
        info = {
            "subspaces": subspaces,
            "codewords": 1 << nbits,
            "bits_per_subspace": nbits,
            "dim": dim,
            "padded_dim": -(-dim // subspaces) * subspaces,
            "quantized_space": "l2-normalised" if hooks.normalise else "raw",
            "penalty_normalisation": "divided by the batch's detached mean squared norm in "
                                     "the quantization space",
            "warm_start": None if warm is None else {
                "epoch": warm.epoch, **used,
                # a miss trained the whole shared stage-1 encoder here (not in train_s)
                "stage1_train_s": stage1_s},
            "refits": hooks.refits,
        }
        return select_and_encode(ctx, encoder, pq.represent, pq.encode, info=info,
                                 describe=pq.describe, float_space=hooks.to_space_np,
                                 scored=scored)
