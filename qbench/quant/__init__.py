"""Quantizers: PQ, OPQ, ITQ, LSH, sign and the Householder rotation, each with ``fit`` and
``encode`` (faiss and numpy underneath), and the thread policy of small fits run side by
side.

Layer: imports ``qbench.core`` and the evaluator's code containers only; no training
engine, no method.
"""
