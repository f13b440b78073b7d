"""axe-core (npm, pinned and locked in this folder) run on a Playwright page: the accessibility rules of record.

The broker's CSP allows no inline script, so axe's source goes in through ``page.evaluate``,
which the page's CSP does not govern. Only ``serious`` and ``critical`` violations fail a test;
the message names each rule, the elements it found and axe's help, so a failure reads as a to-do.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from tests.support import npm_ci

if TYPE_CHECKING:
    from playwright.sync_api import Page

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "node_modules" / "axe-core" / "axe.min.js"
FAILING = ("serious", "critical")
# Nested frames are noVNC's page on the proxy's origin (Debian's, not ours): axe would wait for an
# answer from an axe that is not there. The WCAG 2.x A and AA rules and axe's best practices.
RUN_JS = """async () => {
  const result = await axe.run(document, {
    iframes: false,
    resultTypes: ["violations"],
    runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"] },
  });
  return result.violations.map((v) => ({
    id: v.id, impact: v.impact, help: v.help, helpUrl: v.helpUrl,
    nodes: v.nodes.map((n) => ({ target: n.target.join(" "), html: n.html, summary: n.failureSummary || "" })),
  }));
}"""


def install() -> None:
    """axe-core from the lock file (npm ci), unless it is there and current."""
    if not SOURCE.exists():
        # A node_modules whose marker is current but lacks axe (a half-finished install): start again.
        (HERE / "node_modules" / ".package-lock.json").unlink(missing_ok=True)
    npm_ci(HERE, "the accessibility tests (npm's axe-core)")


@cache
def source() -> str:
    """axe.min.js, installed first if need be."""
    install()
    return SOURCE.read_text()


def violations(page: Page) -> list[dict]:
    """axe's serious and critical violations on what ``page`` shows now (axe injected if it is not there yet)."""
    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.evaluate(source())
    return [found for found in page.evaluate(RUN_JS) if found["impact"] in FAILING]


def report(found: list[dict], what: str) -> str:
    """A readable list: one block per rule with its targets, what to fix, and where axe explains it."""
    lines = [f"{what}: {len(found)} serious or critical accessibility violation(s)"]
    for violation in found:
        lines.append(f"- {violation['id']} ({violation['impact']}): {violation['help']} <{violation['helpUrl']}>")
        for node in violation["nodes"]:
            summary = " ".join(node["summary"].split())
            lines.append(f"    {node['target']}: {node['html'][:160]}")
            if summary:
                lines.append(f"      {summary[:400]}")
    return "\n".join(lines)


def assert_accessible(page: Page, what: str) -> None:
    """Fail with axe's report when ``page`` has serious or critical violations."""
    found = violations(page)
    assert not found, report(found, what)
