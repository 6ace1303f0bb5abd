"""``qbench report``: one self-contained HTML page for one or more results folders.

The page holds everything ``compare`` writes, inline, so it opens from disk with no network:
the headline table of every (dataset, protocol, convention) with mean ± std [95% CI] and
the tied/best marks, the claims table with its verdicts coloured, the significance table,
every figure of :mod:`qbench.report.plots` (PNG data URIs), the metric card of each
convention, the tuning summary of each folder's ``tune/`` studies (trials, best value and
parameters, pruned share, history plot), run times, and the environment the runs record
(code version, git commit, dirty flag). A few lines of embedded JavaScript sort any table
by a click on its header and filter rows by method; without JavaScript the page is the
same, unsorted and unfiltered. No ``src`` or ``href`` names a remote URL.
"""

from __future__ import annotations

import base64
import html
import json
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import pandas as pd

from qbench.core.atomic import atomic_write
from qbench.core.errors import QbenchError
from qbench.report.claims import CLAIMS, evaluate_claims
from qbench.report.compare import prepare
from qbench.report.load import expand_paths
from qbench.report.rows import HEADLINE
from qbench.report.tables import Section, build_sections, convention_text
from qbench.run.results import FAILURE_SUFFIX

VERDICT_CLASS = {"holds": "holds", "does not hold": "fails", "undecided": "undecided"}

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:1200px;color:#222}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ccc}h3{margin-top:1.4em}
table{border-collapse:collapse;margin:.6em 0 1.2em}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th:first-child,td:first-child{text-align:left}
th{background:#f2f2f2;cursor:pointer;user-select:none}
td.mark{font-weight:bold;background:#e8f4e8}
td.holds{background:#cdeccd}td.fails{background:#f6cccc}td.undecided{background:#eee}
p.note{color:#555;margin:.2em 0}img{max-width:100%;border:1px solid #ddd;margin:.4em 0}
#filter{font-size:1em;padding:3px 6px;width:22em}code{background:#f4f4f4;padding:0 3px}
"""

SCRIPT = """
(function(){
  function key(cell){
    if(!cell){ return [2, '']; }
    var t=cell.textContent.trim(), m=t.match(/^[-+\\u2212]?\\d+(\\.\\d+)?(e[-+]?\\d+)?/i);
    return m ? [0, parseFloat(m[0].replace('\\u2212','-'))] : [1, t.toLowerCase()];
  }
  document.querySelectorAll('table.sortable').forEach(function(table){
    table.querySelectorAll('th').forEach(function(th, col){
      th.title='sort by this column';
      th.addEventListener('click', function(){
        var body=table.tBodies[0], rows=Array.prototype.slice.call(body.rows);
        var asc=th.getAttribute('data-order')!=='asc';
        table.querySelectorAll('th').forEach(function(h){h.removeAttribute('data-order');});
        th.setAttribute('data-order', asc ? 'asc' : 'desc');
        rows.sort(function(a, b){
          var x=key(a.cells[col]), y=key(b.cells[col]);
          var c=x[0]-y[0] || (x[1]<y[1] ? -1 : x[1]>y[1] ? 1 : 0);
          return asc ? c : -c;
        });
        rows.forEach(function(r){body.appendChild(r);});
      });
    });
  });
  var box=document.getElementById('filter');
  if(box){
    box.hidden=false;
    box.addEventListener('input', function(){
      var q=box.value.trim().toLowerCase();
      document.querySelectorAll('table.filterable tbody tr').forEach(function(r){
        r.hidden = q!=='' && r.cells[0].textContent.toLowerCase().indexOf(q)<0;
      });
    });
  }
})();
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _table(header: list[str], rows: list[list[tuple[str, str]]], filterable: bool = False
           ) -> str:
    """A sortable table; each cell is (text, css class)."""
    cls = "sortable filterable" if filterable else "sortable"
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="{c}">{_e(t)}</td>' if c else f"<td>{_e(t)}</td>"
                                    for t, c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _frame_table(frame: pd.DataFrame, filterable: bool = False) -> str:
    rows = [[(_cell(v), "") for v in record] for record in frame.itertuples(index=False)]
    return _table([str(c) for c in frame.columns], rows, filterable)


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if value != value else f"{value:.4g}"
    return str(value)


def _section_html(section: Section) -> str:
    rows = [[(label, "")] + [(text, "mark" if marked else "") for text, marked in cells]
            for label, cells in section.rows]
    notes = "".join(f'<p class="note">{_e(line)}</p>' for line in section.title[1:])
    foot = "".join(f'<p class="note">{_e(line)}</p>' for line in section.footer)
    return (f"<h3>{_e(section.title[0])}</h3>{notes}"
            + _table(section.columns, rows, filterable=True) + foot)


def _claims_html(agg) -> str:
    frame = evaluate_claims(agg)
    items = "".join(f"<li><b>{_e(c.text)}</b>: {_e(c.source)}</li>" for c in CLAIMS)
    if frame.empty:
        return f"<ul>{items}</ul><p>No claim has runs of both its sides.</p>"
    parts = [f"<ul>{items}</ul>"]
    for (dataset, protocol, conv), part in frame.groupby(["dataset", "protocol", "convention"],
                                                         sort=True):
        rows = []
        for r in part.itertuples(index=False):
            ci = f"[{r.ci_low:+.4f}, {r.ci_high:+.4f}]" if r.ci_low == r.ci_low else ""
            rows.append([(r.claim, ""), (str(r.bits), ""), (r.compared, ""), (str(r.n_seeds), ""),
                         (_cell(r.mean_a), ""), (_cell(r.mean_b), ""), (f"{r.diff:+.4f}", ""),
                         (ci, ""), (r.verdict, VERDICT_CLASS.get(r.verdict, ""))])
        parts.append(f"<h3>{_e(dataset)} / {_e(protocol)}</h3>"
                     f'<p class="note">convention: {_e(convention_text(agg.conventions[conv]))}'
                     "</p>" + _table(["claim", "bits", "compared", "n", "mean a", "mean b",
                                      "diff", "95% CI", "verdict"], rows, filterable=True))
    return "".join(parts)


def _png(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{_e(Path(path).stem)}" src="data:image/png;base64,{data}">'


def _plots_html(agg) -> str:
    from qbench.report.plots import write_plots

    with tempfile.TemporaryDirectory() as tmp:
        pngs = sorted(p for p in write_plots(agg, Path(tmp)) if p.suffix == ".png")
        return "".join(f"<h3>{_e(p.stem)}</h3>{_png(p)}" for p in pngs)


def _metric_cards(runs) -> str:
    cards: dict[str, dict] = {}
    for run in runs:
        cards.setdefault(run.convention, run.result["metric_card"])
    parts = []
    for i, (_, card) in enumerate(sorted(cards.items()), start=1):
        rows = [[(k, ""), (json.dumps(v) if isinstance(v, (dict, list)) else str(v), "")]
                for k, v in card.items()]
        parts.append(f"<h3>convention {i}</h3>" + _table(["entry", "value"], rows))
    return "".join(parts)


def _tuning_html(folders: list[Path]) -> str:
    rows, plots = [], []
    for folder in folders:
        for path in sorted((folder / "tune").glob("*.json")):
            try:
                s = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(s, dict) or s.get("kind") != "tuning":
                continue
            trials = s.get("trials") if isinstance(s.get("trials"), dict) else {}
            epochs = (s.get("compute") or {}).get("epochs") or {}
            saved = epochs.get("saved_share")
            best = s.get("best_value")
            rows.append([(s.get("study", path.stem), ""), (str(s.get("method", "")), ""),
                         (str(s.get("bits", "")), ""), (str(s.get("trials_asked", "")), ""),
                         (str(trials.get("complete", "")), ""), (str(trials.get("pruned", "")), ""),
                         (str(trials.get("failed", "")), ""),
                         ("" if best is None else f"{best:.4f}", ""),
                         (json.dumps(s.get("best_params", {})), ""),
                         ("" if saved is None else f"{saved:.0%}", "")])
            history = path.with_name(path.stem + "-history.png")
            if history.is_file():
                plots.append(f"<h3>{_e(path.stem)}</h3>{_png(history)}")
    if not rows:
        return "<p>No tuning studies in these folders.</p>"
    table = _table(["study", "method", "bits", "trials asked", "complete", "pruned", "failed",
                    "best value", "best parameters", "epochs saved by pruning"], rows,
                   filterable=True)
    return table + ("<details><summary>history plots</summary>" + "".join(plots)
                    + "</details>" if plots else "")


def _times_html(runs) -> str:
    seconds: dict[tuple, list[float]] = defaultdict(list)
    for run in runs:
        total = (run.result.get("timings") or {}).get("total_s")
        if isinstance(total, (int, float)):
            seconds[(run.result["dataset"], run.label)].append(float(total))
    rows = [[(label, ""), (dataset, ""), (str(len(v)), ""), (f"{sum(v) / len(v):.1f}", ""),
             (f"{sum(v):.0f}", "")] for (dataset, label), v in sorted(seconds.items())]
    return _table(["method", "dataset", "runs", "mean s per run", "total s"], rows,
                  filterable=True)


def _environment_html(runs) -> str:
    seen = Counter()
    for run in runs:
        env = run.result.get("env") or {}
        seen[(run.result.get("code_version", ""), str(env.get("git_commit", "")),
              str(env.get("git_dirty", "")), str(env.get("python", "")))] += 1
    rows = [[(cv, ""), (commit, ""), (dirty, ""), (py, ""), (str(n), "")]
            for (cv, commit, dirty, py), n in sorted(seen.items())]
    return _table(["code version", "git commit", "dirty", "python", "runs"], rows)


def _check_folders(folders: list[Path]) -> None:
    """One-line errors: a missing folder, no result file, or result files beside records
    of another kind (a tuning summary, another JSON) in one folder."""
    for folder in folders:
        if not folder.is_dir():
            raise QbenchError(f"{folder}: not a results folder (no such directory)")
        files = [p for p in expand_paths([folder]) if not p.name.endswith(FAILURE_SUFFIX)]
        if not files:
            raise QbenchError(f"{folder}: no result files (*.json) to report")
        kinds = Counter()
        for path in files:
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise QbenchError(f"{path}: not a readable JSON file ({exc})") from None
            kind = data.get("kind", "result") if isinstance(data, dict) else "not an object"
            kinds[(kind, data.get("schema_version") if isinstance(data, dict) else None)] += 1
        if len(kinds) > 1:
            found = ", ".join(f"{n} {k} (schema {v})" for (k, v), n in sorted(kinds.items(),
                                                                             key=str))
            raise QbenchError(f"{folder}: mixed records ({found}); a results folder holds "
                              "result files of one schema only")


def build_report(folders: list[Path], title: str | None = None) -> str:
    """The report page for the result files of ``folders``, as one HTML string."""
    folders = [Path(f) for f in folders]
    _check_folders(folders)
    runs, agg, sig, notes = prepare(folders)
    sections = build_sections(agg, sig, HEADLINE)
    sig_cols = [c for c in ("dataset", "protocol", "bits", "label", "mean", "n", "reference",
                            "diff", "ci_low", "ci_high", "p_value", "p_holm", "tied")
                if c in sig.table.columns]
    sig_table = sig.table[sig_cols] if sig_cols else sig.table
    title = title or "qbench report: " + ", ".join(str(f) for f in folders)
    body = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="note">{len(runs)} result files from {_e(", ".join(map(str, folders)))}.'
        " Click a column header to sort; type in the box to filter rows by method.</p>",
        *(f'<p class="note">{_e(n)}</p>' for n in notes),
        '<input id="filter" type="search" placeholder="filter rows by method" hidden>',
        "<h2>Headline MAP</h2>", *(_section_html(s) for s in sections),
        "<h2>Claims of the seed papers</h2>", _claims_html(agg),
        "<h2>Significance</h2>", _frame_table(sig_table, filterable=False),
        "<h2>Figures</h2>", _plots_html(agg),
        "<h2>Metric card</h2>", _metric_cards(runs),
        "<h2>Tuning</h2>", _tuning_html(folders),
        "<h2>Run times</h2>", _times_html(runs),
        "<h2>Environment</h2>", _environment_html(runs),
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>"
            + "\n".join(body) + f"<script>{SCRIPT}</script></body></html>\n")


def write_report(folders: list[Path], out: Path, title: str | None = None) -> Path:
    """Write :func:`build_report` to ``out`` atomically (never a half-written page)."""
    page = build_report(folders, title)
    out = Path(out)
    with atomic_write(out) as fh:
        fh.write(page.encode())
    return out
