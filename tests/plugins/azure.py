"""Azure fixtures: a real Azurite (npm ``azurite@3.37.0``, pinned in package.json) on
127.0.0.1 in a subprocess, started once per session (it takes 2 to 3 s).

* ``azurite_connection_string`` (session): an explicit connection string for the
  emulator's well-known development account (a public key, not a secret).
* ``azure_container``: a fresh container per test.
* ``azure_storage_config``: the ``storage`` section for that container (used by the
  HTTP suite through ``tests.plugins.app.DRIVERS``).
* ``azure_daemon_env``: the same as ``TUSD_STORAGE__*`` env for ``daemon_factory``.
* ``azure_container_client``: a plain (sync) container client, to look behind the
  driver's back in assertions.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from bench.emulators import AZURE_ACCOUNT, AZURE_KEY, emulator_process

#: Azurite's well-known development account (a public key, not a secret).
DEV_ACCOUNT, DEV_KEY = AZURE_ACCOUNT, AZURE_KEY
#: Small blocks keep the tests fast while a PATCH still spans several of them.
PART_SIZE = 1 << 20


def connection_string(port: int) -> str:
    return (f"DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/{DEV_ACCOUNT};")


@pytest.fixture(scope="session")
def azurite_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    # Azurite writes debug files into its working directory: a temp dir of its own.
    with emulator_process("azure", tmp_path_factory.mktemp("azurite")) as url:
        yield int(url.rsplit(":", 1)[1])


@pytest.fixture(scope="session")
def azurite_connection_string(azurite_port: int) -> str:
    return connection_string(azurite_port)


@pytest.fixture
def azure_container(azurite_connection_string: str) -> Iterator[str]:
    from azure.storage.blob import BlobServiceClient

    name = f"tus-{uuid.uuid4().hex[:16]}"
    with BlobServiceClient.from_connection_string(azurite_connection_string) as service:
        service.create_container(name)
        yield name
        service.delete_container(name)  # Azurite keeps everything in memory


@pytest.fixture
def azure_container_client(azurite_connection_string: str, azure_container: str) -> Iterator[Any]:
    from azure.storage.blob import ContainerClient

    with ContainerClient.from_connection_string(azurite_connection_string, azure_container) as client:
        yield client


@pytest.fixture
def azure_storage_config(azurite_connection_string: str, azure_container: str) -> dict[str, Any]:
    return {"driver": "azure", "container": azure_container,
            "connection_string": azurite_connection_string, "prefix": "up/",
            "part_size": PART_SIZE}


@pytest.fixture
def azure_daemon_env(azure_storage_config: dict[str, Any]) -> dict[str, str]:
    return {f"TUSD_STORAGE__{k.upper()}": str(v) for k, v in azure_storage_config.items()}
