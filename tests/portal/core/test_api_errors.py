"""Every API error has one shape: {"error": {"code", "message", "fields"}} with the right status."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, User

from institutions.selectors import RESEARCHERS_GROUP

pytestmark = pytest.mark.django_db


@pytest.fixture
def researcher_client(client):
    user = User.objects.create_user("rita", password="pw-researcher-1")
    user.groups.add(Group.objects.get_or_create(name=RESEARCHERS_GROUP)[0])
    client.force_login(user)
    return client


def error_of(response, status: int) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "fields"}
    assert body["error"]["message"]
    return body["error"]


def test_an_anonymous_call_is_a_401_with_a_challenge(client):
    response = client.get("/api/studies/")
    error = error_of(response, 401)
    assert error["code"] == "not_authenticated"
    assert response.has_header("WWW-Authenticate")


def test_an_unknown_node_token_is_a_401(client):
    response = client.get("/api/node/protocols/", HTTP_AUTHORIZATION="Node node_000000000000_nope")
    assert error_of(response, 401)["code"] == "authentication_failed"


def test_a_missing_object_is_a_404(researcher_client):
    assert error_of(researcher_client.get("/api/studies/987654/"), 404)["code"] == "not_found"


def test_an_unknown_api_path_answers_in_the_api_shape_not_with_an_html_page(client):
    error = error_of(client.get("/api/no-such-endpoint/"), 404)
    assert error["code"] == "not_found"
    assert "/api/docs/" in error["message"]


def test_a_wrong_method_is_a_405(researcher_client):
    error = error_of(researcher_client.delete("/api/studies/"), 405)
    assert error["code"] == "method_not_allowed"
    assert "DELETE" in error["message"]


def test_a_body_that_is_not_json_is_a_415(researcher_client):
    response = researcher_client.post("/api/studies/", data="slug=x", content_type="text/plain")
    error = error_of(response, 415)
    assert error["code"] == "unsupported_media_type"
    assert "text/plain" in error["message"]


def test_malformed_json_is_a_400_parse_error(researcher_client):
    response = researcher_client.post(
        "/api/studies/", data="{not json", content_type="application/json"
    )
    assert error_of(response, 400)["code"] == "parse_error"


def test_invalid_input_names_the_fields(researcher_client):
    response = researcher_client.post("/api/studies/", data={}, content_type="application/json")
    error = error_of(response, 400)
    assert error["code"] == "invalid"
    assert error["fields"], "a validation error says which fields are wrong"
