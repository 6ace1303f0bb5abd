"""Quantizers: PQ, OPQ, ITQ, LSH, sign and the Householder rotation, each with ``fit`` and
``encode`` (faiss and numpy underneath), and the thread policy of small fits run side by
side.

Layer: imports ``qbench.core`` and the evaluator's code containers only; no training
engine, no method.
"""

from qbench.quant.quantizers import (
    ITQ,
    LSH,
    OPQ,
    SMALL_PROBLEM,
    HouseholderRotation,
    ProductQuantizer,
    SignQuantizer,
    assign_subspaces,
    decode_subspaces,
    fit_threads,
    fit_workers,
    householder_product,
    kmeans,
    rescale_to_sqrt_dim,
    side_by_side,
)

__all__ = [
    "ITQ", "LSH", "OPQ", "SMALL_PROBLEM", "HouseholderRotation", "ProductQuantizer",
    "SignQuantizer", "assign_subspaces", "decode_subspaces", "fit_threads", "fit_workers",
    "householder_product", "kmeans", "rescale_to_sqrt_dim", "side_by_side",
]
