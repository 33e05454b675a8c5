"""`{{ count|suppressed }}`: the registry's one small-count rule (consent.selectors.suppressed)."""

from __future__ import annotations

from django import template

from consent.selectors import suppressed as suppressed_count

register = template.Library()


@register.filter
def suppressed(count: int) -> str:
    return suppressed_count(count)
