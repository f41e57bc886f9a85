"""The report as a document: sections of paragraphs, tables and figures, the formatting
helpers the sections share, and rendering to markdown and self-contained HTML."""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd


@dataclass
class Section:
    """A titled list of blocks: ("p", text), ("h3", text), ("table", DataFrame, caption),
    ("figure", file name, caption)."""

    title: str
    blocks: list[tuple] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return "".join(c if c.isalnum() else "-" for c in self.title.lower()).strip("-")

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def h3(self, text: str) -> None:
        self.blocks.append(("h3", text))

    def table(self, frame: pd.DataFrame, caption: str = "") -> None:
        self.blocks.append(("table", frame, caption))

    def figure(self, name: str, caption: str) -> None:
        self.blocks.append(("figure", name, caption))


@dataclass
class Report:
    title: str
    subtitle: str
    sections: list[Section]
    figures: dict[str, Path]  # file name -> written PNG


def fmt_num(value: Any, spec: str = ".3g", missing: str = "-") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return missing
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def fmt_pct(value: Any) -> str:
    return fmt_num(value if value is None else 100 * float(value), ".1f") + ("%" if value is not None else "")


def fmt_bytes(value: Any) -> str:
    return "-" if not isinstance(value, (int, float)) else f"{value / 2**20:,.0f} MB"


def ratio(a: Any, b: Any) -> float | None:
    try:
        return float(a) / float(b) if b else None
    except (TypeError, ValueError):
        return None


def markdown_table(frame: pd.DataFrame) -> str:
    """GitHub markdown from a DataFrame (pandas' to_markdown needs tabulate; this needs nothing)."""
    def cell(v: Any) -> str:
        text = "-" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
        return text.replace("|", "\\|").replace("\n", " ")

    cols = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines)


def short_commit(commit: dict[str, Any]) -> str:
    cid = commit.get("id")
    if not cid:
        return "unversioned"
    return cid[:10] + (" (dirty)" if commit.get("dirty") else "")


CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;color:#202124;padding:0 1em}
h1{margin-bottom:0.1em} .sub{color:#5f6368;margin-top:0} nav a{margin-right:1em}
table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:13px}
th,td{border:1px solid #dadce0;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f1f3f4} caption{caption-side:top;text-align:left;color:#5f6368;padding:4px 0;font-size:13px}
figure{margin:1em 0 2em} figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#5f6368;font-size:13px} h2{border-bottom:1px solid #dadce0;padding-bottom:4px;margin-top:2em}
code{background:#f1f3f4;padding:1px 4px}
"""


def _inline(text: str) -> str:
    """The little markdown the report's paragraphs use (**bold**, `code`) as HTML."""
    import re

    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    return re.sub(r"`+(.+?)`+", r"<code>\1</code>", out)


def render_markdown(report: Report) -> str:
    lines = [f"# {report.title}", "", report.subtitle, ""]
    lines.append(" | ".join(f"[{s.title}](#{s.anchor})" for s in report.sections))
    for s in report.sections:
        lines += ["", f"## {s.title}", ""]
        for block in s.blocks:
            if block[0] == "p":
                lines += [block[1], ""]
            elif block[0] == "h3":
                lines += [f"### {block[1]}", ""]
            elif block[0] == "table":
                if block[2]:
                    lines += [f"*{block[2]}*", ""]
                lines += [markdown_table(block[1]), ""]
            elif block[0] == "figure":
                lines += [f"![{block[2]}]({block[1]})", "", f"*{block[2]}*", ""]
    return "\n".join(lines).rstrip() + "\n"


def render_html(report: Report) -> str:
    parts = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
             f"<title>{html.escape(report.title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{html.escape(report.title)}</h1><p class='sub'>{_inline(report.subtitle)}</p>", "<nav>"]
    parts += [f"<a href='#{s.anchor}'>{html.escape(s.title)}</a>" for s in report.sections]
    parts.append("</nav>")
    for s in report.sections:
        parts.append(f"<h2 id='{s.anchor}'>{html.escape(s.title)}</h2>")
        for block in s.blocks:
            if block[0] == "p":
                parts.append(f"<p>{_inline(block[1])}</p>")
            elif block[0] == "h3":
                parts.append(f"<h3>{html.escape(block[1])}</h3>")
            elif block[0] == "table":
                table = block[1].to_html(index=False, border=0, escape=True, na_rep="-")
                if block[2]:
                    table = table.replace(">", f"><caption>{html.escape(block[2])}</caption>", 1)
                parts.append(table)
            elif block[0] == "figure":
                data = base64.b64encode(report.figures[block[1]].read_bytes()).decode("ascii")
                parts.append(f"<figure><img alt='{html.escape(block[2], quote=True)}' "
                             f"src='data:image/png;base64,{data}'><figcaption>{html.escape(block[2])}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
