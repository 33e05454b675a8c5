"""Thin REST endpoints for hospital nodes about their own institution."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from core.api import NodeApi, limit_body
from institutions.models import Institution
from institutions.services import HEARTBEAT_MAX_BYTES, node_heartbeat


class NodeHeartbeatApi(NodeApi):
    class InputSerializer(serializers.Serializer[Any]):
        status = serializers.DictField(
            help_text="small flat object: strings, numbers, booleans or null (at most 4 KiB)"
        )

        class Meta:
            ref_name = "NodeHeartbeatInput"

    class OutputSerializer(serializers.ModelSerializer[Institution]):
        class Meta:
            model = Institution
            ref_name = "NodeHeartbeat"
            fields = ["slug", "last_seen_at", "node_status"]

    @extend_schema(
        request=InputSerializer,
        responses={200: OutputSerializer},
        summary="The node is alive (node token)",
    )
    def post(self, request: Request) -> Response:
        limit_body(request, max_bytes=2 * HEARTBEAT_MAX_BYTES, what="the heartbeat")
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        institution = node_heartbeat(
            institution=self.institution(), status=serializer.validated_data["status"]
        )
        return Response(self.OutputSerializer(institution).data)
