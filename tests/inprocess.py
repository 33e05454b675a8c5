"""An in-process stand-in for Flower's Grid that delivers messages to the real ClientApp.

The round loop, the ClientApp and the crypto run for real; only the transport is skipped, so
round logic can be tested in seconds. Integration tests cover the real SuperLink and SuperNodes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from flwr.app import Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from federation.deployment import HospitalNodeSpec
from hospitals.client_app import app as client_app

RUN_ID = 4242

# A hook sees each reply before it is delivered and may replace it, or return None to lose it.
ReplyHook = Callable[[Message], Message | None]


def node_config(spec: HospitalNodeSpec) -> dict[str, bool | float | int | str]:
    return {
        "hospital": spec.hospital,
        "data-path": str(spec.data_path),
        "state-dir": str(spec.state_dir),
        "policy-path": str(spec.policy_path),
        "dataset-id": spec.dataset_id,
    }


@dataclass
class InProcessGrid:
    hospitals: list[HospitalNodeSpec]
    hooks: dict[str, ReplyHook] = field(default_factory=dict)
    sent: list[Message] = field(default_factory=list)
    received: list[Message] = field(default_factory=list)

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
            reply = client_app(message, context)
            hook = self.hooks.get(spec.hospital)
            delivered = hook(reply) if hook else reply
            if delivered is not None:
                self.received.append(delivered)
                replies.append(delivered)
        return replies
