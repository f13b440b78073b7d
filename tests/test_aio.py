"""first_to_finish: one side of a connection ending ends the other, and its error is not swallowed."""

from __future__ import annotations

import asyncio

import pytest

from broker.aio import first_to_finish


def test_the_first_to_end_cancels_the_rest():
    cancelled = []

    async def forever():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    asyncio.run(first_to_finish(asyncio.sleep(0), forever(), forever()))
    assert cancelled == [True, True]


def test_what_ended_the_first_is_raised():
    async def broken():
        raise ConnectionError("the cloud hung up")

    with pytest.raises(ConnectionError, match="hung up"):
        asyncio.run(first_to_finish(broken(), asyncio.sleep(3600)))
