"""Config precedence (flags > env > YAML > defaults), validation messages, check-config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tusd_py.config import ConfigError, load_config


def write_yaml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "tusd.yaml"
    path.write_text(text)
    return str(path)


def test_defaults_follow_tusd():
    config = load_config(path="/dev/null", env={})
    assert config.server.port == 8080
    assert config.server.host == "0.0.0.0"
    assert config.server.base_path == "/files/"
    assert config.server.download is True
    assert config.server.cors.allowed_origins == ["*"]
    assert config.server.cors.allow_credentials is False
    assert config.server.checksum_algorithms == ["sha1", "md5", "sha256", "sha512"]
    assert config.storage.driver == "local"


def test_precedence(tmp_path):
    path = write_yaml(tmp_path, "server:\n  port: 7000\n  host: 127.0.0.1\n"
                                "expiration:\n  after: 2h\n")
    config = load_config(path, env={"TUSD_SERVER__PORT": "9000"})
    assert config.server.port == 9000 and config.server.host == "127.0.0.1"
    assert config.expiration.after == 7200
    config = load_config(path, env={"TUSD_SERVER__PORT": "9000"}, overrides={"server.port": 9100})
    assert config.server.port == 9100


def test_env_forms(tmp_path):
    config = load_config("/dev/null", env={
        "TUSD_SERVER__BEHIND_PROXY": "true",
        "TUSD_STORAGE__DRIVER": "local",
        "TUSD_SERVER__CORS__ALLOWED_ORIGINS": "https://a.example, https://b.example",
        "TUSD_SERVER__MAX_SIZE": "1GiB",
        "TUSD_SERVER__BASE_PATH": "/uploads",
        "TUSD_STORAGE__PART_SIZE": "5242880",
        "UNRELATED": "x",
    })
    assert config.server.behind_proxy is True
    assert config.server.cors.allowed_origins == ["https://a.example", "https://b.example"]
    assert config.server.max_size == 1 << 30
    assert config.server.base_path == "/uploads/"
    assert config.storage.part_size == 5242880


@pytest.mark.parametrize("env,needle", [
    ({"TUSD_SERVER__PORT": "99999"}, "server.port"),
    ({"TUSD_SERVER__PROT": "1"}, "server.prot: unknown key (from env TUSD_SERVER__PROT)"),
    ({"TUSD_STORAGE__DRIVER": "ftp"}, "storage.driver"),
    ({"TUSD_EXPIRATION__AFTER": "soon"}, "not a duration"),
    ({"TUSD_SERVER__CHECKSUM_ALGORITHMS": "sha1,crc32"}, "crc32"),
    ({"TUSD_SERVER__BASE_PATH": "files"}, "server.base_path"),
    ({"TUSD_SERVR__PORT": "1"}, "servr: unknown key (from env TUSD_SERVR__PORT)"),
    ({"TUSD_SERVER__IDLE_TIMEOUT": "0"}, "server.idle_timeout: Input should be greater than 0"),
])
def test_bad_values_are_named(env, needle):
    with pytest.raises(ConfigError) as err:
        load_config("/dev/null", env=env)
    assert needle in str(err.value)


def test_yaml_errors_name_the_file(tmp_path):
    path = write_yaml(tmp_path, "server:\n  port: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path, env={})
    path = write_yaml(tmp_path, "server:\n  portt: 1\n")
    with pytest.raises(ConfigError, match=r"server.portt: unknown key \(from file"):
        load_config(path, env={})


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TUSD_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "tusd_py", *args], capture_output=True,
                          text=True, env=full_env, timeout=60)


def test_serve_with_bad_config_exits_2_without_traceback(tmp_path):
    result = run_cli("serve", "--config", "/dev/null", env={"TUSD_SERVER__PORT": "99999"})
    assert result.returncode == 2
    assert "server.port" in result.stderr and "TUSD_SERVER__PORT" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_prints_effective_config_with_secrets_masked(tmp_path):
    result = run_cli("check-config", "--config", "/dev/null", "--port", "9999",
                     "--data-dir", str(tmp_path),
                     env={"TUSD_STORAGE__CONNECTION_STRING": "AccountKey=supersecret"})
    assert result.returncode == 0, result.stderr
    assert "port: 9999" in result.stdout
    assert f"data_dir: {tmp_path}" in result.stdout
    assert "supersecret" not in result.stdout
    assert "**********" in result.stdout


def test_shipped_config_file_is_valid():
    root = Path(__file__).resolve().parents[2]
    config = load_config(str(root / "config" / "tusd.yaml"), env={})
    assert config.server.port == 8080


def test_s3_spill_dir_reaches_the_driver(tmp_path):
    from tusd_py.storage import build_store

    config = load_config("/dev/null", env={
        "TUSD_STORAGE__DRIVER": "s3", "TUSD_STORAGE__BUCKET": "b",
        "TUSD_STORAGE__SPILL_DIR": str(tmp_path)})
    store = build_store(config.storage)
    assert store.spill_dir == str(tmp_path)  # type: ignore[attr-defined]


def test_malloc_tuning_applies_on_glibc_unless_the_operator_chose(monkeypatch):
    import platform

    from tusd_py.http.server import tune_malloc

    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert tune_malloc() is False  # the operator's MALLOC_* settings win
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    for name in [n for n in __import__("os").environ if n.startswith("MALLOC_")]:
        monkeypatch.delenv(name)
    assert tune_malloc() is (platform.libc_ver()[0] == "glibc")
