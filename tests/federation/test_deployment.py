"""How a LocalFederation configures the nodes it starts, before any process runs."""

from __future__ import annotations

import os

from federation.deployment import LocalFederation
from hospitals.node import NodeSettings


def node(tmp_path, name: str, cpu_threads: int | None = None) -> NodeSettings:
    return NodeSettings(
        hospital=name,
        data_path=tmp_path / f"{name}.csv",
        state_dir=tmp_path / name,
        policy_path=tmp_path / "policy.toml",
        dataset_id=name,
        cpu_threads=cpu_threads,
    )


def test_nodes_on_one_machine_share_its_cores_unless_their_config_says_otherwise(tmp_path):
    hospitals = [node(tmp_path, "a"), node(tmp_path, "b", cpu_threads=3)]
    federation = LocalFederation(workdir=tmp_path / "federation", hospitals=hospitals)

    share = max(1, (os.cpu_count() or 1) // 2)
    written = [NodeSettings.from_file(federation._write_node_config(spec)) for spec in hospitals]

    assert federation.cpu_threads_per_node == share
    assert [spec.cpu_threads for spec in written] == [share, 3]
