"""The round loop: broadcast, collect encrypted updates, sum them under HE, let hospitals evaluate.

Every decision about a hospital's reply lands in one of two places: an accepted contribution, or a
dropped hospital with a reason. A round completes when at least the protocol's minimum of hospitals
contributed; otherwise the run fails with every reason spelled out.

One message per hospital and round: the hospitals that train round r + 1 first evaluate the
global model of round r they receive, and report both in one reply. Only the final model has an
exchange of its own, for its evaluation. A round is therefore reported once its model is evaluated,
as the next round's replies come in.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from flwr.app import (
    ConfigRecord,
    ConfigRecordValues,
    Message,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.superlink.grid import http_grid

from aggregator.config import AggregatorConfig, weight_unit_for
from aggregator.results import HospitalRound, ResultsSink, RoundResult
from crypto import AggregatorContext, CryptoError
from crypto.codec import Update, UpdateSum, read_update, summing_shape
from hospitals import wire
from hospitals.polling import replace_in_flower, retry_object_pulls_sooner

NODE_POLL_INTERVAL_S = 0.5
REPLY_POLL_INTERVAL_S = 0.1
# How long a round's messages outlive its deadline. The SuperLink deletes an expired instruction
# with its reply, unpulled: the pull that follows a held-up one, just past the deadline, would
# lose replies that arrived in time.
MESSAGE_TTL_MARGIN_S = 10.0


class ObjectPullDeadline:
    """Flower's `pull_objects` for the ServerApp's grid, giving up on missing objects at the
    deadline of the round being waited for (`until`).

    When a hospital dies while uploading its reply, the reply stays listed with objects that
    never come, and Flower's pull retries them until the SuperLink expires them, minutes later:
    the other hospitals' replies, pulled after it, would miss their round. An object that is there
    is still pulled after the deadline. Outside `until`, Flower's own limits apply.
    """

    def __init__(self, pull: Callable[..., dict[str, bytes]]) -> None:
        self._pull = pull
        self.__wrapped__ = pull  # for inspect.signature: Flower's parameters
        # One at a time: Flower's grid calls its module's `pull_objects`, and a ServerApp waits
        # for one exchange at a time.
        self._deadline = math.inf

    @property
    def deadline(self) -> float:
        return self._deadline

    @contextmanager
    def until(self, deadline: float) -> Iterator[None]:
        """Pulls made inside give up on missing objects at `deadline` (time.monotonic())."""
        self._deadline = deadline
        try:
            yield
        finally:
            self._deadline = math.inf

    def __call__(self, *args: object, **kwargs: object) -> dict[str, bytes]:
        if self._deadline != math.inf:
            kwargs["max_time"] = max(0.0, self._deadline - time.monotonic())
        return self._pull(*args, **kwargs)


OBJECT_PULLS = ObjectPullDeadline(vars(http_grid)["pull_objects"])
replace_in_flower(http_grid, "pull_objects", OBJECT_PULLS)
# A reply is listed before its SuperNode has pushed all its objects; Flower's grid would then wait
# 1 s before asking for them again. (hospitals.polling holds every Flower timing change Cohort
# makes, and nothing of a hospital's.)
retry_object_pulls_sooner(http_grid, "pull_objects")


class RunFailedError(Exception):
    """The study cannot go on; the message is the reason shown to researchers."""


@dataclass(frozen=True)
class Contribution:
    node_id: int
    update: Update
    report: HospitalRound


@dataclass(frozen=True)
class Evaluation:
    hospital: str
    rows: int
    metrics: dict[str, float | None]


@dataclass(frozen=True)
class Reply:
    """What came back for the message sent to a hospital's node: the hospital's reply, or the
    error Flower made in its place. Flower sends its own errors (a hospital that died mid-upload,
    an expired message) from the aggregator's node or the SuperLink's, so a reply is known by the
    node its message went to, never by its sender."""

    node_id: int
    message: Message


class HospitalNames:
    """Hospitals name themselves in their replies; until one has, it is known by its node id."""

    def __init__(self) -> None:
        self._names: dict[int, str] = {}

    def learn(self, reply: Reply) -> None:
        # An error reply (a node killed mid-round) has no content to read a name from.
        message = reply.message
        if not message.has_error() and wire.REPORT in message.content.config_records:
            name = message.content.config_records[wire.REPORT].get("hospital")
            if isinstance(name, str) and name:
                self._names[reply.node_id] = name

    def __getitem__(self, node_id: int) -> str:
        return self._names.get(node_id, f"node {node_id}")


def run_study(grid: Grid, config: AggregatorConfig, sink: ResultsSink) -> None:
    """Run every round, report each to `sink`; raise RunFailedError if the study cannot go on."""
    names = HospitalNames()
    reports = RoundReports(sink, names)
    seen: set[int] = set()
    weight_unit = config.weight_unit
    with reports.unevaluated_on_failure():
        for round_number in range(1, config.rounds + 1):
            started = time.monotonic()
            wait_timeout = config.join_timeout_s if round_number == 1 else 0.0
            nodes = await_hospitals(grid, minimum=config.min_hospitals, timeout_s=wait_timeout)
            content = round_content(
                config,
                round_number=round_number,
                global_state=reports.global_state,
                weight_unit=weight_unit,
            )
            received = ReceivedUpdates(config, names)
            replies = exchange(
                grid,
                nodes,
                wire.TRAIN,
                content,
                round_number,
                config.round_timeout_s,
                on_reply=received.receive,
            )
            reports.evaluated_by(replies, ended=started)
            contributions = received.contributions()
            dropped = {
                **no_reply_reasons(nodes, replies, names, config.round_timeout_s),
                **received.dropped(),
                **{names[node]: "disconnected from the SuperLink" for node in seen - set(nodes)},
            }
            seen.update(nodes)
            require_quorum(round_number, contributions, dropped, config.min_hospitals)
            reports.summed(
                SummedRound(
                    number=round_number,
                    started=started,
                    reports={c.node_id: c.report for c in contributions},
                    dropped=dropped,
                    global_state=received.total().to_bytes(),
                )
            )
            weight_unit = weight_unit_for(c.report.rows_rounded for c in contributions)
        reports.evaluate_final(grid, config)


@dataclass(frozen=True)
class SummedRound:
    """A round whose global model exists, waiting for the hospitals' evaluation of it."""

    number: int
    started: float  # time.monotonic() as the round began
    reports: dict[int, HospitalRound]  # by node id: the hospitals whose updates were summed
    dropped: dict[str, str]
    global_state: bytes

    def result(self, evaluations: Sequence[Evaluation], *, ended: float) -> RoundResult:
        return RoundResult(
            round=self.number,
            participants=sorted(report.hospital for report in self.reports.values()),
            dropped=self.dropped,
            metrics=weighted_metrics(evaluations),
            hospitals=sorted(
                (with_metrics(report, evaluations) for report in self.reports.values()),
                key=lambda report: report.hospital,
            ),
            bytes_down=len(self.global_state),
            seconds=round(ended - self.started, 3),
        )


class RoundReports:
    """Reports each round to the sink once the hospitals that contributed to it have evaluated its
    model: as they train the next round, or in the final evaluation. A round is over as the next
    one starts (the last one, once its model is evaluated), so its seconds add up to the run's."""

    def __init__(self, sink: ResultsSink, names: HospitalNames) -> None:
        self._sink = sink
        self._names = names
        self._waiting: SummedRound | None = None  # summed, not yet reported
        # Kept apart from the waiting round: reporting a round must not take away its model.
        self._global_state: bytes | None = None

    @property
    def global_state(self) -> bytes | None:
        """The latest global model, which the next round trains from."""
        return self._global_state

    def summed(self, summed: SummedRound) -> None:
        self._waiting = summed
        self._global_state = summed.global_state

    def evaluated_by(self, replies: Iterable[Reply], *, ended: float) -> None:
        """Report the waiting round with the evaluations its contributors sent in `replies`."""
        waiting, self._waiting = self._waiting, None
        if waiting is None:
            return
        evaluations = [
            evaluation
            for reply in replies
            if reply.node_id in waiting.reports
            and (evaluation := parse_evaluation(reply.message, self._names[reply.node_id]))
        ]
        self._sink.round_completed(waiting.result(evaluations, ended=ended))

    def evaluate_final(self, grid: Grid, config: AggregatorConfig) -> None:
        """The last round's contributors decrypt its model, evaluate it and keep it for release."""
        if self._waiting is None:
            return
        content = round_content(
            config,
            round_number=self._waiting.number,
            global_state=self._waiting.global_state,
            final=True,
        )
        replies = exchange(
            grid,
            self._waiting.reports,
            wire.EVALUATE,
            content,
            self._waiting.number,
            config.round_timeout_s,
        )
        self.evaluated_by(replies, ended=time.monotonic())

    @contextmanager
    def unevaluated_on_failure(self) -> Iterator[None]:
        """A run that fails before a summed round was evaluated still reports it, without
        metrics."""
        try:
            yield
        except RunFailedError:
            self.evaluated_by([], ended=time.monotonic())
            raise


def await_hospitals(grid: Grid, *, minimum: int, timeout_s: float) -> list[int]:
    """The connected hospitals, waiting up to `timeout_s` for at least `minimum` of them."""
    deadline = time.monotonic() + timeout_s
    nodes = sorted(grid.get_node_ids())
    while len(nodes) < minimum and time.monotonic() < deadline:
        time.sleep(NODE_POLL_INTERVAL_S)
        nodes = sorted(grid.get_node_ids())
    if len(nodes) < minimum:
        raise RunFailedError(
            f"only {len(nodes)} hospital node(s) connected; the study needs {minimum}"
        )
    return nodes


def round_content(
    config: AggregatorConfig,
    *,
    round_number: int,
    global_state: bytes | None,
    final: bool = False,
    weight_unit: int | None = None,
) -> RecordDict:
    round_config: dict[str, ConfigRecordValues] = {
        "study_id": config.study_id,
        "round": round_number,
        "rounds": config.rounds,
        "protocol": config.protocol_json,
        "final": final,
    }
    if weight_unit is not None:
        round_config["weight_unit"] = weight_unit
    content = RecordDict({wire.ROUND_CONFIG: ConfigRecord(round_config)})
    if global_state is not None:
        wire.put_blob(content, wire.GLOBAL_STATE, global_state, inline_in=wire.ROUND_CONFIG)
    return content


def exchange(
    grid: Grid,
    nodes: Iterable[int],
    message_type: str,
    content: RecordDict,
    round_number: int,
    timeout_s: float,
    *,
    on_reply: Callable[[Reply], None] | None = None,
) -> list[Reply]:
    """Send `content` to every node and gather the replies until all came or `timeout_s`
    passed; `on_reply` sees each reply as soon as it is pulled."""
    messages = [
        Message(
            content,
            dst_node_id=node,
            message_type=message_type,
            group_id=str(round_number),
            ttl=timeout_s + MESSAGE_TTL_MARGIN_S,
        )
        for node in nodes
    ]
    # Grid.send_and_receive would do the same, but pulls every 3 s (flwr 1.41,
    # superlink/grid/http_grid.py): up to 3 s lost every round, for a pull that costs one
    # loopback request.
    pending = {  # message id: the node it went to
        message_id: message.metadata.dst_node_id
        for message_id, message in zip(grid.push_messages(messages), messages, strict=True)
    }
    deadline = time.monotonic() + timeout_s
    replies: list[Reply] = []
    with OBJECT_PULLS.until(deadline):
        while pending:
            began = time.monotonic()
            for message in grid.pull_messages(list(pending)):
                node = pending.pop(message.metadata.reply_to_message_id, None)
                if node is None:
                    continue  # not an answer to a message still awaited here
                reply = Reply(node, message)
                replies.append(reply)
                if on_reply is not None:
                    on_reply(reply)
            # A pull that began in time may end past the deadline, held up by a reply whose
            # objects never came: the replies that arrived meanwhile are pulled once more.
            if not pending or began >= deadline:
                break
            time.sleep(REPLY_POLL_INTERVAL_S)
    return replies


class ReceivedUpdates:
    """Train replies as they arrive. Each usable update is added at once to the running sum of
    the updates of its shape (length and quantization), so that summing does not wait for the
    slowest hospital; a reply that cannot be used drops its hospital, with the reason."""

    def __init__(self, config: AggregatorConfig, names: HospitalNames) -> None:
        self._config = config
        self._names = names
        self._groups: dict[str, _ShapeGroup] = {}  # by summing shape, in order of arrival
        self._refused: dict[str, str] = {}

    def receive(self, reply: Reply) -> None:
        self._names.learn(reply)
        hospital = self._names[reply.node_id]
        reason = refusal_reason(reply.message)
        if reason:
            self._refused[hospital] = reason
            return
        try:
            contribution = parse_contribution(reply, hospital, self._config)
            shape = summing_shape(contribution.update)
            group = self._groups.get(shape) or _ShapeGroup(UpdateSum(self._config.he_context))
            group.add(contribution)
        except (CryptoError, KeyError, TypeError, ValueError) as error:
            self._refused[hospital] = f"rejected its update: {error}"
            return
        self._groups[shape] = group

    def contributions(self) -> list[Contribution]:
        """The updates of the shape most hospitals sent: only those can be summed together."""
        common = self._common_shape()
        return [] if common is None else list(self._groups[common].contributions)

    def total(self) -> Update:
        """The sum of `contributions()` (raises ValueError when there are none)."""
        common = self._common_shape()
        if common is None:
            raise ValueError("no hospital contributed an update")
        return self._groups[common].running.total()

    def dropped(self) -> dict[str, str]:
        """Hospitals whose reply was refused, unusable or of another shape, with the reason."""
        common = self._common_shape()
        minority = {
            contribution.report.hospital: f"sent {shape} where the others sent {common}"
            for shape, group in self._groups.items()
            if shape != common
            for contribution in group.contributions
        }
        return {**self._refused, **minority}

    def _common_shape(self) -> str | None:
        # Ties go to the shape that arrived first.
        if not self._groups:
            return None
        return max(self._groups, key=lambda shape: len(self._groups[shape].contributions))


@dataclass
class _ShapeGroup:
    running: UpdateSum
    contributions: list[Contribution] = field(default_factory=list)

    def add(self, contribution: Contribution) -> None:
        self.running.add(contribution.update)
        self.contributions.append(contribution)


def no_reply_reasons(
    nodes: Sequence[int], replies: Sequence[Reply], names: HospitalNames, timeout_s: float
) -> dict[str, str]:
    replied = {reply.node_id for reply in replies}
    return {
        names[node]: f"no reply within {timeout_s:g} s" for node in nodes if node not in replied
    }


def refusal_reason(message: Message) -> str:
    if message.has_error():
        return f"failed: {message.error.reason}"
    if wire.REFUSAL in message.content.config_records:
        refusal = message.content.config_records[wire.REFUSAL]
        return f"refused: {refusal.get('reason') or 'no reason given'!s}"
    return ""


def parse_contribution(reply: Reply, hospital: str, config: AggregatorConfig) -> Contribution:
    # ReceivedUpdates adds the update to its sum at once, and that loads and checks each
    # ciphertext: loading them here too would double the aggregator's work.
    update = read_update(
        wire.blob_of(reply.message.content, wire.UPDATE, inline_in=wire.REPORT),
        context=config.he_context,
        max_bytes=config.max_update_bytes,
        check_ciphertexts=False,
    )
    return Contribution(
        node_id=reply.node_id,
        update=update,
        report=hospital_round(reply.message, hospital, bytes_up=update.nbytes),
    )


def hospital_round(message: Message, hospital: str, *, bytes_up: int) -> HospitalRound:
    """What a hospital's train reply reports of its round, as published."""
    report = message.content.config_records[wire.REPORT]

    def spent(key: str) -> float:
        return number(report, wire.TRAIN_SECTION + key)

    return HospitalRound(
        hospital=hospital,
        epsilon=spent("epsilon"),
        noise_multiplier=spent("noise_multiplier"),
        sample_rate=spent("sample_rate"),
        steps=int(spent("steps")),
        delta=spent("delta"),
        accountant=str(report.get("accountant", "")),
        epsilon_conversion=str(report.get("epsilon_conversion", "")),
        consent=str(report.get("consent", "")),
        rows_rounded=int(spent("rows_rounded")),
        bytes_up=bytes_up,
        train_seconds=spent("train_seconds"),
    )


def require_quorum(
    round_number: int,
    contributions: Sequence[Contribution],
    dropped: dict[str, str],
    minimum: int,
) -> None:
    if len(contributions) >= minimum:
        return
    reasons = "; ".join(f"{hospital}: {reason}" for hospital, reason in sorted(dropped.items()))
    raise RunFailedError(
        f"round {round_number} needs at least {minimum} hospitals but {len(contributions)} "
        f"contributed ({reasons or 'no hospital replied'})"
    )


def parse_evaluation(reply: Message, hospital: str) -> Evaluation | None:
    """A hospital's evaluation, or None when its report is missing or unusable (it then counts
    for nothing). A hospital that declined to train may still have evaluated the model."""
    rows_key = wire.EVAL_SECTION + "rows_rounded"
    if reply.has_error() or wire.REPORT not in reply.content.config_records:
        return None
    report = reply.content.config_records[wire.REPORT]
    if rows_key not in report:
        return None
    try:
        metrics: dict[str, float | None] = {
            key.removeprefix(wire.EVAL_SECTION): number(report, key)
            for key in report
            if key.startswith(wire.EVAL_SECTION) and key != rows_key
        }
        return Evaluation(hospital=hospital, rows=int(number(report, rows_key)), metrics=metrics)
    except ValueError:
        return None


def number(record: ConfigRecord, key: str) -> float:
    """A finite number a hospital reported; anything else is a malformed reply."""
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"report field '{key}' is missing or not a finite number")
    return float(value)


def weighted_metrics(evaluations: Sequence[Evaluation]) -> dict[str, float | None]:
    """Each metric averaged over the hospitals that reported it, weighted by their held-out rows."""
    keys = sorted({key for evaluation in evaluations for key in evaluation.metrics})
    averaged: dict[str, float | None] = {}
    for key in keys:
        reporting = [e for e in evaluations if e.metrics.get(key) is not None]
        weight = sum(e.rows for e in reporting)
        averaged[key] = (
            sum(e.rows * float(e.metrics[key] or 0.0) for e in reporting) / weight
            if weight
            else None
        )
    return averaged


def with_metrics(report: HospitalRound, evaluations: Sequence[Evaluation]) -> HospitalRound:
    metrics = next((e.metrics for e in evaluations if e.hospital == report.hospital), {})
    return replace(report, metrics=metrics)


def aggregator_facts(context: AggregatorContext) -> dict[str, object]:
    """What anyone can check about the aggregator's key material, read from the live context."""
    return {
        "he_context_fingerprint": context.fingerprint,
        "he_context_bytes": len(context.to_bytes()),
        "has_secret_key": context.has_secret_key,
    }
