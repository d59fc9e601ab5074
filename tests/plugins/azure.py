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

import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.plugins.daemon import ROOT, free_port

AZURITE = ROOT / "node_modules" / ".bin" / "azurite-blob"
DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/"
           "K1SZFPTOtr/KBHBeksoGMGw==")
#: Small blocks keep the tests fast while a PATCH still spans several of them.
PART_SIZE = 1 << 20


def connection_string(port: int) -> str:
    return (f"DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/{DEV_ACCOUNT};")


@pytest.fixture(scope="session")
def azurite_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    if not AZURITE.exists():
        pytest.fail(f"{AZURITE} is missing: run `npm ci` (scripts/test.sh does)")
    workdir = Path(tmp_path_factory.mktemp("azurite"))  # Azurite writes debug files into its cwd
    port = free_port()
    log_path = workdir / "azurite.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence",
         "--loose", "--skipApiVersionCheck", "--disableTelemetry", "--silent"],
        cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/{DEV_ACCOUNT}?comp=list"
    deadline = time.monotonic() + 30
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"azurite exited: {log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=1):
                    break
            except urllib.error.HTTPError:
                break  # any HTTP answer (403 without a signature) means it is up
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("azurite did not start") from None
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


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
