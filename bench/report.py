"""The results table: one row per figure, with its target and verdict; one column set per backend."""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Row:
    """One line of the table."""

    metric: str
    value: str
    target: str = ""
    verdict: str = ""


@dataclass(frozen=True)
class Section:
    """A part of the bench measured once, outside the backends' column sets: its own heading and table."""

    title: str
    setup: str
    rows: list[Row]


def ratio(value: float, base: float) -> str:
    """``value / base`` as ``x1.03``."""
    return f"x{value / base:.2f}" if base else "n/a"


def verdict(ok: bool, text: str = "") -> str:
    """``text, met`` or ``text, MISSED``."""
    mark = "met" if ok else "MISSED"
    return f"{text}, {mark}" if text else mark


def table(columns: dict[str, list[Row]]) -> str:
    """Rows of every backend side by side, as a Markdown table (one backend: the classic four columns)."""
    if len(columns) == 1:
        rows = next(iter(columns.values()))
        lines = ["| metric | value | target | ratio / verdict |", "|---|---|---|---|"]
        return "\n".join(lines + [f"| {r.metric} | {r.value} | {r.target} | {r.verdict} |" for r in rows])
    head = "| metric | target | " + " | ".join(f"{name} | ratio / verdict" for name in columns) + " |"
    lines = [head, "|---|---|" + "---|---|" * len(columns)]
    for metric, target in metrics(columns):
        cells = []
        for rows in columns.values():
            row = next((r for r in rows if r.metric == metric), None)
            cells += [row.value, row.verdict] if row else ["not measured", ""]
        lines.append(f"| {metric} | {target} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def metrics(columns: dict[str, list[Row]]) -> list[tuple[str, str]]:
    """Every metric in the order first seen, with its target."""
    seen: dict[str, str] = {}
    for rows in columns.values():
        for row in rows:
            seen.setdefault(row.metric, row.target)
    return list(seen.items())


def document(columns: dict[str, list[Row]], setup: str, notes: list[str] = (), sections: list[Section] = ()) -> str:
    """The table with a heading saying when, where and how it was measured; then each section's own."""
    when = time.strftime("%Y-%m-%d %H:%M %Z")
    host = f"{platform.python_implementation()} {platform.python_version()}, {platform.machine()}"
    tail = "".join(f"\n{note}\n" for note in notes)
    text = f"# Bench results\n\n{when}; {host}" + (f"; {setup}" if setup else "") + "\n"
    text += (f"\n{table(columns)}\n" if columns else "") + tail
    for section in sections:
        rows = table({section.title: section.rows}) if section.rows else ""
        text += f"\n## {section.title}\n\n{section.setup}\n\n{rows}\n"
    return text


def write(path: Path, text: str) -> None:
    path.write_text(text)
