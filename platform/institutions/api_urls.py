from django.urls import path

from institutions import apis

app_name = "institutions_api"

urlpatterns = [
    path("node/heartbeat/", apis.NodeHeartbeatApi.as_view(), name="node-heartbeat"),
]
