"""The OpenAPI schema is generated from the code, and its docs page works offline."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.contrib.staticfiles import finders

pytestmark = pytest.mark.django_db


def test_the_openapi_schema_renders_with_every_apps_endpoints(client):
    response = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["info"]["title"] == "Cohort API"
    paths = schema["paths"]
    for prefix in ("/api/studies/", "/api/runs/"):
        assert any(p.startswith(prefix) for p in paths), f"no {prefix} endpoints in {sorted(paths)}"


def test_schema_generation_raises_no_warnings():
    from drf_spectacular.drainage import GENERATOR_STATS
    from drf_spectacular.generators import SchemaGenerator

    GENERATOR_STATS.reset()
    SchemaGenerator().get_schema(request=None, public=True)
    assert not GENERATOR_STATS._warn_cache, sorted(GENERATOR_STATS._warn_cache)
    assert not GENERATOR_STATS._error_cache, sorted(GENERATOR_STATS._error_cache)


def test_the_docs_page_loads_swagger_ui_from_this_server_not_a_cdn(client):
    client.force_login(User.objects.create_user("reader", password="pw-reader-1"))
    response = client.get("/api/docs/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "cdn.jsdelivr.net" not in page and "unpkg.com" not in page
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in page
    assert finders.find("drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js")


def test_the_portal_stylesheet_is_found_by_the_static_files_finders():
    assert finders.find("portal/portal.css")
