"""ITQ (Gong & Lazebnik) on the stage-1 embedding: centre, PCA to B dims, learned rotation."""

from __future__ import annotations

import time

from qbench.codes import BinaryCodes
from qbench.engine import ENGINE_PARAMS, Trainer
from qbench.errors import QbenchError
from qbench.method import DEFAULT_DIM, Method, MethodOutput, RunContext, trained_output
from qbench.quantizers import ITQ
from qbench.registry import METHODS, Param


@METHODS.register
class IterativeQuantization(Method):
    """Similarity training with embedding width D, then ITQ to B bits fitted on the
    (L2-normalised) training embeddings; Hamming ranking.

    ``dim`` = 0 (default) picks D = max(64, B), so PCA always has B directions to keep; an
    explicit ``dim`` below B is an error (ITQ cannot make more bits than dimensions).
    """

    name = "itq"
    description = "similarity training, then ITQ (PCA + learned rotation) and sign"
    family = "binary"
    params = ENGINE_PARAMS + (
        Param("dim", int, 0, "embedding width D (0: max(64, bits)); must be >= bits",
              minimum=0),
        Param("itq_iters", int, 50, "ITQ alternations of sign and Procrustes rotation",
              minimum=0),
        Param("normalise", bool, True, "L2-normalise embeddings before ITQ"),
    )

    def embedding_dim(self, bits: int) -> int:
        dim = self.params["dim"] or max(DEFAULT_DIM, bits)
        if dim < bits:
            raise QbenchError(f"itq: dim={dim} is below --bits {bits}; ITQ needs dim >= bits "
                              f"(e.g. -p dim={bits}, or dim=0 for max(64, bits))")
        return dim

    def check_bits(self, bits: int) -> None:
        super().check_bits(bits)
        self.embedding_dim(bits)

    def run(self, ctx: RunContext) -> MethodOutput:
        self.check_bits(ctx.bits)
        dim = self.embedding_dim(ctx.bits)
        trainer = Trainer(ctx, self.params, dim).fit()
        start = time.perf_counter()
        emb = trainer.embed_splits(("train",), normalise=self.params["normalise"])
        itq = ITQ(ctx.bits, iters=self.params["itq_iters"], seed=ctx.seed).fit(emb["train"])
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        emb.update(trainer.embed_splits(("query", "database"),
                                        normalise=self.params["normalise"]))
        codes = BinaryCodes(itq.encode(emb["query"]), itq.encode(emb["database"]))
        encode_s = time.perf_counter() - start
        info = {
            "dim": dim,
            "normalise": self.params["normalise"],
            "quantization_loss_before": itq.loss_history[0],
            "quantization_loss_after": itq.loss_history[-1],
        }
        return trained_output(codes, trainer, emb["query"], emb["database"], info=info,
                              encode_s=encode_s, extra_train_s=fit_s)
