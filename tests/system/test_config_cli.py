"""Config precedence (flags > env > YAML > defaults), validation messages, check-config."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

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
        "UNRELATED": "x",
    })
    assert config.server.behind_proxy is True
    assert config.server.cors.allowed_origins == ["https://a.example", "https://b.example"]
    assert config.server.max_size == 1 << 30
    assert config.server.base_path == "/uploads/"
    config = load_config("/dev/null", env={
        "TUSD_STORAGE__DRIVER": "s3", "TUSD_STORAGE__BUCKET": "b",
        "TUSD_STORAGE__PART_SIZE": "5242880", "TUSD_STORAGE__LEASE_DURATION": "1m"})
    assert config.storage.part_size == 5242880
    assert config.storage.lease_duration == 60


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
                     "--data-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "port: 9999" in result.stdout
    assert f"data_dir: {tmp_path}" in result.stdout
    result = run_cli("check-config", "--config", "/dev/null", env={
        "TUSD_STORAGE__DRIVER": "azure", "TUSD_STORAGE__CONTAINER": "c",
        "TUSD_STORAGE__CONNECTION_STRING": "AccountKey=supersecret"})
    assert result.returncode == 0, result.stderr
    assert "supersecret" not in result.stdout
    assert "**********" in result.stdout


@pytest.mark.parametrize("env,needle", [
    ({"TUSD_STORAGE__DRIVER": "s3"},
     "storage.bucket: required for the s3 driver (storage.driver from env TUSD_STORAGE__DRIVER)"),
    ({"TUSD_STORAGE__DRIVER": "gcs"}, "storage.bucket: required for the gcs driver"),
    ({"TUSD_STORAGE__DRIVER": "azure", "TUSD_STORAGE__CONNECTION_STRING": "x"},
     "storage.container: required for the azure driver"),
    ({"TUSD_STORAGE__DRIVER": "azure", "TUSD_STORAGE__CONTAINER": "c"},
     "connection_string or account_url is required (or set AZURE_STORAGE_CONNECTION_STRING)"),
    ({"TUSD_STORAGE__DRIVER": "s3", "TUSD_STORAGE__BUCKET": "b", "TUSD_STORAGE__DATA_DIR": "/d"},
     "storage.data_dir: not a setting of the s3 driver (from env TUSD_STORAGE__DATA_DIR)"),
    ({"TUSD_STORAGE__BUCKET": "b"}, "storage.bucket: not a setting of the local driver"),
    ({"TUSD_STORAGE__DRIVER": "s3", "TUSD_STORAGE__BUCKET": "b", "TUSD_STORAGE__PART_SIZE": "4MiB"},
     "storage.part_size: must be between 5MiB and 5GiB"),
    ({"TUSD_STORAGE__DRIVER": "gcs", "TUSD_STORAGE__BUCKET": "b", "TUSD_STORAGE__PART_SIZE": "1000"},
     "storage.part_size: must be at least 64KiB"),
    ({"TUSD_STORAGE__DRIVER": "azure", "TUSD_STORAGE__CONTAINER": "c",
      "TUSD_STORAGE__CONNECTION_STRING": "x", "TUSD_STORAGE__PART_SIZE": "1000"},
     "storage.part_size: must be between 64KiB and 4000MiB"),
    ({"TUSD_STORAGE__DRIVER": "s3", "TUSD_STORAGE__BUCKET": "b",
      "TUSD_STORAGE__LEASE_DURATION": "500ms"}, "storage.lease_duration: must be at least 1s"),
    ({"TUSD_STORAGE__DRIVER": "gcs", "TUSD_STORAGE__BUCKET": "b", "TUSD_STORAGE__EQUAL_PARTS": "true"},
     "storage.equal_parts: not a setting of the gcs driver (from env TUSD_STORAGE__EQUAL_PARTS)"),
    ({"TUSD_STORAGE__EQUAL_PARTS": "true"}, "storage.equal_parts: not a setting of the local driver"),
    ({"TUSD_STORAGE__DRIVER": "s3", "TUSD_STORAGE__BUCKET": "b", "TUSD_STORAGE__EQUAL_PARTS": "maybe"},
     "storage.equal_parts: "),
])
def test_check_config_refuses_what_serve_refuses(tmp_path, env, needle):
    """Each driver's keys are checked when the config is read: check-config and serve
    exit 2 with the same one-line reason, before anything is started."""
    with pytest.raises(ConfigError) as err:
        load_config("/dev/null", env=env)
    assert needle in str(err.value)
    for command in ("check-config", "serve"):
        result = run_cli(command, "--config", "/dev/null", env=env)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert needle in result.stderr and "Traceback" not in result.stderr


def test_a_driver_flag_of_another_driver_is_refused():
    result = run_cli("check-config", "--config", "/dev/null", "--data-dir", "/d",
                     env={"TUSD_STORAGE__DRIVER": "s3", "TUSD_STORAGE__BUCKET": "b"})
    assert result.returncode == 2
    assert "storage.data_dir: not a setting of the s3 driver (from command line)" in result.stderr


def test_azure_connection_string_from_the_sdk_variable():
    config = load_config("/dev/null", env={
        "TUSD_STORAGE__DRIVER": "azure", "TUSD_STORAGE__CONTAINER": "c",
        "AZURE_STORAGE_CONNECTION_STRING": "from-env"})
    secret = config.storage.connection_string
    assert secret is not None and secret.get_secret_value() == "from-env"
    config = load_config("/dev/null", env={
        "TUSD_STORAGE__DRIVER": "azure", "TUSD_STORAGE__CONTAINER": "c",
        "TUSD_STORAGE__ACCOUNT_URL": "https://a.example", "AZURE_STORAGE_CONNECTION_STRING": "x"})
    assert config.storage.connection_string is None


def test_check_config_names_a_missing_driver_extra():
    """Without the SDK the driver needs, check-config fails as serve would, naming the extra."""
    code = ("import sys; sys.modules['aioboto3'] = None; from tusd_py.cli import main; "
            "sys.exit(main(['check-config', '--config', '/dev/null']))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUSD_")}
    env.update({"TUSD_STORAGE__DRIVER": "s3", "TUSD_STORAGE__BUCKET": "b"})
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.returncode == 2
    assert "storage.driver: s3 needs the s3 extra (pip install '.[s3]'" in result.stderr


def test_shipped_config_file_is_valid():
    root = Path(__file__).resolve().parents[2]
    config = load_config(str(root / "config" / "tusd.yaml"), env={})
    assert config.server.port == 8080


def test_s3_spill_dir_reaches_the_driver(tmp_path):
    from tusd_py.storage.registry import build_store

    config = load_config("/dev/null", env={
        "TUSD_STORAGE__DRIVER": "s3", "TUSD_STORAGE__BUCKET": "b",
        "TUSD_STORAGE__SPILL_DIR": str(tmp_path)})
    store = build_store(config.storage)
    assert store.spill_dir == str(tmp_path)  # type: ignore[attr-defined]


def test_s3_equal_parts_reaches_the_driver_and_check_config():
    from tusd_py.storage.registry import build_store

    env = {"TUSD_STORAGE__DRIVER": "s3", "TUSD_STORAGE__BUCKET": "b"}
    assert build_store(load_config("/dev/null", env=env).storage).equal_parts is False  # type: ignore[attr-defined]
    env["TUSD_STORAGE__EQUAL_PARTS"] = "true"
    assert build_store(load_config("/dev/null", env=env).storage).equal_parts is True  # type: ignore[attr-defined]
    result = run_cli("check-config", "--config", "/dev/null", env=env)
    assert result.returncode == 0, result.stderr
    assert "  equal_parts: true  # env TUSD_STORAGE__EQUAL_PARTS" in result.stdout


def test_malloc_tuning_applies_on_glibc_unless_the_operator_chose(monkeypatch):
    import platform

    from tusd_py.http.server import tune_malloc

    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert tune_malloc() is False  # the operator's MALLOC_* settings win
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    for name in [n for n in __import__("os").environ if n.startswith("MALLOC_")]:
        monkeypatch.delenv(name)
    assert tune_malloc() is (platform.libc_ver()[0] == "glibc")


def service_links(service: str, ip: str, port: int, port_name: str = "http") -> dict[str, str]:
    """The variables Kubernetes injects into every pod for a Service in its namespace
    (``enableServiceLinks``, on by default): the Docker-links form, name upper-cased
    with ``-`` as ``_``."""
    prefix = service.upper().replace("-", "_")
    tcp = f"tcp://{ip}:{port}"
    return {
        f"{prefix}_SERVICE_HOST": ip,
        f"{prefix}_SERVICE_PORT": str(port),
        f"{prefix}_SERVICE_PORT_{port_name.upper().replace('-', '_')}": str(port),
        f"{prefix}_PORT": tcp,
        f"{prefix}_PORT_{port}_TCP": tcp,
        f"{prefix}_PORT_{port}_TCP_PROTO": "tcp",
        f"{prefix}_PORT_{port}_TCP_PORT": str(port),
        f"{prefix}_PORT_{port}_TCP_ADDR": ip,
    }


#: What a pod sees with Services named tusd and tusd-py in its namespace.
KUBERNETES_LINKS = {**service_links("tusd", "10.0.0.11", 8080),
                    **service_links("tusd-py", "10.0.0.12", 80)}


def log_lines(daemon, needle: str) -> list[str]:  # type: ignore[no-untyped-def]
    """The daemon's log lines holding ``needle``, once there are any (it flushes its
    buffered info and debug lines every 0.25 s)."""
    deadline = time.monotonic() + 5
    while True:
        lines = [line for line in daemon.log_path.read_text(errors="replace").splitlines()
                 if needle in line]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_kubernetes_service_links_are_not_settings():
    """Was: ``port: unknown key (from env TUSD_PORT)``, and the pod never started."""
    assert "TUSD_PORT" in KUBERNETES_LINKS and "TUSD_PY_PORT_80_TCP_ADDR" in KUBERNETES_LINKS
    config = load_config("/dev/null", env={**KUBERNETES_LINKS, "TUSD_SERVER__PORT": "9000"})
    assert config.server.port == 9000
    assert set(config.provenance.ignored_env) == set(KUBERNETES_LINKS)
    assert config.provenance.misspelt_env == {}
    # A misspelt structured name is still refused by name, Kubernetes' variables or not.
    with pytest.raises(ConfigError, match=r"server.prot: unknown key \(from env TUSD_SERVER__PROT\)"):
        load_config("/dev/null", env={**KUBERNETES_LINKS, "TUSD_SERVER__PROT": "1"})
    with pytest.raises(ConfigError, match="TUSD_SERVER____PORT: malformed variable name"):
        load_config("/dev/null", env={"TUSD_SERVER____PORT": "1"})


def test_daemon_starts_with_kubernetes_service_links(daemon_factory):  # type: ignore[no-untyped-def]
    """The real daemon with the whole set in its environment: it serves, and says at
    debug level (only) that the variables are not settings."""
    import urllib.request

    daemon = daemon_factory(env={**KUBERNETES_LINKS, "TUSD_SERVER__LOG_LEVEL": "debug"})
    with urllib.request.urlopen(daemon.root + "/readyz", timeout=5) as r:
        assert r.status == 200
    [line] = log_lines(daemon, "not settings, ignored")
    assert " DEBUG " in line and "TUSD_PORT" in line and "TUSD_PY_SERVICE_HOST" in line
    assert " WARNING " not in daemon.log_path.read_text()


def test_a_setting_spelt_with_one_underscore_is_named():
    """``TUSD_SERVER_PORT`` sets nothing (it is not ``TUSD_SERVER__PORT``): said, not fatal."""
    config = load_config("/dev/null", env={"TUSD_SERVER_PORT": "9000",
                                           "TUSD_STORAGE_DATA_DIR": "/d"})
    assert config.server.port == 8080
    assert config.provenance.misspelt_env == {"TUSD_SERVER_PORT": "TUSD_SERVER__PORT",
                                              "TUSD_STORAGE_DATA_DIR": "TUSD_STORAGE__DATA_DIR"}
    result = run_cli("check-config", "--config", "/dev/null", env={"TUSD_SERVER_PORT": "9000"})
    assert result.returncode == 0, result.stderr
    assert ("# TUSD_SERVER_PORT is not a setting and is ignored (did you mean "
            "TUSD_SERVER__PORT?)") in result.stdout


def test_check_config_says_where_each_value_came_from(tmp_path):
    """The file (absolute path, though given relative), the data dir (absolute), and after
    each value that is not the default, its source."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "tusd.yaml").write_text(
        "server:\n  max_size: 1GiB\n  port: 7000\n  cors:\n    allowed_origins: [https://a.example]\n"
        "storage:\n  data_dir: uploads\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUSD_")}
    env["TUSD_SERVER__HOST"] = "127.0.0.1"
    result = subprocess.run([sys.executable, "-m", "tusd_py", "check-config", "-c",
                             "conf/tusd.yaml", "--port", "9999"], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    source = f"file {tmp_path}/conf/tusd.yaml"
    assert out.startswith(f"# config: {source}\n# storage: local driver, {tmp_path}/uploads\n")
    lines = out.splitlines()
    assert "  host: 127.0.0.1  # env TUSD_SERVER__HOST" in lines
    assert "  port: 9999  # command line" in lines
    assert f"  max_size: 1073741824  # {source}" in lines
    assert f"    allowed_origins:  # {source}" in lines
    assert f"  data_dir: uploads  # {source}" in lines
    assert "  base_path: /files/" in lines  # a default: no comment
    assert yaml.safe_load(out)["server"]["port"] == 9999  # still YAML


def test_check_config_without_a_file_says_built_in_defaults(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUSD_")}
    result = subprocess.run([sys.executable, "-m", "tusd_py", "check-config"], capture_output=True,
                            text=True, env=env, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("# config: built-in defaults (no config file)\n"
                                    f"# storage: local driver, {tmp_path}/data\n")


def test_serve_logs_the_config_it_loaded(daemon_factory, tmp_path):  # type: ignore[no-untyped-def]
    config = tmp_path / "tusd.yaml"
    config.write_text("server:\n  max_size: 1MiB\n")
    daemon = daemon_factory(env={"TUSD_CONFIG": str(config), "TUSD_SERVER__LOG_LEVEL": "info"})
    [line] = log_lines(daemon, " config: ")
    assert line.endswith(f"config: file {config}; env TUSD_EXPIRATION__SWEEP_INTERVAL, "
                         "TUSD_SERVER__LOG_LEVEL; command line server.host, server.port, "
                         "storage.data_dir")


def test_check_config_output_stays_yaml_with_long_values():
    """A long value is not folded over lines (a source comment after its first line
    would break it)."""
    url = "http://hooks.example/" + "long/" * 30 + "hooks"
    result = run_cli("check-config", "--config", "/dev/null", env={"TUSD_HOOKS__HTTP__URL": url})
    assert result.returncode == 0, result.stderr
    assert f"    url: {url}  # env TUSD_HOOKS__HTTP__URL" in result.stdout.splitlines()
    assert yaml.safe_load(result.stdout)["hooks"]["http"]["url"] == url
