"""A report section of one design's view (ablation, depth x factor map, search, Pareto):
its title, text for the terminal and Markdown, an HTML table and its figures, so
`analysis.report` lays every view out the same way (a simple list of sections)."""

from __future__ import annotations

import html
from dataclasses import dataclass, field

from analysis.figures import FigureFile


@dataclass
class Section:
    """title: the heading; lines: the section as text (terminal and Markdown list items);
    header/rows: its table (plain text cells, escaped when rendered); note: how it was
    computed; figures: those it drew (in order); terminal: the section's text for a
    terminal instead of the aligned table (a table of long sentences, e.g. a decision
    trace, reads better as lines)."""

    key: str
    title: str
    lines: list[str]
    header: list[str]
    rows: list[list[str]]
    note: str = ""
    figures: list[FigureFile] = field(default_factory=list)
    terminal: list[str] | None = None

    def markdown(self) -> list[str]:
        out = [f"## {self.title}", ""] + [f"- {line}" for line in self.lines]
        if self.rows:
            out += ["", "| " + " | ".join(self.header) + " |",
                    "|" + "---|" * len(self.header)]
            out += ["| " + " | ".join(_md(c) for c in row) + " |" for row in self.rows]
        if self.note:
            out += ["", self.note]
        return out + [""]

    def html(self) -> str:
        parts = [f"<h2>{_e(self.title)}</h2>"]
        if self.lines:
            parts.append("<ul>" + "".join(f"<li>{_e(l)}</li>" for l in self.lines) + "</ul>")
        if self.rows:
            head = "".join(f"<th>{_e(h)}</th>" for h in self.header)
            body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>"
                           for row in self.rows)
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        if self.note:
            parts.append(f"<p class=meta>{_e(self.note)}</p>")
        return "\n".join(parts)

    def text(self) -> list[str]:
        """The section for a terminal: title, lines, the table with aligned columns."""
        out = [f"{self.title}:"] + [f"  {line}" for line in (
            self.lines if self.terminal is None else self.terminal)]
        if self.rows and self.terminal is None:
            widths = [max(len(str(r[i])) for r in [self.header] + self.rows)
                      for i in range(len(self.header))]
            for row in [self.header] + self.rows:
                out.append("  " + "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
        if self.figures:
            out.append("  figures: " + ", ".join(f.png.name for f in self.figures))
        return out


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def _md(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
