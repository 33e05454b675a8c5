"""`cohort-hospital`: what hospital IT runs at the node, without the federation.

Node commands read the node config file the SuperNode reads (`--node node.toml`); the node's
portal token comes from $COHORT_NODE_TOKEN, else from `<state-dir>/portal-token`, never from the
command line (shell history, ps).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from crypto import PACKED_PARAMS, SecretContext
from hospitals.consent import ConsentError, import_consent_export, withdraw_consent
from hospitals.data import DataError, load_dataset, split_holdout
from hospitals.dp import EPSILON_CONVERSIONS
from hospitals.keys import save_study_key, study_key_path
from hospitals.ledger import PrivacyLedger
from hospitals.node import NODE_TEMPLATE, NodeConfigError, NodeSettings
from hospitals.policy import POLICY_TEMPLATE, PolicyError, load_policy
from hospitals.portal_client import PortalClient, PortalError
from hospitals.protocol import ProtocolError, StudyProtocol
from hospitals.reporting import report_to_portal


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


def _node(args: argparse.Namespace) -> NodeSettings:
    return NodeSettings.from_file(Path(args.node))


def ledger(args: argparse.Namespace) -> int:
    """Show what the node's privacy ledger recorded for its dataset and the ε it adds up to."""
    node = _node(args)
    policy = load_policy(node.policy_path)
    privacy_ledger = PrivacyLedger(node.ledger_path)
    entries = privacy_ledger.entries(dataset_id=node.dataset_id)
    for entry in entries:
        step = entry.step
        print(
            f"{entry.recorded_at:%Y-%m-%d %H:%M} study {entry.study_id} run {entry.run_id} round "
            f"{entry.round_number}: q={step.sample_rate:.4f} σ={step.noise_multiplier:.3f} "
            f"steps={step.steps} δ={step.delta:g} {step.accountant}"
        )
    spent = privacy_ledger.epsilon(
        dataset_id=node.dataset_id, delta=policy.delta, accountant=policy.accountant
    )
    print(
        f"dataset '{node.dataset_id}': {len(entries)} round(s), lifetime ε={spent:.3f} of "
        f"{policy.max_lifetime_epsilon:g} (δ={policy.delta:g}, {policy.accountant}, "
        f"{EPSILON_CONVERSIONS[policy.accountant]})"
    )
    return 0


def policy(args: argparse.Namespace) -> int:
    """Print the documented policy template, or check a policy file."""
    if args.check is None:
        print(POLICY_TEMPLATE)
        return 0
    print(load_policy(Path(args.check)))
    return 0


def node_config(args: argparse.Namespace) -> int:
    """Print the documented node config template, or check a node config file."""
    if args.check is None:
        print(NODE_TEMPLATE)
        return 0
    print(NodeSettings.from_file(Path(args.check)))
    return 0


def keys_create(args: argparse.Namespace) -> int:
    """Generate the study's CKKS key at this node and pin its keyless context at the portal."""
    node = _node(args)
    if study_key_path(node.keys_dir, args.study).exists():
        raise PortalError(f"this node already holds a key for study '{args.study}'; keep using it")
    key = SecretContext.generate(params=PACKED_PARAMS)
    PortalClient.for_node(node).upload_he_context(
        study_slug=args.study, aggregator_context=key.aggregator_context().to_bytes()
    )
    path = save_study_key(node.keys_dir, study_id=args.study, context=key)
    print(f"key for '{args.study}' saved to {path} (fingerprint {key.fingerprint[:16]}…)")
    print("the other hospitals of the study need this key; never give it to the aggregator")
    return 0


def heartbeat(args: argparse.Namespace) -> int:
    """Report to the portal: online, the privacy ledger, and readiness for each approved study."""
    node = _node(args)
    report = report_to_portal(node, PortalClient.for_node(node), supernode=args.supernode)
    print(f"{node.portal_url}: heartbeat sent ({args.supernode})")
    if report.ledger_error is not None:
        print(f"ledger: not mirrored: {report.ledger_error}")
    for dataset in (report.ledger or {}).get("datasets", []):
        print(
            f"ledger: dataset '{dataset.get('dataset_id')}' ε={dataset.get('epsilon_spent')} of "
            f"{dataset.get('max_lifetime_epsilon')} ({dataset.get('conversion')}), as the portal "
            "recomputed it"
        )
    for study in report.studies:
        if study.readiness is None:
            print(f"{study.study}: readiness not reported: {study.error}")
            continue
        readiness = study.readiness
        basis = (
            f"consent snapshot {readiness['consent_sha256'][:12]}…"
            if readiness["consent_sha256"]
            else f"waived: {readiness['consent_waiver']}"
            if readiness["consent_waiver"]
            else "no consent basis"
        )
        print(
            f"{study.study}: protocol {readiness['protocol_sha256'][:12]}…, "
            f"{readiness['rows_train']} training and {readiness['rows_holdout']} held-out rows "
            f"({basis})"
        )
        for blocker in readiness["blockers"]:
            print(f"  blocked: {blocker['code']}: {blocker['reason']}")
    if not report.studies:
        print("no study's current protocol is approved by this hospital yet")
    return 0 if report.ok else 1


def consent_import(args: argparse.Namespace) -> int:
    """Record a consent export (patient_id,status,date,form_version) under pseudonyms."""
    node = _node(args)
    result = import_consent_export(
        node, study=args.study, path=Path(args.file), portal=PortalClient.for_node(node)
    )
    if result.secret_created:
        print(
            f"created the node's consent secret {node.consent_secret_path}: back it up with the "
            "node's state; without it no pseudonym matches any patient again"
        )
    print(
        f"{args.file}: {result.rows} decisions ({result.granted} granted, {result.withdrawn} "
        f"withdrawn) for study '{args.study}': {result.created} recorded, "
        f"{result.unchanged} unchanged"
    )
    if result.outdated:
        print(
            f"  {result.outdated} granted on an older form than the study requires; they count "
            "once the patient signs the current form"
        )
    return 0


def consent_withdraw(args: argparse.Namespace) -> int:
    """Record that a patient withdrew consent, now; it applies from the next round."""
    node = _node(args)
    result = withdraw_consent(
        node, study=args.study, patient_id=args.patient_id, portal=PortalClient.for_node(node)
    )
    state = "recorded" if result.created else "already recorded"
    print(
        f"withdrawal of patient {args.patient_id.strip()} from study '{args.study}' {state} "
        f"(pseudonym {result.pseudonym[:12]}…); the node leaves the patient out from the next "
        "round"
    )
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="cohort-hospital", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)
    node_help = "the node config file (node.toml), the one the SuperNode reads"

    check_cmd = commands.add_parser("check", help=check.__doc__)
    check_cmd.add_argument("--protocol", required=True, help="the study's protocol JSON")
    check_cmd.add_argument("--data", required=True, help="CSV or Parquet file")
    check_cmd.set_defaults(handler=check)

    ledger_cmd = commands.add_parser("ledger", help=ledger.__doc__)
    ledger_cmd.add_argument("--node", required=True, help=node_help)
    ledger_cmd.set_defaults(handler=ledger)

    policy_cmd = commands.add_parser("policy", help=policy.__doc__)
    policy_cmd.add_argument("--check", metavar="FILE", help="validate this policy file")
    policy_cmd.set_defaults(handler=policy)

    node_cmd = commands.add_parser("node", help=node_config.__doc__)
    node_cmd.add_argument("--check", metavar="FILE", help="validate this node config file")
    node_cmd.set_defaults(handler=node_config)

    keys_cmd = commands.add_parser("keys-create", help=keys_create.__doc__)
    keys_cmd.add_argument("--study", required=True, help="the study's id (slug)")
    keys_cmd.add_argument("--node", required=True, help=node_help)
    keys_cmd.set_defaults(handler=keys_create)

    beat_cmd = commands.add_parser("heartbeat", help=heartbeat.__doc__)
    beat_cmd.add_argument("--node", required=True, help=node_help)
    beat_cmd.add_argument("--supernode", default="online", help="status to report")
    beat_cmd.set_defaults(handler=heartbeat)

    consent_cmd = commands.add_parser("consent", help="patient consent, under pseudonyms")
    consent_commands = consent_cmd.add_subparsers(dest="consent_command", required=True)
    import_cmd = consent_commands.add_parser("import", help=consent_import.__doc__)
    import_cmd.add_argument("file", help="the consent export (CSV)")
    import_cmd.add_argument("--study", required=True, help="the study's id (slug)")
    import_cmd.add_argument("--node", required=True, help=node_help)
    import_cmd.set_defaults(handler=consent_import)
    withdraw_cmd = consent_commands.add_parser("withdraw", help=consent_withdraw.__doc__)
    withdraw_cmd.add_argument("patient_id", help="the patient's id (stays at the node)")
    withdraw_cmd.add_argument("--study", required=True, help="the study's id (slug)")
    withdraw_cmd.add_argument("--node", required=True, help=node_help)
    withdraw_cmd.set_defaults(handler=consent_withdraw)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except (
        ConsentError,
        DataError,
        NodeConfigError,
        PolicyError,
        ProtocolError,
        PortalError,
        OSError,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
