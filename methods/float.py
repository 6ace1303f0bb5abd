"""Float embeddings, no quantization: the upper bound every strategy is measured against."""

from __future__ import annotations

from qbench.core.codes import FloatCodes
from qbench.methods import (
    DEFAULT_DIM,
    MAX_BITS,
    Method,
    MethodOutput,
    RunContext,
    l2_normalise,
    select_and_encode,
)
from qbench.registry import METHODS, Param
from qbench.train.encoder_cache import stage1_encoder
from qbench.train.params import ENGINE_PARAMS


def cosine_codes(query, db) -> FloatCodes:
    """Raw embeddings ranked by cosine (L2-normalised first)."""
    return FloatCodes(l2_normalise(query), l2_normalise(db), metric="cosine")


@METHODS.register
class FloatEmbedding(Method):
    """Stage-1 similarity training only; rank the database by cosine on float embeddings.

    ``--bits`` does not shape the code here (a code is D float32 values); it is recorded so
    the run sits beside the quantized ones of the same budget. Selection: cosine MAP.
    """

    name = "float"
    description = "unquantized embeddings of the similarity-trained encoder (upper bound)"
    family = "float"
    params = ENGINE_PARAMS + (Param("dim", int, DEFAULT_DIM, "embedding width D", minimum=1,
                                    maximum=MAX_BITS),)

    def stage1_spec(self, bits: int) -> tuple[int, bool]:
        return self.params["dim"], False

    def run(self, ctx: RunContext) -> MethodOutput:
        encoder = stage1_encoder(ctx, self.params, self.params["dim"])
        return select_and_encode(
            ctx, encoder,
            represent=lambda train, val, pool: (cosine_codes(val, pool), None),
            encode=lambda _, query, db: cosine_codes(query, db),
            info={"dim": self.params["dim"]},
        )
