"""Idle backoff and the object-pull retries of Flower's processes."""

from __future__ import annotations

import argparse
import inspect
import threading
import time
from dataclasses import dataclass
from types import ModuleType

import flwr.supernode.start_client_internal as supernode_loop
import pytest
from flwr.superlink.grid import http_grid
from flwr.supernode.runtime import run_clientapp

from hospitals.polling import (
    OBJECT_RETRY_FIRST_S,
    OBJECT_RETRY_LONGEST_S,
    Arrivals,
    HeldRequest,
    IdleBackoff,
    add_max_idle_wait_option,
    announcing,
    replace_in_flower,
    retry_object_pulls_sooner,
)


def test_waits_grow_geometrically_to_the_longest_and_restart_after_work():
    backoff = IdleBackoff(first_s=0.1, longest_s=0.5, factor=2)
    assert [backoff.next_wait() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    backoff.work_found()
    assert backoff.next_wait() == 0.1


@pytest.mark.parametrize(
    "settings",
    [{"first_s": 0}, {"first_s": 2, "longest_s": 1}, {"factor": 0.5}],
    ids=["no-wait", "first-above-longest", "shrinking"],
)
def test_backoff_refuses_settings_that_do_not_back_off(settings):
    with pytest.raises(ValueError):
        IdleBackoff(**settings)


def max_idle_wait(argv: list[str]) -> float:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_max_idle_wait_option(parser, polled_for="a task")
    return parser.parse_args(argv).max_idle_wait


def test_max_idle_wait_option():
    assert max_idle_wait([]) == 1.0
    assert max_idle_wait(["--max-idle-wait", "2.5"]) == 2.5
    for bad in ("0", "61", "soon"):
        with pytest.raises(argparse.ArgumentError, match="seconds"):
            max_idle_wait(["--max-idle-wait", bad])


def fake_flower_module() -> ModuleType:
    module = ModuleType("fake_flower")

    def pull_objects(object_ids, *, initial_backoff=1.0, backoff_cap=10.0):
        return object_ids, initial_backoff, backoff_cap

    module.pull_objects = pull_objects  # type: ignore[attr-defined]
    return module


def test_object_pulls_retry_sooner_once_however_often_asked():
    module = fake_flower_module()
    retry_object_pulls_sooner(module, "pull_objects")
    retry_object_pulls_sooner(module, "pull_objects")
    assert module.pull_objects(["a"]) == (["a"], OBJECT_RETRY_FIRST_S, OBJECT_RETRY_LONGEST_S)
    assert module.pull_objects.func.__name__ == "pull_objects"  # one layer, not two


def test_a_flower_without_the_expected_name_is_refused():
    with pytest.raises(RuntimeError, match="not the one"):
        replace_in_flower(fake_flower_module(), "pull_object_contents", None)


@pytest.mark.parametrize(
    ("module", "name"),
    [
        (supernode_loop, "pull_objects"),
        (run_clientapp, "pull_and_inflate_object_from_tree"),
        (http_grid, "pull_objects"),
    ],
)
def test_installed_flower_pulls_objects_with_the_retry_keywords(module, name):
    # Fails on a Flower upgrade that renames what retry_object_pulls_sooner sets.
    pull = vars(module)[name]
    parameters = inspect.signature(getattr(pull, "func", pull)).parameters
    assert parameters["initial_backoff"].default == 1
    assert "backoff_cap" in parameters


@dataclass
class Inbox:
    """A handler over work stored for recipients "a" and "b": it answers a recipient's count of
    items once `arrivals` announced `needed` of them, and "nothing yet" (0) before."""

    arrivals: Arrivals
    needed: int
    calls: int = 0

    def __call__(self, recipient: str) -> int:
        self.calls += 1
        count = self.arrivals.count(recipient)
        return count if count >= self.needed else 0

    def held(self, wait_s: float) -> HeldRequest[str, int]:
        return HeldRequest(
            self,
            has_work=lambda items: items > 0,
            arrivals=self.arrivals,
            wait_s=wait_s,
            recipient=lambda recipient: recipient,
        )


def announce_later(
    arrivals: Arrivals, recipients: list[str], *, every_s: float
) -> threading.Thread:
    def announce() -> None:
        for recipient in recipients:
            time.sleep(every_s)
            arrivals.announce(recipient)

    thread = threading.Thread(target=announce)
    thread.start()
    return thread


def test_a_held_request_is_answered_when_work_arrives_for_its_recipient():
    inbox = Inbox(Arrivals(), needed=2)
    announcer = announce_later(inbox.arrivals, ["b", "a", "b", "a"], every_s=0.05)
    began = time.monotonic()
    items = inbox.held(wait_s=30)("a")
    announcer.join()
    assert items == 2
    assert time.monotonic() - began < 5
    assert inbox.calls == 3  # at first, then once per arrival for "a": never for "b", no polling


def test_work_already_stored_is_answered_at_once():
    inbox = Inbox(Arrivals(), needed=1)
    inbox.arrivals.announce("a")
    assert inbox.held(wait_s=30)("a") == 1
    assert inbox.calls == 1


def test_a_held_request_answers_nothing_after_its_wait():
    inbox = Inbox(Arrivals(), needed=1)
    inbox.arrivals.announce("b")
    began = time.monotonic()
    assert inbox.held(wait_s=0.05)("a") == 0
    assert 0.05 <= time.monotonic() - began < 5
    assert inbox.calls == 2  # once at first, once when the wait ran out


def test_closing_ends_held_requests_at_once_and_later_ones_wait_no_more():
    inbox = Inbox(Arrivals(), needed=1)
    closer = threading.Timer(0.05, inbox.arrivals.close)
    closer.start()
    began = time.monotonic()
    assert inbox.held(wait_s=30)("a") == 0
    assert inbox.held(wait_s=30)("a") == 0
    assert time.monotonic() - began < 5
    assert inbox.arrivals.closed


def test_a_store_announces_what_it_stored():
    arrivals = Arrivals()
    store = announcing(lambda key: key if key.startswith("task") else None, arrivals)
    assert [store("task-1"), store("nothing"), store("task-2")] == ["task-1", None, "task-2"]
    assert arrivals.count() == 2
