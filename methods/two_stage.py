"""Two-stage quantization: similarity training, then (O)PQ fitted on the frozen embeddings.

``two-stage-opq`` is DQN_2+ of the DQN slides: train the encoder with the similarity loss
only; fit OPQ (rotation R + PQ codebooks) on the training embeddings; encode the database;
search by ADC with the query rotated by R. ``two-stage-pq`` is DQN_2: the same without the
rotation.
"""

from __future__ import annotations

import numpy as np

from qbench.methods import (
    DEFAULT_DIM,
    MAX_BITS,
    Method,
    MethodOutput,
    PQRepresentation,
    RunContext,
    l2_normalise,
    pq_layout,
    select_and_encode,
)
from qbench.quant import OPQ, ProductQuantizer
from qbench.registry import METHODS, Param, Space
from qbench.train.encoder_cache import stage1_encoder
from qbench.train.params import ENGINE_PARAMS


class _TwoStage(Method):
    family = "pq"
    params = ENGINE_PARAMS + (
        Param("dim", int, DEFAULT_DIM, "embedding width D (zero-padded to a multiple of M "
              "for PQ)", minimum=1, maximum=MAX_BITS),
        Param("subspaces", int, 0, "PQ subspaces M (0: automatic from --bits, SPEC §2)",
              minimum=0),
        Param("normalise", bool, True, "L2-normalise embeddings before fitting and search",
              tune=Space(choices=(True, False))),
    )

    def check_bits(self, bits: int) -> None:
        super().check_bits(bits)
        pq_layout(bits, self.params["subspaces"])

    def stage1_spec(self, bits: int) -> tuple[int, bool]:
        return self.params["dim"], False

    def make_quantizer(self, m: int, b: int, seed: int) -> ProductQuantizer | OPQ:
        return ProductQuantizer(m, b, seed=seed)

    def run(self, ctx: RunContext) -> MethodOutput:
        self.check_bits(ctx.bits)
        m, b = pq_layout(ctx.bits, self.params["subspaces"])
        dim = self.params["dim"]
        encoder = stage1_encoder(ctx, self.params, dim)
        pq = PQRepresentation(lambda: self.make_quantizer(m, b, ctx.seed), m,
                              l2_normalise if self.params["normalise"] else np.asarray)
        info = {"subspaces": m, "codewords": 1 << b, "bits_per_subspace": b, "dim": dim,
                "padded_dim": -(-dim // m) * m, "normalise": self.params["normalise"]}
        return select_and_encode(ctx, encoder, pq.represent, pq.encode, info=info,
                                 describe=pq.describe)


@METHODS.register
class TwoStagePQ(_TwoStage):
    """DQN_2: similarity-trained embeddings (L2-normalised), then PQ on the training
    embeddings (per-subspace k-means, M x 2^b codewords); database encoded, ADC search.
    Selection: ADC MAP of the PQ codes fitted on each candidate.
    """

    name = "two-stage-pq"
    description = "similarity training, then PQ fitted on the frozen embeddings (DQN_2)"


@METHODS.register
class TwoStageOPQ(_TwoStage):
    """DQN_2+: similarity-trained embeddings (L2-normalised), then OPQ (faiss OPQMatrix
    rotation R, then PQ codebooks on the rotated training embeddings); database encoded in
    the rotated space, ADC with the query rotated by R.
    """

    name = "two-stage-opq"
    description = "similarity training, then OPQ (rotation + PQ) on the frozen embeddings (DQN_2+)"
    params = _TwoStage.params + (
        # a convergence knob, not an accuracy trade-off: fixed, not tuned (tuning it spent
        # most of the reference grid's trial time on OPQ refits of the same candidates)
        Param("opq_iters", int, 50, "OPQ alternations of PQ training and rotation update "
              "(fixed, not tuned)", minimum=0),
    )

    def make_quantizer(self, m: int, b: int, seed: int) -> ProductQuantizer | OPQ:
        return OPQ(m, b, iters=self.params["opq_iters"], seed=seed)
