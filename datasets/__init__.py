"""Dataset sources: one module per source, found by the registry."""
