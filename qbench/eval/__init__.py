"""The one evaluator: codes and labels in, numbers out (SPEC §4).

Distances and rankings per query block (:mod:`.search`, with the compiled Hamming kernels
of :mod:`.kernels`), the metrics (:mod:`.metrics`), the metric card and ``evaluate``
(:mod:`.evaluator`) and the ``.npz`` codes files of ``qbench evaluate`` (:mod:`.codesfile`).

Layer: imports only ``qbench.core``; never a method, a dataset or the training engine, and
torch only where a CUDA device is asked for.
"""
