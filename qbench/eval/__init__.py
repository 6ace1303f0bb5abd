"""The one evaluator: codes and labels in, numbers out (SPEC §4).

Per query block: distances (:mod:`.distances`), relevance (:mod:`.relevance`) and rankings
(:mod:`.ranking`, or the compiled Hamming kernels of :mod:`.kernels`); the index-order
metrics (:mod:`.metrics`) and the tie-aware ones (:mod:`.ties`); the metric card and
``evaluate`` (:mod:`.evaluator`) and the ``.npz`` codes files of ``qbench evaluate``
(:mod:`.codesfile`).

Layer: imports only ``qbench.core``; never a method, a dataset or the training engine, and
torch only where a CUDA device is asked for.
"""
