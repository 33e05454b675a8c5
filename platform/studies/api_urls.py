from django.urls import path

from studies import apis

app_name = "studies_api"

urlpatterns = [
    path("studies/", apis.StudyListApi.as_view(), name="study-list"),
    path("studies/<int:study_id>/", apis.StudyDetailApi.as_view(), name="study-detail"),
    path(
        "studies/<int:study_id>/protocol/",
        apis.StudyProtocolUpdateApi.as_view(),
        name="study-protocol",
    ),
    path(
        "studies/<int:study_id>/invitations/",
        apis.StudyInviteApi.as_view(),
        name="study-invite",
    ),
    path("enrollments/", apis.EnrollmentListApi.as_view(), name="enrollment-list"),
    path(
        "enrollments/<int:enrollment_id>/decision/",
        apis.EnrollmentDecideApi.as_view(),
        name="enrollment-decide",
    ),
    path("node/protocols/", apis.NodeProtocolListApi.as_view(), name="node-protocols"),
    path(
        "node/studies/<slug:slug>/he-context/",
        apis.NodeHeContextApi.as_view(),
        name="node-he-context",
    ),
]
