"""The results table: one row per figure, with its target and verdict."""

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


def ratio(value: float, base: float) -> str:
    """``value / base`` as ``x1.03``."""
    return f"x{value / base:.2f}" if base else "n/a"


def verdict(ok: bool, text: str = "") -> str:
    """``text, met`` or ``text, MISSED``."""
    mark = "met" if ok else "MISSED"
    return f"{text}, {mark}" if text else mark


def table(rows: list[Row]) -> str:
    """The rows as a Markdown table."""
    lines = ["| metric | value | target | ratio / verdict |", "|---|---|---|---|"]
    lines += [f"| {r.metric} | {r.value} | {r.target} | {r.verdict} |" for r in rows]
    return "\n".join(lines)


def document(rows: list[Row], setup: str) -> str:
    """The table with a heading saying when, where and how it was measured."""
    when = time.strftime("%Y-%m-%d %H:%M %Z")
    host = f"{platform.python_implementation()} {platform.python_version()}, {platform.machine()}"
    return f"# Bench results\n\n{when}; {host}; {setup}\n\n{table(rows)}\n"


def write(path: Path, text: str) -> None:
    path.write_text(text)
