"""The README's Results come from the committed reference results (issue 23): regenerating
the tables from ``results/reference/`` with ``qbench compare`` gives exactly the README's
headline and claims tables and the committed ``tables/`` files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from qbench.report.compare import run_compare

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "results" / "reference"
FULL_CHECK = "fashion-mnist-full"  # the full-regime check: its own table in the README
NOT_RESULTS = {"tables", "plots", FULL_CHECK}
# the order `make reproduce-tables GRID=grids/reference.json` gives them to compare
MAKE_ORDER = ("fashion-mnist", "cifar10-jpeg")


def reference_folders() -> list[Path]:
    """The reference grid's dataset folders that hold committed results, in the Makefile's
    order (the tables list datasets in the order compare was given them)."""
    folders = sorted((d for d in REFERENCE.iterdir()
                      if d.is_dir() and d.name not in NOT_RESULTS and any(d.glob("*.json"))),
                     key=lambda d: (MAKE_ORDER.index(d.name) if d.name in MAKE_ORDER
                                    else len(MAKE_ORDER), d.name))
    assert folders, f"no committed reference results under {REFERENCE}"
    return folders


def readme_block(name: str) -> str:
    text = (ROOT / "README.md").read_text()
    found = re.search(rf"<!-- {name}:begin -->\n(.*?)<!-- {name}:end -->", text, re.S)
    assert found, f"README.md lacks the <!-- {name}:begin/end --> block"
    return found.group(1).strip()


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> tuple[str, Path]:
    folders = reference_folders()
    out = tmp_path_factory.mktemp("reference")
    run_compare(folders, fmt="md", out=out)
    return run_compare(folders, fmt="md"), out


def test_readme_headline_table_is_compare_of_the_committed_results(regenerated):
    headline, _ = regenerated
    assert readme_block("results") == headline.strip()


def test_readme_claims_table_is_compare_of_the_committed_results(regenerated):
    _, out = regenerated
    assert readme_block("claims") == (out / "tables" / "claims.md").read_text().strip()


# every metric of every cell in long form (2.4 MB): compare regenerates it, git ignores it
NOT_COMMITTED = {"all_metrics.csv"}


def test_committed_tables_are_current(regenerated):
    _, out = regenerated
    fresh = sorted(p.name for p in (out / "tables").iterdir() if p.name not in NOT_COMMITTED)
    committed = sorted(p.name for p in (REFERENCE / "tables").iterdir()
                       if p.name not in NOT_COMMITTED)
    assert fresh == committed
    for name in fresh:
        assert (REFERENCE / "tables" / name).read_text() == (out / "tables" / name).read_text(), \
            f"results/reference/tables/{name} differs from what compare writes now"


def test_readme_plot_is_committed():
    found = re.search(r"\]\((results/reference/plots/[^)]+\.png)\)",
                      (ROOT / "README.md").read_text())
    assert found and (ROOT / found.group(1)).is_file()


def test_readme_full_regime_table_is_compare_of_the_committed_check():
    folder = REFERENCE / FULL_CHECK
    if not any(folder.glob("*.json")):
        pytest.skip(f"no full-regime check committed under {folder}")
    assert readme_block("full-check") == run_compare([folder], fmt="md").strip()
