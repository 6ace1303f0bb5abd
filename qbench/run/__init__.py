"""One experiment (``qbench run``): the request, its checks and the pipeline dataset ->
method -> evaluator -> result file (:mod:`.pipeline`), and the results schema every other
part reads and writes (:mod:`.results`).

Layer: above the methods; imported by the grid, tuning, the report and the CLI.
"""
