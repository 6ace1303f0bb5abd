"""The training loop every learned method goes through (SPEC §2): :class:`Trainer`.

Stage: encoder f_theta -> embedding z -> similarity loss. Methods hook in through
:class:`Hooks` where they differ:

- ``extra_loss(z, idx)``: a differentiable penalty added to the loss (DQN's quantization term);
- ``output_gradient(g, z, idx)``: replace dL_sim/dz before it is back-propagated (SSM, GSL);
- ``on_epoch_start(epoch)``: periodic work such as codebook refits;
- ``selectable(epoch)``: whether the model after an epoch is a candidate for selection.

Training keeps *candidates*: the model's weights after every ``epochs // 10``-th epoch (and
the last), the epochs that model selection (:mod:`qbench.train.selection`) chooses from by the
method's own representation (:class:`qbench.train.trained_encoder.TrainedEncoder` embeds
items with them). The loop holds the training inputs on the device, keeps the loss on the
device (read once per epoch) and can stop at, save and resume from the full training state
at an epoch boundary (:mod:`qbench.train.snapshot`). Its parts: the network
(:func:`qbench.train.encoders.build_network`), the inputs (:mod:`qbench.train.inputs`) and
inference (:mod:`qbench.train.embedder`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from qbench.core.memory import keep_freed_memory
from qbench.core.threads import training_threads
from qbench.data.context import RunContext
from qbench.train.embedder import Embedder
from qbench.train.encoders import build_network
from qbench.train.inputs import InputScaler, flip_and_crop
from qbench.train.losses import SIMILARITY_LOSSES
from qbench.train.params import candidate_epochs, training_epochs
from qbench.train.snapshot import Snapshot, capture, cpu_state, restore


class Hooks:
    """Default hooks: plain similarity training."""

    def on_train_start(self, trainer: Trainer) -> None:
        """Called once, after the model is built (or resumed), before the first epoch."""

    def on_epoch_start(self, epoch: int, trainer: Trainer) -> None:
        """Called before each epoch (0-based)."""

    def extra_loss(self, z: torch.Tensor, idx: torch.Tensor, epoch: int) -> torch.Tensor | None:
        """A penalty on the batch outputs z (n, D) of training items idx, or None."""
        return None

    def output_gradient(self, g: torch.Tensor, z: torch.Tensor, idx: torch.Tensor,
                        epoch: int) -> torch.Tensor:
        """The gradient back-propagated at the output, given g = dL_sim/dz (n, D)."""
        return g

    def selectable(self, epoch: int) -> bool:
        """Whether the model after ``epoch`` may be chosen by model selection."""
        return True


class Trainer:
    """Trains an encoder on the training split of ``ctx`` with the shared similarity loss.

    ``params`` holds the :data:`qbench.train.params.ENGINE_PARAMS` values (other keys are
    ignored); ``dim`` is the embedding width D; ``tanh`` bounds outputs to (-1, 1). After
    :meth:`fit`, ``candidates`` maps candidate epochs to CPU copies of the weights.
    Training and embedding run under :func:`qbench.core.threads.training_threads`.
    """

    def __init__(self, ctx: RunContext, params: dict, dim: int, *, tanh: bool = False,
                 hooks: Hooks | None = None):
        self.ctx = ctx
        self.params = params
        self.dim = dim
        self.tanh = tanh
        self.hooks = hooks or Hooks()
        self.device = torch.device(ctx.device)
        modality = ctx.dataset.modality
        self.epochs = training_epochs(params, modality)
        torch.manual_seed(ctx.seed)
        self.rng = np.random.default_rng(ctx.seed)
        x_train = ctx.x("train")
        self.y_train = torch.as_tensor(ctx.y("train")).to(self.device)
        net = build_network(params, modality, ctx.device, tuple(x_train.shape[1:]), dim, tanh)
        self.model, self.encoder_name, self.autocast = net.model, net.name, net.autocast
        self.scaler = InputScaler.fit(x_train, modality, self.device, net.channels_last)
        self.embedder = Embedder(self.model, self.scaler, self.autocast, self.device, dim,
                                 modality)
        self.loss_fn = SIMILARITY_LOSSES[params["loss"]]
        self.loss_curve: list[float] = []
        self.candidates: dict[int, dict] = {}
        self.snapshot: Snapshot | None = None
        self.start_epoch = 0
        self.epochs_resumed = 0  # epochs taken over from a warm start's snapshot
        self.train_s = 0.0
        self.train_tables: dict[int, np.ndarray] = {}  # see embed_train()
        self.on_candidate: Callable[[int], bool] | None = None
        """Called after each candidate epoch is kept, with the weights still loaded (a
        tuning trial scores and reports it); True stops the training after that epoch."""

    # -- training -------------------------------------------------------------------
    def fit(self, *, resume: Snapshot | None = None, stop_after: int | None = None,
            snapshot_at: int | None = None) -> Trainer:
        """Train until ``stop_after`` epochs (default: all), keeping candidate weights.

        ``resume``: continue from a :class:`Snapshot` instead of epoch 0 (the result equals
        an uninterrupted run up to nondeterminism). ``snapshot_at``: save the full state
        after that many epochs in ``self.snapshot``.
        """
        keep_freed_memory()
        with training_threads(self.ctx.dataset.modality, self.device):
            self._fit(resume, stop_after, snapshot_at)
        return self

    def _fit(self, resume: Snapshot | None, stop_after: int | None,
             snapshot_at: int | None) -> None:
        p = self.params
        opt = torch.optim.Adam(self.model.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.epochs))
        if resume is not None:
            restore(resume, self.model, opt, sched, self.rng)
            self.loss_curve = list(resume.loss)
            self.embedder.candidate = None
            self.start_epoch = self.epochs_resumed = resume.epoch
        stop = self.epochs if stop_after is None else min(stop_after, self.epochs)
        x_train = self.scaler.to_device(self.ctx.x("train"))  # on the device for the whole run
        keep = set(candidate_epochs(self.epochs, p["select_from"]))
        self.hooks.on_train_start(self)
        started = time.perf_counter()
        bar = tqdm(range(self.start_epoch, stop), desc=f"train {self.encoder_name}",
                   unit="epoch", disable=not self.ctx.progress, leave=False)
        for epoch in bar:
            if snapshot_at == epoch:
                self.snapshot = capture(epoch, self.model, opt, sched, self.rng, self.loss_curve)
            self.hooks.on_epoch_start(epoch, self)
            self.embedder.candidate = None  # the steps below change the weights
            loss = self._epoch(opt, x_train, epoch)
            sched.step()
            self.loss_curve.append(loss)
            if epoch in keep and self.hooks.selectable(epoch):
                self.candidates[epoch] = cpu_state(self.model)
                self.embedder.candidate = epoch
                if self.on_candidate is not None and self.on_candidate(epoch):
                    stop = epoch + 1  # the pruner stopped the training here
                    break
        if snapshot_at == stop:
            self.snapshot = capture(stop, self.model, opt, sched, self.rng, self.loss_curve)
        self.start_epoch = stop
        self.train_s += time.perf_counter() - started

    def _epoch(self, opt, x_train: torch.Tensor, epoch: int) -> float:
        """One pass over the training items in a seeded random order; the mean batch loss."""
        self.model.train()
        n = len(x_train)
        bs = min(self.params["batch_size"], n)
        augment = self.params["augment"] and self.ctx.dataset.modality == "image"
        order = self.rng.permutation(n)
        total = torch.zeros((), device=self.device)
        steps = 0
        for start in range(0, n, bs):
            idx_np = order[start:start + bs]
            if len(idx_np) < 2:
                continue
            idx = torch.as_tensor(idx_np, device=self.device)
            x = x_train[idx]
            if augment:
                x = flip_and_crop(x, self.rng)
            total += self._step(opt, self.scaler.layout(x), idx, epoch)
            steps += 1
        return float(total) / steps if steps else float("nan")

    def _step(self, opt, x: torch.Tensor, idx: torch.Tensor, epoch: int) -> torch.Tensor:
        """One optimiser step; returns the batch loss as a detached device scalar."""
        with self.autocast:
            z = self.model(x).float()
        z_out = z.detach().requires_grad_(True)
        loss = self.loss_fn(z_out, self.y_train[idx])
        (g,) = torch.autograd.grad(loss, z_out)
        g = self.hooks.output_gradient(g, z.detach(), idx, epoch)
        surrogate = (z * g.detach()).sum()
        extra = self.hooks.extra_loss(z, idx, epoch)
        if extra is not None:
            surrogate = surrogate + extra
        opt.zero_grad(set_to_none=True)
        surrogate.backward()
        opt.step()
        return loss.detach() + (extra.detach() if extra is not None else 0.0)

    # -- inference (hooks call these) ---------------------------------------------------
    def embed(self, x: np.ndarray, out: np.ndarray | None = None,
              batch_size: int | None = None) -> np.ndarray:
        """(n, D) float32 embeddings of x with the current weights (:meth:`Embedder.embed`)."""
        return self.embedder.embed(x, out, batch_size)

    def load_weights(self, state: dict) -> None:
        """Load ``state`` (e.g. a candidate's weights) into the model."""
        self.embedder.load(state)

    @property
    def infer_batch(self) -> int | None:
        """The inference batch size, chosen on the first :meth:`embed`."""
        return self.embedder.batch

    def embed_train(self) -> np.ndarray:
        """(n_train, D) embeddings of the training split with the current weights (eval mode).

        When the weights are a candidate's (a hook embedding at the start of the epoch after
        a candidate epoch, e.g. a codebook refit), they are kept in ``train_tables[epoch]``:
        model selection then uses them instead of embedding the split again.
        """
        emb = self.embed(self.ctx.x("train"))
        candidate = self.embedder.candidate
        if candidate is not None:
            emb.setflags(write=False)  # kept for selection: nobody may change it in place
            self.train_tables[candidate] = emb
        return emb

    def summary(self) -> dict:
        """JSON-ready training record."""
        return {
            "encoder": self.encoder_name,
            "epochs": self.epochs,
            "candidate_epochs": sorted(self.candidates),
            "epochs_trained": len(self.loss_curve),  # the resumed ones included
            "epochs_resumed": self.epochs_resumed,
            "loss_curve": list(self.loss_curve),
            "final_loss": self.loss_curve[-1] if self.loss_curve else None,
        }
