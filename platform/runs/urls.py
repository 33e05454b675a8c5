from django.urls import path

from runs import views

app_name = "runs"

urlpatterns = [
    path("start/<int:study_id>/", views.run_start_view, name="start"),
    path("<int:run_id>/", views.run_detail, name="detail"),
    path("<int:run_id>/live/", views.run_live, name="live"),
    path("<int:run_id>/cancel/", views.run_cancel_view, name="cancel"),
    path("<int:run_id>/release/approve/", views.release_approve_view, name="release-approve"),
    path("<int:run_id>/release/model/", views.model_download, name="download"),
]
