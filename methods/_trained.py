"""What every method built on a trained encoder shares: select a candidate by the method's
own representation, embed query and database with it, and report.

A method supplies ``represent(train, val, pool) -> (codes, fitted)`` (the same function
scores candidates and produces the fitted quantizer of the chosen one) and ``encode(fitted,
query, database) -> codes``; :func:`select_and_encode` does the rest. Embeddings handed to
both are the encoder's raw outputs; methods normalise them as their representation needs.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from qbench.core.codes import Codes, FloatCodes, PQCodes
from qbench.data.context import RunContext
from qbench.methods._base import MethodOutput, l2_normalise, pad_columns
from qbench.train.engine import TrainedEncoder
from qbench.train.selection import Represent, select


def select_and_encode(ctx: RunContext, encoder: TrainedEncoder, represent: Represent,
                      encode: Callable[[object, np.ndarray, np.ndarray], Codes], *,
                      info: dict, describe: Callable[[object], dict] | None = None,
                      float_space: Callable[[np.ndarray], np.ndarray] = l2_normalise,
                      ) -> MethodOutput:
    """The method output of ``encoder`` under one model-selection rule (``ctx.select``).

    ``describe(fitted)`` adds what the chosen fit reports to ``info``; ``float_space`` maps
    raw embeddings to the method's own float representation, ranked by cosine for retention
    (default: L2-normalised).
    """
    choice = select(encoder, ctx.splits.train, ctx.pool, ctx.dataset.y, represent, ctx.select)
    if ctx.selection_only:
        return MethodOutput(codes=None, selection=choice.selection.to_dict(),
                            timings={"train_s": encoder.train_s, "select_s": choice.select_s})
    start = time.perf_counter()
    query = encoder.embeddings(choice.epoch, ctx.splits.query)
    db = encoder.embeddings(choice.epoch, ctx.splits.database)
    codes = encode(choice.fitted, query, db)
    encode_s = time.perf_counter() - start
    return MethodOutput(
        codes=codes,
        float_codes=FloatCodes(float_space(query), float_space(db), metric="cosine"),
        info={**info, **(describe(choice.fitted) if describe else {}),
              "training": encoder.summary},
        timings={"train_s": encoder.train_s, "select_s": choice.select_s,
                 "fit_s": choice.fit_s, "encode_s": encode_s},
        selection=choice.selection.to_dict(),
        encoder={"key": encoder.cache_key, "cache": encoder.cache_status},
    )


class PQRepresentation:
    """PQ codes searched by ADC, fitted on the training embeddings of a candidate.

    ``make_quantizer()`` builds an unfitted quantizer (a ProductQuantizer, or an OPQ whose
    ``transform`` rotates queries); ``space`` maps raw embeddings (n, D) to the quantization
    space, which is zero-padded to a multiple of ``subspaces``. ``fitted`` is
    (quantizer, {"train_distortion": mean squared error per training vector}).
    """

    def __init__(self, make_quantizer: Callable[[], object], subspaces: int,
                 space: Callable[[np.ndarray], np.ndarray]):
        self.make_quantizer = make_quantizer
        self.subspaces = subspaces
        self.space = space

    def _points(self, emb: np.ndarray) -> np.ndarray:
        return pad_columns(self.space(emb), self.subspaces)

    def _queries(self, quantizer, emb: np.ndarray) -> np.ndarray:
        x = self._points(emb)
        transform = getattr(quantizer, "transform", None)
        return transform(x) if transform is not None else x

    def represent(self, train: np.ndarray, val: np.ndarray,
                  pool: np.ndarray) -> tuple[PQCodes, tuple]:
        x = self._points(train)
        quantizer = self.make_quantizer().fit(x)
        fitted = (quantizer, {"train_distortion": quantizer.distortion(x)})
        return self.encode(fitted, val, pool), fitted

    def encode(self, fitted: tuple, query: np.ndarray, db: np.ndarray) -> PQCodes:
        quantizer = fitted[0]
        return PQCodes(self._queries(quantizer, query), quantizer.encode(self._points(db)),
                       quantizer.codebooks)

    @staticmethod
    def describe(fitted: tuple) -> dict:
        return dict(fitted[1])
