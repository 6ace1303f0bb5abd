"""The one training engine every learned method goes through (SPEC §2).

Stage: encoder f_theta -> embedding z -> similarity loss. Methods hook in through
:class:`Hooks` where they differ:

- ``extra_loss(z, idx)``: a differentiable penalty added to the loss (DQN's quantization term);
- ``output_gradient(g, z, idx)``: replace dL_sim/dz before it is back-propagated (SSM, GSL);
- ``on_epoch_start(epoch)``: periodic work such as codebook refits;
- ``validation_codes(val_emb, train_emb)``: what model selection scores (default: cosine
  ranking of the float embeddings).

Model selection uses the validation split as queries against the training split as the
retrieval set, never the query split.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from qbench.codes import Codes, FloatCodes
from qbench.encoders import ENCODERS, build_encoder, resolve_encoder
from qbench.evaluator import mean_average_precision
from qbench.losses import SIMILARITY_LOSSES
from qbench.method import RunContext, l2_normalise
from qbench.registry import Param

DEFAULT_EPOCHS = {"vector": 60, "image": 30}

ENGINE_PARAMS = (
    Param("encoder", str, "auto", "network: auto (mlp for vectors; resnet18 on GPU / cnn on "
          "CPU for images), mlp, cnn, resnet18, alexnet, vgg16", choices=ENCODERS),
    Param("weights", str, "none", "backbone weights for alexnet/vgg16: none or imagenet",
          choices=("none", "imagenet")),
    Param("epochs", int, 0, "training epochs (0: 60 for vectors, 30 for images)", minimum=0),
    Param("batch_size", int, 128, "mini-batch size", minimum=2),
    Param("lr", float, 1e-3, "Adam learning rate", minimum=1e-12),
    Param("weight_decay", float, 1e-5, "Adam weight decay", minimum=0.0),
    Param("loss", str, "cosine", "similarity loss: cosine (DQN) or ip (inner product)",
          choices=tuple(SIMILARITY_LOSSES)),
    Param("hidden", int, 256, "MLP hidden width", minimum=1),
    Param("augment", bool, True, "random flip + crop for images"),
    Param("select", bool, True, "keep the epoch with the best validation MAP"),
)


def training_epochs(params: dict, modality: str) -> int:
    """The number of epochs a run trains: the ``epochs`` parameter, or the modality's default."""
    return params["epochs"] or DEFAULT_EPOCHS[modality]


class Hooks:
    """Default hooks: plain similarity training."""

    def on_train_start(self, trainer: Trainer) -> None:
        """Called once, after the model is built, before the first epoch."""

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

    def validation_codes(self, val_emb: np.ndarray, train_emb: np.ndarray) -> Codes:
        """What model selection ranks: validation queries against training items."""
        return FloatCodes(val_emb, train_emb, metric="cosine")


@dataclass
class History:
    epochs: list[int] = field(default_factory=list)
    val_map: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    best_epoch: int = -1
    best_val_map: float = float("nan")


class Trainer:
    """Trains an encoder on the training split of ``ctx`` with the shared similarity loss.

    ``params`` holds the :data:`ENGINE_PARAMS` values (other keys are ignored); ``dim`` is
    the embedding width D; ``tanh`` bounds outputs to (-1, 1).
    """

    def __init__(self, ctx: RunContext, params: dict, dim: int, *, tanh: bool = False,
                 hooks: Hooks | None = None):
        self.ctx = ctx
        self.params = params
        self.dim = dim
        self.hooks = hooks or Hooks()
        self.device = torch.device(ctx.device)
        modality = ctx.dataset.modality
        if self.device.type == "cpu" and modality == "vector":
            # Small MLP batches run faster on one thread, and stay fast when other processes
            # compete for the cores (measured on 2 cores: 3.6 s vs 5.0 s per digits run).
            torch.set_num_threads(1)
        self.encoder_name = resolve_encoder(params["encoder"], modality, ctx.device)
        self.epochs = training_epochs(params, modality)
        torch.manual_seed(ctx.seed)
        self.rng = np.random.default_rng(ctx.seed)
        x_train = ctx.x("train")
        self.y_train = torch.as_tensor(ctx.y("train")).to(self.device)
        self._fit_input_scaling(x_train)
        self.model = build_encoder(
            self.encoder_name, tuple(x_train.shape[1:]), dim, params["hidden"], tanh,
            params["weights"],
        ).to(self.device)
        self.loss_fn = SIMILARITY_LOSSES[params["loss"]]
        self.history = History()
        self.train_s = 0.0

    # -- inputs ---------------------------------------------------------------------
    def _fit_input_scaling(self, x_train: np.ndarray) -> None:
        x = x_train.astype(np.float32)
        if self.ctx.dataset.modality == "image":
            if x_train.dtype == np.uint8:
                x = x / 255.0
            axes = (0, 2, 3)
            self.mean = torch.tensor(x.mean(axis=axes), device=self.device).view(1, -1, 1, 1)
            self.std = torch.tensor(x.std(axis=axes) + 1e-6, device=self.device).view(1, -1, 1, 1)
        else:
            self.mean = torch.tensor(x.mean(axis=0), device=self.device)
            self.std = torch.tensor(x.std(axis=0) + 1e-2, device=self.device)

    def prepare(self, x: np.ndarray, augment: bool = False) -> torch.Tensor:
        """Raw inputs (numpy) -> standardised float tensor on the device."""
        t = torch.as_tensor(x).to(self.device)
        t = t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
        t = (t - self.mean) / self.std
        if augment and t.ndim == 4:
            t = flip_and_crop(t, self.rng)
        return t

    # -- training -------------------------------------------------------------------
    def fit(self) -> Trainer:
        """Train for ``epochs``; keep the parameters of the best validation epoch."""
        p = self.params
        opt = torch.optim.Adam(self.model.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.epochs))
        x_train = self.ctx.x("train")
        n = len(x_train)
        bs = min(p["batch_size"], n)
        augment = p["augment"] and self.ctx.dataset.modality == "image"
        eval_every = max(1, self.epochs // 10)
        best_state = None
        self.hooks.on_train_start(self)
        start = time.perf_counter()
        bar = tqdm(range(self.epochs), desc=f"train {self.encoder_name}", unit="epoch",
                   disable=not self.ctx.progress, leave=False)
        for epoch in bar:
            self.hooks.on_epoch_start(epoch, self)
            self.model.train()
            order = self.rng.permutation(n)
            losses = []
            for start_i in range(0, n, bs):
                idx_np = order[start_i:start_i + bs]
                if len(idx_np) < 2:
                    continue
                idx = torch.as_tensor(idx_np, device=self.device)
                losses.append(self._step(opt, x_train[idx_np], idx, epoch, augment))
            sched.step()
            self.history.loss.append(float(np.mean(losses)) if losses else float("nan"))
            due = (epoch + 1) % eval_every == 0 or epoch + 1 == self.epochs
            if p["select"] and due and self.hooks.selectable(epoch):
                score = self.validation_map()
                self.history.epochs.append(epoch)
                self.history.val_map.append(score)
                bar.set_postfix(val_map=f"{score:.3f}")
                # ">=": among tied epochs keep the latest (validation MAP saturates on easy data)
                if best_state is None or score >= self.history.best_val_map:
                    self.history.best_val_map = score
                    self.history.best_epoch = epoch
                    best_state = copy.deepcopy(self.model.state_dict())
        if best_state is not None:
            self.model.load_state_dict(best_state)
        else:
            self.history.best_epoch = self.epochs - 1
        self.train_s = time.perf_counter() - start
        return self

    def _step(self, opt, x: np.ndarray, idx: torch.Tensor, epoch: int, augment: bool) -> float:
        z = self.model(self.prepare(x, augment))
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
        return float(loss.detach()) + (float(extra.detach()) if extra is not None else 0.0)

    # -- inference ------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """(n, D) float32 embeddings in eval mode."""
        self.model.eval()
        out = [self.model(self.prepare(x[i:i + batch_size])).cpu()
               for i in range(0, len(x), batch_size)]
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        return torch.cat(out).numpy().astype(np.float32)

    def embed_split(self, split: str) -> np.ndarray:
        return self.embed(self.ctx.x(split))

    def embed_splits(self, splits=("train", "query", "database"), *,
                     normalise: bool = True) -> dict[str, np.ndarray]:
        """{split: (n, D) float32 embeddings}, L2-normalised unless ``normalise`` is False.

        Cosine-trained embeddings carry no information in their norm, so quantizers fit and
        search normalised vectors by default (SPEC §2).
        """
        out = {}
        for split in splits:
            emb = self.embed_split(split)
            out[split] = l2_normalise(emb) if normalise else emb
        return out

    def validation_map(self) -> float:
        """MAP@all of validation queries against the training split (model selection)."""
        codes = self.hooks.validation_codes(self.embed_split("val"), self.embed_split("train"))
        return mean_average_precision(codes, self.ctx.y("val"), self.ctx.y("train"))

    def summary(self) -> dict:
        """JSON-ready training record."""
        h = self.history
        return {
            "encoder": self.encoder_name,
            "epochs": self.epochs,
            "best_epoch": h.best_epoch,
            "best_val_map": None if np.isnan(h.best_val_map) else h.best_val_map,
            "val_map_curve": {"epoch": h.epochs, "val_map": h.val_map},
            "final_loss": h.loss[-1] if h.loss else None,
        }


def flip_and_crop(x: torch.Tensor, rng: np.random.Generator, pad: int = 4) -> torch.Tensor:
    """Random horizontal flip and random crop after zero padding (per image), x: (n, C, H, W)."""
    n, _, h, w = x.shape
    flip = torch.as_tensor(rng.random(n) < 0.5, device=x.device)
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = rng.integers(0, 2 * pad + 1, n)
    dx = rng.integers(0, 2 * pad + 1, n)
    rows = torch.as_tensor(dy[:, None] + np.arange(h)[None, :], device=x.device)
    cols = torch.as_tensor(dx[:, None] + np.arange(w)[None, :], device=x.device)
    idx_n = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()
