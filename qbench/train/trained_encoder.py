"""What a training leaves for the methods: :class:`TrainedEncoder`, the candidate weights
of one training and the embeddings of items under each of them, each (epoch, item) once."""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from qbench.train.snapshot import Snapshot
from qbench.train.trainer import Trainer


class TrainedEncoder:
    """Candidate weights of one training and embeddings of items under each of them.

    ``embeddings(epoch, idx)`` embeds only the items not embedded before with that epoch's
    weights (raw outputs, (len(idx), D) float32). ``store`` (optional) persists them:
    an object with ``load_embeddings(epoch) -> (values, have) | None`` and
    ``save_embeddings(epoch, values, have)`` (the encoder cache).
    """

    def __init__(self, trainer: Trainer, candidates: dict[int, dict], summary: dict,
                 train_s: float, *, store=None, progress: bool = False):
        self.trainer = trainer
        self.states = candidates
        self.summary = summary
        self.train_s = train_s
        self.store = store
        self.progress = progress
        self._tables: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._loaded: int | None = None
        self.snapshot: Snapshot | None = None  # state at the joint methods' warm-up epoch
        self.cache_key: str | None = None
        self.cache_status = "off"  # "hit", "miss" or "off"
        self.trained_here = False  # trained by this process (not loaded from the cache)

    @classmethod
    def from_trainer(cls, trainer: Trainer, *, progress: bool = False) -> TrainedEncoder:
        """The encoder a finished :meth:`Trainer.fit` left: its candidates, summary, training
        seconds and snapshot (None unless the training kept one)."""
        encoder = cls(trainer, trainer.candidates, trainer.summary(), trainer.train_s,
                      progress=progress)
        encoder.snapshot = trainer.snapshot
        encoder.trained_here = True
        return encoder

    @property
    def training_effort(self) -> tuple[int, int]:
        """(epochs this process trained for this encoder, epochs it would have trained had
        no pruner stopped it): (0, 0) when it was loaded from the cache; epochs taken over
        from a warm start's snapshot count in neither."""
        if not self.trained_here:
            return 0, 0
        resumed = self.summary.get("epochs_resumed", 0)
        return self.summary["epochs_trained"] - resumed, self.summary["epochs"] - resumed

    @property
    def provenance(self) -> dict:
        """Where it came from, as results record it (``encoder``): the cache key and status."""
        return {"key": self.cache_key, "cache": self.cache_status}

    @property
    def candidates(self) -> list[int]:
        return sorted(self.states)

    @property
    def dim(self) -> int:
        return self.trainer.dim

    def _table(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        if epoch not in self._tables:
            stored = self.store.load_embeddings(epoch) if self.store is not None else None
            if stored is None:
                n = len(self.trainer.ctx.dataset)
                stored = (np.zeros((n, self.dim), dtype=np.float32), np.zeros(n, dtype=bool))
            kept = self.trainer.train_tables.pop(epoch, None)
            if kept is not None:  # embedded during training with this epoch's weights
                train = self.trainer.ctx.splits.train
                stored[0][train] = kept
                stored[1][train] = True
            self._tables[epoch] = stored
        return self._tables[epoch]

    def embeddings(self, epoch: int, idx: np.ndarray) -> np.ndarray:
        """(len(idx), D) float32 raw embeddings of dataset items ``idx`` at ``epoch``."""
        if epoch not in self.states:
            raise KeyError(f"epoch {epoch} is not a candidate ({self.candidates})")
        values, have = self._table(epoch)
        missing = np.unique(idx[~have[idx]])
        if len(missing):
            if self._loaded != epoch:
                self.trainer.load_weights(self.states[epoch])
                self._loaded = epoch
            x = self.trainer.ctx.dataset.X
            bar = tqdm(total=len(missing), desc=f"embed (epoch {epoch})", unit="item",
                       disable=not self.progress or len(missing) < 20_000, leave=False)
            chunk = 8192
            for start in range(0, len(missing), chunk):
                part = missing[start:start + chunk]
                values[part] = self.trainer.embed(x[part])
                bar.update(len(part))
            bar.close()
            have[missing] = True
            if self.store is not None:
                self.store.save_embeddings(epoch, values, have)
        return values[idx]
