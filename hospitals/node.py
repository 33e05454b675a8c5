"""A hospital node's own settings and state directory, read from the SuperNode's node config.

Paths and the hospital's name come from `--node-config` (never from the study), so a study can
neither point a node at other files nor rename it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

NODE_CONFIG_KEYS = ("hospital", "data-path", "state-dir", "policy-path")
LEDGER_FILE = "privacy-ledger.sqlite3"


class NodeConfigError(ValueError):
    """The SuperNode was started with an incomplete or invalid --node-config."""


@dataclass(frozen=True)
class NodeSettings:
    hospital: str
    data_path: Path
    state_dir: Path
    policy_path: Path
    dataset_id: str

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, object]) -> NodeSettings:
        missing = [key for key in NODE_CONFIG_KEYS if not node_config.get(key)]
        if missing:
            raise NodeConfigError(
                f"--node-config lacks {', '.join(missing)}; a hospital node needs "
                + " ".join(f'{key}="..."' for key in NODE_CONFIG_KEYS)
            )
        data_path = Path(str(node_config["data-path"]))
        return cls(
            hospital=str(node_config["hospital"]),
            data_path=data_path,
            state_dir=Path(str(node_config["state-dir"])),
            policy_path=Path(str(node_config["policy-path"])),
            # The ledger accounts per dataset; by default a dataset is its file.
            dataset_id=str(node_config.get("dataset-id") or data_path.stem),
        )

    @property
    def ledger_path(self) -> Path:
        return self.state_dir / LEDGER_FILE

    @property
    def keys_dir(self) -> Path:
        return self.state_dir / "keys"

    @property
    def models_dir(self) -> Path:
        return self.state_dir / "models"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "node.log"


def node_logger(settings: NodeSettings) -> logging.Logger:
    """A logger writing to the node's own log: details that must not leave the hospital go here."""
    logger = logging.getLogger(f"cohort.node.{settings.hospital}")
    log_file = str(settings.log_path.resolve())
    if not any(getattr(h, "baseFilename", None) == log_file for h in logger.handlers):
        for stale in list(logger.handlers):
            logger.removeHandler(stale)
            stale.close()
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    return logger
