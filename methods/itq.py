"""ITQ (Gong & Lazebnik) on the stage-1 embedding: centre, PCA to B dims, learned rotation."""

from __future__ import annotations

import numpy as np

from qbench.core.codes import BinaryCodes
from qbench.core.errors import QbenchError
from qbench.methods import (
    DEFAULT_DIM,
    MAX_BITS,
    Method,
    MethodOutput,
    RunContext,
    l2_normalise,
    select_and_encode,
)
from qbench.quant import ITQ
from qbench.registry import METHODS, Param, Space
from qbench.train.encoder_cache import stage1_encoder
from qbench.train.params import ENGINE_PARAMS


@METHODS.register
class IterativeQuantization(Method):
    """Similarity training with embedding width D, then ITQ to B bits fitted on the
    (L2-normalised) training embeddings of each candidate; Hamming ranking; selection by
    tie-aware Hamming MAP of the ITQ codes.

    ``dim`` = 0 (default) picks D = max(64, B), so PCA always has B directions to keep; an
    explicit ``dim`` below B is an error (ITQ cannot make more bits than dimensions).
    """

    name = "itq"
    description = "similarity training, then ITQ (PCA + learned rotation) and sign"
    family = "binary"
    params = ENGINE_PARAMS + (
        Param("dim", int, 0, "embedding width D (0: max(64, bits)); must be >= bits",
              minimum=0, maximum=MAX_BITS),
        # a convergence knob, not an accuracy trade-off: fixed, not tuned
        Param("itq_iters", int, 50, "ITQ alternations of sign and Procrustes rotation "
              "(fixed, not tuned)", minimum=0),
        Param("normalise", bool, True, "L2-normalise embeddings before ITQ",
              tune=Space(choices=(True, False))),
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

    def stage1_spec(self, bits: int) -> tuple[int, bool]:
        return self.embedding_dim(bits), False

    def run(self, ctx: RunContext) -> MethodOutput:
        self.check_bits(ctx.bits)
        dim = self.embedding_dim(ctx.bits)
        encoder = stage1_encoder(ctx, self.params, dim)
        space = l2_normalise if self.params["normalise"] else np.asarray

        def represent(train, val, pool):
            itq = ITQ(ctx.bits, iters=self.params["itq_iters"], seed=ctx.seed).fit(space(train))
            return encode(itq, val, pool), itq

        def encode(itq, query, db):
            return BinaryCodes(itq.encode(space(query)), itq.encode(space(db)))

        return select_and_encode(
            ctx, encoder, represent, encode,
            info={"dim": dim, "normalise": self.params["normalise"]},
            describe=lambda itq: {"quantization_loss_before": itq.loss_history[0],
                                  "quantization_loss_after": itq.loss_history[-1]},
        )
