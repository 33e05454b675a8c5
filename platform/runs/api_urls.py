from django.urls import path

from runs import apis

app_name = "runs_api"

urlpatterns = [
    path("runs/", apis.RunListApi.as_view(), name="run-list"),
    path("runs/<int:run_id>/", apis.RunDetailApi.as_view(), name="run-detail"),
    path("runs/<int:run_id>/cancel/", apis.RunCancelApi.as_view(), name="run-cancel"),
    path("runs/<int:run_id>/events/", apis.RunEventApi.as_view(), name="run-events"),
    path(
        "runs/<int:run_id>/release-approvals/",
        apis.ReleaseApprovalApi.as_view(),
        name="release-approvals",
    ),
    path(
        "runs/<int:run_id>/release/model/",
        apis.ReleaseModelApi.as_view(),
        name="release-model",
    ),
    path("node/runs/<int:run_id>/release/", apis.NodeReleaseApi.as_view(), name="node-release"),
]
