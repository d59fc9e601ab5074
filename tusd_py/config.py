"""Typed configuration: built-in defaults < YAML file < ``TUSD_*`` env vars < CLI flags.

Every key has an env form: ``TUSD_`` + the key path upper-cased, joined by ``__``
(``server.port`` -> ``TUSD_SERVER__PORT``). The merged result is validated once at
start-up; a bad key or value is reported by name and source, without a traceback.
No other module reads the environment.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from .protocol.checksum import ALGORITHMS
from .protocol.constants import HookName

ENV_PREFIX = "TUSD_"
#: Env var naming the config file (an alternative to ``--config``).
CONFIG_ENV = "TUSD_CONFIG"
DEFAULT_CONFIG_PATHS = ("config/tusd.yaml", "/etc/tusd-py/tusd.yaml")

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 10**3, "kib": 1 << 10, "m": 1 << 20, "mb": 10**6,
          "mib": 1 << 20, "g": 1 << 30, "gb": 10**9, "gib": 1 << 30, "t": 1 << 40, "tb": 10**12,
          "tib": 1 << 40}
_SECONDS = {"": 1, "ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _parse_size(value: Any) -> Any:
    """``8MiB``, ``5 MB``, ``1048576`` -> bytes."""
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", value)
        if m and m.group(2).lower() in _UNITS:
            return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
        raise ValueError(f"not a size: {value!r} (try 8MiB or 8388608)")
    return value


def _parse_duration(value: Any) -> Any:
    """``30s``, ``5m``, ``24h``, ``7d``, ``250ms``, ``60`` -> seconds."""
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-z]*)\s*", value)
        if m and m.group(2) in _SECONDS:
            return float(m.group(1)) * _SECONDS[m.group(2)]
        raise ValueError(f"not a duration: {value!r} (try 30s, 5m, 24h)")
    return value


def _split_list(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


Size = Annotated[int, BeforeValidator(_parse_size), Field(ge=0)]
Duration = Annotated[float, BeforeValidator(_parse_duration), Field(ge=0)]
StrList = Annotated[list[str], BeforeValidator(_split_list)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class CorsConfig(Section):
    enabled: bool = True
    #: Origins allowed to call the API from a browser; ``*`` allows any (no credentials).
    allowed_origins: StrList = ["*"]
    #: Let browsers send cookies / HTTP auth (needs explicit allowed_origins, not ``*``).
    allow_credentials: bool = False
    #: How long browsers may cache a preflight answer (Access-Control-Max-Age).
    max_age: Duration = 86400

    @field_validator("allow_credentials")
    @classmethod
    def _no_credentials_for_any_origin(cls, value: bool, info: ValidationInfo) -> bool:
        if value and "*" in info.data.get("allowed_origins", []):
            raise ValueError("needs explicit allowed_origins: with '*' any web site could "
                             "make requests with the user's credentials")
        return value


class ServerConfig(Section):
    host: str = "0.0.0.0"
    port: int = Field(default=8080, ge=0, le=65535)
    #: URL path the tus endpoint is mounted at.
    base_path: str = "/files/"
    #: Trust Forwarded / X-Forwarded-* headers when building Location URLs.
    behind_proxy: bool = False
    #: Largest upload accepted (Tus-Max-Size); 0 means no limit.
    max_size: Size = 0
    #: Serve finished uploads with GET.
    download: bool = True
    #: Checksum algorithms accepted in Upload-Checksum.
    checksum_algorithms: StrList = list(ALGORITHMS)
    #: A PATCH whose body sends nothing for this long is ended (bytes so far are kept).
    idle_timeout: Annotated[Duration, Field(gt=0)] = 30.0
    #: How long a request waits for an upload another request is writing, before 423.
    lock_wait: Duration = 3.0
    #: A writer idle for this long gives its upload up to a newer request at once
    #: (a client that reconnected after a network drop resumes without waiting).
    lock_takeover_idle: Duration = 1.0
    #: On SIGTERM, in-flight requests get this long to finish; then they are stopped,
    #: their bytes committed, and the daemon exits.
    shutdown_grace: Duration = 30.0
    cors: CorsConfig = CorsConfig()
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: ``text`` or ``json`` (one JSON object per line).
    log_format: Literal["text", "json"] = "text"
    access_log: bool = True
    #: Largest request body: one PATCH, or the body of a creation-with-upload POST
    #: (0: no limit beyond max_size). A bigger Content-Length gets 413 before any byte
    #: is read; a chunked body (no Content-Length) gets 411 while a limit is set.
    max_request_size: Size = 0
    #: Most upload bodies (PATCH, POST with a body) this daemon receives at once; more
    #: get 503 with Retry-After (tus clients retry). 0: no limit.
    max_concurrent_uploads: int = Field(default=0, ge=0)
    #: Longest request line and longest header field accepted (aiohttp answers 400 beyond).
    max_header_size: Size = Field(default=16384, ge=1024)
    #: When set, every tus request (not OPTIONS, /healthz, /readyz, /metrics)
    #: must carry ``Authorization: Bearer <token>``; 401 otherwise. For per-user auth use
    #: a pre-create hook instead (README "Operations").
    auth_token: SecretStr | None = None
    #: Serve Prometheus metrics at /metrics.
    metrics: bool = True
    #: Serve the browser demo (Uppy Dashboard + Tus) at GET /. Keep off in production.
    demo: bool = False

    @field_validator("base_path")
    @classmethod
    def _normalise_base_path(cls, value: str) -> str:
        if not value.startswith("/") or "//" in value or any(c in value for c in "?#{} "):
            raise ValueError("must be an absolute URL path such as /files/")
        return value.rstrip("/") + "/"

    @field_validator("checksum_algorithms")
    @classmethod
    def _known_algorithms(cls, value: list[str]) -> list[str]:
        value = [v.lower() for v in value]
        unknown = [v for v in value if v not in ALGORITHMS]
        if unknown:
            raise ValueError(f"unknown algorithm(s) {unknown}; choose from {list(ALGORITHMS)}")
        return value


MIB = 1 << 20


def _size_text(n: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", MIB), ("KiB", 1 << 10)):
        if n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)


def _size_range(low: int, high: int | None, why: str) -> AfterValidator:
    """A size check whose message says the limit in the units the config takes."""

    def check(value: int) -> int:
        if value < low or (high is not None and value > high):
            bound = f"between {_size_text(low)} and {_size_text(high)}" if high else \
                f"at least {_size_text(low)}"
            raise ValueError(f"must be {bound} ({why})")
        return value

    return AfterValidator(check)


class LocalStorage(Section):
    """``driver: local``: records in SQLite, bytes in files, under one directory."""

    driver: Literal["local"] = "local"
    #: Directory for the SQLite database and the upload files (local driver).
    data_dir: str = "./data"
    #: fsync data before each offset commit and run SQLite with synchronous=FULL
    #: (survives power loss; without it an acknowledged offset survives a kill -9).
    fsync: bool = False


class MemoryStorage(Section):
    """``driver: memory``: everything in this process's memory, lost when it exits (tests,
    trying things out, the reference for driver authors; not for production)."""

    driver: Literal["memory"]


def _at_least_a_second(value: float) -> float:
    if value < 1:
        raise ValueError("must be at least 1s")
    return value


class _ObjectStorage(Section):
    """Keys every object-store driver (s3, gcs, azure) has."""

    #: Object (blob) names start with this; give tusd-py its own bucket or prefix.
    prefix: str = ""
    #: A writer's lease on an upload lasts this long unless renewed (every third of it
    #: while a PATCH streams); a replica that died is taken over after at most this.
    lease_duration: Annotated[Duration, AfterValidator(_at_least_a_second)] = 10.0
    #: Parts (S3 parts, GCS part objects, Azure blocks) of one PATCH uploaded at once
    #: while its body keeps streaming in. Memory per PATCH is at most part_size x 2 + one
    #: body chunk (64KiB) whatever this is (the part filling and one uploading; parts
    #: waiting their turn wait in spill_dir): 16MiB at the defaults, plus the store
    #: client's buffers (about 1MiB per part in flight). Disk per PATCH: at most
    #: part_size x (part_concurrency - 1), only while the store is slower than the client.
    part_concurrency: Annotated[int, Field(ge=1, le=64)] = 8
    #: Where parts waiting to upload (and S3 parts grown past part_size) spill, as
    #: anonymous temporary files that nothing outlives (unset: $TMPDIR).
    spill_dir: str | None = None


class S3Storage(_ObjectStorage):
    """``driver: s3``: one bucket shared by any number of replicas."""

    driver: Literal["s3"]
    #: The bucket (it must exist). Credentials come from the AWS chain, never this file.
    bucket: Annotated[str, Field(min_length=1)]
    #: For S3-compatible servers (path-style addressing then).
    endpoint_url: str | None = None
    region: str | None = None
    #: Multipart part size: S3 wants 5MiB..5GiB; grows with Upload-Length past 10,000 parts
    #: (the bytes of a grown part beyond part_size spill to spill_dir).
    part_size: Annotated[Size, _size_range(5 * MIB, 5 << 30, "S3's part size limits")] = 8 * MIB


class GCSStorage(_ObjectStorage):
    """``driver: gcs``: one bucket shared by any number of replicas."""

    driver: Literal["gcs"]
    #: The bucket (it must exist). Credentials: GOOGLE_APPLICATION_CREDENTIALS or the
    #: metadata server; never this file.
    bucket: Annotated[str, Field(min_length=1)]
    #: e.g. http://127.0.0.1:4443 for fake-gcs-server (http:// means no credentials).
    endpoint_url: str | None = None
    #: Size of the part objects composed into the upload (at least 64KiB).
    part_size: Annotated[Size, _size_range(64 << 10, None, "smaller parts cost more requests")] = 8 * MIB


class AzureStorage(_ObjectStorage):
    """``driver: azure``: one container shared by any number of replicas."""

    driver: Literal["azure"]
    #: Container holding the uploads (it must exist unless create_container is on).
    container: Annotated[str, Field(min_length=1)]
    #: Account connection string (secret); unset: AZURE_STORAGE_CONNECTION_STRING, else
    #: account_url.
    connection_string: SecretStr | None = None
    #: https://<account>.blob.core.windows.net (with a SAS query, or Entra ID sign-in
    #: through azure-identity) when there is no connection string.
    account_url: str | None = None
    #: Block size (64KiB..4000MiB).
    part_size: Annotated[Size, _size_range(64 << 10, 4000 * MIB, "Azure's block size limit")] = 8 * MIB
    #: Create the container (private) at start-up if it does not exist; needs the
    #: permission to (off: a missing container is reported by /readyz and as 500s).
    create_container: bool = False

    @model_validator(mode="after")
    def _credentials(self) -> AzureStorage:
        if self.connection_string is None and not self.account_url:
            raise ValueError("connection_string or account_url is required "
                             f"(or set {AZURE_CONNECTION_STRING_ENV})")
        return self


#: The azure driver's fallback for ``storage.connection_string`` (the SDK's usual name).
AZURE_CONNECTION_STRING_ENV = "AZURE_STORAGE_CONNECTION_STRING"

StorageConfig = LocalStorage | MemoryStorage | S3Storage | GCSStorage | AzureStorage
#: Driver names, in the order the docs list them.
DRIVERS = ("local", "s3", "gcs", "azure", "memory")


def _default_driver(value: Any) -> Any:
    if isinstance(value, Mapping) and "driver" not in value:
        return {**value, "driver": "local"}
    return value


class ExpirationConfig(Section):
    #: Unfinished uploads expire this long after their last PATCH (0: never, and the
    #: expiration extension is not advertised).
    after: Duration = 86400.0
    #: Finished uploads are deleted this long after completion (0: kept for ever).
    completed_after: Duration = 0.0
    #: How often the sweeper deletes expired uploads.
    sweep_interval: Duration = 60.0


def mask_url(value: str | None) -> str | None:
    """Hide a password in the userinfo and every query value (tokens often live there)."""
    if not value:
        return value
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(value)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(":" + parts.password + "@", ":**********@", 1)
    query = urlencode([(k, "**********") for k, _ in parse_qsl(parts.query, keep_blank_values=True)],
                      safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class HttpHookConfig(Section):
    #: Endpoint receiving tusd v2 hook requests (POST, JSON); unset: no HTTP hooks.
    url: str | None = None
    #: Per attempt.
    timeout: Duration = 10.0
    #: Extra attempts after a network error or a 5xx answer (not after a 4xx).
    retries: Annotated[int, Field(ge=0, le=20)] = 3
    #: Wait before retry n: backoff * 2**(n-1).
    backoff: Duration = 1.0
    #: Client request headers copied onto the hook request (e.g. Authorization, Cookie).
    forward_headers: StrList = []
    #: Fixed headers sent with every hook request (e.g. a shared secret); masked in dumps.
    headers: dict[str, SecretStr] = {}

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value or None

    @field_serializer("url", when_used="json")
    def _masked_url(self, value: str | None) -> str | None:
        return mask_url(value)


class HooksConfig(Section):
    http: HttpHookConfig = HttpHookConfig()
    #: In-process hooks: ``package.module:function`` (sync or async), called in order.
    python: StrList = []
    #: Events delivered (tusd's defaults; pre-finish, pre-terminate and pre-access are opt-in).
    enabled: Annotated[list[HookName], BeforeValidator(_split_list)] = [
        "pre-create", "post-create", "post-receive", "post-finish", "post-terminate"]
    #: post-receive fires at most once per this interval per upload (the last offset
    #: is always delivered).
    post_receive_interval: Duration = 1.0
    #: post-* events waiting for delivery; beyond this they are dropped (and counted).
    queue_size: Annotated[int, Field(ge=1)] = 1000
    #: post-* deliveries in flight at once.
    concurrency: Annotated[int, Field(ge=1, le=256)] = 8
    #: post-finish is tracked in storage: one not delivered this long after its upload
    #: finished (the daemon died, the receiver failed) is delivered again, by whichever
    #: replica gets to it first; checked at start and every this often. 0: post-finish is
    #: at most once, like the other post-* events.
    redeliver_after: Duration = 60.0


class Config(Section):
    server: ServerConfig = ServerConfig()
    storage: Annotated[StorageConfig, Field(discriminator="driver"),
                       BeforeValidator(_default_driver)] = LocalStorage()
    expiration: ExpirationConfig = ExpirationConfig()
    hooks: HooksConfig = HooksConfig()


class ConfigError(Exception):
    """A configuration problem, with a message fit for an operator (no traceback)."""


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    for key in path[:-1]:
        node = tree.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{'.'.join(path)}: {key} is not a section")
        tree = node
    tree[path[-1]] = value


def _env_value(raw: str) -> Any:
    """Env values stay strings (pydantic coerces them), except JSON lists/objects."""
    stripped = raw.strip()
    if stripped[:1] in ("[", "{"):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            pass
    return raw


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def find_config_file(path: str | None, env: Mapping[str, str]) -> str | None:
    if path:
        return path
    if env.get(CONFIG_ENV):
        return env[CONFIG_ENV]
    for candidate in DEFAULT_CONFIG_PATHS:
        if os.path.isfile(candidate):
            return candidate
    return None


def load_config(path: str | None = None, env: Mapping[str, str] | None = None,
                overrides: Mapping[str, Any] | None = None) -> Config:
    """Build the effective config. ``overrides`` maps dotted keys (``server.port``) to
    values, as CLI flags give them. Raises ``ConfigError`` naming the bad key."""
    env = os.environ if env is None else env
    sources: dict[str, str] = {}
    tree: dict[str, Any] = {}

    config_file = find_config_file(path, env)
    if config_file is not None:
        try:
            with open(config_file, encoding="utf-8") as fh:
                loaded = yaml.safe_load(fh) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {config_file} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {config_file} must hold a mapping at the top")
        tree = loaded

    env_tree: dict[str, Any] = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        key_path = [part.lower() for part in name[len(ENV_PREFIX):].split("__")]
        if not all(key_path):
            raise ConfigError(f"{name}: malformed variable name (use TUSD_SECTION__KEY)")
        _set_path(env_tree, key_path, _env_value(raw))
        sources[".".join(key_path)] = f"env {name}"
    tree = _merge(tree, env_tree)

    flag_tree: dict[str, Any] = {}
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        _set_path(flag_tree, dotted.split("."), value)
        sources[dotted] = "command line"
    tree = _merge(tree, flag_tree)
    _azure_connection_from_env(tree, env, sources)

    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        default_origin = f"file {config_file}" if config_file else "defaults"
        lines = [_describe(err, sources, default_origin) for err in exc.errors()]
        raise ConfigError("invalid configuration:\n" + "\n".join(lines)) from None


def _azure_connection_from_env(tree: dict[str, Any], env: Mapping[str, str],
                               sources: dict[str, str]) -> None:
    """The azure driver takes its connection string from the SDK's usual variable when
    neither ``connection_string`` nor ``account_url`` is configured."""
    storage = tree.get("storage")
    if (isinstance(storage, dict) and storage.get("driver") == "azure"
            and not storage.get("connection_string") and not storage.get("account_url")
            and env.get(AZURE_CONNECTION_STRING_ENV)):
        storage["connection_string"] = env[AZURE_CONNECTION_STRING_ENV]
        sources["storage.connection_string"] = f"env {AZURE_CONNECTION_STRING_ENV}"


def _describe(err: Any, sources: Mapping[str, str], default_origin: str) -> str:
    """One line for one validation error: the dotted key, what is wrong, where it came from."""
    loc = [str(p) for p in err["loc"]]
    driver = None
    if loc[:1] == ["storage"] and len(loc) > 1 and loc[1] in DRIVERS:
        driver = loc.pop(1)  # the union's tag: not part of the key the user wrote
    if err["type"] == "union_tag_invalid":
        loc = [*loc, "driver"]
        message = f"unknown driver; choose one of {', '.join(DRIVERS)}"
    elif err["type"] == "extra_forbidden":
        message = f"not a setting of the {driver} driver" if driver else "unknown key"
    elif err["type"] == "missing" and driver:
        message = f"required for the {driver} driver"
    else:
        message = err["msg"].removeprefix("Value error, ")
    key = ".".join(loc)
    if err["type"] == "missing" and "storage.driver" in sources:
        return f"  {key}: {message} (storage.driver from {sources['storage.driver']})"
    origin = sources.get(key) or next(
        (src for dotted, src in sources.items() if dotted.startswith(key + ".")), default_origin)
    return f"  {key}: {message} (from {origin})"


def dump_config(config: Config) -> str:
    """The effective config as YAML, secrets masked."""
    data = config.model_dump(mode="json")  # SecretStr dumps as '**********'
    return yaml.safe_dump(data, sort_keys=False)
