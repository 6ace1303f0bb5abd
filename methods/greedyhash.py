"""GreedyHash (Su et al., "Greedy Hash: Towards Fast Optimization for Accurate Hash Coding
in CNN", NeurIPS 2018): binary codes trained through the sign function itself.

The network's output h (D = B, no tanh) is binarised with sign in the forward pass, and the
backward pass hands the gradient arriving at sign(h) to h unchanged (a straight-through
estimator, :class:`SignStraightThrough`); the penalty alpha * mean(| |h| - 1 |^3) keeps h
close to ±1 so that the estimator's error stays small. Codes are sign(h), ranked by Hamming
distance.
"""

from __future__ import annotations

import torch

from qbench.methods import Method, MethodOutput, RunContext, select_and_encode
from qbench.methods._trained import live_scoring
from qbench.methods.sign import sign_codes
from qbench.registry import METHODS, Param, Space
from qbench.train.params import ENGINE_PARAMS
from qbench.train.trained_encoder import TrainedEncoder
from qbench.train.trainer import Hooks, Trainer


class SignStraightThrough(torch.autograd.Function):
    """sign(h) forward (sign(0) = +1, so every entry is ±1); the incoming gradient unchanged
    backward."""

    @staticmethod
    def forward(ctx, h: torch.Tensor) -> torch.Tensor:
        return torch.where(h >= 0, torch.ones_like(h), -torch.ones_like(h))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def greedy_penalty(h: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha * mean over the batch and bits of | |h| - 1 |^3."""
    return alpha * (h.abs() - 1).abs().pow(3).mean()


class GreedyHooks(Hooks):
    """The shared similarity loss on sign(h) with the straight-through gradient, plus the
    cubic penalty on h."""

    def __init__(self, alpha: float):
        self.alpha = alpha
        self.loss_fn = None
        self.labels = None

    def on_train_start(self, trainer: Trainer) -> None:
        self.loss_fn, self.labels = trainer.loss_fn, trainer.y_train

    def output_gradient(self, g: torch.Tensor, z: torch.Tensor, idx: torch.Tensor,
                        epoch: int) -> torch.Tensor:
        """d L_sim(sign(z)) / dz through the straight-through sign (replaces g, which the
        engine computed at z)."""
        with torch.enable_grad():
            leaf = z.detach().requires_grad_(True)
            loss = self.loss_fn(SignStraightThrough.apply(leaf), self.labels[idx])
            (grad,) = torch.autograd.grad(loss, leaf)
        return grad

    def extra_loss(self, z: torch.Tensor, idx: torch.Tensor, epoch: int) -> torch.Tensor | None:
        return greedy_penalty(z, self.alpha) if self.alpha else None


@METHODS.register
class GreedyHash(Method):
    """GreedyHash: sign forward, straight-through backward, cubic penalty to ±1.

    Open details and choices: the paper trains with a classification (cross-entropy) loss
    on the codes; here the suite's shared similarity loss (``-p loss``) acts on sign(h), so
    GreedyHash differs from ``sign`` only in its mechanism. The penalty is a mean (over the
    batch and bits) rather than the paper's sum, so alpha is on the scale of the mean
    similarity loss; the default 0.1 and its tuned range are this suite's choice. sign(0) is
    +1. The recorded loss curve is the engine's similarity loss at h (not at sign(h)) plus
    the penalty; the gradient is that of the loss at sign(h). Each run trains its own
    encoder (no stage-1 cache: the training is not the shared one). Selection: tie-aware
    Hamming MAP of the sign codes of each candidate.
    """

    name = "greedyhash"
    description = "GreedyHash: sign forward + straight-through backward, cubic penalty (Su 2018)"
    family = "binary"
    params = ENGINE_PARAMS + (
        Param("alpha", float, 0.1, "weight of the penalty mean(| |h| - 1 |^3)", minimum=0.0,
              tune=Space(1e-3, 1.0, log=True)),
    )

    def run(self, ctx: RunContext) -> MethodOutput:
        self.check_bits(ctx.bits)
        trainer = Trainer(ctx, self.params, ctx.bits, tanh=False,
                          hooks=GreedyHooks(self.params["alpha"]))

        def represent(train, val, pool):
            return sign_codes(val, pool), None

        scored = live_scoring(ctx, trainer, represent)
        trainer.fit()
        encoder = TrainedEncoder.from_trainer(trainer, progress=ctx.progress)
        return select_and_encode(ctx, encoder, represent,
                                 lambda _, query, db: sign_codes(query, db),
                                 info={"dim": ctx.bits, "alpha": self.params["alpha"]},
                                 scored=scored)
