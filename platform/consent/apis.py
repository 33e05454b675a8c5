"""Thin REST endpoints of the consent registry: hospital nodes (`Authorization: Node <token>`)
read the study's forms, upload their consent records and pull snapshots; researchers and stewards
read suppressed counts (never pseudonyms)."""

from __future__ import annotations

import json
from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from consent.selectors import (
    consent_counts,
    consent_forms,
    consent_rules,
    study_get_by_slug_for_user,
    study_get_for_consent_node,
)
from consent.services import MAX_RECORDS, consent_records_record, consent_snapshot
from core.api import NodeApi, SessionApi
from core.errors import PayloadTooLargeError, ValidationError
from institutions.authentication import NodePrincipal

# 200k records of ~150 bytes each, with room for whitespace.
RECORDS_BODY_MAX_BYTES = 32 * 1024 * 1024
JSON_MEDIA_TYPE = "application/json"


def read_json_body(request: Request, *, max_bytes: int, what: str) -> Any:
    """The JSON body, read from the stream at most `max_bytes` at a time.

    `core.api.limit_body` reads `request.body`, which Django caps at DATA_UPLOAD_MAX_MEMORY_SIZE
    (5 MiB); consent uploads may be larger, so this endpoint reads its stream itself.
    """
    media_type = (request.content_type or "").split(";")[0].strip().lower()
    if media_type != JSON_MEDIA_TYPE:
        raise exceptions.UnsupportedMediaType(media_type or "(none)")
    declared = request.META.get("CONTENT_LENGTH") or "0"
    size = int(declared) if declared.isdigit() else 0
    stream = request.stream
    raw = b"" if size > max_bytes or stream is None else stream.read(max_bytes + 1)
    if size > max_bytes or len(raw) > max_bytes:
        raise PayloadTooLargeError(
            f"{what} is {max(size, len(raw))} bytes; at most {max_bytes} are accepted: send the "
            "records in several requests",
            fields={"body": [f"at most {max_bytes} bytes"]},
        )
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise exceptions.ParseError(f"JSON parse error - {error}") from error


def node_actor_label(request: Request) -> str:
    principal = request.auth
    if not isinstance(principal, NodePrincipal):
        raise TypeError("node endpoints run only for node tokens (IsNode)")
    return f"node:{principal.institution.slug}/{principal.token.prefix}"


class NodeConsentRecordSerializer(serializers.Serializer[Any]):
    pseudonym = serializers.RegexField(
        r"^[0-9a-f]{64}$", help_text="HMAC-SHA256(hospital secret, patient id), lowercase hex"
    )
    status = serializers.ChoiceField(choices=["granted", "withdrawn"])
    decided_at = serializers.CharField(
        help_text="ISO 8601 date (midnight UTC) or datetime (UTC when it has no offset)"
    )
    form_version = serializers.IntegerField(
        allow_null=True, min_value=1, help_text="required when granted"
    )

    class Meta:
        ref_name = "NodeConsentRecord"


class NodeConsentFormsApi(NodeApi):
    class OutputSerializer(serializers.Serializer[Any]):
        study = serializers.CharField()
        current_version = serializers.IntegerField(allow_null=True)
        requires_current = serializers.BooleanField()
        versions = serializers.ListField(child=serializers.IntegerField())

        class Meta:
            ref_name = "NodeConsentForms"

    @extend_schema(
        responses={200: OutputSerializer},
        summary="The study's consent form versions and rule (node token)",
    )
    def get(self, request: Request, slug: str) -> Response:
        study = study_get_for_consent_node(institution=self.institution(), slug=slug)
        rules = consent_rules(study=study)
        data = {
            "study": study.slug,
            "current_version": rules.current_version,
            "requires_current": rules.requires_current,
            "versions": rules.versions,
        }
        return Response(self.OutputSerializer(data).data)


class NodeConsentRecordsApi(NodeApi):
    class InputSerializer(serializers.Serializer[Any]):
        records = serializers.ListField(child=NodeConsentRecordSerializer(), max_length=MAX_RECORDS)

        class Meta:
            ref_name = "NodeConsentRecordsInput"

    class OutputSerializer(serializers.Serializer[Any]):
        batch = serializers.IntegerField()
        created = serializers.IntegerField()
        unchanged = serializers.IntegerField()

        class Meta:
            ref_name = "NodeConsentRecordsResult"

    @extend_schema(
        request=InputSerializer,
        responses={201: OutputSerializer},
        summary="Append this hospital's consent records (node token; all or nothing, idempotent)",
        description=(
            "records: a list of {pseudonym, status, decided_at, form_version}; at most "
            f"{MAX_RECORDS} records and {RECORDS_BODY_MAX_BYTES} bytes. Errors name the record "
            "and field, e.g. records[12].form_version."
        ),
    )
    def post(self, request: Request, slug: str) -> Response:
        institution = self.institution()
        study = study_get_for_consent_node(institution=institution, slug=slug)
        body = read_json_body(request, max_bytes=RECORDS_BODY_MAX_BYTES, what="the records")
        if not isinstance(body, dict) or "records" not in body:
            raise ValidationError(
                'the body must be {"records": [...]}', fields={"records": ["required"]}
            )
        extra = sorted(set(body) - {"records"})
        if extra:
            raise ValidationError(
                f'unknown field(s): {", ".join(extra)}; the body is {{"records": [...]}}',
                fields={name: ["unknown field"] for name in extra},
            )
        batch = consent_records_record(
            study=study,
            institution=institution,
            records=body["records"],
            actor_label=node_actor_label(request),
        )
        data = {"batch": batch.pk, "created": batch.created, "unchanged": batch.unchanged}
        return Response(self.OutputSerializer(data).data, status=status.HTTP_201_CREATED)


class NodeConsentSnapshotApi(NodeApi):
    class OutputSerializer(serializers.Serializer[Any]):
        study = serializers.CharField()
        institution = serializers.CharField()
        required_form_version = serializers.IntegerField(allow_null=True)
        granted = serializers.ListField(child=serializers.CharField())
        sha256 = serializers.CharField(
            help_text='sha256 of canonical_json({"study", "institution", '
            '"required_form_version", "granted"})'
        )
        taken_at = serializers.DateTimeField()

        class Meta:
            ref_name = "NodeConsentSnapshot"

    @extend_schema(
        responses={200: OutputSerializer},
        summary="Pseudonyms of this hospital with current consent, hashed (node token)",
    )
    def get(self, request: Request, slug: str) -> Response:
        institution = self.institution()
        study = study_get_for_consent_node(institution=institution, slug=slug)
        snapshot = consent_snapshot(
            study=study, institution=institution, actor_label=node_actor_label(request)
        )
        return Response(self.OutputSerializer(snapshot).data)


class ConsentFormVersionSerializer(serializers.Serializer[Any]):
    version = serializers.IntegerField()
    title = serializers.CharField()
    text_sha256 = serializers.CharField()
    published_at = serializers.DateTimeField()

    class Meta:
        ref_name = "ConsentFormVersion"


class ConsentHospitalCountSerializer(serializers.Serializer[Any]):
    institution = serializers.CharField(source="institution.slug")
    name = serializers.CharField(source="institution.name")
    consented = serializers.CharField(
        source="shown", help_text='patients with current consent; "<10" below 10'
    )

    class Meta:
        ref_name = "ConsentHospitalCount"


class StudyConsentApi(SessionApi):
    class OutputSerializer(serializers.Serializer[Any]):
        study = serializers.CharField()
        requires_current = serializers.BooleanField()
        current_version = serializers.IntegerField(allow_null=True)
        forms = ConsentFormVersionSerializer(many=True)
        hospitals = ConsentHospitalCountSerializer(many=True)

        class Meta:
            ref_name = "StudyConsent"

    @extend_schema(
        responses={200: OutputSerializer},
        summary="The study's consent forms and consented counts per hospital (suppressed below 10)",
    )
    def get(self, request: Request, slug: str) -> Response:
        study = study_get_by_slug_for_user(user=request.user, slug=slug)
        rules = consent_rules(study=study)
        data = {
            "study": study.slug,
            "requires_current": rules.requires_current,
            "current_version": rules.current_version,
            "forms": consent_forms(study=study),
            "hospitals": consent_counts(study=study),
        }
        return Response(self.OutputSerializer(data).data)
