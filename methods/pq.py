"""PQ and OPQ on the raw input: the unsupervised classics, ADC search.

The flattened input (float32) is padded with zero columns up to a multiple of M when its
dimension is not divisible by M (digits: 64 dims, so 3 subspaces at 24 bits and 6 at 48 bits
pad to 66). Zero columns change no distance: the query is padded the same way.
"""

from __future__ import annotations

import time

from qbench.core.codes import FloatCodes, PQCodes
from qbench.methods import Method, MethodOutput, RunContext, pad_columns, pq_layout
from qbench.quant import OPQ, ProductQuantizer
from qbench.registry import METHODS, Param


class _RawPQ(Method):
    family = "pq"
    selects = False
    params = (
        Param("subspaces", int, 0, "PQ subspaces M (0: automatic from --bits, SPEC §2)",
              minimum=0),
    )

    def make_quantizer(self, m: int, b: int, seed: int) -> ProductQuantizer | OPQ:
        return ProductQuantizer(m, b, seed=seed)

    def run(self, ctx: RunContext) -> MethodOutput:
        self.check_bits(ctx.bits)
        m, b = pq_layout(ctx.bits, self.params["subspaces"])
        start = time.perf_counter()
        train = ctx.flat_x("train")
        train_padded = pad_columns(train, m)
        quantizer = self.make_quantizer(m, b, ctx.seed).fit(train_padded)
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        query, db = ctx.flat_x("query"), ctx.flat_x("database")
        db_codes = quantizer.encode(pad_columns(db, m))
        query_padded = pad_columns(query, m)
        if isinstance(quantizer, OPQ):
            query_padded = quantizer.transform(query_padded)
        codes = PQCodes(query_padded, db_codes, quantizer.codebooks)
        encode_s = time.perf_counter() - start
        info = {
            "subspaces": m,
            "codewords": 1 << b,
            "bits_per_subspace": b,
            "input_dim": int(train.shape[1]),
            "padded_dim": int(train_padded.shape[1]),
            "train_distortion": quantizer.distortion(train_padded),
        }
        return MethodOutput(
            codes=codes,
            float_codes=FloatCodes(query, db, metric="l2"),
            info=info,
            timings={"train_s": fit_s, "encode_s": encode_s},
        )


@METHODS.register
class RawPQ(_RawPQ):
    """PQ (per-subspace k-means, M x 2^b codewords) fitted on the training split's raw
    input; ADC search; retention against the raw input ranked by L2.
    """

    name = "pq"
    description = "product quantization of the raw input (unsupervised baseline)"


@METHODS.register
class RawOPQ(_RawPQ):
    """OPQ (faiss OPQMatrix rotation, then PQ on the rotated data) fitted on the training
    split's raw input; database encoded in the rotated space, ADC with the rotated query.
    """

    name = "opq"
    description = "optimized product quantization of the raw input (unsupervised baseline)"
    params = _RawPQ.params + (
        Param("opq_iters", int, 50, "OPQ alternations of PQ training and rotation update",
              minimum=0),
    )

    def make_quantizer(self, m: int, b: int, seed: int) -> ProductQuantizer | OPQ:
        return OPQ(m, b, iters=self.params["opq_iters"], seed=seed)
