"""Inference: embeddings of raw inputs with whatever weights the network holds
(:class:`Embedder`), in batches sized for the device, halving on a CUDA out-of-memory error."""

from __future__ import annotations

import numpy as np
import torch

from qbench.core.memory import inference_batch, keep_freed_memory
from qbench.core.threads import training_threads
from qbench.train.inputs import InputScaler


class Embedder:
    """(n, D) float32 embeddings by ``model`` (eval mode) of inputs scaled by ``scaler``.

    ``candidate``: the candidate epoch whose weights the model holds, or None (training
    sets it after a candidate epoch and clears it when the weights change; :meth:`load`
    clears it). ``batch``: the inference batch size, chosen on the first :meth:`embed`.
    """

    def __init__(self, model: torch.nn.Module, scaler: InputScaler, autocast: torch.autocast,
                 device: torch.device, dim: int, modality: str):
        self.model = model
        self.scaler = scaler
        self.autocast = autocast
        self.device = device
        self.dim = dim
        self.modality = modality
        self.batch: int | None = None
        self.candidate: int | None = None

    def embed(self, x: np.ndarray, out: np.ndarray | None = None,
              batch_size: int | None = None) -> np.ndarray:
        """(n, D) float32 embeddings of x with the current weights, in eval mode.

        Written into ``out`` when given (no per-batch allocation of the result). The batch
        size defaults to :func:`qbench.core.memory.inference_batch` for this model (on the
        CPU: activations below glibc's mmap threshold, so no page-fault churn); on a CUDA
        out-of-memory error it halves. Runs under
        :func:`qbench.core.threads.training_threads`.
        """
        self.model.eval()
        if out is None:
            out = np.empty((len(x), self.dim), dtype=np.float32)
        if len(x) == 0:
            return out
        keep_freed_memory()
        with training_threads(self.modality, self.device):
            return self._embed(x, out, batch_size)

    def _embed(self, x: np.ndarray, out: np.ndarray, batch_size: int | None) -> np.ndarray:
        prepare = self.scaler.to_device
        if batch_size is None:
            if self.batch is None:
                self.batch = inference_batch(self.model, prepare(x[:1]), self.device)
            batch_size = self.batch
        start = 0
        with torch.inference_mode(), self.autocast:
            while start < len(x):
                stop = min(start + batch_size, len(x))
                try:
                    out[start:stop] = self.model(prepare(x[start:stop])).float().cpu().numpy()
                except torch.cuda.OutOfMemoryError:
                    if batch_size == 1:
                        raise
                    batch_size //= 2
                    torch.cuda.empty_cache()
                    continue
                start = stop
        return out

    def load(self, state: dict) -> None:
        """Load ``state`` (e.g. a candidate's weights) into the model."""
        self.model.load_state_dict(state)
        self.candidate = None  # no longer the weights training left
