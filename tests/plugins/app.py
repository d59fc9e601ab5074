"""The application in-process (pytest-aiohttp test server: real HTTP on 127.0.0.1).

``storage_config`` is parametrised over every driver in ``DRIVERS``; each driver ``d``
provides a fixture ``{d}_storage_config`` returning the ``storage`` section (a dict).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tusd_py.config import Config, load_config
from tusd_py.http.app import create_app

#: Drivers the HTTP protocol suite runs against.
DRIVERS = ["local", "memory", "s3", "azure", "gcs"]


@pytest.fixture
def local_storage_config(tmp_path: Path) -> dict[str, Any]:
    return {"driver": "local", "data_dir": str(tmp_path / "data")}


@pytest.fixture
def memory_storage_config() -> dict[str, Any]:
    return {"driver": "memory"}


@pytest.fixture(params=DRIVERS)
def storage_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    return request.getfixturevalue(f"{request.param}_storage_config")


def make_config(storage: dict[str, Any], **sections: dict[str, Any]) -> Config:
    """A Config from dotted overrides, ignoring the environment and config files."""
    overrides: dict[str, Any] = {f"storage.{k}": v for k, v in storage.items()}
    for section, values in sections.items():
        for key, value in values.items():
            overrides[f"{section}.{key}"] = value
    return load_config(path="/dev/null", env={}, overrides=overrides)


TusClientFactory = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def tus_client_factory(aiohttp_client, storage_config) -> TusClientFactory:  # type: ignore[no-untyped-def]
    """``await tus_client_factory(server={...}, expiration={...})`` -> TestClient."""

    async def factory(**sections: dict[str, Any]) -> TestClient:
        config = make_config(storage_config, **sections)
        return await aiohttp_client(create_app(config))

    return factory


@pytest.fixture
async def tus(tus_client_factory) -> TestClient:  # type: ignore[no-untyped-def]
    """A client for an app with the default config on each driver."""
    return await tus_client_factory()
