"""The synthetic dataset's sizes are bounded: too large a size is a one-line error (a
declared maximum, or the memory it would need against what is available), never a numpy
allocation traceback; valid sizes generate the same data as before."""

import hashlib
import sys

import pytest
from click.testing import CliRunner

from qbench.cli import cli
from qbench.core.errors import QbenchError
from qbench.registry import DATASETS


def digest(**overrides):
    params = DATASETS.resolve_params("synthetic", overrides)
    data = DATASETS.get("synthetic")(params).load()
    return hashlib.sha256(data.X.tobytes() + data.y.tobytes()).hexdigest()[:16]


def test_valid_sizes_generate_the_same_data_as_before():
    assert digest() == "419d4f884bad17e5"  # the defaults, as generated before the bounds
    assert digest(multilabel=True, n_items=300, dim=7, noise=0.5,
                  data_seed=3) == "af8ef366c68f6273"


@pytest.mark.parametrize("name", ["n_items", "dim", "n_classes", "n_query", "n_train",
                                  "n_val"])
def test_every_size_declares_a_maximum(name):
    param = {p.name: p for p in DATASETS.get("synthetic").params}[name]
    assert param.maximum is not None
    with pytest.raises(QbenchError, match=rf"^parameter {name}.* is above the maximum"):
        DATASETS.resolve_params("synthetic", {name: int(param.maximum) + 1})


def test_a_size_beyond_the_available_memory_is_one_line(monkeypatch):
    synthetic = sys.modules[DATASETS.get("synthetic").__module__]  # as the registry loaded it
    monkeypatch.setattr(synthetic, "available_bytes", lambda: 2**30)
    params = DATASETS.resolve_params("synthetic", {"n_items": 1_000_000, "dim": 1000})
    with pytest.raises(QbenchError, match=r"^dataset synthetic: n_items=1000000, dim=1000 "
                                          r"need about 22\.4 GiB of memory, but only 1\.0 GiB"
                                          r" is available"):
        DATASETS.get("synthetic")(params).load()


@pytest.mark.parametrize("pairs, message", [
    (["-D", "n_items=100000000"], "error: parameter n_items of dataset synthetic: "
                                  "100000000 is above the maximum 10000000"),
    (["-D", "n_items=10000000", "-D", "dim=100000"], "error: dataset synthetic: "
                                                     "n_items=10000000, dim=100000 need about"),
])
def test_cli_run_with_too_large_a_synthetic_dataset_exits_2(tmp_path, pairs, message):
    result = CliRunner().invoke(cli, ["run", "--method", "float", "--dataset", "synthetic",
                                      *pairs, "--bits", "32", "--quiet", "--no-cache",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.output
    assert "Traceback" not in result.output
