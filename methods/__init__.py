"""Quantization strategies and baselines: one module per method, found by the registry."""
