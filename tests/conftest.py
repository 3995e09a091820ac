"""Fixtures shared by every test that needs a live service."""

from __future__ import annotations

from typing import Any, AsyncIterator, Awaitable, Callable

import hypothesis  # noqa: F401  (loaded up front: its plugin imports it at session end otherwise)
import pytest

from tests.embedded_fixture import test_servers
from tests.harness import Service, start_service, stop_service


@pytest.fixture(scope="session")
def store_urls() -> tuple[str, str]:
    """(database_url, redis_url): CI's servers, or embedded ones started once."""
    return test_servers()


@pytest.fixture
async def service_factory(
    store_urls: tuple[str, str],
) -> AsyncIterator[Callable[..., Awaitable[Service]]]:
    """Starts live services with settings overrides; stops them all after the test."""
    started: list[Service] = []

    async def start(**overrides: Any) -> Service:
        service = await start_service(*store_urls, **overrides)
        started.append(service)
        return service

    yield start
    for service in started:
        await stop_service(service)


@pytest.fixture
async def service(service_factory: Callable[..., Awaitable[Service]]) -> Service:
    """A live gateway + matcher with short test timings."""
    return await service_factory()
