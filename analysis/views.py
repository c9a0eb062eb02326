"""The report's sections of one design each, in report order: the ablation table
(`analysis.ablation`), the depth x factor degradation map (`analysis.grid_map`), the search
analysis (`analysis.search_view`) and, for any design, the Pareto fronts
(`analysis.pareto`). Each is drawn only where the study's data supports it."""

from __future__ import annotations

from pathlib import Path

from analysis.ablation import ablation_section
from analysis.findings import Findings
from analysis.grid_map import grid_map_section
from analysis.pareto import pareto_section
from analysis.runs import StudyRuns
from analysis.search_view import search_section
from analysis.section import Section


def design_sections(runs: StudyRuns, findings: Findings, figures_dir: Path) -> list[Section]:
    """Every design view that applies to `runs`, with its figures written to figures_dir."""
    study = runs.study_file()
    done = runs.done
    sections = []
    if runs.design == "ablation":
        sections.append(ablation_section(done, study, figures_dir, findings.margin,
                                         findings.alpha))
    if runs.design != "search":
        sections.append(grid_map_section(done, figures_dir, findings.margin, findings.alpha))
    sections.append(search_section(runs, study, figures_dir))
    sections.append(pareto_section(done, figures_dir))
    return [s for s in sections if s is not None]
