"""The full training state at an epoch boundary (:class:`Snapshot`): taken by
:func:`capture`, put back by :func:`restore`, so a training can stop, be saved and resume
exactly (the joint methods warm-start from the shared stage-1 training this way)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class Snapshot:
    """The full training state after ``epoch`` completed epochs: weights, optimiser,
    scheduler, the batch-order generator and torch's generator, the loss curve so far."""

    epoch: int
    model: dict
    optimizer: dict
    scheduler: dict
    numpy_rng: dict
    torch_rng: torch.Tensor
    loss: list[float] = field(default_factory=list)


def cpu_state(model: torch.nn.Module) -> dict:
    """A CPU copy of the model's weights (its ``state_dict``), unaffected by later steps."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def capture(epoch: int, model: torch.nn.Module, opt: torch.optim.Optimizer, sched,
            rng: np.random.Generator, loss_curve: list[float]) -> Snapshot:
    """The state after ``epoch`` epochs: copies, so training on changes none of it."""
    return Snapshot(epoch, cpu_state(model), copy.deepcopy(opt.state_dict()),
                    sched.state_dict(), copy.deepcopy(rng.bit_generator.state),
                    torch.get_rng_state(), list(loss_curve))


def restore(snap: Snapshot, model: torch.nn.Module, opt: torch.optim.Optimizer, sched,
            rng: np.random.Generator) -> None:
    """Put ``snap`` back into the model, optimiser, scheduler, ``rng`` and torch's generator
    (the loss curve and the epoch are the caller's)."""
    model.load_state_dict(snap.model)
    opt.load_state_dict(snap.optimizer)
    sched.load_state_dict(snap.scheduler)
    rng.bit_generator.state = snap.numpy_rng
    torch.set_rng_state(snap.torch_rng)
