"""two-stage-rq and two-stage-lsq (issue 21) end to end on digits: additive codes of the
budget, selected and searched by ADC in qbench's evaluator."""

import numpy as np
import pytest

from qbench.core.codes import AQCodes
from qbench.data.protocols import make_splits
from qbench.methods import RunContext
from qbench.registry import DATASETS, METHODS

LAYOUT = {12: (2, 6), 24: (3, 8), 32: (4, 8)}


@pytest.fixture(scope="module")
def digits():
    plugin = DATASETS.get("digits")({}, None)
    ds = plugin.load()
    return ds, make_splits(ds, plugin.protocol("standard"), seed=0)


def _method(name, **overrides):
    params = {"epochs": 2, **({"train_iters": 4} if name == "two-stage-lsq" else {}),
              **overrides}
    return METHODS.get(name)(METHODS.resolve_params(name, params))


@pytest.mark.parametrize("bits", [12, 32])
@pytest.mark.parametrize("name", ["two-stage-rq", "two-stage-lsq"])
def test_additive_methods_return_codes_of_the_budget(digits, name, bits):
    ds, splits = digits
    method = _method(name)
    out = method.run(RunContext(ds, splits, bits=bits, seed=0))
    m, b = LAYOUT[bits]
    assert method.family == "pq" and isinstance(out.codes, AQCodes)
    assert out.codes.bits == bits and out.codes.db_codes.shape == (len(splits.database), m)
    assert out.codes.codebooks.shape == (m, 1 << b, out.codes.query.shape[1])
    assert out.info["quantizer"] == method.kind and out.info["codebooks"] == m
    assert out.selection["criterion"] == "MAP@all of the additive codes by ADC"
    assert np.isfinite(out.info["train_distortion"])

