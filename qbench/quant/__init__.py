"""Quantizers: PQ, OPQ, RQ, LSQ++, ITQ, LSH, sign and the Householder rotation, each with
``fit`` and ``encode`` (faiss and numpy underneath), and the thread policy of small fits run
side by side.

The face of the package: callers import from here (``from qbench.quant import
ProductQuantizer``). Inside it, one job per module: :mod:`.pq` (k-means, PQ, OPQ),
:mod:`.additive` (RQ, LSQ++), :mod:`.binary` (ITQ, LSH, sign), :mod:`.householder` (the
H²Q rotation) and :mod:`.parallel` (the thread policy of small fits).

Layer: imports ``qbench.core`` only (the code containers included); no training engine,
no method.
"""

from qbench.quant.additive import AdditiveQuantizer
from qbench.quant.binary import ITQ, LSH, SignQuantizer
from qbench.quant.householder import HouseholderRotation, householder_product, rescale_to_sqrt_dim
from qbench.quant.parallel import SMALL_PROBLEM, fit_threads, fit_workers, side_by_side
from qbench.quant.pq import OPQ, ProductQuantizer, assign_subspaces, decode_subspaces, kmeans

__all__ = [
    "AdditiveQuantizer", "ITQ", "LSH", "OPQ", "SMALL_PROBLEM", "HouseholderRotation",
    "ProductQuantizer",
    "SignQuantizer", "assign_subspaces", "decode_subspaces", "fit_threads", "fit_workers",
    "householder_product", "kmeans", "rescale_to_sqrt_dim", "side_by_side",
]
