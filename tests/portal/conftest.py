"""The portal's tests run against a real PostgreSQL server that the test session starts itself."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.conf import settings

from tests.portal.stack import no_proxy  # noqa: F401 - a fixture for the end-to-end tests
from tests.servers import postgres_server


@pytest.fixture(scope="session")
def django_db_modify_db_settings() -> Iterator[None]:
    with postgres_server() as server:
        settings.DATABASES["default"].update(
            {"HOST": server.host, "PORT": server.port, "USER": server.user, "NAME": "cohort"}
        )
        yield
