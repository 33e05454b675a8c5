from django.urls import path

from privacy import apis

app_name = "privacy_api"

urlpatterns = [
    path("node/ledger/", apis.NodeLedgerReportApi.as_view(), name="node-ledger"),
    path(
        "node/studies/<slug:slug>/readiness/",
        apis.NodeReadinessReportApi.as_view(),
        name="node-readiness",
    ),
]
