"""asyncio helpers shared by the relay and the demo console."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


async def first_to_finish(*coroutines: Coroutine[Any, Any, Any]) -> None:
    """Run ``coroutines`` together until one ends; cancel the others; raise what ended the first, if anything.

    Two directions of one connection: when either side stops, the other has nothing left to do.
    """
    tasks = [asyncio.create_task(coroutine) for coroutine in coroutines]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        task.result()
