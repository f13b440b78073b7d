"""The relay without per-connection budgets, ``python -m bench.unbudgeted``: the baseline for the budget's cost.

It is the Procfile's relay (``python -m broker.relay``, same environment) with each browser
connection's budget (``broker.relay.budget``) replaced by one that passes every message on at
once, unmerged, as the relay did before it had budgets. Only the bench runs it, beside the
real relay, to time the same keystrokes through both.
"""

from __future__ import annotations

from broker.relay import __main__ as relay
from broker.relay import console


class Unlimited:
    """A budget that takes every waiting message at once, never waits and merges nothing."""

    slice = None
    waited = False

    async def admit(self, messages: list[bytes]) -> list[bytes]:
        return messages


def main() -> None:
    console.Budget = Unlimited
    relay.main()


if __name__ == "__main__":
    main()
