"""Datasets as values: the plugin base and cached loading (:mod:`.dataset`), protocols and
splits (:mod:`.protocols`), the selection pool (:mod:`.pool`), what a run hands its method
(:mod:`.context`), download and verify (:mod:`.download`) and the verified array cache
(:mod:`.arraycache`). The dataset plugins live in ``datasets/`` (``qbench.datasets``).

Layer: imports only ``qbench.core`` and ``qbench.registry``.
"""

from qbench.data.dataset import Dataset, DatasetPlugin, ProtocolSpec

__all__ = ["Dataset", "DatasetPlugin", "ProtocolSpec"]
