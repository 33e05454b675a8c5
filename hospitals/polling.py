"""How long Flower's processes wait before asking again: for work that did not come yet (an idle
backoff), and for an object that is not stored yet (a sooner retry).

Flower's processes pull: the SuperNode asks the SuperLink for messages, the launcher asks the
SuperNode for tasks. A fixed interval trades latency against idle load: Flower's SuperNode waits
3 s, which costs a round up to 3 s per exchange, while a fixed 0.1 s, per hospital, keeps a
fraction of a core busy answering empty polls (measured for the launcher: 2.7% of a core at 0.2 s,
24% at 0.01 s). Work comes in bursts (one round's messages follow the last round's
within seconds, then a study may not run for days), so the wait starts short after work and grows
geometrically while none comes: a message that arrives after an idle gap of g seconds waits at
most about (factor − 1)·g more, and a long idle spell costs one poll per `longest_s`.

Where Cohort runs the answering side too, it holds a request that finds no work until some comes
(`HeldRequest`): the store that receives work announces it (`Arrivals`, `announcing`), so the
asker hears at once, and an idle asker costs one request per hold.
"""

from __future__ import annotations

import argparse
import functools
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from functools import partial
from types import ModuleType
from typing import Any, Generic, TypeVar

DEFAULT_MAX_IDLE_WAIT_S = 1.0
MAX_IDLE_WAIT_BOUNDS_S = (0.05, 60.0)
# Retries of an object pull that found the object not stored yet (see retry_object_pulls_sooner).
OBJECT_RETRY_FIRST_S = 0.05
OBJECT_RETRY_LONGEST_S = 1.0

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")
StoredT = TypeVar("StoredT")


@dataclass
class IdleBackoff:
    """The next wait: `first_s` after work, then ×`factor` per empty poll, up to `longest_s`."""

    first_s: float = 0.05
    longest_s: float = 1.0
    factor: float = 1.25
    _next_s: float = field(init=False)

    def __post_init__(self) -> None:
        if not 0 < self.first_s <= self.longest_s:
            raise ValueError(
                f"waits must satisfy 0 < first ({self.first_s:g} s) <= longest "
                f"({self.longest_s:g} s)"
            )
        if self.factor < 1:
            raise ValueError(f"factor must be at least 1, got {self.factor:g}")
        self._next_s = self.first_s

    def next_wait(self) -> float:
        """The wait after an empty poll; the one after it is longer."""
        wait = self._next_s
        self._next_s = min(wait * self.factor, self.longest_s)
        return wait

    def work_found(self) -> None:
        """More work tends to follow work: poll quickly again."""
        self._next_s = self.first_s


def add_max_idle_wait_option(parser: argparse.ArgumentParser, *, polled_for: str) -> None:
    """`--max-idle-wait SECONDS`, the `longest_s` of a process's `IdleBackoff`."""
    parser.add_argument(
        "--max-idle-wait",
        type=_max_idle_wait,
        default=DEFAULT_MAX_IDLE_WAIT_S,
        metavar="SECONDS",
        help=f"the longest wait between requests for {polled_for} while none comes "
        f"(default {DEFAULT_MAX_IDLE_WAIT_S:g} s)",
    )


def _max_idle_wait(text: str) -> float:
    low, high = MAX_IDLE_WAIT_BOUNDS_S
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not low <= seconds <= high:
        raise argparse.ArgumentTypeError(f"must be between {low:g} and {high:g} seconds")
    return seconds


def replace_in_flower(module: ModuleType, name: str, replacement: Any) -> None:
    """Rebind `name` in that one Flower module, refusing a Flower that no longer defines it."""
    if name not in vars(module):
        raise RuntimeError(
            f"{module.__name__} has no '{name}' as Flower 1.41 had: this Flower is not the one "
            "Cohort's timing changes were made for"
        )
    vars(module)[name] = replacement


def retry_object_pulls_sooner(module: ModuleType, name: str) -> None:
    """Make `module`'s `name`, Flower's `pull_objects` or `pull_and_inflate_object_from_tree`,
    retry a missing object after 0.05 s, doubling up to 1 s.

    Flower retries after 1 s, then 2, 4, … (flwr/supercore/constant.py, PULL_INITIAL_BACKOFF),
    and a pull finds an object missing mostly in a race: a SuperNode creates a message's task
    before it has pulled the message's objects (start_client_internal.py,
    `_pull_and_store_message`), so a ClientApp that starts at once asks for an object some
    milliseconds early, and a message is listed before its sender has pushed all its objects.
    """
    pull: Callable[..., Any] = vars(module).get(name)  # type: ignore[assignment]
    if isinstance(pull, partial) and pull.keywords.get("initial_backoff") == OBJECT_RETRY_FIRST_S:
        return  # done already in this process
    replace_in_flower(
        module,
        name,
        partial(pull, initial_backoff=OBJECT_RETRY_FIRST_S, backoff_cap=OBJECT_RETRY_LONGEST_S),
    )


class Arrivals:
    """Counts the work stored for each recipient, and wakes whoever waits for that recipient's."""

    def __init__(self) -> None:
        # Reentrant: `close` runs in signal handlers, on a thread that may hold it already.
        self._lock = threading.RLock()
        self._counts: Counter[Hashable] = Counter()
        # One condition per recipient, all on one lock: an arrival wakes only its own waiters.
        self._conditions: dict[Hashable, threading.Condition] = {}
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """No more work will come: wake every waiter, and wait no more. A process that stops
        calls it, so that the requests it holds end now, not when their wait runs out."""
        with self._lock:
            self._closed = True
            for condition in self._conditions.values():
                condition.notify_all()

    def count(self, recipient: Hashable = None) -> int:
        with self._lock:
            return self._counts[recipient]

    def announce(self, recipient: Hashable = None) -> None:
        with self._lock:
            self._counts[recipient] += 1
            if condition := self._conditions.get(recipient):
                condition.notify_all()

    def wait_past(self, seen: int, *, timeout_s: float, recipient: Hashable = None) -> None:
        """Return once `recipient` has more than `seen` arrivals, after `timeout_s`, or once
        closed."""
        with self._lock:
            condition = self._conditions.setdefault(recipient, threading.Condition(self._lock))
            condition.wait_for(
                lambda: self._closed or self._counts[recipient] != seen, timeout=timeout_s
            )


def announcing(
    store: Callable[..., StoredT | None], arrivals: Arrivals
) -> Callable[..., StoredT | None]:
    """`store`, a Flower state's method that returns None when it stores nothing, announcing to
    `arrivals` each time it stores something."""

    @functools.wraps(store)
    def store_and_announce(*args: Any, **kwargs: Any) -> StoredT | None:
        stored = store(*args, **kwargs)
        if stored is not None:
            arrivals.announce()
        return stored

    return store_and_announce


@dataclass(frozen=True)
class HeldRequest(Generic[RequestT, ResponseT]):
    """A Flower request handler that answers "nothing yet" only after `wait_s` without work, or
    once `arrivals` is closed: it asks `handler` again whenever `arrivals` announces work for the
    request's recipient, and costs nothing in between."""

    handler: Callable[..., ResponseT]
    has_work: Callable[[ResponseT], bool]
    arrivals: Arrivals
    wait_s: float
    recipient: Callable[[RequestT], Hashable] = lambda request: None

    def __call__(self, request: RequestT, *args: Any, **kwargs: Any) -> ResponseT:
        recipient = self.recipient(request)
        deadline = time.monotonic() + self.wait_s
        while True:
            # Read before looking, so that work stored in between ends the wait at once.
            seen = self.arrivals.count(recipient)
            response = self.handler(request, *args, **kwargs)
            remaining_s = deadline - time.monotonic()
            if self.has_work(response) or remaining_s <= 0 or self.arrivals.closed:
                return response
            self.arrivals.wait_past(seen, timeout_s=remaining_s, recipient=recipient)
