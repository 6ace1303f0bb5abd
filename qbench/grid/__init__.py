"""Many runs: grid files (:mod:`.gridfile`), the resumable grid runner (:mod:`.runner`),
one cell in a worker (:mod:`.worker`), equal-budget tuning with Optuna (:mod:`.tune`,
:mod:`.storage`, and :mod:`.tuning` for a grid's ``"tune"`` block) and the backends that
run cells (:mod:`.backends`: local processes or a Ray cluster).

Layer: above one experiment (``qbench.run``); only the CLI imports it.
"""
