"""REST routes of issue 4 (being implemented): archives."""

from __future__ import annotations

from starlette.routing import Route


def routes() -> list[Route]:
    return []
