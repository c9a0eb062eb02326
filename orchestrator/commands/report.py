"""`resweep report`: a study's MLflow runs -> findings, figures and an HTML report."""

from __future__ import annotations

HELP = "figures, findings and an HTML report of a study's runs"
DESCRIPTION = """\
Read a study's runs from MLflow and write its report:

  <out>/report.html   self-contained (figures embedded): paper-claims table with verdicts,
                      degradation onset, residual gain per depth, per-cell statistics over
                      seeds, every trial linked to its MLflow run, the study file
  <out>/summary.md    the claims and figures in Markdown
  <out>/figures/      training curves, degradation map, shortcut options, layer responses,
                      gradient flow (PNG + SVG; only those the study's data supports)

Design views, where the study's data supports them: an ablation's variants against its
baseline (table + forest plot), a grid over depth and a second factor as a 2-D
degradation map, a search's best trial, history, parameter importance and parallel
coordinates, and for any design the Pareto fronts of error vs parameters, MACs and time.

The files are also logged to the study's latest `resweep run` (parent run) under the
artifact directory report/, so they show in the MLflow UI, together with the results:
the per-cell table (results/cells.json, an MLflow table), headline metrics (result.*) and
verdict tags (resweep.claim.*, resweep.ablation.*).

Trials: every trial run of the study's experiment (all `resweep run`s), one per trial_id.
Statistics use finished trials only: mean, std and 95% t-interval over seeds. Degradation
onset: the smallest depth whose plain-net training error exceeds a shallower plain net's
by more than seed noise (one-sided Welch t-test, alpha 0.05, Holm-corrected over the
depth pairs of each series; with a single seed: by more than 1 percentage point).
"""

EXAMPLES = """\
examples:
  resweep report search_spaces/degradation-quick.yaml
  resweep report degradation-quick --out /tmp/report -q
  resweep report degradation --tracking-uri http://127.0.0.1:5000
  resweep report degradation-quick --ui-url http://127.0.0.1:5001   # after resweep ui --port 5001
"""


def ui_url(text: str) -> str:
    """--ui-url: an http(s) address."""
    import argparse

    if not text.startswith(("http://", "https://")) or len(text) <= len("https://"):
        raise argparse.ArgumentTypeError(f"got {text!r}; an http(s) address of the MLflow UI, "
                                         "e.g. http://127.0.0.1:5001")
    return text.rstrip("/")


def add_arguments(parser) -> None:
    from orchestrator.arg_types import add_quiet_option

    parser.add_argument("study", metavar="STUDY",
                        help="a study YAML file or a study name (= its MLflow experiment)")
    parser.add_argument("--tracking-uri", metavar="URI", default=None,
                        help="MLflow store the study ran against (default: "
                             "$MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="directory for this study's report (default: reports/<study>)")
    parser.add_argument("--parent", metavar="RUN", default=None,
                        help="run id or name of the `resweep run` (parent run) to attach the "
                             "report to and take the study file from (default: the latest)")
    parser.add_argument("--ui-url", metavar="URL", type=ui_url, default=None,
                        help="MLflow UI the report's run links open (default: the tracking "
                             "server of an http(s) --tracking-uri, else `resweep ui`'s "
                             "http://127.0.0.1:5000; pass its --port's address)")
    parser.add_argument("--no-log", action="store_true",
                        help="do not attach the report to the study's MLflow parent run")
    add_quiet_option(parser, "the trial count and the report's paths")


def main(args) -> int:
    from pathlib import Path

    from analysis.report import (build_report, format_claims_text, log_report, onset_lines,
                                 runs_view_url, ui_base_url)
    from analysis.runs import load_study_runs, resolve_study
    from orchestrator.tracking_store import answering_tracking_uri

    name, study_file = resolve_study(args.study)
    tracking_uri = answering_tracking_uri(args.tracking_uri)
    runs = load_study_runs(name, tracking_uri, parent=args.parent)
    out_dir = Path(args.out) if args.out else Path("reports") / name
    study_text = study_file.read_text(encoding="utf-8") if study_file else None
    report = build_report(runs, out_dir, study_text, ui_url=args.ui_url)

    counts = runs.trials["status"].value_counts().to_dict()
    print(f"resweep report: study {name!r}: {len(runs.trials)} trials "
          f"({', '.join(f'{n} {s}' for s, n in counts.items())}) in {tracking_uri}")
    if not args.quiet:
        print("\nPaper claims (He et al. 2015):")
        print(format_claims_text(report.findings))
        print("\ndegradation onset (final training error against depth):")
        for line in onset_lines(report.findings):
            print(f"  {line}")
        for section in report.sections:
            print()
            print("\n".join(section.text()))
        print()
    print(f"report:  {report.html}  (self-contained; open it in a browser)")
    print(f"summary: {report.markdown}")
    print(f"figures: {report.html.parent / 'figures'}/ "
          f"({', '.join(f.name for f in report.all_figures) or 'none'}; PNG + SVG)")
    if not args.no_log:
        parent = log_report(runs, report)
        if parent:
            print(f"logged to MLflow run {runs.parent_run_name} ({parent}) under report/, "
                  "with the results (results/cells.json, result.* metrics, verdict tags)")
        else:
            print("not logged to MLflow: the experiment has no `resweep run` parent run")
    view = runs_view_url(ui_base_url(tracking_uri, args.ui_url), runs.experiment_id)
    uri_option = f" --tracking-uri {args.tracking_uri}" if args.tracking_uri else ""
    hint = "" if tracking_uri.startswith("http") or args.ui_url else \
        f"  (after `resweep ui {name}{uri_option}`)"
    print(f"MLflow:  {view}{hint}")
    return 0
