"""The training engine shared by every method: its parameters (:mod:`.params`), networks
(:mod:`.encoders`), similarity losses (:mod:`.losses`), inputs (:mod:`.inputs`), the
training loop (:mod:`.trainer`), its snapshots (:mod:`.snapshot`), inference
(:mod:`.embedder`), the trained candidates (:mod:`.trained_encoder`), model selection
(:mod:`.selection`) and the content-addressed stage-1 encoder cache
(:mod:`.encoder_cache`). It receives a :class:`qbench.data.context.RunContext` and knows no
method.

Layer: imports ``qbench.core``, ``qbench.registry``, ``qbench.data``, ``qbench.eval`` and
``qbench.quant``.
"""
