"""Sign of the stage-1 embedding: the plain binarisation every rotation is measured against."""

from __future__ import annotations

from qbench.core.codes import BinaryCodes
from qbench.methods import Method, MethodOutput, RunContext, select_and_encode
from qbench.quant import SignQuantizer
from qbench.registry import METHODS
from qbench.train.encoder_cache import stage1_encoder
from qbench.train.params import ENGINE_PARAMS


def sign_codes(query, db) -> BinaryCodes:
    """Bit j = [z_j > 0] of query and database embeddings."""
    quantizer = SignQuantizer()
    return BinaryCodes(quantizer.encode(query), quantizer.encode(db))


@METHODS.register
class Sign(Method):
    """Similarity training with D = B (no tanh), then bit j = [z_j > 0]; Hamming ranking.
    Selection: tie-aware Hamming MAP of the sign codes."""

    name = "sign"
    description = "similarity training with D = bits, then the sign of each coordinate"
    family = "binary"
    params = ENGINE_PARAMS

    def stage1_spec(self, bits: int) -> tuple[int, bool]:
        return bits, False

    def run(self, ctx: RunContext) -> MethodOutput:
        self.check_bits(ctx.bits)
        encoder = stage1_encoder(ctx, self.params, ctx.bits)
        return select_and_encode(
            ctx, encoder,
            represent=lambda train, val, pool: (sign_codes(val, pool), None),
            encode=lambda _, query, db: sign_codes(query, db),
            info={"dim": ctx.bits},
        )
