from django.urls import path

from consent import apis

app_name = "consent_api"

urlpatterns = [
    path(
        "node/studies/<slug:slug>/consent/forms/",
        apis.NodeConsentFormsApi.as_view(),
        name="node-forms",
    ),
    path(
        "node/studies/<slug:slug>/consent/records/",
        apis.NodeConsentRecordsApi.as_view(),
        name="node-records",
    ),
    path(
        "node/studies/<slug:slug>/consent/snapshot/",
        apis.NodeConsentSnapshotApi.as_view(),
        name="node-snapshot",
    ),
    path("studies/<slug:slug>/consent/", apis.StudyConsentApi.as_view(), name="study-consent"),
]
