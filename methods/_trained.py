"""What every method built on a trained encoder shares: select a candidate by the method's
own representation, embed query and database with it, and report.

A method supplies ``represent(train, val, pool) -> (codes, fitted)`` (the same function
scores candidates and produces the fitted quantizer of the chosen one) and ``encode(fitted,
query, database) -> codes``, and optionally a stage fitted after selection on the chosen
candidate (``fit_after``); :func:`select_and_encode` does the rest. Embeddings handed to
both are the encoder's raw outputs; methods normalise them as their representation needs.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from qbench.core.codes import AQCodes, Codes, FloatCodes, PQCodes
from qbench.data.context import RunContext
from qbench.methods._base import MethodOutput, l2_normalise, pad_columns
from qbench.train.selection import Represent, score_candidate, select
from qbench.train.trained_encoder import TrainedEncoder


def select_and_encode(ctx: RunContext, encoder: TrainedEncoder, represent: Represent,
                      encode: Callable[[object, np.ndarray, np.ndarray], Codes], *,
                      info: dict, describe: Callable[[object], dict] | None = None,
                      float_space: Callable[[np.ndarray], np.ndarray] = l2_normalise,
                      fit_after: Callable[[int], object] | None = None,
                      tuning_value: Callable[[object, int], float] | None = None,
                      scored: dict | None = None) -> MethodOutput:
    """The method output of ``encoder`` under one model-selection rule (``ctx.select``).

    ``describe(fitted)`` adds what the chosen fit reports to ``info``; ``float_space`` maps
    raw embeddings to the method's own float representation, ranked by cosine for retention
    (default: L2-normalised).

    ``fit_after(epoch) -> fitted``: a stage fitted on the chosen candidate after selection
    (Householder's rotation); its result replaces the selection's fit for ``encode`` and
    ``describe``, its seconds are ``fit_s`` and the selection's own fits count into
    ``select_s``. ``tuning_value(fitted, epoch)``: what tuning maximises when it is not the
    selection's chosen value, recorded as ``selection.tuning_value``. ``scored``:
    candidates a tuning trial scored during training (:func:`live_scoring`), not scored
    again.
    """
    choice = select(encoder, ctx.splits.train, ctx.pool, ctx.dataset.y, represent, ctx.select,
                    scored=scored)
    fitted, timings = choice.fitted, {"train_s": encoder.train_s, "select_s": choice.select_s,
                                      "fit_s": choice.fit_s}
    if fit_after is not None:
        start = time.perf_counter()
        fitted = fit_after(choice.epoch)
        timings.update(select_s=choice.select_s + choice.fit_s,
                       fit_s=time.perf_counter() - start)
    selection = choice.selection.to_dict()
    if tuning_value is not None:
        selection["tuning_value"] = tuning_value(fitted, choice.epoch)
    if ctx.selection_only:  # a tuning trial: what it trained (results leave it out, since
        # it depends on which run of a grid trained the shared encoder first)
        selection["epochs_trained"], selection["epochs_budget"] = encoder.training_effort
        return MethodOutput(codes=None, selection=selection, timings=timings)
    start = time.perf_counter()
    query = encoder.embeddings(choice.epoch, ctx.splits.query)
    db = encoder.embeddings(choice.epoch, ctx.splits.database)
    codes = encode(fitted, query, db)
    timings["encode_s"] = time.perf_counter() - start
    return MethodOutput(
        codes=codes,
        float_codes=FloatCodes(float_space(query), float_space(db), metric="cosine"),
        info={**info, **(describe(fitted) if describe else {}), "training": encoder.summary},
        timings=timings,
        selection=selection,
        encoder=encoder.provenance,
    )


def live_scoring(ctx: RunContext, trainer, represent: Represent) -> dict:
    """Let a tuning trial (``ctx.report``) see each candidate's validation value while
    training runs, and stop the training when its pruner says so.

    Sets ``trainer.on_candidate``: after each candidate epoch the candidate is embedded
    (train, validation queries, pool) and scored exactly as :func:`select` scores it
    (:func:`qbench.train.selection.score_candidate`), the value reported, and the training
    stopped when the report returns True. Returns the dict it fills, epoch -> score, for
    :func:`select_and_encode`'s ``scored`` (so no candidate is scored twice). Without a
    reporter it does nothing and returns an empty dict.
    """
    scored: dict = {}
    if ctx.report is None:
        return scored
    labels, pool, x = ctx.dataset.y, ctx.pool, ctx.dataset.X
    report = ctx.report

    def on_candidate(epoch: int) -> bool:
        embeddings = [trainer.embed(x[idx]) for idx in (ctx.splits.train, pool.val, pool.pool)]
        scored[epoch] = score_candidate(embeddings, represent, labels[pool.val],
                                        labels[pool.pool])
        return bool(report(epoch, scored[epoch][1]))

    trainer.on_candidate = on_candidate
    return scored


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


class AQRepresentation(PQRepresentation):
    """Additive codes (RQ, LSQ++) searched by ADC, fitted on the training embeddings of a
    candidate like :class:`PQRepresentation`; the codebooks are full-width, so nothing is
    padded and queries are not transformed."""

    def __init__(self, make_quantizer: Callable[[], object],
                 space: Callable[[np.ndarray], np.ndarray]):
        super().__init__(make_quantizer, 1, space)

    def encode(self, fitted: tuple, query: np.ndarray, db: np.ndarray) -> AQCodes:
        quantizer = fitted[0]
        return AQCodes(self._points(query), quantizer.encode(self._points(db)),
                       quantizer.codebooks)
