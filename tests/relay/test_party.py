"""Who is on a console and who drives it (broker.relay.party), with members that only note what they are told.

The relay's own scenarios (tests/relay/test_watch.py) cover control messages end to end; here every
message a page could send is tried against one party, including those that must change nothing.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from dataclasses import field

import pytest

from broker.relay.party import MAX_CONTROL
from broker.relay.party import Party


@dataclass(eq=False)
class Member:
    pid: str
    name: str
    role: str
    row_id: int | None = None
    told: list[dict] = field(default_factory=list)
    ended: tuple[int, str] | None = None

    async def tell(self, text: str) -> None:
        self.told.append(json.loads(text))

    def end_with(self, code: int, reason: str) -> None:
        self.ended = (code, reason)


class Scene:
    """A console opened by Ann (pid o, row 41) and watched by Bob (w1) and Cy (w2); Ann drives."""

    def __init__(self) -> None:
        self.notes: list[tuple[str, str]] = []
        self.ann = Member("o", "ann", "open", row_id=41)
        self.party = Party(self.ann, self._noted)
        self.bob = Member(self.party.new_pid(), "bob", "watch")
        self.cy = Member(self.party.new_pid(), "cy", "observe")
        self.members = {"ann": self.ann, "bob": self.bob, "cy": self.cy}

    async def _noted(self, detail: str, reason: str) -> None:
        self.notes.append((detail, reason))

    async def join(self) -> Scene:
        await self.party.join(self.bob)
        await self.party.join(self.cy)
        return self

    async def says(self, name: str, **message) -> str | None:
        return await self.party.told(self.members[name], json.dumps(message))

    def driver(self) -> str:
        return self.party.driver.name

    def forget_told(self) -> None:
        for member in self.members.values():
            member.told.clear()


def scene() -> Scene:
    return asyncio.run(Scene().join())


def test_every_page_hears_who_is_there_whenever_someone_joins():
    party = scene()
    assert party.bob.pid == "w1" and party.cy.pid == "w2"
    everyone = [
        {"id": "o", "name": "ann", "role": "open", "drives": True},
        {"id": "w1", "name": "bob", "role": "watch", "drives": False},
        {"id": "w2", "name": "cy", "role": "observe", "drives": False},
    ]
    for member in party.members.values():
        assert member.told[-1] == {"people": everyone, "you": member.pid, "console": 41}
    assert [len(member.told) for member in party.members.values()] == [2, 2, 1]


@pytest.mark.parametrize(
    "first, sender, message",
    [
        ([], "bob", {"control": "give", "to": "w2"}),  # a watcher who does not drive gives nothing
        ([], "bob", {"control": "take"}),  # only the opener takes
        ([], "ann", {"control": "take"}),  # the opener drives already
        ([], "ann", {"control": "release"}),  # the opener has nobody to give it back to
        ([], "bob", {"control": "release"}),  # not the driver
        ([], "ann", {"control": "give", "to": "w9"}),  # nobody of that ID
        ([], "ann", {"control": "give", "to": "o"}),  # the driver already
        ([], "ann", {"control": "give", "to": ["w1"]}),
        ([], "ann", {"control": "give"}),
        ([], "ann", {"control": "ask"}),  # the driver asks nobody
        ([], "ann", {"control": "steal"}),
        ([], "bob", {"give": "w1"}),
        ([("ann", {"control": "give", "to": "w1"})], "cy", {"control": "give", "to": "w2"}),
        ([("ann", {"control": "give", "to": "w1"})], "bob", {"control": "ask"}),
    ],
)
def test_control_messages_that_may_not_change_anything_change_nothing(first, sender, message):
    async def scenario():
        party = await Scene().join()
        for name, said in first:
            await party.says(name, **said)
        driver, notes = party.driver(), list(party.notes)
        party.forget_told()
        assert await party.says(sender, **message) is None
        return party, driver, notes

    party, driver, notes = asyncio.run(scenario())
    assert party.driver() == driver
    assert party.notes == notes
    assert all(member.told == [] for member in party.members.values())


def test_control_goes_round_and_each_hand_over_is_noted_and_announced():
    async def scenario():
        party = await Scene().join()
        await party.says("ann", control="give", to="w1")
        steps = [party.driver()]
        await party.says("bob", control="give", to="w2")  # the driver passes it on
        steps.append(party.driver())
        await party.says("cy", control="give", to="o")  # or gives it to the opener
        steps.append(party.driver())
        await party.says("ann", control="give", to="w2")
        await party.says("ann", control="give", to="w1")  # the opener gives it from whoever has it
        steps.append(party.driver())
        await party.says("bob", control="release")
        steps.append(party.driver())
        await party.says("ann", control="give", to="w2")
        await party.says("ann", control="take")
        steps.append(party.driver())
        return party, steps

    party, steps = asyncio.run(scenario())
    assert steps == ["bob", "cy", "ann", "bob", "ann", "ann"]
    assert party.notes == [
        ("hand-over", "ann gave control to bob"),
        ("hand-over", "bob gave control to cy"),
        ("hand-over", "cy gave control to ann"),
        ("hand-over", "ann gave control to cy"),
        ("hand-over", "ann gave control to bob"),
        ("hand-over", "bob gave control back to ann"),
        ("hand-over", "ann gave control to cy"),
        ("hand-over", "ann took control back from cy"),
    ]
    # Each hand-over told every page who drives now.
    drivers = [[p["name"] for p in told["people"] if p["drives"]] for told in party.ann.told if "people" in told]
    assert drivers[2:] == [[name] for name in ["bob", "cy", "ann", "cy", "bob", "ann", "cy", "ann"]]


def test_an_ask_reaches_everyone_else_once_in_a_while_and_again_after_control_came_and_went():
    async def scenario():
        party = await Scene().join()
        party.forget_told()
        await party.says("bob", control="ask")
        await party.says("bob", control="ask")  # at once again: dropped
        await party.says("cy", control="ask")  # another watcher's own
        await party.says("ann", control="give", to="w1")
        await party.says("ann", control="take")
        await party.says("bob", control="ask")  # given control since: may ask again
        return party

    party = asyncio.run(scenario())
    asks = [[told["asks"]["name"] for told in member.told if "asks" in told] for member in party.members.values()]
    assert asks == [["bob", "cy", "bob"], ["cy"], ["bob", "bob"]]
    assert [note for note in party.notes if note[0] == "ask"] == [
        ("ask", "bob asked ann for control"),
        ("ask", "cy asked ann for control"),
        ("ask", "bob asked ann for control"),
    ]


@pytest.mark.parametrize(
    "text, problem",
    [
        ("not json", "must be JSON"),
        ("[1, 2]", "must be a JSON object"),
        ("null", "must be a JSON object"),
        ('"give"', "must be a JSON object"),
        (json.dumps({"control": "ask", "pad": "x" * MAX_CONTROL}), "small JSON object"),
    ],
    ids=["not-json", "array", "null", "string", "too-long"],
)
def test_text_that_is_not_a_control_message_is_refused_and_changes_nothing(text, problem):
    async def scenario():
        party = await Scene().join()
        party.forget_told()
        with pytest.raises(ValueError, match=problem):
            await party.party.told(party.bob, text)
        return party

    party = asyncio.run(scenario())
    assert party.driver() == "ann" and party.notes == []
    assert all(member.told == [] for member in party.members.values())


@pytest.mark.parametrize(
    "sender, value, note",
    [("ann", 12, ("type-text", "12")), ("bob", 12, None), ("ann", "12", None), ("ann", None, None)],
    ids=["driver", "watcher", "string", "null"],
)
def test_type_text_is_a_note_for_the_recording_only_from_the_driver(sender, value, note):
    async def scenario():
        party = await Scene().join()
        return await party.party.told(party.members[sender], json.dumps({"type-text": value})), party

    said, party = asyncio.run(scenario())
    assert said == note
    assert party.notes == []


def test_control_returns_to_the_opener_when_its_holder_leaves_and_nothing_else_leaving_is_noted():
    async def scenario():
        party = await Scene().join()
        await party.says("ann", control="give", to="w1")
        await party.party.leave(party.cy)
        await party.party.leave(party.cy)  # twice: a watcher leaves once
        driver_then = party.driver()
        await party.party.leave(party.bob)
        return party, driver_then

    party, driver_then = asyncio.run(scenario())
    assert driver_then == "bob"
    assert party.driver() == "ann" and party.party.members == [party.ann]
    assert party.notes[1:] == [("hand-over", "control went back to ann: bob left")]
    assert party.ann.told[-1]["people"] == [{"id": "o", "name": "ann", "role": "open", "drives": True}]


def test_the_end_of_the_console_ends_every_watcher_and_not_the_opener():
    async def scenario():
        party = await Scene().join()
        party.party.end_all(4404, "the browser closed the connection (1000)")
        return party

    party = asyncio.run(scenario())
    assert party.bob.ended == party.cy.ended == (4404, "the browser closed the connection (1000)")
    assert party.ann.ended is None
