"""The training engine shared by every method: networks (:mod:`.encoders`), similarity
losses (:mod:`.losses`), the training loop and its parts (:mod:`.engine`), model selection
(:mod:`.selection`) and the content-addressed stage-1 encoder cache
(:mod:`.encoder_cache`). It receives a :class:`qbench.data.context.RunContext` and knows no
method.

Layer: imports ``qbench.core``, ``qbench.registry``, ``qbench.data``, ``qbench.eval`` and
``qbench.quant``.
"""
