"""`make readme-results`: the README's demo numbers and figure, regenerated from the MLflow
store of a fresh run of the demo study (search_spaces/degradation-quick.yaml).

    python -m analysis.readme_results --tracking-uri sqlite:///build/readme-results/mlflow.db

reads the study's runs (`analysis.runs`), builds its report (`analysis.report`) in --out
and rewrites, from those numbers only:
- README.md between `<!-- readme-results:start -->` and `<!-- readme-results:end -->`:
  each cell's final training error (mean over its seeds with the 95% t-interval) and
  mean test error, the onset and the fix in words with their tests;
- analysis/example/<study>-map.png: the report's degradation map;
- the study file's comment line(s) from `# Measured` to the end of its leading comment.
"""

from __future__ import annotations

import argparse
import math
import shutil
import textwrap
from pathlib import Path

from analysis.figures import DEGRADATION_MAP
from analysis.findings import Findings, pp, pp_diff
from analysis.report import Report, build_report
from analysis.runs import StudyRuns, load_study_runs, resolve_study

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- readme-results:start -->", "<!-- readme-results:end -->"
COMMENT_START = "# Measured"


def cell_rows(findings: Findings) -> list[tuple[str, int, float, float, float, bool]]:
    """(label, seeds, mean final training error, its 95% t half-width (NaN for one seed),
    mean test error, deepest of its kind) per cell of finished trials: plain nets first,
    then residual, by depth ("resnet-20" is written "ResNet-20")."""
    cells = findings.aggregates.sort_values(["residual", "depth"])
    deepest = cells.groupby("residual")["depth"].transform("max")
    return [(row["label"].replace("resnet-", "ResNet-"), int(row["n"]), row["train_error_mean"],
             row["train_error_ci"], row.get("test_error_mean", float("nan")),
             row["depth"] == top)
            for (_, row), top in zip(cells.iterrows(), deepest)]


def with_interval(mean: float, ci: float) -> str:
    """"12.3% ± 0.4" (the 95% t half-width in pp), or "12.3%" when there is none."""
    return pp(mean) if math.isnan(ci) else f"{pp(mean)} ± {100 * ci:.1f}"


def results_table(findings: Findings) -> str:
    lines = ["| net | seeds | final training error (mean, 95% CI) | test error (mean) |",
             "|---|---|---|---|"]
    for label, seeds, train, ci, test, deepest in cell_rows(findings):
        train_text = with_interval(train, ci)
        lines.append(f"| {label} | {seeds} | {f'**{train_text}**' if deepest else train_text} "
                     f"| {pp(test)} |")
    return "\n".join(lines)


def _tested(comparison) -> str:
    """", one-sided Welch p = 0.003" for a tested difference; "" under the margin rule."""
    return f", one-sided Welch p = {comparison.p_value:.2g}" if comparison.p_value is not None \
        else ""


def verdicts_sentence(findings: Findings) -> str:
    """The onset and the fix in words, with the report's verdicts on both claims."""
    degradation, fix = findings.claims[0].verdict, findings.claims[1].verdict
    onset = next((o for o in findings.onsets.values() if o.depth is not None), None)
    if onset is None:
        return (f"No deeper plain net trains worse here (no degradation onset): the "
                f"report's claims table marks the degradation claim *{degradation}* and "
                f"the fix *{fix}*.")
    gain = next((g for g in findings.gains if g.depth == onset.depth), None)
    twin = (f", its residual twin does not ({pp_diff(gain.train_gain, gain.train_ci)} in its "
            f"favour{_tested(gain.train_better)})" if gain is not None else "")
    verdicts = (f"marks both claims *{degradation}*" if degradation == fix else
                f"marks the degradation claim *{degradation}* and the fix *{fix}*")
    c = onset.comparison
    # The onset is decided on the Holm-adjusted p (as the report says), so quote both.
    holm = (f", Holm-adjusted p = {onset.p_adjusted:.2g} over {len(onset.adjusted)} depth "
            "pairs" if onset.p_adjusted is not None else "")
    return (f"The deeper plain net trains worse (degradation onset at depth {onset.depth}, "
            f"{pp_diff(c.diff, c.ci)} over depth {onset.shallower}{_tested(c)}{holm}){twin}: "
            f"the report's claims table {verdicts}.")


def readme_block(findings: Findings) -> str:
    """What stands between the README's markers (the markers excluded)."""
    return "\n".join([results_table(findings), "",
                      textwrap.fill(verdicts_sentence(findings), 90)])


def replace_block(text: str, block: str, start: str = START, end: str = END) -> str:
    """`text` with everything between the `start` and `end` markers replaced by `block`."""
    head, found, rest = text.partition(start)
    middle, found_end, tail = rest.partition(end)
    if not found or not found_end:
        raise ValueError(f"no {start} ... {end} markers in the text")
    return f"{head}{start}\n{block.strip()}\n{end}{tail}"


def study_comment(findings: Findings) -> list[str]:
    """The study file's `# Measured ...` lines."""
    rows = cell_rows(findings)
    errors = ", ".join(f"{label} {pp(train)}" for label, _, train, _, _, _ in rows)
    seeds = "/".join(str(n) for n in sorted({row[1] for row in rows}))
    verdicts = {c.verdict for c in findings.claims[:2]}
    text = (f"Measured by `make readme-results` (the README's demo table): final training "
            f"error, mean of {seeds} seed(s), {errors}; the report marks degradation and its fix "
            f"{' / '.join(sorted(verdicts))}.")
    return textwrap.wrap(text, 88, initial_indent="# ", subsequent_indent="# ")


def rewrite_study_comment(text: str, comment: list[str]) -> str:
    """Replace the lines from `# Measured` to the end of the file's leading comment block
    (YAML comments only: the trials, and so their trial ids, stay as they are)."""
    lines = text.splitlines(keepends=True)
    first = next((i for i, line in enumerate(lines) if line.startswith(COMMENT_START)), None)
    if first is None:
        raise ValueError(f"no line starting {COMMENT_START!r} in the study file")
    last = first
    while last + 1 < len(lines) and lines[last + 1].startswith("#"):
        last += 1
    return "".join(lines[:first] + [line + "\n" for line in comment] + lines[last + 1:])


def regenerate(runs: StudyRuns, out_dir: Path, readme: Path, study_file: Path,
               example_dir: Path) -> Report:
    """Write the report in `out_dir`, rewrite `readme` and `study_file`, copy the map into
    `example_dir` (as <study>-map.png)."""
    report = build_report(runs, out_dir)
    figure = next(f for f in report.figures if f.name == DEGRADATION_MAP)
    shutil.copyfile(figure.png, example_dir / f"{runs.study}-map.png")
    readme.write_text(replace_block(readme.read_text(encoding="utf-8"),
                                    readme_block(report.findings)), encoding="utf-8")
    study_file.write_text(rewrite_study_comment(study_file.read_text(encoding="utf-8"),
                                                study_comment(report.findings)),
                          encoding="utf-8")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracking-uri", required=True, help="the demo run's MLflow store")
    parser.add_argument("--study", default=str(REPO / "search_spaces" / "degradation-quick.yaml"))
    parser.add_argument("--out", default=str(REPO / "build" / "readme-results" / "report"))
    args = parser.parse_args(argv)
    name, study_file = resolve_study(args.study)
    runs = load_study_runs(name, args.tracking_uri)
    report = regenerate(runs, Path(args.out), REPO / "README.md", study_file,
                        REPO / "analysis" / "example")
    print(readme_block(report.findings))
    print(f"rewrote README.md, {study_file} and analysis/example/{name}-map.png "
          f"(report: {report.html})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
