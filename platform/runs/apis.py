"""Thin REST endpoints for runs: validate, call one service or selector, serialize.

Three callers: researchers and stewards (session), the aggregator of one run (`Authorization:
Run <token>`, only for its own run) and hospital nodes (`Authorization: Node <token>`).
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import permissions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api import NodeApi, SessionApi, limit_body
from core.errors import NotAllowedError
from institutions.models import Institution
from runs.authentication import RunPrincipal, RunTokenAuthentication
from runs.models import HospitalRound, ReleaseApproval, Round, Run
from runs.selectors import (
    release_get_for_download,
    run_get_for_user,
    run_summary,
    runs_visible_to,
)
from runs.services import (
    MAX_MODEL_BYTES,
    release_approve,
    release_upload,
    run_cancel,
    run_record_event,
    run_start,
)
from runs.views import model_response
from studies.models import Study
from studies.selectors import study_get_for_user

EVENT_MAX_BYTES = 1024 * 1024
# base64 of the largest model plus the privacy report and the JSON envelope.
RELEASE_BODY_MAX_BYTES = MAX_MODEL_BYTES * 4 // 3 + 512 * 1024


class HospitalRoundOutputSerializer(serializers.ModelSerializer[HospitalRound]):
    institution: serializers.SlugRelatedField[Institution] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )

    class Meta:
        model = HospitalRound
        fields = [
            "hospital",
            "institution",
            "epsilon",
            "noise_multiplier",
            "sample_rate",
            "steps",
            "delta",
            "accountant",
            "epsilon_conversion",
            "consent",
            "rows_rounded",
            "bytes_up",
            "train_seconds",
            "metrics",
        ]


class RoundOutputSerializer(serializers.ModelSerializer[Round]):
    hospitals = HospitalRoundOutputSerializer(many=True, read_only=True)

    class Meta:
        model = Round
        fields = [
            "number",
            "participants",
            "dropped",
            "metrics",
            "bytes_down",
            "seconds",
            "recorded_at",
            "hospitals",
        ]


class RunOutputSerializer(serializers.ModelSerializer[Run]):
    study: serializers.PrimaryKeyRelatedField[Study] = serializers.PrimaryKeyRelatedField(
        read_only=True
    )
    started_by: serializers.SlugRelatedField[User] = serializers.SlugRelatedField(
        slug_field="username", read_only=True
    )
    flower_run_id = serializers.IntegerField(read_only=True, allow_null=True)

    class Meta:
        model = Run
        fields = [
            "id",
            "study",
            "started_by",
            "state",
            "reason",
            "protocol_sha256",
            "rounds_planned",
            "flower_run_id",
            "created_at",
            "started_at",
            "finished_at",
            "aggregator_facts",
        ]


class RunDetailOutputSerializer(RunOutputSerializer):
    rounds_done = serializers.SerializerMethodField()
    release_approvals = serializers.SerializerMethodField()
    released = serializers.SerializerMethodField()
    rounds = serializers.SerializerMethodField()

    class Meta(RunOutputSerializer.Meta):
        fields = [
            *RunOutputSerializer.Meta.fields,
            "rounds_done",
            "release_approvals",
            "released",
            "rounds",
        ]

    def get_rounds_done(self, run: Run) -> int:
        return int(self.context["summary"].rounds_done)

    def get_release_approvals(self, run: Run) -> int:
        return int(self.context["summary"].approvals)

    def get_released(self, run: Run) -> bool:
        return bool(self.context["summary"].released)

    @extend_schema_field(RoundOutputSerializer(many=True))
    def get_rounds(self, run: Run) -> list[dict[str, Any]]:
        return list(RoundOutputSerializer(self.context["summary"].rounds, many=True).data)


def run_detail_data(run: Run) -> dict[str, Any]:
    return dict(RunDetailOutputSerializer(run, context={"summary": run_summary(run=run)}).data)


class RunListApi(SessionApi):
    class InputSerializer(serializers.Serializer[Any]):
        study = serializers.IntegerField(min_value=1, help_text="the id of a ready study you own")

        class Meta:
            ref_name = "RunStartInput"

    @extend_schema(responses={200: RunOutputSerializer(many=True)}, summary="Runs you can see")
    def get(self, request: Request) -> Response:
        runs = runs_visible_to(user=request.user).select_related("started_by")
        return Response(RunOutputSerializer(runs, many=True).data)

    @extend_schema(
        request=InputSerializer,
        responses={201: RunOutputSerializer},
        summary="Start a run of a ready study (its owner)",
    )
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        study = study_get_for_user(user=request.user, study_id=serializer.validated_data["study"])
        run = run_start(study=study, actor=request.user)  # type: ignore[arg-type]
        return Response(RunOutputSerializer(run).data, status=status.HTTP_201_CREATED)


class RunDetailApi(SessionApi):
    @extend_schema(
        responses={200: RunDetailOutputSerializer},
        summary="A run with its rounds and each hospital's part in them",
    )
    def get(self, request: Request, run_id: int) -> Response:
        run = run_get_for_user(user=request.user, run_id=run_id)
        return Response(run_detail_data(run))


class RunCancelApi(SessionApi):
    class InputSerializer(serializers.Serializer[Any]):
        reason = serializers.CharField(max_length=500, required=False, allow_blank=True)

        class Meta:
            ref_name = "RunCancelInput"

    @extend_schema(
        request=InputSerializer,
        responses={200: RunOutputSerializer},
        summary="Cancel a run that has not finished (the study's owner)",
    )
    def post(self, request: Request, run_id: int) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        run = run_get_for_user(user=request.user, run_id=run_id)
        run = run_cancel(
            run=run,
            actor=request.user,  # type: ignore[arg-type]
            reason=serializer.validated_data.get("reason", ""),
        )
        return Response(RunOutputSerializer(run).data)


class IsRunPrincipal(permissions.BasePermission):
    message = "this endpoint is for a run's aggregator (Authorization: Run <token>)"

    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.auth, RunPrincipal)


class RunEventApi(APIView):
    """The aggregator (ServerApp) of one run reports its events here."""

    authentication_classes = [RunTokenAuthentication]
    permission_classes = [IsRunPrincipal]

    @extend_schema(
        request=OpenApiTypes.OBJECT,
        responses={
            202: OpenApiResponse(description="recorded (a re-sent round is accepted once)"),
            400: OpenApiResponse(description="the event is malformed; nothing was recorded"),
            403: OpenApiResponse(description="the token belongs to another run"),
            409: OpenApiResponse(description="the run has finished"),
        },
        summary="Report a run event: run-started, round or run-finished (run token)",
    )
    def post(self, request: Request, run_id: int) -> Response:
        principal = request.auth
        if not isinstance(principal, RunPrincipal) or principal.run.pk != run_id:
            raise NotAllowedError("this run token belongs to another run")
        limit_body(request, max_bytes=EVENT_MAX_BYTES, what="the event")
        run = run_record_event(run=principal.run, event=request.data)
        return Response({"run": run.pk, "state": run.state}, status=status.HTTP_202_ACCEPTED)


class ReleaseApprovalOutputSerializer(serializers.ModelSerializer[ReleaseApproval]):
    institution: serializers.SlugRelatedField[Institution] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )
    steward: serializers.SlugRelatedField[User] = serializers.SlugRelatedField(
        slug_field="username", read_only=True
    )

    class Meta:
        model = ReleaseApproval
        fields = ["id", "run", "institution", "steward", "created_at"]


class ReleaseApprovalApi(SessionApi):
    class InputSerializer(serializers.Serializer[Any]):
        institution = serializers.SlugField(
            required=False, help_text="needed only if you steward several participating hospitals"
        )

        class Meta:
            ref_name = "ReleaseApprovalInput"

    @extend_schema(
        request=InputSerializer,
        responses={201: ReleaseApprovalOutputSerializer},
        summary="Approve the release of a completed run's model (stewards of participants)",
    )
    def post(self, request: Request, run_id: int) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        run = run_get_for_user(user=request.user, run_id=run_id)
        slug = serializer.validated_data.get("institution")
        institution = Institution.objects.filter(slug=slug).first() if slug else None
        if slug and institution is None:
            raise NotAllowedError(f"you are not a data steward of '{slug}' in run {run.pk}")
        approval = release_approve(run=run, actor=request.user, institution=institution)  # type: ignore[arg-type]
        return Response(
            ReleaseApprovalOutputSerializer(approval).data, status=status.HTTP_201_CREATED
        )


class NodeReleaseApi(NodeApi):
    class InputSerializer(serializers.Serializer[Any]):
        parameters = serializers.CharField(help_text="base64 of the final model's .npz bytes")
        privacy_report = serializers.JSONField(
            help_text="ε per hospital, accountant and its parameters"
        )

        class Meta:
            ref_name = "NodeReleaseInput"

    class OutputSerializer(serializers.Serializer[Any]):
        run = serializers.IntegerField()
        institution = serializers.CharField()
        parameters_sha256 = serializers.CharField()

        class Meta:
            ref_name = "NodeReleaseOutput"

    @extend_schema(
        request=InputSerializer,
        responses={201: OutputSerializer},
        summary="Upload a completed run's final model and privacy report (node token)",
    )
    def post(self, request: Request, run_id: int) -> Response:
        limit_body(request, max_bytes=RELEASE_BODY_MAX_BYTES, what="the release")
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        run = Run.objects.filter(pk=run_id).first()
        institution = self.institution()
        if run is None:
            raise NotAllowedError(f"{institution.slug} did not take part in run {run_id}")
        release = release_upload(
            run=run,
            institution=institution,
            parameters_b64=serializer.validated_data["parameters"],
            privacy_report=serializer.validated_data["privacy_report"],
        )
        return Response(
            {
                "run": run.pk,
                "institution": institution.slug,
                "parameters_sha256": release.parameters_sha256,
            },
            status=status.HTTP_201_CREATED,
        )


class ReleaseModelApi(SessionApi):
    @extend_schema(
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY},
        summary="Download a released model as .npz (the study's owner)",
    )
    def get(self, request: Request, run_id: int) -> HttpResponse:
        run = run_get_for_user(user=request.user, run_id=run_id)
        release = release_get_for_download(run=run, user=request.user)
        return model_response(release.parameters, study_slug=run.study.slug, run_id=run.pk)
