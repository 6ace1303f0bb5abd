"""Two-stage quantization: similarity training, then a quantizer fitted on the frozen
embeddings.

``two-stage-opq`` is DQN_2+ of the DQN slides: train the encoder with the similarity loss
only; fit OPQ (rotation R + PQ codebooks) on the training embeddings; encode the database;
search by ADC with the query rotated by R. ``two-stage-pq`` is DQN_2: the same without the
rotation. ``two-stage-rq`` and ``two-stage-lsq`` put today's additive quantizers (residual
quantization, LSQ++; faiss) in PQ's place, at the same bits per item.
"""

from __future__ import annotations

import numpy as np

from qbench.methods import (
    DEFAULT_DIM,
    MAX_BITS,
    AQRepresentation,
    Method,
    MethodOutput,
    PQRepresentation,
    RunContext,
    l2_normalise,
    pq_layout,
    select_and_encode,
)
from qbench.quant import OPQ, AdditiveQuantizer, ProductQuantizer
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
        space = l2_normalise if self.params["normalise"] else np.asarray
        pq = self.representation(lambda: self.make_quantizer(m, b, ctx.seed), m, space)
        info = self.layout_info(m, b, dim)
        return select_and_encode(ctx, encoder, pq.represent, pq.encode, info=info,
                                 describe=pq.describe)

    def representation(self, make_quantizer, m: int, space) -> PQRepresentation:
        return PQRepresentation(make_quantizer, m, space)

    def layout_info(self, m: int, b: int, dim: int) -> dict:
        return {"subspaces": m, "codewords": 1 << b, "bits_per_subspace": b, "dim": dim,
                "padded_dim": -(-dim // m) * m, "normalise": self.params["normalise"]}


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


class _TwoStageAdditive(_TwoStage):
    """Similarity-trained embeddings, then an additive quantizer (faiss) fitted on the
    training embeddings: M codebooks of 2^b full-width codewords, M * b = --bits (the layout
    of PQ's subspaces, SPEC §2, so both spend the same bits per item). The database is
    encoded by the quantizer's own encoder; the search is ADC, the squared L2 distance from
    the unquantized query to each reconstruction, in qbench's evaluator
    (:class:`qbench.core.codes.AQCodes`; the reconstruction's norm is computed from the
    codes, as faiss's ``ST_decompress`` search does, so nothing beyond M * b bits is stored).
    Selection: ADC MAP of the codes fitted on each candidate, as for two-stage-pq.
    """

    kind = ""

    def make_quantizer(self, m: int, b: int, seed: int) -> AdditiveQuantizer:
        return AdditiveQuantizer(self.kind, m, b, seed=seed, **self.quantizer_options())

    def quantizer_options(self) -> dict:
        return {}

    def representation(self, make_quantizer, m: int, space) -> AQRepresentation:
        return AQRepresentation(make_quantizer, space)

    def layout_info(self, m: int, b: int, dim: int) -> dict:
        return {"quantizer": self.kind, "codebooks": m, "codewords": 1 << b,
                "bits_per_codebook": b, "dim": dim, "normalise": self.params["normalise"],
                **self.quantizer_options()}


@METHODS.register
class TwoStageRQ(_TwoStageAdditive):
    """Residual quantization (Chen, Guan and Wang, Sensors 2010): codebook m is k-means on
    the residuals codebooks 1..m-1 leave, and items are encoded by beam search over the
    codebooks (faiss ``ResidualQuantizer``). Chosen where the paper is open: faiss's beam
    encoding (width ``beam``, 5 by default, faiss's own default) rather than the paper's
    greedy encoding (``beam=1``), since it is what users of faiss get; the beam width is a
    speed/accuracy knob, fixed, not tuned. ``subspaces`` here is the number of codebooks.
    """

    name = "two-stage-rq"
    description = ("similarity training, then residual quantization (faiss RQ) on the frozen "
                   "embeddings")
    kind = "rq"
    params = _TwoStage.params + (
        Param("beam", int, 5, "RQ beam width of encoding and training (1: greedy)",
              minimum=1, maximum=64),
    )

    def quantizer_options(self) -> dict:
        return {"beam": self.params["beam"]}


@METHODS.register
class TwoStageLSQ(_TwoStageAdditive):
    """LSQ++ (Martinez, Zakhmi, Hoos and Little, ECCV 2018): all codebooks fitted jointly,
    alternating a least-squares codebook update with iterated local search (ILS) over the
    codes, with LSQ++'s stochastic relaxation (faiss ``LocalSearchQuantizer``). Chosen
    where the paper is open: faiss's defaults for the ILS (16 encoding iterations,
    perturbing 4 codes) and the relaxation; ``train_iters`` (25, faiss's default) is a
    convergence knob, fixed, not tuned. ``subspaces`` here is the number of codebooks.
    """

    name = "two-stage-lsq"
    description = ("similarity training, then LSQ++ (faiss local search quantization) on the "
                   "frozen embeddings")
    kind = "lsq"
    params = _TwoStage.params + (
        Param("train_iters", int, 25, "LSQ++ alternations of codebook update and code search",
              minimum=1, maximum=1000),
    )

    def quantizer_options(self) -> dict:
        return {"train_iters": self.params["train_iters"]}
