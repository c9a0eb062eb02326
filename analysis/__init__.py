"""A study's MLflow runs -> tables, statistics, findings, figures and an HTML report.

    store.py          the store's layout: tag/artifact/status names, tracking URI, paging
    runs.py           load a study's experiment into tidy tables (trials, per-epoch curves)
    stats.py          mean / std / t-interval over seeds, Welch's t-test
    findings.py       degradation onset, residual gain per depth, the paper-claims table
    figures.py        training curves, degradation map, shortcuts (and the shared style)
    probe_views.py    the trials' probes.json as a table; layer responses, gradient flow
    report.py         report.html (self-contained) + summary.md, logged to the parent run
    server.py         `mlflow server` on 127.0.0.1 for `resweep ui`
    readme_results.py the README's demo table, figure and study comment (`make readme-results`)

Reads MLflow through `MlflowClient` with any tracking URI; never imported by `models`,
`workers` or the CLI's --help (commands import it inside `main`).
"""
