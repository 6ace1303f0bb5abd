"""Random-hyperplane LSH on the raw input: the unsupervised classic, no training."""

from __future__ import annotations

import time

from qbench.core.codes import BinaryCodes, FloatCodes
from qbench.methods import Method, MethodOutput, RunContext
from qbench.quant import LSH
from qbench.registry import METHODS, Param


@METHODS.register
class RandomHyperplanes(Method):
    """B random Gaussian hyperplanes (seeded by --seed) on the flattened raw input.

    With ``centre`` (default) the hyperplanes pass through the training mean; without, through
    the origin (Charikar's SimHash) -- for non-negative inputs such as pixel intensities most
    origin hyperplanes then put nearly every item on one side. Retention is measured against
    the raw input ranked by L2.
    """

    name = "lsh"
    description = "random hyperplanes on the raw input (unsupervised baseline)"
    family = "binary"
    selects = False
    params = (
        Param("centre", bool, True, "hyperplanes through the training mean instead of 0"),
    )

    def run(self, ctx: RunContext) -> MethodOutput:
        self.check_bits(ctx.bits)
        start = time.perf_counter()
        lsh = LSH(ctx.bits, seed=ctx.seed, centre=self.params["centre"])
        lsh.fit(ctx.flat_x("train"))
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        query, db = ctx.flat_x("query"), ctx.flat_x("database")
        codes = BinaryCodes(lsh.encode(query), lsh.encode(db))
        return MethodOutput(
            codes=codes,
            float_codes=FloatCodes(query, db, metric="l2"),
            info={"input_dim": int(query.shape[1]), "centre": self.params["centre"]},
            timings={"train_s": fit_s, "encode_s": time.perf_counter() - start},
        )
