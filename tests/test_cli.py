"""The command line through click's test runner: happy paths and every bad input."""

import json
import re

import pytest
from click.testing import CliRunner

from qbench.cli import cli

REQUIRED_KEYS = {"schema_version", "method", "dataset", "protocol", "bits", "seed", "params",
                 "splits", "metrics", "curves", "timings", "cost", "metric_card", "env"}


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def run_args(out, *extra, method="float"):
    return ["run", "--method", method, "--dataset", "digits", "--bits", "32", "--epochs", "2",
            "--quiet", "--out", out, *extra]


def test_help_on_every_command():
    for cmd in ([], ["list"], ["run"], ["evaluate"], ["compare"], ["grid"], ["cache"],
                ["cache", "list"], ["cache", "clear"]):
        result = invoke(*cmd, "--help")
        assert result.exit_code == 0, result.output
        assert "Usage:" in result.output


def test_list_shows_methods_and_datasets_with_descriptions():
    result = invoke("list")
    assert result.exit_code == 0
    assert "float" in result.output and "digits" in result.output
    assert "scikit-learn load_digits" in result.output


def test_run_writes_one_result_with_the_schema_keys(tmp_path):
    result = invoke(*run_args(tmp_path))
    assert result.exit_code == 0, result.output
    files = list(tmp_path.glob("*.json"))
    # --epochs is a choice of this run: its hash ends the name (issue 25)
    assert len(files) == 1
    assert re.fullmatch(r"digits-standard-float-32b-seed0-[0-9a-f]{8}\.json", files[0].name)
    data = json.loads(files[0].read_text())
    assert REQUIRED_KEYS <= set(data)
    assert 0 < data["metrics"]["map_all"] <= 1
    assert data["splits"]["n_query"] == 100 and len(data["splits"]["checksum"]) == 64
    assert data["params"]["epochs"] == 2


def test_same_seed_gives_same_metrics(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert invoke(*run_args(out, "--seed", "4")).exit_code == 0
    ma = json.loads(next(a.glob("*.json")).read_text())["metrics"]
    mb = json.loads(next(b.glob("*.json")).read_text())["metrics"]
    assert ma["map_all"] == mb["map_all"]


def _assert_clean_error(result, tmp_path, *fragments):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0]
    assert not list(tmp_path.rglob("*.json"))


@pytest.mark.parametrize(
    "extra, fragments",
    [
        (["--method", "nope"], ["'nope'", "allowed:", "float"]),
        (["--dataset", "nope"], ["'nope'", "allowed:", "digits"]),
        (["--protocol", "nope"], ["'nope'", "allowed: standard"]),
        (["--bits", "0"], ["--bits", "0"]),
        (["--bits", "-8"], ["-8"]),
        (["--bits", "abc"], ["'abc'", "integer"]),
        (["--bits", "100000000"], ["--bits 100000000", "up to 4096"]),
        (["-p", "hidden=100000000"], ["parameter hidden", "above the maximum 16384"]),
        (["-p", "dim=100000"], ["parameter dim", "above the maximum 4096"]),
        (["-p", "nope=1"], ["'nope'", "allowed:"]),
        (["-p", "dim=abc"], ["dim", "'abc'", "int"]),
        (["-p", "loss=hinge"], ["'hinge'", "allowed: cosine, ip"]),
        (["-p", "lr=nan"], ["parameter lr", "nan", "allowed: a finite number"]),
        (["-p", "weight_decay=inf"], ["parameter weight_decay", "inf", "a finite number"]),
        (["-p", "dim"], ["key=value", "'dim'"]),
        (["--device", "tpu"], ["'tpu'", "allowed: auto, cpu, cuda, cuda:N"]),
        (["--device", "cuda:x"], ["'cuda:x'", "cuda:N"]),
        (["--epochs", "0"], ["--epochs", "0"]),
        (["--select", "median"], ["--select 'median'", "allowed: best, last"]),
        (["--split-seed", "-1"], ["--split-seed", "-1"]),
        (["--pool-size", "5"], ["selection pool of 5 items holds no relevant item",
                                "--pool-size"]),
    ],
)
def test_bad_run_input_is_one_line_exit_2_and_no_file(tmp_path, extra, fragments):
    args = run_args(tmp_path)
    # later options override earlier ones for --method/--dataset/--bits/--device/--epochs
    _assert_clean_error(invoke(*args, *extra), tmp_path, *fragments)


def test_cuda_without_cuda_is_a_clean_error(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _assert_clean_error(invoke(*run_args(tmp_path, "--device", "cuda")), tmp_path,
                        "--device cuda", "allowed here: auto, cpu")
    _assert_clean_error(invoke(*run_args(tmp_path, "--device", "cuda:1")), tmp_path,
                        "--device cuda:1", "allowed here: auto, cpu")


def test_unwritable_out_is_a_clean_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = invoke(*run_args(blocker / "sub"))
    assert result.exit_code == 2
    assert "not writable" in result.stderr and str(blocker / "sub") in result.stderr


def test_missing_data_dir_is_a_clean_error(tmp_path):
    result = invoke(*run_args(tmp_path, "--data-dir", tmp_path / "absent"))
    _assert_clean_error(result, tmp_path, "--data-dir", "absent")


def test_data_dir_without_the_dataset_files_is_a_clean_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = run_args(tmp_path / "out", "--dataset", "cifar10", "--data-dir", empty)
    result = invoke(*args)
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert line.startswith("error: ") and "\n" not in line
    assert str(empty) in line and "cifar-10" in line
    assert not list(tmp_path.rglob("*.json"))


def test_truncated_idx_file_is_a_clean_error(tmp_path):
    from tests.data.test_datasets import write_idx_set

    data = tmp_path / "fm"
    write_idx_set(data, 30, 10)
    victim = data / "train-images-idx3-ubyte.gz"
    import gzip

    raw = gzip.decompress(victim.read_bytes())
    victim.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    result = invoke(*run_args(tmp_path / "out", "--dataset", "fashion-mnist",
                              "--data-dir", data))
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert "\n" not in line and "train-images-idx3-ubyte" in line
    assert not list(tmp_path.rglob("*.json"))


def _codes_npz(path, **overrides):
    import numpy as np

    rng = np.random.default_rng(0)
    arrays = {
        "query_labels": rng.integers(0, 3, 8), "db_labels": rng.integers(0, 3, 40),
        "query_bits": rng.integers(0, 2, (8, 16)), "db_bits": rng.integers(0, 2, (40, 16)),
    }
    arrays.update(overrides)
    np.savez(path, **arrays)
    return path


def test_evaluate_scores_a_codes_file_with_the_shared_keys(tmp_path):
    codes = _codes_npz(tmp_path / "codes.npz")
    out = tmp_path / "eval.json"
    result = invoke("evaluate", codes, "--out", out, "--k", "10")
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    for key in ("map_all", "map_at_k", "tie_aware_map_all", "tie_aware_map_all_optimistic",
                "tie_aware_map_all_pessimistic", "p_at_hamming2"):
        assert key in data["metrics"]
    assert data["metric_card"]["k"] == 10 and data["metric_card"]["distance"] == "hamming"
    assert {"pr", "top_r"} <= set(data["curves"]) and "eval_s" in data["timings"]
    assert "MAP@all" in result.output


def test_evaluate_malformed_file_is_one_line_naming_the_key(tmp_path):
    import numpy as np

    codes = _codes_npz(tmp_path / "codes.npz", db_labels=np.zeros(39, dtype=int))
    out = tmp_path / "eval.json"
    result = invoke("evaluate", codes, "--out", out)
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert "\n" not in line and "db_labels" in line
    assert not out.exists()


def test_evaluate_out_that_is_a_directory_is_refused_before_evaluating(tmp_path):
    codes = _codes_npz(tmp_path / "codes.npz")
    result = invoke("evaluate", codes, "--out", tmp_path)
    assert result.exit_code == 2
    assert "is a directory" in result.stderr and "Traceback" not in result.output


def test_evaluate_float_embeddings_by_cosine_and_refuses_sdc_for_them(tmp_path):
    import numpy as np

    rng = np.random.default_rng(1)
    codes = _codes_npz(tmp_path / "emb.npz", query_emb=rng.normal(size=(8, 4)),
                       db_emb=rng.normal(size=(40, 4)))
    np.savez(codes, **{k: v for k, v in np.load(codes).items() if "bits" not in k})
    out = tmp_path / "e.json"
    assert invoke("evaluate", codes, "--metric", "cosine", "--out", out).exit_code == 0
    assert json.loads(out.read_text())["metric_card"]["distance"] == "cosine"
    result = invoke("evaluate", codes, "--sdc")
    assert result.exit_code == 2 and "--sdc needs PQ codes" in result.stderr


def test_negative_seed_is_a_clean_error(tmp_path):
    _assert_clean_error(invoke(*run_args(tmp_path, "--seed", "-1")), tmp_path, "--seed", "-1")


def test_a_failed_run_leaves_no_empty_out_folder_it_created(tmp_path):
    out = tmp_path / "fresh"
    (tmp_path / "empty").mkdir()
    result = invoke("run", "--method", "float", "--dataset", "mnist", "--data-dir",
                    tmp_path / "empty", "--quiet", "--out", out)
    assert result.exit_code == 2
    assert not out.exists()
    kept = tmp_path / "kept"
    assert invoke(*run_args(kept, "--pool-size", "5")).exit_code == 2
    assert not list(kept.glob("*.json")) and list((kept / "splits").iterdir())


def test_cache_list_and_clear_commands(tmp_path):
    assert invoke(*run_args(tmp_path / "o", "--cache-dir", tmp_path / "c")).exit_code == 0
    listed = invoke("cache", "list", "--cache-dir", tmp_path / "c")
    assert listed.exit_code == 0 and "1 encoder entries" in listed.output
    cleared = invoke("cache", "clear", "--cache-dir", tmp_path / "c")
    assert cleared.exit_code == 0 and "removed" in cleared.output
    assert "0 encoder entries" in invoke("cache", "list", "--cache-dir", tmp_path / "c").output


def test_run_records_the_deterministic_switch_and_restores_torch_threads(tmp_path):
    import torch

    threads = torch.get_num_threads()
    assert invoke(*run_args(tmp_path, "--deterministic")).exit_code == 0
    assert torch.get_num_threads() == threads
    (path,) = tmp_path.glob("*.json")
    assert json.loads(path.read_text())["deterministic"] is True


@pytest.mark.parametrize("command", ["list", "clear"])
def test_cache_commands_on_a_missing_or_non_folder_cache_dir_are_one_line_errors(tmp_path,
                                                                                 command):
    missing = invoke("cache", command, "--cache-dir", tmp_path / "nope")
    assert missing.exit_code == 2 and "does not exist" in missing.stderr
    (tmp_path / "file").write_text("x")
    not_dir = invoke("cache", command, "--cache-dir", tmp_path / "file")
    assert not_dir.exit_code == 2 and "is not a directory" in not_dir.stderr
    assert len(not_dir.stderr.strip().splitlines()) == 1
