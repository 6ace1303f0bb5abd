"""qbench: a benchmark suite for quantization strategies in deep similarity search."""

__version__ = "0.1.0"
