"""`cohort-hospital`: what hospital IT runs at the node, without the federation."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from crypto import SecretContext
from hospitals.data import DataError, load_dataset, split_holdout
from hospitals.keys import save_study_key, study_key_path
from hospitals.ledger import PrivacyLedger
from hospitals.node import LEDGER_FILE
from hospitals.policy import POLICY_TEMPLATE, PolicyError, load_policy
from hospitals.portal_client import PortalClient, PortalError
from hospitals.protocol import ProtocolError, StudyProtocol

# The node token comes from the environment, never from the command line (shell history, ps).
TOKEN_VARIABLE = "COHORT_NODE_TOKEN"  # noqa: S105 - the variable's name, not a token


def check(args: argparse.Namespace) -> int:
    """Validate a data file against a study's protocol, as the node would before a round."""
    protocol = StudyProtocol.from_json(Path(args.protocol).read_text(encoding="utf-8"))
    dataset = load_dataset(Path(args.data), protocol.schema)
    train, holdout = split_holdout(
        dataset, fraction=protocol.holdout_fraction, salt=protocol.study_id
    )
    print(
        f"{args.data}: {len(dataset)} rows valid for study '{protocol.study_id}' "
        f"(protocol {protocol.sha256[:12]}…)"
    )
    print(
        f"  positive rate {dataset.positive_rate:.1%}; "
        f"training rows {len(train)}, held-out rows {len(holdout)}"
    )
    return 0


def ledger(args: argparse.Namespace) -> int:
    """Show what the node's privacy ledger recorded for a dataset and the ε it adds up to."""
    policy = load_policy(Path(args.policy))
    privacy_ledger = PrivacyLedger(Path(args.state_dir) / LEDGER_FILE)
    entries = privacy_ledger.entries(dataset_id=args.dataset)
    for entry in entries:
        step = entry.step
        print(
            f"{entry.recorded_at:%Y-%m-%d %H:%M} study {entry.study_id} run {entry.run_id} round "
            f"{entry.round_number}: q={step.sample_rate:.4f} σ={step.noise_multiplier:.3f} "
            f"steps={step.steps} δ={step.delta:g} {step.accountant}"
        )
    spent = privacy_ledger.epsilon(
        dataset_id=args.dataset, delta=policy.delta, accountant=policy.accountant
    )
    print(
        f"dataset '{args.dataset}': {len(entries)} round(s), lifetime ε={spent:.3f} of "
        f"{policy.max_lifetime_epsilon:g} (δ={policy.delta:g}, {policy.accountant})"
    )
    return 0


def policy(args: argparse.Namespace) -> int:
    """Print the documented policy template, or check a policy file."""
    if args.check is None:
        print(POLICY_TEMPLATE)
        return 0
    print(load_policy(Path(args.check)))
    return 0


def _portal(args: argparse.Namespace) -> PortalClient:
    token = os.environ.get(TOKEN_VARIABLE, "")
    if not token:
        raise PortalError(
            f"set {TOKEN_VARIABLE} to this node's token (issued in the admin console)"
        )
    return PortalClient(base_url=args.portal, token=token)


def keys_create(args: argparse.Namespace) -> int:
    """Generate the study's CKKS key at this node and pin its keyless context at the portal."""
    keys_dir = Path(args.state_dir) / "keys"
    if study_key_path(keys_dir, args.study).exists():
        raise PortalError(f"this node already holds a key for study '{args.study}'; keep using it")
    key = SecretContext.generate()
    _portal(args).upload_he_context(
        study_slug=args.study, aggregator_context=key.aggregator_context().to_bytes()
    )
    path = save_study_key(keys_dir, study_id=args.study, context=key)
    print(f"key for '{args.study}' saved to {path} (fingerprint {key.fingerprint[:16]}…)")
    print("the other hospitals of the study need this key; never give it to the aggregator")
    return 0


def heartbeat(args: argparse.Namespace) -> int:
    """Tell the portal this node is online, and list the protocols its stewards approved."""
    portal = _portal(args)
    portal.heartbeat({"supernode": args.supernode})
    for study in portal.approved_protocols():
        print(f"{study['slug']}: protocol {study['protocol_sha256'][:12]}… ({study['state']})")
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="cohort-hospital", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)
    check_cmd = commands.add_parser("check", help=check.__doc__)
    check_cmd.add_argument("--protocol", required=True, help="the study's protocol JSON")
    check_cmd.add_argument("--data", required=True, help="CSV or Parquet file")
    check_cmd.set_defaults(handler=check)
    ledger_cmd = commands.add_parser("ledger", help=ledger.__doc__)
    ledger_cmd.add_argument("--state-dir", required=True)
    ledger_cmd.add_argument("--dataset", required=True, help="the node's dataset-id")
    ledger_cmd.add_argument("--policy", required=True, help="the node policy file")
    ledger_cmd.set_defaults(handler=ledger)
    policy_cmd = commands.add_parser("policy", help=policy.__doc__)
    policy_cmd.add_argument("--check", metavar="FILE", help="validate this policy file")
    policy_cmd.set_defaults(handler=policy)
    keys_cmd = commands.add_parser("keys-create", help=keys_create.__doc__)
    keys_cmd.add_argument("--study", required=True, help="the study's id (slug)")
    keys_cmd.add_argument("--state-dir", required=True)
    keys_cmd.add_argument("--portal", required=True, help="the portal's URL")
    keys_cmd.set_defaults(handler=keys_create)
    beat_cmd = commands.add_parser("heartbeat", help=heartbeat.__doc__)
    beat_cmd.add_argument("--portal", required=True, help="the portal's URL")
    beat_cmd.add_argument("--supernode", default="online", help="status to report")
    beat_cmd.set_defaults(handler=heartbeat)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except (DataError, PolicyError, ProtocolError, PortalError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
