"""Model selection, one rule for every method (SPEC §4).

Validation queries are ranked against a *selection pool*: database items outside the
training split and outside the validation queries themselves (all of them, or a seeded
per-class sample capped for speed). The pool never holds training items, which the network
has memorised, nor query items. Each candidate (a saved model at some epoch) is scored by
the validation MAP of the exact representation the method is evaluated with: PQ codes by
ADC, binary codes by tie-aware Hamming MAP, float embeddings by cosine. ``best`` keeps the
candidate with the highest value (the latest among exact ties), ``last`` the last one.

The pieces are plain values: :class:`SelectionPool` (index arrays), a ``represent``
function per method (embeddings of train / val / pool -> codes for val against pool, and
whatever it fitted), and :class:`Selection`, the record every result carries.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from qbench.core.codes import AQCodes, BinaryCodes, Codes, PQCodes
from qbench.core.errors import QbenchError, choice_error
from qbench.data.pool import SelectionPool
from qbench.eval.evaluator import mean_average_precision

RULES = ("best", "last")
def criterion(codes: Codes) -> str:
    """The selection criterion of a representation, as recorded in results."""
    if isinstance(codes, BinaryCodes):
        return "tie-aware Hamming MAP@all of the binary codes"
    if isinstance(codes, PQCodes):
        return "MAP@all of the PQ codes by ADC"
    if isinstance(codes, AQCodes):
        return "MAP@all of the additive codes by ADC"
    return f"MAP@all of the float embeddings by {codes.metric}"


def score(codes: Codes, val_labels: np.ndarray, pool_labels: np.ndarray) -> float:
    """Validation MAP of ``codes`` (validation queries against the pool) by :func:`criterion`."""
    if isinstance(codes, BinaryCodes):
        return mean_average_precision(codes, val_labels, pool_labels, tie_aware=True)
    return mean_average_precision(codes, val_labels, pool_labels)


@dataclass
class Selection:
    """The record of one model selection (the result's top-level ``selection``)."""

    rule: str
    criterion: str
    pool: dict
    epochs: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    chosen_epoch: int = -1
    chosen_value: float | None = None

    def to_dict(self) -> dict:
        return {"rule": self.rule, "criterion": self.criterion, **self.pool,
                "epochs": list(self.epochs), "values": list(self.values),
                "chosen_epoch": self.chosen_epoch, "chosen_value": self.chosen_value}


@dataclass
class Choice:
    """What :func:`select` returns: the record, the chosen epoch, what the method fitted
    for it (a quantizer, or None) and the seconds that fit took (``fit_s``); ``select_s``
    is the rest of the selection (embedding candidates, fitting the others, scoring)."""

    selection: Selection
    epoch: int
    fitted: object
    fit_s: float
    select_s: float


Represent = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[Codes, object]]
"""(train, val, pool embeddings) -> (codes of the val queries against the pool, what was
fitted, e.g. a quantizer fitted on the training embeddings)."""


Scored = tuple[str, float, object, float]
"""What scoring one candidate gives: (criterion, value, what was fitted, fit seconds)."""


def score_candidate(embeddings: list[np.ndarray], represent: Represent, val_labels: np.ndarray,
                    pool_labels: np.ndarray) -> Scored:
    """Score one candidate from its train / val / pool embeddings (one rule, used by
    :func:`select` and by a tuning trial scoring candidates during training)."""
    t0 = time.perf_counter()
    codes, fitted = represent(*embeddings)
    fit_s = time.perf_counter() - t0
    return criterion(codes), score(codes, val_labels, pool_labels), fitted, fit_s


def select(encoder, train: np.ndarray, pool: SelectionPool, labels: np.ndarray,
           represent: Represent, rule: str, *,
           on_value: Callable[[int, float], None] | None = None,
           scored: dict[int, Scored] | None = None) -> Choice:
    """Score the candidates of ``encoder`` (all for ``best``, the last for ``last``); choose.

    ``encoder``: a :class:`qbench.train.trained_encoder.TrainedEncoder` (``candidates`` and
    ``embeddings(epoch, idx)``); ``train``: the training split's indices; ``labels``: the
    dataset's labels. ``on_value(epoch, value)`` is called after each score, in epoch
    order; where small fits run side by side, every candidate is embedded first, so
    raising from it stops the fits not yet started but no embedding. ``scored``: candidates
    already scored during training (:func:`score_candidate`), not scored again.
    """
    epochs = encoder.candidates
    if rule not in RULES:
        raise choice_error("--select", rule, RULES)
    if not epochs:
        raise QbenchError("model selection has no candidate epoch (no epoch trained)")
    started = time.perf_counter()
    val_labels, pool_labels = labels[pool.val], labels[pool.pool]
    done = dict(scored or {})
    chosen_from = epochs if rule == "best" else epochs[-1:]
    scored = [e for e in chosen_from if e not in done]
    record = Selection(rule, "", pool.summary())

    def embedded(epoch: int) -> list[np.ndarray]:
        return [encoder.embeddings(epoch, idx) for idx in (train, pool.val, pool.pool)]

    def fit_and_score(emb: list[np.ndarray]) -> Scored:
        return score_candidate(emb, represent, val_labels, pool_labels)

    # Embedding runs in torch, one candidate after another; small fits (PQ, OPQ, ITQ on a
    # few thousand vectors) then run side by side, single-threaded each (under either rule,
    # so an epoch scores the same under best and last); large ones one at a time.
    from qbench.quant import fit_workers, side_by_side

    first = embedded(scored[0]) if scored else None
    workers = fit_workers(first[0].size, len(scored)) if scored else 0
    with contextlib.ExitStack() as stack:
        if not scored:
            outcomes = iter(())
        elif workers:
            embeddings = [first] + [embedded(epoch) for epoch in scored[1:]]
            outcomes = stack.enter_context(side_by_side(workers)).map(fit_and_score,
                                                                       embeddings)
        else:
            outcomes = (fit_and_score(first if i == 0 else embedded(epoch))
                        for i, epoch in enumerate(scored))
        pending = iter(outcomes)  # in the order of ``scored``; pulling one runs its fit
        best: tuple[float, int, object, float] | None = None
        for epoch in chosen_from:
            crit, value, fitted, fit_s = done[epoch] if epoch in done else next(pending)
            record.criterion = crit
            record.epochs.append(int(epoch))
            record.values.append(float(value))
            if on_value is not None:
                on_value(epoch, value)
            if best is None or value >= best[0]:
                best = (value, epoch, fitted, fit_s)
    value, epoch, fitted, fit_s = best
    record.chosen_epoch, record.chosen_value = int(epoch), float(value)
    return Choice(record, int(epoch), fitted, fit_s,
                  time.perf_counter() - started - fit_s)
