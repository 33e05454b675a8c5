"""URL map: the web portal, the REST API under /api/, its schema and docs, and the admin console."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/", include("portal.api_urls")),
    path("studies/", include("studies.urls")),
    path("studies/", include("consent.urls")),
    path("hospitals/", include("institutions.urls")),
    path("runs/", include("runs.urls")),
    path("privacy/", include("privacy.urls")),
    path("", include("core.urls")),
]
