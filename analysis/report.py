"""A study's report: a self-contained HTML page and a Markdown summary.

`build_report(runs, out_dir)` computes the findings, draws the figures and writes

    out_dir/report.html    figures embedded (base64 PNG), claims table, residual gains,
                           per-cell statistics, trial table linked to the MLflow runs,
                           the study file
    out_dir/summary.md     claims, onset and gains, figure links (for a README or a PR)
    out_dir/figures/       every figure as PNG and SVG

`log_report(runs, report)` attaches all of it to the study's latest parent run (artifact
dir report/) so it shows in the MLflow UI, with the study's results (`analysis.results`:
the per-cell table, headline metrics and verdict tags).

The report is a list of sections: the paper claims and onset (the depth question), then
one section per design view that applies (`analysis.views`: ablation, depth x factor
map, search, Pareto), then the cells, the trials and the study file.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from analysis.figures import (SHORTCUTS_FIGURE, FigureFile, plot_degradation_map,
                              plot_shortcuts, plot_training_curves, shortcut_table)
from analysis.findings import (NOT_SUPPORTED, NOT_TESTABLE, SUPPORTED, Findings,
                               compute_findings, pp, pp_diff)
from analysis.onset_view import onset_section
from analysis.probe_views import (layer_response_means, plot_gradient_flow,
                                  plot_layer_responses, probe_table)
from analysis.results import log_results
from analysis.runs import StudyRuns
from analysis.section import Section
from analysis.store import Artifact
from analysis.views import design_sections

REPORT_ARTIFACT_DIR = Artifact.REPORT_DIR
# Where `resweep ui` serves the store by default: links in reports of a local store.
DEFAULT_UI_URL = "http://127.0.0.1:5000"


@dataclass
class Report:
    html: Path
    markdown: Path
    figures: list[FigureFile]
    findings: Findings
    study_text: str | None
    sections: list[Section]

    @property
    def all_figures(self) -> list[FigureFile]:
        """The depth figures, then each design section's."""
        return self.figures + [f for s in self.sections for f in s.figures]


def ui_base_url(tracking_uri: str, ui_url: str | None = None) -> str:
    """The MLflow UI that shows this store: `ui_url` when given (`resweep report --ui-url`,
    e.g. the port `resweep ui --port` serves), else the tracking server itself, else
    `resweep ui`'s default address."""
    if ui_url:
        return ui_url.rstrip("/")
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return DEFAULT_UI_URL


def runs_view_url(base_url: str, experiment_id: str) -> str:
    """The training-runs table of an experiment. MLflow 3's UI opens on a GenAI overview
    by default; `workflowType=machine_learning` shows the runs with nested trials."""
    return f"{base_url}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def run_url(base_url: str, experiment_id: str, run_id: str) -> str:
    """A run's page, in the training-runs view (not MLflow 3's GenAI default)."""
    return (f"{base_url}/#/experiments/{experiment_id}/runs/{run_id}"
            "?workflowType=machine_learning")


def build_report(runs: StudyRuns, out_dir: Path, study_text: str | None = None,
                 ui_url: str | None = None) -> Report:
    """Findings + figures + report.html + summary.md for `runs` in `out_dir`; run links
    point at `ui_url` (see `ui_base_url`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    probes = probe_table(runs)
    study_text = runs.study_text() or study_text
    onset = onset_section(runs, study_text, out_dir / "figures")  # design: onset only
    findings = compute_findings(runs.trials, layer_response_means(probes),
                                design=onset.result() if onset else None)
    figures = make_figures(runs.done, runs.curves, probes, findings, out_dir / "figures")
    sections = ([onset.section()] if onset else []) + design_sections(runs, findings,
                                                                       out_dir / "figures")
    html_path, md_path = out_dir / "report.html", out_dir / "summary.md"
    base = ui_base_url(runs.tracking_uri, ui_url)
    html_text = render_html(runs, findings, figures, study_text, base, sections)
    md_text = render_markdown(runs, findings, figures, out_dir, sections)
    html_path.write_text(html_text, encoding="utf-8")
    md_path.write_text(md_text, encoding="utf-8")
    return Report(html_path, md_path, figures, findings, study_text, sections)


def make_figures(done: pd.DataFrame, curves: pd.DataFrame, probes: pd.DataFrame,
                 findings: Findings, out_dir: Path) -> list[FigureFile]:
    """Every figure the data supports, in report order (1-3 `analysis.figures`, 4-5
    `analysis.probe_views`)."""
    figures = [
        plot_training_curves(done, curves, out_dir),
        plot_degradation_map(done, findings, out_dir),
        plot_shortcuts(findings.aggregates, out_dir),
        plot_layer_responses(probes, out_dir),
        plot_gradient_flow(probes, out_dir),
    ]
    return [f for f in figures if f is not None]


def log_report(runs: StudyRuns, report: Report) -> str | None:
    """Upload the report directory to the latest parent run under report/; returns the
    parent run id (None when the study has no parent run)."""
    if runs.parent_run_id is None:
        return None
    runs.client.log_artifacts(runs.parent_run_id, str(report.html.parent), REPORT_ARTIFACT_DIR)
    log_results(runs, report.findings)
    return runs.parent_run_id


# Text -------------------------------------------------------------------------------------

def format_claims_text(findings: Findings, width: int = 100) -> str:
    """The claims table for a terminal: verdict, claim, then the evidence indented."""
    lines = []
    for claim in findings.claims:
        lines.append(f"  {claim.verdict.upper():<14} {claim.claim} [{claim.source}]")
        for part in claim.evidence.split(" | "):
            lines += textwrap.wrap(part, width, initial_indent=" " * 17,
                                   subsequent_indent=" " * 19)
        if claim.test != "-":
            lines += textwrap.wrap(f"test: {claim.test}", width, initial_indent=" " * 17,
                                   subsequent_indent=" " * 19)
    return "\n".join(lines)


def _status_counts(trials: pd.DataFrame) -> str:
    counts = trials["status"].value_counts()
    return ", ".join(f"{n} {status}" for status, n in counts.items())


def onset_lines(findings: Findings) -> list[str]:
    """One line per series (plain first): where degradation starts, or that it does not."""
    lines = [f"{series}: {onset.describe()}" for series, onset in findings.onsets.items()]
    lines += [f"{series}: {onset.describe()}"
              for series, onset in findings.residual_onsets.items()]
    return lines or ["not testable: no configuration has finished trials at two or more "
                     "depths (with everything else equal)"]


# Markdown ---------------------------------------------------------------------------------

def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(runs: StudyRuns, findings: Findings, figures: list[FigureFile],
                    out_dir: Path, sections: list[Section] = ()) -> str:
    trials = runs.trials
    lines = [f"# resweep report: {runs.study}", "",
             f"{len(trials)} trials ({_status_counts(trials)}) from MLflow experiment "
             f"`{runs.study}` (id {runs.experiment_id}) in `{runs.tracking_uri}`; latest run "
             f"`{runs.parent_run_name}`. Full report: [report.html](report.html).", "",
             "## Paper claims (He et al. 2015)", "",
             "| claim | paper | verdict | evidence | test |", "|---|---|---|---|---|"]
    for c in findings.claims:
        lines.append(f"| {_md_cell(c.claim)} | {c.source} | **{c.verdict}** | "
                     f"{_md_cell(c.evidence.replace(' | ', '; '))} | {_md_cell(c.test)} |")
    lines += ["", "## Degradation onset", ""] + [f"- {l}" for l in onset_lines(findings)]
    if findings.gains:
        lines += ["", "## Residual gain per depth (plain minus residual error)", "",
                  "| depth | residual | plain | training error gain | test error gain |",
                  "|---|---|---|---|---|"]
        for g in findings.gains:
            lines.append(f"| {g.depth} | {g.residual} | {g.plain} | "
                         f"{pp_diff(g.train_gain, g.train_ci)} | "
                         f"{pp_diff(g.test_gain, g.test_ci) if not math.isnan(g.test_gain) else 'n/a'} |")
        lines += ["", "Intervals: 95% Welch t-interval of the difference (none with one seed)."]
    lines.append("")
    for section in sections:
        lines += section.markdown()
    lines += ["## Figures", ""]
    for f in list(figures) + [f for s in sections for f in s.figures]:
        lines += [f"### {f.title}", "", f"![{f.title}]({f.png.relative_to(out_dir).as_posix()})",
                  "", f.caption, ""]
    return "\n".join(lines) + "\n"


# HTML -------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1180px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
.meta{color:#555;font-size:.92em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:.3em .55em;text-align:left;vertical-align:top}
th{background:#f4f4f4} td.num{text-align:right;font-variant-numeric:tabular-nums}
.supported{background:#e3f4e1;font-weight:600}
.not-supported{background:#fbe3e1;font-weight:600}
.not-testable{background:#eeeeee;color:#555}
figure{margin:1.2em 0} figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#444;font-size:.9em}
pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:.85em}
.status-finished{color:#1b7a1b}.status-diverged,.status-failed{color:#b3261e}
.status-stopped,.status-interrupted{color:#8a6d00}
"""


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def _table(header: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    """Cells are HTML already (escape before)."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
                         for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _mean_ci(mean: float, ci: float) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    return pp(mean) if ci is None or math.isnan(ci) else f"{100 * mean:.1f} ± {100 * ci:.1f}%"


def _verdict_class(verdict: str) -> str:
    return {SUPPORTED: "supported", NOT_SUPPORTED: "not-supported",
            NOT_TESTABLE: "not-testable"}[verdict]


def _figure_html(f: FigureFile) -> str:
    data = base64.b64encode(f.png.read_bytes()).decode("ascii")
    return (f'<figure id="{_e(f.name)}"><img alt="{_e(f.title)}" '
            f'src="data:image/png;base64,{data}"><figcaption><b>{_e(f.title)}.</b> '
            f"{_e(f.caption)} (SVG: figures/{_e(f.svg.name)})</figcaption></figure>")


def render_html(runs: StudyRuns, findings: Findings, figures: list[FigureFile],
                study_text: str | None, base: str | None = None,
                sections: list[Section] = ()) -> str:
    base = base or ui_base_url(runs.tracking_uri)
    generated = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    local_note = ("" if runs.tracking_uri.startswith(("http://", "https://")) else
                  f" (links open in the MLflow UI at {_e(base)}: run <code>resweep ui</code> "
                  "first, or pass <code>resweep report --ui-url</code>)")
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>resweep report: {_e(runs.study)}</title><style>{_CSS}</style></head><body>",
        f"<h1>resweep report: {_e(runs.study)}</h1>",
        f'<p class="meta">MLflow experiment <a href="{_e(runs_view_url(base, runs.experiment_id))}">'
        f"{_e(runs.study)}</a> (id {_e(runs.experiment_id)}) in <code>{_e(runs.tracking_uri)}</code>"
        f"{local_note}. {len(runs.trials)} trials ({_e(_status_counts(runs.trials))}) from "
        f"{runs.parents} <code>resweep run</code>(s); latest run <code>{_e(runs.parent_run_name)}"
        f"</code>. Generated {generated}.</p>",
        "<h2>Findings</h2>",
        "<h3>Paper claims (He et al. 2015, arXiv 1512.03385)</h3>",
        _claims_html(findings),
        "<h3>Degradation onset</h3><ul>"
        + "".join(f"<li>{_e(line)}</li>" for line in onset_lines(findings)) + "</ul>",
        f"<p class=meta>Only finished trials count. Margin: {100 * findings.margin:g} pp "
        f"(percentage points); significance level {findings.alpha:g}; the onset's p-values "
        "are Holm-corrected over all depth pairs of a series (several pairs are compared), "
        "and the same onset test decides the residual claim.</p>",
    ]
    if findings.gains:
        parts += ["<h3>Residual gain per depth (plain minus residual error)</h3>",
                  _gains_html(findings),
                  "<p class=meta>Positive: the residual net has the lower error. Interval: 95% "
                  "Welch t-interval of the difference (none with a single seed).</p>"]
    for section in sections:  # the design views, each with its figures
        parts += [section.html()] + [_figure_html(f) for f in section.figures]
    parts.append("<h2>Figures</h2>")
    for f in figures:
        parts.append(_figure_html(f))
        if f.name == SHORTCUTS_FIGURE:
            parts.append(_shortcut_html(findings))
    if not figures:
        parts.append("<p>No figure: the study has no finished trials with the data they need.</p>")
    parts += ["<h2>Cells (mean over seeds)</h2>", _cells_html(findings),
              "<h2>Trials</h2>", _trials_html(runs, base)]
    if not findings.excluded.empty:
        parts.append(f"<p class=meta>{len(findings.excluded)} trial(s) not finished are listed "
                     "but not counted in the statistics.</p>")
    parts += ["<h2>Study file</h2>",
              f"<pre>{_e(study_text) if study_text else 'not recorded'}</pre>",
              "</body></html>"]
    return "\n".join(parts)


def _claims_html(findings: Findings) -> str:
    rows = []
    for c in findings.claims:
        evidence = "<br>".join(_e(p) for p in c.evidence.split(" | "))
        rows.append([_e(c.claim), _e(c.source),
                     f'<span class="{_verdict_class(c.verdict)}">{_e(c.verdict)}</span>',
                     evidence, _e(c.test)])
    return _table(["claim", "paper", "verdict", "numbers", "test"], rows)


def _gains_html(findings: Findings) -> str:
    rows = [[str(g.depth), _e(g.residual), _e(g.plain), f"{g.n_plain} / {g.n_residual}",
             _e(pp_diff(g.train_gain, g.train_ci)),
             _e(pp_diff(g.test_gain, g.test_ci)) if not math.isnan(g.test_gain) else "n/a",
             _e(f"{g.train_better.p_value:.2g}") if g.train_better.p_value is not None else "-"]
            for g in findings.gains]
    return _table(["depth", "residual", "plain", "seeds (plain / residual)",
                   "training error gain", "test error gain", "p (train, one-sided)"],
                  rows, numeric={0, 4, 5, 6})


def _shortcut_html(findings: Findings) -> str:
    table = shortcut_table(findings.aggregates)
    rows = [[_e(r["group"].replace("\n", ", ")), _e(r["option"]), str(r["n"]),
             _mean_ci(r["train_error_mean"], r["train_error_ci"]),
             _mean_ci(r.get("test_error_mean"), r.get("test_error_ci"))]
            for _, r in table.iterrows()]
    return ("<p><b>Shortcut options (Table 3 style).</b></p>"
            + _table(["depth", "option", "seeds", "final train error", "final test error"],
                     rows, numeric={2, 3, 4}))


def _cells_html(findings: Findings) -> str:
    agg = findings.aggregates
    if agg.empty:
        return "<p>No finished trials.</p>"
    rows = [[_e(r["label"]), str(r["n"]), _e(r["seeds"]),
             _mean_ci(r.get("train_error_mean"), r.get("train_error_ci")),
             _mean_ci(r.get("val_error_mean"), r.get("val_error_ci")),
             _mean_ci(r.get("test_error_mean"), r.get("test_error_ci")),
             "n/a" if math.isnan(r.get("train_error_std", math.nan))
             else f"{100 * r['train_error_std']:.2f} pp"]
            for _, r in agg.iterrows()]
    return (_table(["cell", "seeds", "seed values", "final train error", "final val error",
                    "final test error", "train error std"], rows, numeric={1, 3, 4, 5, 6})
            + "<p class=meta>mean ± half-width of the 95% t-interval over seeds.</p>")


def _trials_html(runs: StudyRuns, base: str) -> str:
    rows = []
    for _, t in runs.trials.sort_values(["residual", "depth", "label", "seed"]).iterrows():
        link = run_url(base, runs.experiment_id, t["run_id"])
        epochs = runs.curves[runs.curves["run_id"] == t["run_id"]]["epoch"].max() \
            if not runs.curves.empty else None
        rows.append([
            f'<a href="{_e(link)}">{_e(t["name"])}</a>',
            f'<span class="status-{_e(t["status"])}">{_e(t["status"])}</span>',
            _e(t["seed"]), _e(t.get("depth")), _e(t.get("residual")),
            _e(t.get("shortcut")) if t.get("residual") else "-",
            pp(t.get("train_error", math.nan)), pp(t.get("test_error", math.nan)),
            _e("" if epochs is None or pd.isna(epochs) else int(epochs)),
            _e(f"{int(t['params']):,}" if not pd.isna(t.get("params", math.nan)) else ""),
            f'<code>{_e(t["trial_id"])}</code>', f'<code>{_e(t["run_id"][:12])}</code>'])
    return _table(["trial", "status", "seed", "depth", "residual", "shortcut",
                   "final train error", "final test error", "epochs", "parameters",
                   "trial_id", "MLflow run"], rows, numeric={2, 3, 6, 7, 8, 9})
