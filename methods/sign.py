"""Sign of the stage-1 embedding: the plain binarisation every rotation is measured against."""

from __future__ import annotations

import time

from qbench.codes import BinaryCodes
from qbench.engine import ENGINE_PARAMS, Trainer
from qbench.method import Method, MethodOutput, RunContext, trained_output
from qbench.quantizers import SignQuantizer
from qbench.registry import METHODS


@METHODS.register
class Sign(Method):
    """Similarity training with D = B (no tanh), then bit j = [z_j > 0]; Hamming ranking."""

    name = "sign"
    description = "similarity training with D = bits, then the sign of each coordinate"
    family = "binary"
    params = ENGINE_PARAMS

    def run(self, ctx: RunContext) -> MethodOutput:
        self.check_bits(ctx.bits)
        trainer = Trainer(ctx, self.params, ctx.bits).fit()
        start = time.perf_counter()
        emb = trainer.embed_splits(("query", "database"), normalise=False)
        quantizer = SignQuantizer()
        codes = BinaryCodes(quantizer.encode(emb["query"]), quantizer.encode(emb["database"]))
        encode_s = time.perf_counter() - start
        return trained_output(codes, trainer, emb["query"], emb["database"],
                              info={"dim": ctx.bits}, encode_s=encode_s)
