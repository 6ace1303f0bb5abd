"""The one evaluator: rank the database for every query, then score the rankings.

Input is a codes object from :mod:`qbench.core.codes` (the evaluator never knows which method
made it) and the query / database labels. :mod:`qbench.eval.distances` computes the distances
and :mod:`qbench.eval.relevance` the relevance of each block of queries,
:mod:`qbench.eval.ranking` ranks the block (ascending distance, equal distances broken by
database index); :mod:`qbench.eval.metrics` (index order) and :mod:`qbench.eval.ties`
(tie-aware) score the rankings. Queries are processed in blocks (at most ``MAX_BLOCK_QUERIES``
queries and about ``BLOCK_BYTES`` of working memory each, never a full n_query x n_db float64
matrix); blocks run on threads, one per core (numpy releases the GIL in the heavy operations).
Where numba is installed, Hamming distances go through the compiled kernel of
:mod:`qbench.eval.kernels` (no sort: counts per distance level, O(N + B) per query) and ADC,
additive and float distances through :mod:`qbench.eval.buckets` (table lookups, an exact
bucket sort of each query's float32 distances, the metrics in one pass); otherwise through one
stable numpy sort per query. Every path gives the same figures. With ``device="cuda"`` distances and
sorting run in torch on the GPU; torch is imported only then.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from qbench.core.cores import cpu_share
from qbench.core.errors import QbenchError
from qbench.core.validation import check_int
from qbench.eval import metrics as M
from qbench.eval import ties as T
from qbench.eval.distances import (
    EmbeddingDistances,
    HammingDistances,
    check_codes,
    distances,
    make_distances,
)
from qbench.eval.ranking import (
    BlockRanking,
    BucketRanking,
    groups_from_levels,
    rank_numpy,
    rank_torch,
)
from qbench.eval.relevance import Labels, relevance

__all__ = ["Evaluation", "distances", "evaluate", "mean_average_precision", "relevance"]

BLOCK_BYTES = 256 * 2**20
"""Working-memory target of one block of queries, in bytes."""

MAX_BLOCK_QUERIES = 16
KERNEL_BLOCK_QUERIES = 128
"""Queries per block on the compiled Hamming path (its memory is O(n_db) per thread, not
per query: the block size only balances the threads against the per-block numpy work)."""
BACKENDS = ("numba", "numpy", "torch")
MAX_WORKERS = 8
HAMMING_RADIUS = 2


@dataclass
class Evaluation:
    """Everything the evaluator reports for one set of codes.

    metrics: JSON-ready floats/ints (see :func:`evaluate`); curves: JSON-ready lists;
    metric_card: the conventions behind the numbers; timings: seconds (``search_s``,
    ``metrics_s``, ``eval_s``), ``queries_per_s``, ``threads`` and ``backend``;
    per_query_ap: (n_query,) float64, the AP behind ``map_all`` (for significance tests).
    """

    metrics: dict
    curves: dict
    metric_card: dict
    timings: dict
    per_query_ap: np.ndarray = field(repr=False)


@dataclass
class _Plan:
    """What to compute for every block."""

    n_db: int
    k: int
    normaliser: str
    quick: bool = False
    tie_aware: bool = True
    curves: bool = True
    harmonic: np.ndarray | None = None
    pr_cut: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    top_cut: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


def _score_block(r, plan: _Plan) -> dict[str, np.ndarray]:
    """Per-query numbers of one block (every array has the block's queries on axis 0).

    r: a :class:`~qbench.eval.ranking.BlockRanking` (numpy or torch path), a
    :class:`~qbench.eval.buckets.BucketRanking` (compiled float-distance path) or a
    :class:`~qbench.eval.kernels.LevelRanking` (compiled Hamming path)."""
    if isinstance(r, BlockRanking):
        ranks = M.Ranks(r.rel_pos, r.row_ptr, plan.n_db)
        group_args = (r.group_row, r.group_start, r.group_size)
    elif isinstance(r, BucketRanking):
        ranks = M.BoundaryRanks(r, plan.n_db)
        group_args = (r.group_row, r.group_start, r.group_size)
    else:
        ranks = M.LevelRanks(r.level_hist, r.level_rel, r.level_terms, r.cuts, r.cut_hits,
                             r.cut_terms, r.pr11, plan.n_db)
        cum = np.zeros((len(r.level_hist), r.level_hist.shape[1] + 1), dtype=np.int64)
        np.cumsum(r.level_hist, axis=1, out=cum[:, 1:])
        group_args = groups_from_levels(cum)
    if plan.quick and not plan.tie_aware:
        return {"ap_k": ranks.average_precision(plan.k, plan.normaliser)}
    groups = T.TieGroups(*group_args, ranks)
    if plan.quick:
        return {"ap_k": groups.average_precision(plan.harmonic, plan.k,
                                                 plan.normaliser)["expected"]}
    out = {"n_rel": ranks.n_rel, "ap_k": ranks.average_precision(plan.k, plan.normaliser)}
    out["ap_all"] = out["ap_k"] if plan.k == plan.n_db else ranks.average_precision()
    tie_all = groups.average_precision(plan.harmonic)
    tie_k = (tie_all if plan.k == plan.n_db
             else groups.average_precision(plan.harmonic, plan.k, plan.normaliser))
    cut = np.concatenate([[plan.k], plan.pr_cut, plan.top_cut])
    out["hits"] = ranks.hits_at(cut)
    tie_hits = groups.hits(cut)
    for v in T.VARIANTS:
        out["tie_ap_all_" + v], out["tie_ap_k_" + v] = tie_all[v], tie_k[v]
        out["tie_hits_" + v] = tie_hits[v]
    if plan.curves:
        out["pr11"] = ranks.interpolated_precision()
    if r.level_hist is not None:
        out["n_le"], out["r_le"] = M.radius_counts(r.level_hist, ranks)
    return out


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x)) if len(x) else 0.0


def _suffix(variant: str) -> str:
    return "" if variant == "expected" else "_" + variant


def _summarise(per_query: dict[str, np.ndarray], plan: _Plan, search,
               bytes_per_code: float) -> tuple[dict, dict]:
    """Means over queries -> (metrics, curves) as JSON-ready dicts."""
    n_rel = per_query["n_rel"]
    k = plan.k
    n_pr = len(plan.pr_cut)
    metrics = {
        "map_all": _mean(per_query["ap_all"]),
        "map_at_k": _mean(per_query["ap_k"]),
        "p_at_k": _mean(per_query["hits"][:, 0] / k),
        "r_at_k": _mean(M.safe_ratio(per_query["hits"][:, 0], n_rel)),
        "bytes_per_code": float(bytes_per_code),
        "queries_without_relevant": int(np.sum(n_rel == 0)),
    }
    for v in T.VARIANTS:
        hits_k = per_query["tie_hits_" + v][:, 0]
        metrics["tie_aware_map_all" + _suffix(v)] = _mean(per_query["tie_ap_all_" + v])
        metrics["tie_aware_map_at_k" + _suffix(v)] = _mean(per_query["tie_ap_k_" + v])
        metrics["tie_aware_p_at_k" + _suffix(v)] = _mean(hits_k / k)
        metrics["tie_aware_r_at_k" + _suffix(v)] = _mean(M.safe_ratio(hits_k, n_rel))
    if "n_le" in per_query:
        radius = min(HAMMING_RADIUS, search.bits)
        metrics["p_at_hamming2"] = _mean(M.safe_ratio(per_query["r_le"][:, radius],
                                                      per_query["n_le"][:, radius]))
    curves: dict = {}
    if not plan.curves:
        return metrics, curves
    curves["pr"] = {"rank": plan.pr_cut.tolist()}
    curves["top_r"] = {"r": plan.top_cut.tolist()}
    for v in T.VARIANTS:
        hits = per_query["tie_hits_" + v]
        pr_hits, top_hits = hits[:, 1:1 + n_pr], hits[:, 1 + n_pr:]
        curves["pr"]["recall" + _suffix(v)] = np.mean(
            M.safe_ratio(pr_hits, n_rel[:, None]), axis=0).tolist()
        curves["pr"]["precision" + _suffix(v)] = np.mean(
            pr_hits / plan.pr_cut[None, :], axis=0).tolist()
        curves["top_r"]["precision" + _suffix(v)] = np.mean(
            top_hits / np.maximum(plan.top_cut[None, :], 1), axis=0).tolist()
    curves["pr11"] = {"recall": list(M.PR11_RECALL),
                      "precision": np.mean(per_query["pr11"], axis=0).tolist()}
    if "n_le" in per_query:
        n_le, r_le = per_query["n_le"], per_query["r_le"]
        curves["pr_hamming"] = {
            "radius": list(range(search.levels)),
            "precision": np.mean(M.safe_ratio(r_le, n_le), axis=0).tolist(),
            "recall": np.mean(M.safe_ratio(r_le, n_rel[:, None]), axis=0).tolist(),
        }
    return metrics, curves


def _metric_card(search, labels: Labels, plan: _Plan, k: int | None, n_query: int) -> dict:
    card = {
        "relevance": "share at least one label" if labels.multi else "same class",
        "distance": search.name,
        "order": "ascending distance",
        "k": "all" if k is None else int(k),
        "k_effective": plan.k,
        "normaliser": plan.normaliser,
        "zero_hit_policy": "a query with no relevant item in the top K scores AP 0 and "
                           "recall 0, and counts in every mean",
        "tie_policy": "map_all, map_at_k, p_at_k, r_at_k and pr11 break equal distances by "
                      "database index; tie_aware_* values (reported for every distance: "
                      "Hamming, ADC, SDC, float) are expectations under uniformly random "
                      "order within equal distance, with optimistic (relevant first) and "
                      "pessimistic (relevant last) bounds; tie-aware MAP@K takes the "
                      "expectation of the ratio over the hypergeometric number of relevant "
                      "items the cut group brings into the top K",
        "curves": "mean over queries; pr and top_r: tie-aware expected precision and recall "
                  "at rank cut-offs (geometric from rank 1), with bounds; pr11: 11-point "
                  "interpolated precision (max precision at recall >= r) of the "
                  "database-index order, from the whole ranking",
        "n_query": int(n_query),
        "n_db": int(plan.n_db),
    }
    if isinstance(search, HammingDistances):
        card["hamming_radius_curves"] = ("set metrics over items within radius <= r; "
                                         "precision 0 when the ball is empty")
    return card


# ----------------------------------------------------------------------------- driver


def _workers(device: str) -> int:
    """Threads for query blocks: the cores, or the process's share of them where
    ``OMP_NUM_THREADS`` says so (grid workers set it to cores // jobs)."""
    if device != "cpu":
        return 1
    return max(1, min(MAX_WORKERS, cpu_share()))


def _block_size(search, n_query: int, n_db: int, block_size: int | None, torch: bool,
                kernel: bool = False, workers: int = 1) -> int:
    if block_size is not None:
        if int(block_size) < 1:
            raise QbenchError(f"block_size must be >= 1, got {block_size}")
        return min(int(block_size), n_query)
    if kernel:  # at least 2 blocks per thread where there are enough queries
        size = max(1, min(KERNEL_BLOCK_QUERIES, -(-n_query // (2 * workers))))
        if isinstance(search, EmbeddingDistances):  # the block's distances come in
            size = max(1, min(size, BLOCK_BYTES // (search.bytes_per_pair * n_db)))
        return size
    per_pair = search.bytes_per_pair + (24 if torch else 0)
    if torch and isinstance(search, HammingDistances):
        per_pair += 8 * search.query_words.shape[1] * np.dtype(search.word).itemsize
    return max(1, min(n_query, BLOCK_BYTES // (per_pair * n_db), MAX_BLOCK_QUERIES))


def _backend(backend: str | None, device: str, search) -> str:
    """The ranking backend: "torch" on a GPU or when asked; else the compiled kernels where
    numba is installed (Hamming: counts per distance level; every float distance: the
    bucket ranking of :mod:`qbench.eval.buckets`), the numpy sort otherwise."""
    if backend is not None and backend not in BACKENDS:
        raise QbenchError(f"unknown backend {backend!r}; allowed: " + ", ".join(BACKENDS))
    if backend == "torch" or device != "cpu":
        return "torch"
    if backend == "numpy":
        return "numpy"
    from qbench.eval import kernels

    hamming = isinstance(search, HammingDistances)
    if kernels.available() and (not hamming or search.levels <= kernels.MAX_LEVELS):
        return "numba"
    if backend == "numba":
        raise QbenchError("backend 'numba' needs the numba package (pip install numba)")
    return "numpy"


def _check_options(k, normaliser: str, device: str) -> None:
    if normaliser not in M.NORMALISERS:
        raise QbenchError(f"unknown normaliser {normaliser!r}; allowed: "
                          + ", ".join(M.NORMALISERS))
    check_int(k, "k", low=1, allow_none=True, what="a positive integer or None (all)")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise QbenchError(f"unknown device {device!r}; allowed: cpu, cuda")
    if device != "cpu":
        import torch

        if not torch.cuda.is_available():
            raise QbenchError(f"device {device!r} requested but CUDA is not available")


def _run(codes, query_labels, db_labels, *, k: int | None, normaliser: str, device: str,
         block_size: int | None, curves: bool, sdc: bool, quick: bool, tie_aware: bool = True,
         backend: str | None = None) -> tuple[dict, dict, dict, dict, np.ndarray]:
    started = time.perf_counter()
    n_query, n_db = check_codes(codes, sdc)
    labels = Labels(query_labels, db_labels)
    if (labels.n_query, labels.n_db) != (n_query, n_db):
        raise QbenchError(f"labels for {labels.n_query} queries and {labels.n_db} database "
                          f"items, codes for {n_query} and {n_db}")
    _check_options(k, normaliser, device)
    search = make_distances(codes, sdc)
    backend = _backend(backend, device, search)
    use_torch = backend == "torch"
    plan = _Plan(n_db=n_db, k=n_db if k is None else min(int(k), n_db), normaliser=normaliser,
                 quick=quick, tie_aware=tie_aware, curves=curves and not quick)
    if tie_aware:
        plan.harmonic = T.harmonic_table(n_db)
    if plan.curves:
        plan.pr_cut, plan.top_cut = M.pr_cutoffs(n_db), M.top_r_cutoffs(n_db)
    workers = 1 if use_torch else _workers(device)
    bs = _block_size(search, n_query, n_db, block_size, use_torch, backend == "numba", workers)
    hamming_kernel = backend == "numba" and isinstance(search, HammingDistances)
    if backend == "numba":
        from qbench.eval.buckets import rank_block
        from qbench.eval.kernels import hamming_block

        rel_args = labels.kernel_args()
        # n_db always: the tie-aware MAP@all reads the terms of the whole ranking
        cuts = np.unique(np.concatenate([[plan.k, n_db], plan.pr_cut, plan.top_cut])
                         .astype(np.int64))
        if hamming_kernel:
            q_words, db_words = search.words64()

    def work(start: int) -> tuple[float, float, dict]:
        stop = min(start + bs, n_query)
        t0 = time.perf_counter()
        if backend == "numba":
            block_labels = {key: value[start:stop] if key[0] == "q" else value
                            for key, value in rel_args.items()}
            if hamming_kernel:
                ranking = hamming_block(q_words[start:stop], db_words, search.levels, cuts,
                                        **block_labels)
            else:
                ranking = rank_block(block_labels, cuts, **search.kernel_inputs(start, stop))
        elif use_torch:
            ranking = rank_torch(search, search.torch(start, stop, device),
                                 labels.block_torch(start, stop, device))
        else:
            ranking = rank_numpy(search, search.numpy(start, stop), labels.block(start, stop))
        t1 = time.perf_counter()
        scored = _score_block(ranking, plan)
        return t1 - t0, time.perf_counter() - t1, scored

    starts = range(0, n_query, bs)
    workers = min(workers, len(starts))
    t0 = time.perf_counter()
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            done = list(pool.map(work, starts))
    else:
        done = [work(s) for s in starts]
    blocks_s = time.perf_counter() - t0
    per_query = {key: np.concatenate([d[key] for *_, d in done]) for key in done[0][2]}
    if quick:
        return {"map_at_k": _mean(per_query["ap_k"])}, {}, {}, {}, per_query["ap_k"]
    t1 = time.perf_counter()
    metrics, out_curves = _summarise(per_query, plan, search, codes.bytes_per_code)
    card = _metric_card(search, labels, plan, k, n_query)
    summary_s = time.perf_counter() - t1
    # threads interleave searching and scoring: the wall time of the blocks is shared out
    # in proportion to the thread time each part took
    search_thread, metrics_thread = sum(d[0] for d in done), sum(d[1] for d in done)
    share = search_thread / max(search_thread + metrics_thread, 1e-12)
    search_s = blocks_s * share
    timings = {"search_s": search_s, "metrics_s": blocks_s * (1 - share) + summary_s,
               "eval_s": time.perf_counter() - started,
               "queries_per_s": n_query / search_s if search_s > 0 else None,
               "threads": workers, "backend": backend}
    return metrics, out_curves, card, timings, per_query["ap_all"]


def evaluate(codes, query_labels, db_labels, *, k: int | None = None, normaliser: str = "rk",
             device: str = "cpu", block_size: int | None = None, curves: bool = True,
             sdc: bool = False, backend: str | None = None) -> Evaluation:
    """Rank the database for every query and compute all metrics.

    codes: FloatCodes, PQCodes, AQCodes or BinaryCodes with n_query queries and n_db items;
    query_labels: (n_query,) class ids or (n_query, C) multi-hot; db_labels likewise (n_db,
    ...). k: cut-off of MAP@K (None: all); normaliser: AP@K normaliser "rk" | "min_k_r" |
    "r"; device: "cpu" or "cuda"; block_size: queries per block (None: automatic, at most
    16 queries and ~256 MB of working memory per block; on the CPU one block per core runs
    at once); curves: also compute the PR / pr11 / top-R / Hamming-radius curves; sdc: for
    PQCodes, quantize the query too (symmetric distance); backend: force the ranking backend,
    "numba", "numpy" or "torch" (None: automatic, see ``timings.backend``; every backend
    gives the same figures, so this is for benchmarks and checks).

    Metrics: map_all, map_at_k, p_at_k, r_at_k (K = k or n_db, database-index order),
    bytes_per_code, queries_without_relevant; for every distance tie_aware_map_all,
    tie_aware_map_at_k, tie_aware_p_at_k, tie_aware_r_at_k, each with _optimistic and
    _pessimistic bounds; for Hamming p_at_hamming2 (precision within radius <= 2, 0 for an
    empty ball). Curves: pr {rank, recall, precision, and their _optimistic/_pessimistic
    bounds} at geometrically spaced ranks from 1 to n_db, tie-aware; pr11 {recall 0, 0.1,
    ..., 1, precision}: 11-point interpolated precision; top_r {r, precision (+ bounds)} for
    r = 100..1000 <= n_db; pr_hamming {radius, precision, recall} for Hamming. Timings:
    search_s (distances and ranking; on the compiled Hamming path also the per-query sums the
    kernel reads off its ranking), metrics_s (metrics from the rankings), eval_s (this call),
    queries_per_s = n_query / search_s, threads, backend ("numba": the compiled Hamming
    kernel, "numpy": one sort per query, "torch").
    """
    metrics, out_curves, card, timings, ap = _run(
        codes, query_labels, db_labels, k=k, normaliser=normaliser, device=device,
        block_size=block_size, curves=curves, sdc=sdc, quick=False, backend=backend)
    return Evaluation(metrics, out_curves, card, timings, ap)


def mean_average_precision(codes, query_labels, db_labels, *, k: int | None = None,
                           tie_aware: bool = False, normaliser: str = "rk",
                           device: str = "cpu", sdc: bool = False) -> float:
    """MAP@K (K = k, None: the whole database), nothing else: the score for model selection.

    The same ranking and AP as :func:`evaluate`, without curves, other metrics or timings.
    tie_aware=False: database-index order within ties (``map_at_k``); True: the tie-aware
    expectation (``tie_aware_map_at_k``, equal to ``tie_aware_map_all`` when k is None),
    for any distance.
    """
    metrics, *_ = _run(codes, query_labels, db_labels, k=k, normaliser=normaliser,
                       device=device, block_size=None, curves=False, sdc=sdc, quick=True,
                       tie_aware=tie_aware)
    return metrics["map_at_k"]
