"""The report: result files loaded and checked (:mod:`.load`), results as comparable rows
(:mod:`.rows`), statistics (:mod:`.stats`), the
papers' claims as data (:mod:`.claims`), tables (:mod:`.tables`), the paper comparison
(:mod:`.paper`), plots (:mod:`.plots`) and ``qbench compare`` (:mod:`.compare`).

Layer: a side wing that reads result files only: it imports ``qbench.core``,
``qbench.registry`` and the results schema (``qbench.run.results``), never the training,
the evaluator or the grid. Inside it, imports run rows <- load, rows <- stats <-
claims/tables/plots <- compare, and tables <- paper <- compare.
"""
