"""qbench report: one self-contained HTML page, checked as text and in a real browser."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from qbench.cli import cli
from qbench.core.errors import QbenchError
from qbench.report.html import build_report, write_report
from qbench.run.results import write_json_atomic
from tests.report.test_compare import make_result

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


class Page(HTMLParser):
    """Tags and the src/href attributes of a page."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: dict[str, int] = {}
        self.links: list[str] = []
        self.hidden_filter: bool | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1
        attrs = dict(attrs)
        self.links += [attrs[k] for k in ("src", "href") if attrs.get(k) is not None]
        if attrs.get("id") == "filter":
            self.hidden_filter = "hidden" in attrs


def results_folder(root: Path, with_tuning: bool = True) -> Path:
    """Two methods x two bit lengths x three seeds, a tuning summary with a history plot."""
    folder = root / "results"
    rng = np.random.default_rng(0)
    for method, base in (("pq", 0.5), ("dqn", 0.6)):
        for bits in (12, 32):
            for seed in range(3):
                value = base + bits / 1000 + rng.normal(0, 0.01)
                write_json_atomic(folder / f"digits-standard-{method}-{bits}b-seed{seed}.json",
                                  make_result(method, bits, seed, map_all=value,
                                              tie_aware=value))
    if with_tuning:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        tune = folder / "tune"
        tune.mkdir()
        study = "digits-standard-dqn-12b-seed5"
        (tune / f"{study}.json").write_text(json.dumps({
            "schema_version": 2, "kind": "tuning", "study": study, "method": "dqn", "bits": 12,
            "trials_asked": 8, "trials": {"complete": 5, "pruned": 3, "failed": 0},
            "best_value": 0.61, "best_params": {"lam": 0.1},
            "compute": {"epochs": {"saved_share": 0.25}}}))
        fig, ax = plt.subplots()
        ax.plot([1, 2, 3], [0.5, 0.6, 0.61])
        fig.savefig(tune / f"{study}-history.png")
        plt.close(fig)
    return folder


def test_the_page_holds_tables_claims_figures_tuning_and_environment(tmp_path):
    folder = results_folder(tmp_path)
    text = build_report([folder])
    page = Page(text)
    for heading in ("Headline MAP", "Claims of the seed papers", "Significance", "Figures",
                    "Metric card", "Tuning", "Run times", "Environment"):
        assert f"<h2>{heading}</h2>" in text
    # headline, claims (dqn beats two-stage-pq needs two-stage-pq: none here), significance,
    # metric card, tuning, times, environment
    assert page.tags["table"] >= 6
    assert page.tags["img"] >= 2  # the figures and the study's history plot
    assert 'class="mark"' in text  # the best row of a column is marked
    assert "0123456789abcdef" in text  # the code version the results record
    assert "digits-standard-dqn-12b-seed5" in text and "25%" in text
    assert "<script>" in text and page.hidden_filter is True  # JavaScript reveals the filter


def test_the_page_requests_nothing_from_the_network(tmp_path):
    page = Page(build_report([results_folder(tmp_path)]))
    assert page.links, "expected inline images"
    assert all(link.startswith("data:") for link in page.links), \
        [link[:40] for link in page.links if not link.startswith("data:")]
    assert not any("http" in link.split(",")[0] for link in page.links)


def test_claim_verdicts_are_coloured(tmp_path):
    folder = tmp_path / "r"
    for bits in (12, 32):
        for seed in range(3):
            for method, value in (("dqn", 0.7 + seed / 100), ("two-stage-pq", 0.6 + seed / 90)):
                write_json_atomic(folder / f"digits-standard-{method}-{bits}b-seed{seed}.json",
                                  make_result(method, bits, seed, map_all=value))
    text = build_report([folder])
    assert '<td class="holds">holds</td>' in text


def test_empty_missing_or_mixed_folders_are_one_line_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(QbenchError, match="no result files"):
        build_report([tmp_path / "empty"])
    with pytest.raises(QbenchError, match="no such directory"):
        build_report([tmp_path / "absent"])
    folder = results_folder(tmp_path, with_tuning=False)
    (folder / "study.json").write_text(json.dumps({"schema_version": 2, "kind": "tuning"}))
    with pytest.raises(QbenchError, match="mixed records"):
        build_report([folder])
    out = tmp_path / "report.html"
    out.write_text("earlier page")
    runner = CliRunner()
    got = runner.invoke(cli, ["report", str(folder), "--out", str(out)])
    assert got.exit_code == 2 and "mixed records" in got.output
    assert "Traceback" not in got.output and len(got.output.strip().splitlines()) == 1
    assert out.read_text() == "earlier page"  # a failed report never replaces the page
    assert not list(tmp_path.glob(".report.html.*"))


def test_cli_writes_the_page(tmp_path):
    folder = results_folder(tmp_path)
    out = tmp_path / "site" / "report.html"
    got = CliRunner().invoke(cli, ["report", str(folder), "--out", str(out)])
    assert got.exit_code == 0, got.output
    assert out.is_file() and out.read_text().startswith("<!DOCTYPE html>")


def _browser() -> str:
    """A headless-capable chromium, or skip (a snap wrapper without snapd fails --version)."""
    for name in BROWSERS:
        if path := shutil.which(name):
            try:
                ok = subprocess.run([path, "--version"], capture_output=True,
                                    timeout=60).returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                ok = False
            if ok:
                return path
    pytest.skip("no chromium to render the page (apt-get install chromium; `make test` "
                "installs it where it can)")


def test_the_page_renders_in_a_headless_browser(tmp_path):
    browser = _browser()
    out = write_report([results_folder(tmp_path)], tmp_path / "report.html")
    args = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(args + ["--dump-dom", out.as_uri()], capture_output=True, text=True,
                         timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    source, rendered = Page(out.read_text()), Page(dom.stdout)
    assert rendered.tags.get("table") == source.tags["table"]
    assert rendered.tags.get("img") == source.tags["img"]
    assert rendered.hidden_filter is False  # the embedded script ran
    shot = tmp_path / "shot.png"
    run = subprocess.run(args + [f"--screenshot={shot}", "--window-size=1200,1600",
                                 out.as_uri()], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.std() > 0.05  # not a blank page
    assert (pixels < 0.5).mean() > 0.005  # some dark text
