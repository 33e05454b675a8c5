"""A hospital node's own settings and state directory, read from the SuperNode's node config.

Paths and the hospital's name come from `--node-config` (never from the study), so a study can
neither point a node at other files nor rename it. Hospital IT keeps one file, `node.toml`, for
both: `flower-supernode --node-config node.toml` and `cohort-hospital … --node node.toml` read
the same keys (see NODE_TEMPLATE).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

NODE_CONFIG_KEYS = ("hospital", "data-path", "state-dir", "policy-path")
OPTIONAL_NODE_CONFIG_KEYS = ("dataset-id", "portal-url", "device", "cpu-threads")
# Where DP-SGD runs: the CPU, or a CUDA GPU (torch device names).
DEVICE = re.compile(r"cpu|cuda(:\d+)?")
LEDGER_FILE = "privacy-ledger.sqlite3"
# The node's portal token: this variable when set, else this file in the state directory.
TOKEN_VARIABLE = "COHORT_NODE_TOKEN"  # noqa: S105 - the variable's name, not a token
TOKEN_FILE = "portal-token"  # noqa: S105 - a file name, not a token


class NodeConfigError(ValueError):
    """The SuperNode was started with an incomplete or invalid --node-config."""


@dataclass(frozen=True)
class NodeSettings:
    hospital: str
    data_path: Path
    state_dir: Path
    policy_path: Path
    dataset_id: str
    portal_url: str | None = None
    device: str = "cpu"
    # Torch's threads in each task; None: torch's default, one per core.
    cpu_threads: int | None = None

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, object]) -> NodeSettings:
        missing = [key for key in NODE_CONFIG_KEYS if not node_config.get(key)]
        if missing:
            raise NodeConfigError(
                f"--node-config lacks {', '.join(missing)}; a hospital node needs "
                + " ".join(f'{key}="..."' for key in NODE_CONFIG_KEYS)
            )
        data_path = Path(str(node_config["data-path"]))
        portal_url = str(node_config.get("portal-url") or "").strip() or None
        if portal_url is not None:
            _check_portal_url(portal_url)
        device = str(node_config.get("device") or "cpu")
        if not DEVICE.fullmatch(device):
            raise NodeConfigError(f'device must be "cpu", "cuda" or "cuda:N", got {device!r}')
        return cls(
            hospital=str(node_config["hospital"]),
            data_path=data_path,
            state_dir=Path(str(node_config["state-dir"])),
            policy_path=Path(str(node_config["policy-path"])),
            # The ledger accounts per dataset; by default a dataset is its file.
            dataset_id=str(node_config.get("dataset-id") or data_path.stem),
            portal_url=portal_url,
            device=device,
            cpu_threads=_cpu_threads(node_config.get("cpu-threads")),
        )

    @classmethod
    def from_file(cls, path: Path) -> NodeSettings:
        """Reads a node config file (TOML, the keys of NODE_TEMPLATE), as the SuperNode does."""
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise NodeConfigError(
                f"node config not found: looked for {path}; write one there (print the "
                "template with `cohort-hospital node`)"
            ) from None
        except (OSError, UnicodeDecodeError) as error:
            raise NodeConfigError(f"{path}: node config could not be read: {error}") from error
        except tomllib.TOMLDecodeError as error:
            raise NodeConfigError(f"{path}: node config is not valid TOML: {error}") from error
        known = (*NODE_CONFIG_KEYS, *OPTIONAL_NODE_CONFIG_KEYS)
        for key, value in document.items():
            if key not in known:
                raise NodeConfigError(
                    f"{path}: unknown key '{key}' in node config (known keys: {', '.join(known)})"
                )
            if not isinstance(value, str):
                raise NodeConfigError(f"{path}: key '{key}' must be a string, e.g. {key} = \"...\"")
        try:
            return cls.from_node_config(document)
        except NodeConfigError as error:
            raise NodeConfigError(f"{path}: {error}") from None

    def to_toml(self) -> str:
        """The node config file for these settings (what `from_file` reads back)."""
        pairs = {
            "hospital": self.hospital,
            "data-path": str(self.data_path),
            "state-dir": str(self.state_dir),
            "policy-path": str(self.policy_path),
            "dataset-id": self.dataset_id,
        }
        if self.portal_url:
            pairs["portal-url"] = self.portal_url
        if self.device != "cpu":
            pairs["device"] = self.device
        if self.cpu_threads is not None:
            pairs["cpu-threads"] = str(self.cpu_threads)
        # JSON string escaping is valid TOML basic-string syntax.
        return "".join(f"{key} = {json.dumps(value)}\n" for key, value in pairs.items())

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

    @property
    def consent_secret_path(self) -> Path:
        return self.state_dir / "consent-secret"

    @property
    def portal_token_path(self) -> Path:
        return self.state_dir / TOKEN_FILE

    @property
    def outbound_log_path(self) -> Path:
        """Every request this node sends to the portal, one JSON line each, for its auditors."""
        return self.state_dir / "outbound.jsonl"

    def portal_token(self) -> str:
        """The node's portal token: $COHORT_NODE_TOKEN if set, else `<state-dir>/portal-token`."""
        token = os.environ.get(TOKEN_VARIABLE, "").strip()
        if token:
            return token
        try:
            token = self.portal_token_path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            token = ""
        except (OSError, UnicodeDecodeError) as error:
            raise NodeConfigError(
                f"the node's portal token file {self.portal_token_path} could not be read: {error}"
            ) from error
        if not token:
            raise NodeConfigError(
                f"no portal token: set {TOKEN_VARIABLE} or write the token (issued in the "
                f"portal's admin console) to {self.portal_token_path} with mode 0600"
            )
        return token


def _cpu_threads(value: object) -> int | None:
    """A positive whole number, as a string (node.toml) or an int (`--node-config "k=v"`)."""
    if value is None or value == "":
        return None
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        raise NodeConfigError(f"cpu-threads must be a whole number of at least 1, got {value!r}")
    return int(text)


def _check_portal_url(url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise NodeConfigError(
            f"portal-url must be an https:// (or http:// for a local portal) URL, got {url!r}"
        )


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


NODE_TEMPLATE = """\
# Cohort hospital node config: one file for the SuperNode and the CLI.
#   flower-supernode --node-config node.toml ...
#   cohort-hospital heartbeat --node node.toml
# The study can change none of these.

# This hospital's name, as the aggregator and the portal show it.
hospital = "hospital-a"

# The local data file (CSV or Parquet) the node trains and evaluates on.
data-path = "/srv/cohort/data/patients.csv"

# The node's own state: privacy ledger, study keys, consent secret, released models, logs.
# Back it up; the ledger and the consent secret cannot be recreated.
state-dir = "/srv/cohort/state"

# The node policy: limits this hospital sets on every study (`cohort-hospital policy`).
policy-path = "/srv/cohort/policy.toml"

# The privacy ledger accounts per dataset; defaults to the data file's name without extension.
dataset-id = "patients"

# The portal's URL: consent snapshots are pulled from it before every round, and the node
# reports its ledger and readiness to it. The node's token comes from $COHORT_NODE_TOKEN, else
# from the file portal-token in state-dir (mode 0600).
portal-url = "https://cohort.example.org"

# Where DP-SGD trains: "cpu" (the default), or a GPU: "cuda" or "cuda:N".
device = "cpu"

# CPU threads each round's training and evaluation use; by default one per core. Where other
# work shares the machine (several nodes, say), give the node its share of the cores: threads
# that wait for a busy core make small models' training several times slower.
cpu-threads = "4"
"""
