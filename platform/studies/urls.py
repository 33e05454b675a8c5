from django.urls import path

from studies import views

app_name = "studies"

urlpatterns = [
    path("", views.study_list, name="list"),
    path("new/", views.study_create_view, name="create"),
    path("<int:study_id>/", views.study_detail, name="detail"),
    path("<int:study_id>/invite/", views.study_invite_view, name="invite"),
    path("invitations/", views.invitations, name="invitations"),
    path("invitations/<int:enrollment_id>/", views.enrollment_decide_view, name="decide"),
]
