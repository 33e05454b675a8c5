"""Thin REST endpoints for hospital nodes: their privacy ledger and their readiness per study.

Bodies are parsed strictly by `privacy.payloads` (dotted field errors, unknown keys refused), then
one service records them.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from core.api import NodeApi, limit_body
from privacy.models import ReadinessReport
from privacy.payloads import parse_ledger_report, parse_readiness_report
from privacy.selectors import study_get_for_enrolled_node
from privacy.services import ledger_report_ingest, readiness_report_record

# 20,000 entries of ~300 bytes: a node's whole ledger for a few datasets.
LEDGER_MAX_BYTES = 4 * 1024 * 1024
READINESS_MAX_BYTES = 256 * 1024


class _LedgerEntryInput(serializers.Serializer[Any]):
    study_id = serializers.CharField()
    run_id = serializers.CharField()
    round = serializers.IntegerField(min_value=0)
    sample_rate = serializers.FloatField()
    noise_multiplier = serializers.FloatField()
    steps = serializers.IntegerField(min_value=1)
    delta = serializers.FloatField()
    accountant = serializers.ChoiceField(choices=["rdp", "prv"])
    recorded_at = serializers.DateTimeField()

    class Meta:
        ref_name = "NodeLedgerEntryInput"


class _LedgerDatasetInput(serializers.Serializer[Any]):
    dataset_id = serializers.CharField()
    max_lifetime_epsilon = serializers.FloatField()
    delta = serializers.FloatField()
    accountant = serializers.ChoiceField(choices=["rdp", "prv"])
    min_cohort_size = serializers.IntegerField(min_value=1)
    entries = _LedgerEntryInput(many=True)

    class Meta:
        ref_name = "NodeLedgerDatasetInput"


class NodeLedgerReportApi(NodeApi):
    # For the schema only: privacy.payloads parses the body (all errors at once, dotted paths).
    class InputSerializer(serializers.Serializer[Any]):
        datasets = _LedgerDatasetInput(many=True)

        class Meta:
            ref_name = "NodeLedgerInput"

    class OutputSerializer(serializers.Serializer[Any]):
        datasets = inline_serializer(
            name="NodeLedgerDataset",
            fields={
                "dataset_id": serializers.CharField(),
                "epsilon_spent": serializers.FloatField(),
                "max_lifetime_epsilon": serializers.FloatField(),
                "accountant": serializers.CharField(),
                "conversion": serializers.CharField(),
            },
            many=True,
        )

        class Meta:
            ref_name = "NodeLedger"

    @extend_schema(
        request=InputSerializer,
        responses={200: OutputSerializer},
        summary="Mirror the node's privacy ledger; ε is recomputed by the portal (node token)",
    )
    def post(self, request: Request) -> Response:
        limit_body(request, max_bytes=LEDGER_MAX_BYTES, what="the ledger report")
        datasets = parse_ledger_report(request.data)
        mirrors = ledger_report_ingest(institution=self.institution(), datasets=datasets)
        return Response(
            {
                "datasets": [
                    {
                        "dataset_id": mirror.dataset_id,
                        "epsilon_spent": mirror.epsilon_spent,
                        "max_lifetime_epsilon": mirror.max_lifetime_epsilon,
                        "accountant": mirror.accountant,
                        "conversion": mirror.conversion,
                    }
                    for mirror in mirrors
                ]
            }
        )


class NodeReadinessReportApi(NodeApi):
    class InputSerializer(serializers.Serializer[Any]):
        dataset_id = serializers.CharField()
        protocol_sha256 = serializers.RegexField(r"^[0-9a-f]{64}$")
        consent_sha256 = serializers.RegexField(r"^[0-9a-f]{64}$", allow_null=True, required=False)
        consent_waiver = serializers.CharField(allow_null=True, required=False)
        rows_train = serializers.IntegerField(min_value=0)
        rows_holdout = serializers.IntegerField(min_value=0)
        blockers = inline_serializer(
            name="NodeReadinessBlocker",
            fields={"code": serializers.CharField(), "reason": serializers.CharField()},
            many=True,
            required=False,
        )

        class Meta:
            ref_name = "NodeReadinessInput"

    class OutputSerializer(serializers.ModelSerializer[ReadinessReport]):
        study = serializers.SlugRelatedField[Any](slug_field="slug", read_only=True)
        institution = serializers.SlugRelatedField[Any](slug_field="slug", read_only=True)
        for_current_protocol = serializers.SerializerMethodField()

        class Meta:
            model = ReadinessReport
            ref_name = "NodeReadiness"
            fields = [
                "study",
                "institution",
                "dataset_id",
                "protocol_sha256",
                "for_current_protocol",
                "consent_sha256",
                "consent_waiver",
                "rows_train",
                "rows_holdout",
                "blockers",
                "reported_at",
            ]

        def get_for_current_protocol(self, report: ReadinessReport) -> bool:
            return report.protocol_sha256 == report.study.protocol_sha256

    @extend_schema(
        request=InputSerializer,
        responses={200: OutputSerializer},
        summary="The node's readiness for a study it is enrolled in (node token)",
    )
    def post(self, request: Request, slug: str) -> Response:
        limit_body(request, max_bytes=READINESS_MAX_BYTES, what="the readiness report")
        institution = self.institution()
        study = study_get_for_enrolled_node(institution=institution, slug=slug)
        report = readiness_report_record(
            study=study, institution=institution, report=parse_readiness_report(request.data)
        )
        return Response(self.OutputSerializer(report).data)
