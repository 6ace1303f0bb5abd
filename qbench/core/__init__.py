"""The ground layer: what every other layer uses and nothing of qbench's domain.

Errors (:mod:`.errors`), atomic writes (:mod:`.atomic`), the process's core share and
thread policy (:mod:`.cores`, :mod:`.threads`), host memory (:mod:`.memory`), the code
containers every layer passes around (:mod:`.codes`), labels (:mod:`.labels`) and the code's
provenance (:mod:`.provenance`). Imports nothing of qbench (only the package version).
"""
