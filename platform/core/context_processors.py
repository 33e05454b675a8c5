"""Template context for every page: the signed-in user's roles, which drive the navigation."""

from __future__ import annotations

from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject

from core.selectors import user_roles


def navigation(request: HttpRequest) -> dict[str, object]:
    # Lazy: pages that never render the navigation (API responses, redirects) pay no queries.
    return {"roles": SimpleLazyObject(lambda: user_roles(user=request.user))}
