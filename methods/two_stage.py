"""Two-stage quantization: similarity training, then (O)PQ fitted on the frozen embeddings.

``two-stage-opq`` is DQN_2+ of the DQN slides: train the encoder with the similarity loss
only; fit OPQ (rotation R + PQ codebooks) on the training embeddings; encode the database;
search by ADC with the query rotated by R. ``two-stage-pq`` is DQN_2: the same without the
rotation.
"""

from __future__ import annotations

import time

from qbench.codes import PQCodes
from qbench.engine import ENGINE_PARAMS, Trainer
from qbench.method import (
    Method,
    MethodOutput,
    RunContext,
    check_divisible,
    default_pq_dim,
    pq_layout,
    trained_output,
)
from qbench.quantizers import OPQ, ProductQuantizer
from qbench.registry import METHODS, Param


class _TwoStage(Method):
    family = "pq"
    rotate = False
    params = ENGINE_PARAMS + (
        Param("dim", int, 0, "embedding width D (0: smallest multiple of M that is >= 64)",
              minimum=0),
        Param("subspaces", int, 0, "PQ subspaces M (0: automatic from --bits, SPEC §2)",
              minimum=0),
        Param("normalise", bool, True, "L2-normalise embeddings before fitting and search"),
    )

    def layout(self, bits: int) -> tuple[int, int, int]:
        """(M, b, D) for ``bits``; raises QbenchError for a bad budget or a D not divisible by M."""
        m, b = pq_layout(bits, self.params["subspaces"])
        dim = self.params["dim"] or default_pq_dim(m)
        check_divisible(dim, m)
        return m, b, dim

    def check_bits(self, bits: int) -> None:
        super().check_bits(bits)
        self.layout(bits)

    def make_quantizer(self, m: int, b: int, seed: int) -> ProductQuantizer | OPQ:
        return ProductQuantizer(m, b, seed=seed)

    def run(self, ctx: RunContext) -> MethodOutput:
        self.check_bits(ctx.bits)
        m, b, dim = self.layout(ctx.bits)
        trainer = Trainer(ctx, self.params, dim).fit()
        start = time.perf_counter()
        emb = trainer.embed_splits(("train",), normalise=self.params["normalise"])
        quantizer = self.make_quantizer(m, b, ctx.seed).fit(emb["train"])
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        emb.update(trainer.embed_splits(("query", "database"),
                                        normalise=self.params["normalise"]))
        db_codes = quantizer.encode(emb["database"])
        query = quantizer.transform(emb["query"]) if self.rotate else emb["query"]
        codes = PQCodes(query, db_codes, quantizer.codebooks)
        encode_s = time.perf_counter() - start
        info = {
            "subspaces": m,
            "codewords": 1 << b,
            "bits_per_subspace": b,
            "dim": dim,
            "normalise": self.params["normalise"],
            "train_distortion": quantizer.distortion(emb["train"]),
        }
        return trained_output(codes, trainer, emb["query"], emb["database"], info=info,
                              encode_s=encode_s, extra_train_s=fit_s)


@METHODS.register
class TwoStagePQ(_TwoStage):
    """DQN_2: similarity-trained embeddings (L2-normalised), then PQ on the training
    embeddings (per-subspace k-means, M x 2^b codewords); database encoded, ADC search.
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
    rotate = True
    params = _TwoStage.params + (
        Param("opq_iters", int, 50, "OPQ alternations of PQ training and rotation update",
              minimum=0),
    )

    def make_quantizer(self, m: int, b: int, seed: int) -> ProductQuantizer | OPQ:
        return OPQ(m, b, iters=self.params["opq_iters"], seed=seed)
