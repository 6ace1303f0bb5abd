"""Quantization strategies and baselines: one public module per method, found by the
registry (modules whose name starts with ``_`` are skipped).

This package is also the method plugin interface, the face third-party plugins import:
``from qbench.methods import Method, MethodOutput, RunContext``. The interface lives in
private modules beside the plugins, as pytorch-metric-learning keeps a loss family's base
beside its losses:

- ``_base``: :class:`Method`, :class:`MethodOutput`, the families and the code budget;
- ``_trained``: :func:`select_and_encode`, model selection then encoding for methods that
  train or fit;
- ``_joint``: :class:`JointMethod` and :class:`CodebookHooks`, the base of dqn, ssm and gsl.

Layer: above the training engine (``qbench.train``), the quantizers (``qbench.quant``), the
evaluator (``qbench.eval``) and ``qbench.data``; only one experiment (``qbench.run``) and
what stands on it import methods.
"""

from qbench.data.context import RunContext
from qbench.methods._base import (
    DEFAULT_DIM,
    FAMILIES,
    MAX_BITS,
    Method,
    MethodOutput,
    l2_normalise,
    pad_columns,
    pq_layout,
)
from qbench.methods._joint import (
    JOINT_PARAMS,
    REFIT_NITER,
    CodebookHooks,
    JointMethod,
    joint_layout,
    quantizes_normalised,
    tangent_part,
)
from qbench.methods._trained import AQRepresentation, PQRepresentation, select_and_encode

__all__ = [
    "AQRepresentation", "DEFAULT_DIM", "FAMILIES", "MAX_BITS", "JOINT_PARAMS", "CodebookHooks",
    "JointMethod", "Method",
    "MethodOutput", "PQRepresentation", "RunContext", "l2_normalise", "pad_columns",
    "pq_layout", "select_and_encode", "tangent_part", "REFIT_NITER", "joint_layout",
    "quantizes_normalised",
]
