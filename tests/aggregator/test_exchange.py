"""exchange and the object pulls under it, against a fake grid and clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
from flwr.app import Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from aggregator import rounds


@dataclass
class Clock:
    now: float = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def reply_to(message_id: str, *, expired: bool = False) -> SimpleNamespace:
    # expired: the SuperLink's "Message Unavailable" error in place of the reply.
    return SimpleNamespace(
        metadata=SimpleNamespace(reply_to_message_id=message_id), expired=expired
    )


@dataclass
class StalledGrid:
    """Hospital c died while uploading: pulling its reply's objects held the first pull until the
    round's deadline, while the replies of a and b arrived. As the SuperLink does, the grid
    deletes an instruction and its reply once the instruction's TTL has passed."""

    clock: Clock
    pulls: list[set[str]] = field(default_factory=list)
    object_pull_deadlines: list[float] = field(default_factory=list)
    expiry: dict[str, float] = field(default_factory=dict)

    def push_messages(self, messages: list[Message]) -> list[str]:
        ids = ["a", "b", "c"]
        self.expiry = {
            message_id: self.clock.now + message.metadata.ttl
            for message_id, message in zip(ids, messages, strict=True)
        }
        return ids

    def pull_messages(self, pending: set[str]) -> list[SimpleNamespace]:
        self.pulls.append(set(pending))
        self.object_pull_deadlines.append(rounds.OBJECT_PULLS.deadline)
        if len(self.pulls) == 1:
            self.clock.now += 46.0  # the round's 45 s, then Flower's error reply for c
            return [reply_to("c")]
        return [
            reply_to(message_id, expired=self.expiry[message_id] <= self.clock.now)
            for message_id in sorted(pending)
        ]


def test_replies_that_arrived_while_a_pull_was_held_up_are_still_pulled(monkeypatch):
    # As in a ServerApp: a message is created for a run, from a node.
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    clock = Clock()
    monkeypatch.setattr(rounds, "time", clock)
    grid = StalledGrid(clock)

    replies = rounds.exchange(grid, [1, 2, 3], "train", RecordDict(), 3, timeout_s=45.0)  # type: ignore[arg-type]

    assert [
        (r.node_id, r.message.metadata.reply_to_message_id, r.message.expired) for r in replies
    ] == [
        (3, "c", False),
        (1, "a", False),
        (2, "b", False),
    ]
    assert grid.pulls == [{"a", "b", "c"}, {"a", "b"}]  # one more pull, then no waiting
    # Objects are pulled until the round's deadline, and only while the round waits.
    assert grid.object_pull_deadlines == [45.0, 45.0]
    assert rounds.OBJECT_PULLS.deadline == float("inf")


def test_object_pulls_give_up_at_the_rounds_deadline(monkeypatch):
    clock = Clock(now=100.0)
    monkeypatch.setattr(rounds, "time", clock)
    asked: list[float | None] = []
    pulls = rounds.ObjectPullDeadline(lambda **kwargs: asked.append(kwargs.get("max_time")) or {})

    pulls(object_ids=["x"])
    with pulls.until(130.0):
        pulls(object_ids=["x"])
        clock.now = 140.0
        pulls(object_ids=["x"])
    pulls(object_ids=["x"])

    assert asked == [None, pytest.approx(30.0), 0.0, None]  # None: Flower's own limit
