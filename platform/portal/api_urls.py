"""The REST API under /api/: each app contributes its endpoints (schema at /api/schema/)."""

from django.urls import include, path

from core.views import api_not_found

urlpatterns = [
    path("", include("studies.api_urls")),
    path("", include("institutions.api_urls")),
    path("", include("runs.api_urls")),
    path("", include("consent.api_urls")),
    path("", include("privacy.api_urls")),
    path("<path:path>", api_not_found, name="api-not-found"),
]
