"""A federation in one process: the real round loop and real ClientApp handlers, no transport.

A harness for tests and benchmarks, never imported by the product. `InProcessGrid` stands in for
Flower's Grid: a ServerApp's round loop sends messages through it, and each is handed straight to
a ClientApp with the node config its SuperNode would pass. The round logic, the ClientApp, DP-SGD
and the crypto run for real; only Flower's processes and messaging are skipped, so a study runs in
seconds. `federation.deployment.LocalFederation` runs the same apps on a real SuperLink and
SuperNodes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.supercore.task_identity import TaskIdentity

from federation.deployment import HospitalNodeSpec
from hospitals.client_app import app as hospital_app

RUN_ID = 4242

# A hook sees each reply before it is delivered and may replace it, or return None to lose it.
ReplyHook = Callable[[Message], Message | None]


def node_config(spec: HospitalNodeSpec) -> dict[str, bool | float | int | str]:
    config: dict[str, bool | float | int | str] = {
        "hospital": spec.hospital,
        "data-path": str(spec.data_path),
        "state-dir": str(spec.state_dir),
        "policy-path": str(spec.policy_path),
        "dataset-id": spec.dataset_id,
    }
    if spec.cpu_threads is not None:
        config["cpu-threads"] = spec.cpu_threads  # an int, as Flower parses `cpu-threads=N`
    return config


@dataclass
class InProcessGrid:
    """The Grid methods a round loop calls (get_node_ids, push_messages and pull_messages, or
    send_and_receive), delivering to `client_app`: the hospitals' own unless a benchmark passes
    another."""

    hospitals: list[HospitalNodeSpec]
    client_app: ClientApp = hospital_app
    hooks: dict[str, ReplyHook] = field(default_factory=dict)
    sent: list[Message] = field(default_factory=list)
    received: list[Message] = field(default_factory=list)
    _unpulled: dict[str, Message] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Messages need a run and a sender identity, which Flower sets in its own processes.
        TaskIdentity.run_id = RUN_ID
        TaskIdentity.node_id = 0
        TaskIdentity.task_id = 1
        self.nodes = {index + 1: spec for index, spec in enumerate(self.hospitals)}

    def node_id(self, hospital: str) -> int:
        return next(node for node, spec in self.nodes.items() if spec.hospital == hospital)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Delivers each message now; its reply waits for `pull_messages`."""
        message_ids = []
        for message in messages:
            # Flower's Grid names a message by its object id when it pushes it (http_grid.py).
            message.metadata.__dict__["_message_id"] = message.object_id
            message_ids.append(message.metadata.message_id)
            for reply in self.send_and_receive([message]):
                self._unpulled[message.metadata.message_id] = reply
        return message_ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self._unpulled.pop(i) for i in list(message_ids) if i in self._unpulled]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        replies = []
        for message in messages:
            self.sent.append(message)
            spec = self.nodes[message.metadata.dst_node_id]
            context = Context(
                run_id=RUN_ID,
                node_id=message.metadata.dst_node_id,
                node_config=node_config(spec),
                state=RecordDict(),
                run_config={},
            )
            reply = self.client_app(message, context)
            hook = self.hooks.get(spec.hospital)
            delivered = hook(reply) if hook else reply
            if delivered is not None:
                self.received.append(delivered)
                replies.append(delivered)
        return replies
