"""Thin REST endpoints for studies: validate, call one service or selector, serialize."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from core.api import NodeApi, SessionApi, limit_body
from core.errors import NotAllowedError, PayloadTooLargeError, ValidationError
from core.permissions import IsSteward
from institutions.models import Institution
from studies.models import Enrollment, Study
from studies.selectors import (
    enrollments_of_steward,
    node_protocol,
    studies_for_node,
    studies_visible_to,
    study_enrollments,
    study_get_for_node,
    study_get_for_user,
)
from studies.services import (
    HE_CONTEXT_MAX_BYTES,
    enrollment_decide,
    study_create,
    study_invite,
    study_set_he_context,
    study_update_protocol,
)

PROTOCOL_MAX_BYTES = 256 * 1024
# The base64 of a 4 KiB context plus its JSON envelope.
HE_CONTEXT_BODY_MAX_BYTES = 8 * 1024


class EnrollmentOutputSerializer(serializers.ModelSerializer[Enrollment]):
    institution: serializers.SlugRelatedField[Institution] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )
    decided_by: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", read_only=True
    )

    class Meta:
        model = Enrollment
        fields = [
            "id",
            "institution",
            "state",
            "approved_protocol_sha256",
            "decided_by",
            "decided_at",
            "comment",
        ]


class StudyOutputSerializer(serializers.ModelSerializer[Study]):
    owner: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", read_only=True
    )
    enrollments = serializers.SerializerMethodField()

    class Meta:
        model = Study
        fields = [
            "id",
            "slug",
            "title",
            "state",
            "owner",
            "protocol",
            "protocol_sha256",
            "he_context_fingerprint",
            "created_at",
            "enrollments",
        ]

    def get_enrollments(self, study: Study) -> list[dict[str, Any]]:
        return list(EnrollmentOutputSerializer(study_enrollments(study=study), many=True).data)


class StudyListApi(SessionApi):
    class InputSerializer(serializers.Serializer[Any]):
        title = serializers.CharField(max_length=200)
        slug = serializers.CharField(max_length=64)
        protocol = serializers.JSONField(
            help_text="protocol document without 'encryption'; study_id is set to the slug"
        )

        class Meta:
            ref_name = "StudyCreateInput"

    @extend_schema(responses={200: StudyOutputSerializer(many=True)}, summary="Studies you see")
    def get(self, request: Request) -> Response:
        studies = studies_visible_to(user=request.user).select_related("owner")
        return Response(StudyOutputSerializer(studies, many=True).data)

    @extend_schema(
        request=InputSerializer,
        responses={201: StudyOutputSerializer},
        summary="Create a study (researchers)",
    )
    def post(self, request: Request) -> Response:
        limit_body(request, max_bytes=PROTOCOL_MAX_BYTES, what="the study")
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        study = study_create(owner=self.user(), **serializer.validated_data)
        return Response(StudyOutputSerializer(study).data, status=status.HTTP_201_CREATED)


class StudyDetailApi(SessionApi):
    @extend_schema(responses={200: StudyOutputSerializer}, summary="One study you can see")
    def get(self, request: Request, study_id: int) -> Response:
        study = study_get_for_user(user=request.user, study_id=study_id)
        return Response(StudyOutputSerializer(study).data)


class StudyProtocolUpdateApi(SessionApi):
    class InputSerializer(serializers.Serializer[Any]):
        protocol = serializers.JSONField()

        class Meta:
            ref_name = "StudyProtocolUpdateInput"

    @extend_schema(
        request=InputSerializer,
        responses={200: StudyOutputSerializer},
        summary="Replace the protocol (owner; voids every approval)",
    )
    def put(self, request: Request, study_id: int) -> Response:
        limit_body(request, max_bytes=PROTOCOL_MAX_BYTES, what="the protocol")
        study = study_get_for_user(user=request.user, study_id=study_id)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        study = study_update_protocol(
            study=study, protocol=serializer.validated_data["protocol"], actor=self.user()
        )
        return Response(StudyOutputSerializer(study).data)


class StudyInviteApi(SessionApi):
    class InputSerializer(serializers.Serializer[Any]):
        institutions = serializers.ListField(
            child=serializers.SlugField(max_length=64), min_length=1, max_length=200
        )

        class Meta:
            ref_name = "StudyInviteInput"

    @extend_schema(
        request=InputSerializer,
        responses={200: StudyOutputSerializer},
        summary="Invite hospitals by slug (owner; idempotent)",
    )
    def post(self, request: Request, study_id: int) -> Response:
        study = study_get_for_user(user=request.user, study_id=study_id)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        slugs = list(dict.fromkeys(serializer.validated_data["institutions"]))
        institutions = list(Institution.objects.filter(slug__in=slugs))
        unknown = sorted(set(slugs) - {i.slug for i in institutions})
        if unknown:
            raise ValidationError(
                f"unknown hospital(s): {', '.join(unknown)}",
                fields={"institutions": [f"unknown: {', '.join(unknown)}"]},
            )
        study_invite(study=study, institutions=institutions, actor=self.user())
        return Response(
            StudyOutputSerializer(study_get_for_user(user=request.user, study_id=study_id)).data
        )


class EnrollmentListApi(SessionApi):
    permission_classes = [IsSteward]

    class OutputSerializer(EnrollmentOutputSerializer):
        study: serializers.SlugRelatedField[Study] = serializers.SlugRelatedField(
            slug_field="slug", read_only=True
        )
        study_id = serializers.IntegerField(read_only=True)
        study_protocol_sha256 = serializers.CharField(source="study.protocol_sha256")

        class Meta(EnrollmentOutputSerializer.Meta):
            ref_name = "StewardEnrollment"
            fields = [
                *EnrollmentOutputSerializer.Meta.fields,
                "study",
                "study_id",
                "study_protocol_sha256",
            ]

    @extend_schema(responses={200: OutputSerializer(many=True)}, summary="Your invitations")
    def get(self, request: Request) -> Response:
        enrollments = enrollments_of_steward(user=request.user)
        return Response(self.OutputSerializer(enrollments, many=True).data)


class EnrollmentDecideApi(SessionApi):
    permission_classes = [IsSteward]

    class InputSerializer(serializers.Serializer[Any]):
        approve = serializers.BooleanField()
        protocol_sha256 = serializers.RegexField(r"^[0-9a-f]{64}$")
        comment = serializers.CharField(allow_blank=True, max_length=5000, default="")

        class Meta:
            ref_name = "EnrollmentDecisionInput"

    @extend_schema(
        request=InputSerializer,
        responses={200: EnrollmentOutputSerializer},
        summary="Approve or decline the protocol hash you read (stewards)",
    )
    def post(self, request: Request, enrollment_id: int) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            enrollment = enrollments_of_steward(user=request.user).get(pk=enrollment_id)
        except Enrollment.DoesNotExist:
            raise NotAllowedError(
                f"invitation {enrollment_id} is not addressed to a hospital you steward"
            ) from None
        enrollment = enrollment_decide(
            enrollment=enrollment, steward=self.user(), **serializer.validated_data
        )
        return Response(EnrollmentOutputSerializer(enrollment).data)


class NodeStudyOutputSerializer(serializers.Serializer[Any]):
    slug = serializers.CharField()
    state = serializers.CharField()
    protocol = serializers.SerializerMethodField()
    protocol_sha256 = serializers.CharField()
    he_context_fingerprint = serializers.CharField()

    class Meta:
        ref_name = "NodeStudy"

    def get_protocol(self, study: Study) -> dict[str, Any]:
        return node_protocol(study=study)


class NodeProtocolListApi(NodeApi):
    @extend_schema(
        responses={200: NodeStudyOutputSerializer(many=True)},
        summary="Protocols this hospital approved (node token)",
    )
    def get(self, request: Request) -> Response:
        studies = studies_for_node(institution=self.institution())
        return Response(NodeStudyOutputSerializer(studies, many=True).data)


class NodeHeContextApi(NodeApi):
    class InputSerializer(serializers.Serializer[Any]):
        aggregator_context = serializers.CharField(
            help_text="base64 of AggregatorContext.to_bytes(): keyless, at most 4 KiB"
        )

        class Meta:
            ref_name = "NodeHeContextInput"

    @extend_schema(
        request=InputSerializer,
        responses={200: NodeStudyOutputSerializer},
        summary="Pin the study's keyless HE context (node token)",
    )
    def post(self, request: Request, slug: str) -> Response:
        limit_body(request, max_bytes=HE_CONTEXT_BODY_MAX_BYTES, what="the HE context")
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            context = base64.b64decode(
                serializer.validated_data["aggregator_context"], validate=True
            )
        except (binascii.Error, ValueError) as error:
            raise ValidationError(
                "aggregator_context is not valid base64",
                fields={"aggregator_context": ["not base64"]},
            ) from error
        if len(context) > HE_CONTEXT_MAX_BYTES:
            raise PayloadTooLargeError(
                f"the HE context is {len(context)} bytes; at most {HE_CONTEXT_MAX_BYTES} are "
                "accepted (a keyless context is ~120 bytes: was a key file sent?)",
                fields={"aggregator_context": [f"at most {HE_CONTEXT_MAX_BYTES} bytes"]},
            )
        institution = self.institution()
        study = study_get_for_node(institution=institution, slug=slug)
        study = study_set_he_context(
            study=study, aggregator_context=context, institution=institution
        )
        return Response(NodeStudyOutputSerializer(study).data)
