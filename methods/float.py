"""Float embeddings, no quantization: the upper bound every strategy is measured against."""

from __future__ import annotations

import time

from qbench.codes import FloatCodes
from qbench.engine import ENGINE_PARAMS, Trainer
from qbench.method import DEFAULT_DIM, Method, MethodOutput, RunContext
from qbench.registry import METHODS, Param


@METHODS.register
class FloatEmbedding(Method):
    """Stage-1 similarity training only; rank the database by cosine on float embeddings.

    ``--bits`` does not shape the code here (a code is D float32 values); it is recorded so
    the run sits beside the quantized ones of the same budget.
    """

    name = "float"
    description = "unquantized embeddings of the similarity-trained encoder (upper bound)"
    family = "float"
    params = ENGINE_PARAMS + (Param("dim", int, DEFAULT_DIM, "embedding width D", minimum=1),)

    def run(self, ctx: RunContext) -> MethodOutput:
        trainer = Trainer(ctx, self.params, self.params["dim"]).fit()
        start = time.perf_counter()
        emb = trainer.embed_splits(("query", "database"))
        codes = FloatCodes(emb["query"], emb["database"], metric="cosine")
        return MethodOutput(
            codes=codes,
            float_codes=codes,
            info={"training": trainer.summary(), "dim": self.params["dim"]},
            timings={"train_s": trainer.train_s, "encode_s": time.perf_counter() - start},
        )
