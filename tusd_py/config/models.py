"""The configuration models: every section and key, its type, default and checks."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from ..protocol.checksum import ALGORITHMS
from ..protocol.constants import ALLOW_METHODS, HookName
from .provenance import Provenance

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


_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def _bool_or(*words: str) -> Callable[[Any], Any]:
    """A before-validator for a switch that takes true, false or one of ``words``."""

    def parse(value: Any) -> Any:
        if isinstance(value, bool) or value in words:
            return value
        text = str(value).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise ValueError("must be true, false or " + " or ".join(words))

    return parse


Size = Annotated[int, BeforeValidator(_parse_size), Field(ge=0)]
Duration = Annotated[float, BeforeValidator(_parse_duration), Field(ge=0)]
StrList = Annotated[list[str], BeforeValidator(_split_list)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


_ORIGIN = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#\s]+")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP header or method name


def _check_origins(value: list[str]) -> list[str]:
    for origin in value:
        if origin.startswith("^"):
            try:
                re.compile(origin)
            except re.error as exc:
                raise ValueError(f"{origin!r} is not a regular expression: {exc}") from None
        elif origin not in ("*", "null") and not _ORIGIN.fullmatch(origin):
            raise ValueError(f"{origin!r} is not an origin (scheme://host[:port], no path), "
                             "a pattern starting with ^, or *")
    return value


def _check_tokens(value: list[str]) -> list[str]:
    bad = [v for v in value if not _TOKEN.fullmatch(v)]
    if bad:
        raise ValueError(f"not HTTP names: {bad}")
    return value


Tokens = Annotated[list[str], BeforeValidator(_split_list), AfterValidator(_check_tokens)]


class CorsConfig(Section):
    #: Answer CORS preflights and add CORS headers to responses.
    enabled: bool = True
    #: Origins allowed to call the API from a browser: exact origins
    #: (``https://app.example.com``), patterns starting with ``^`` that must match the
    #: whole Origin (``^https://[a-z0-9-]+\.example\.com$``, as tusd's -cors-allow-origin),
    #: or ``*`` for any (no credentials).
    allowed_origins: Annotated[list[str], BeforeValidator(_split_list),
                               AfterValidator(_check_origins)] = ["*"]
    #: Let browsers send cookies / HTTP auth (needs explicit allowed_origins, not ``*``).
    allow_credentials: bool = False
    #: Methods a page may use (Access-Control-Allow-Methods).
    allowed_methods: Tokens = list(ALLOW_METHODS)
    #: Request headers a page may send besides the tus ones (Access-Control-Allow-Headers),
    #: e.g. a custom header a pre-create hook reads.
    allowed_headers: Tokens = []
    #: Response headers a page may read besides the tus ones
    #: (Access-Control-Expose-Headers), e.g. one a hook adds to its response.
    exposed_headers: Tokens = []
    #: How long browsers may cache a preflight answer (Access-Control-Max-Age).
    max_age: Duration = 86400

    @field_validator("allow_credentials")
    @classmethod
    def _no_credentials_for_any_origin(cls, value: bool, info: ValidationInfo) -> bool:
        if value and "*" in info.data.get("allowed_origins", []):
            raise ValueError("needs explicit allowed_origins: with '*' any web site could "
                             "make requests with the user's credentials")
        return value


class TlsConfig(Section):
    """``server.tls``: HTTPS from a certificate and key file (both or neither)."""

    #: PEM certificate chain, the server's certificate first. Read again on SIGHUP:
    #: connections made after it get the new one, open ones keep theirs.
    cert_file: str | None = None
    #: PEM private key of cert_file (not encrypted).
    key_file: str | None = None

    @model_validator(mode="after")
    def _both_or_neither(self) -> TlsConfig:
        if bool(self.cert_file) != bool(self.key_file):
            missing = "key_file" if self.cert_file else "cert_file"
            raise ValueError(f"cert_file and key_file go together: {missing} is not set")
        return self


def _file_mode(value: Any) -> Any:
    """``"0660"`` / ``"660"`` / ``0o660`` -> 0o660."""
    if isinstance(value, str):
        try:
            return int(value, 8)
        except ValueError:
            raise ValueError(f"not an octal file mode: {value!r} (try 0660)") from None
    return value


def _workers(value: Any) -> Any:
    """``auto`` -> the CPUs this process may run on."""
    if isinstance(value, str):
        if value.strip().lower() == "auto":
            return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
                os.cpu_count() or 1)
        if not value.strip().isdigit():
            raise ValueError(f"a number of processes or auto, not {value!r}")
    return value


class ServerConfig(Section):
    #: Address to listen on (``--host``).
    host: str = "0.0.0.0"
    #: Port to listen on (``--port``).
    port: int = Field(default=8080, ge=0, le=65535)
    #: Listen on this unix socket instead of host:port, for a proxy on the same host
    #: (nginx: ``proxy_pass http://unix:/run/tusd-py/tusd.sock:``). A stale socket file
    #: is replaced; one a live process listens on is refused.
    unix_socket: str | None = None
    #: Permissions of the unix socket file (the proxy's user must be able to write it).
    unix_socket_mode: Annotated[int, BeforeValidator(_file_mode), Field(ge=0, le=0o777)] = 0o660
    tls: TlsConfig = TlsConfig()
    #: URL path the tus endpoint is mounted at.
    base_path: str = "/files/"
    #: Upload protocols spoken at base_path: ``tus`` (tus 1.0.0) and ``ietf-draft``
    #: (Resumable Uploads for HTTP, interop versions 3 to 10: docs/ietf-draft.md).
    #: Requests go to one by their headers (Tus-Resumable, Upload-Draft-Interop-Version);
    #: OPTIONS advertises only those listed.
    protocols: Annotated[list[Literal["tus", "ietf-draft"]], BeforeValidator(_split_list),
                         Field(min_length=1)] = ["tus", "ietf-draft"]
    #: The draft's 104 (Upload Resumption Supported) before a creation's final response,
    #: which tells Apple's clients they may resume: true, false, or auto (only when
    #: behind_proxy is off: nginx, up to at least 1.30, takes a 104 from upstream for the
    #: final response and breaks the connection; docs/ietf-draft.md).
    ietf_interim: Annotated[bool | Literal["auto"], BeforeValidator(_bool_or("auto"))] = "auto"
    #: Trust Forwarded / X-Forwarded-* headers when building Location URLs.
    behind_proxy: bool = False
    #: The public URL the server is reached at, ``scheme://host[:port][/prefix]``
    #: (``https://uploads.example.com``): Location URLs are built on it, whatever the
    #: request's Host or forwarded headers say. For a fixed public address where no proxy
    #: headers can be trusted. Unset: from the request (and ``behind_proxy``).
    public_url: str | None = None
    #: Send Location as a path (``/files/<id>``, the forwarded prefix in front if
    #: ``behind_proxy``) instead of an absolute URL, for setups where the public host is
    #: not known (as @tus/server's relativeLocation). tus clients resolve it against the
    #: creation URL.
    relative_location: bool = False
    #: Largest upload accepted (Tus-Max-Size); 0 means no limit.
    max_size: Size = 0
    #: Serve finished uploads with GET (false: 405, as tusd's -disable-download).
    download: bool = True
    #: DELETE of uploads (the termination extension): true; false (405, not advertised,
    #: as tusd's -disable-termination); unfinished-only: a finished upload cannot be
    #: deleted (400, as @tus/server's disableTerminationForFinishedUploads).
    termination: Annotated[bool | Literal["unfinished-only"],
                           BeforeValidator(_bool_or("unfinished-only"))] = True
    #: The concatenation extensions (false: Upload-Concat gets 400 and they are not
    #: advertised, as tusd's -disable-concatenation).
    concatenation: bool = True
    #: Checksum algorithms accepted in Upload-Checksum.
    checksum_algorithms: StrList = list(ALGORITHMS)
    #: A PATCH whose body sends nothing for this long is ended (bytes so far are kept).
    idle_timeout: Annotated[Duration, Field(gt=0)] = 30.0
    #: An upload body must bring at least this many bytes in every
    #: ``min_body_rate_window``, or it is ended as on idle_timeout (the bytes so far are
    #: kept; 408 with Upload-Offset, the client resumes). Frees the connection and its
    #: max_concurrent_uploads slot from a client trickling bytes. 0: no minimum.
    min_body_rate: Size = 1024
    #: The window over which ``min_body_rate`` is measured.
    min_body_rate_window: Annotated[Duration, Field(gt=0)] = 10.0
    #: A connection whose first request line and headers have not all arrived this long
    #: after it opened is closed with 408 (a later request on a kept-alive connection has
    #: keepalive_timeout from the previous response).
    header_timeout: Annotated[Duration, Field(gt=0)] = 10.0
    #: An idle keep-alive connection is closed after this long (keep it above the idle
    #: timeout of a reverse proxy's upstream connections: nginx and load balancers use 60s).
    keepalive_timeout: Annotated[Duration, Field(gt=0)] = 75.0
    #: Most connections open at once; a new one beyond it is answered 503 (Retry-After,
    #: Connection: close) and closed. 0: half of what the open-file limit (raised to its
    #: hard limit at start) leaves after 64 descriptors, so the cap comes first.
    max_connections: int = Field(default=0, ge=0)
    #: Most connections open at once from one client address (0: no limit). Behind a
    #: reverse proxy every connection comes from the proxy: leave it 0 there.
    max_connections_per_address: int = Field(default=0, ge=0)
    #: How long a request waits for an upload another request is writing, before 423.
    lock_wait: Duration = 3.0
    #: A writer idle for this long gives its upload up to a newer request at once
    #: (a client that reconnected after a network drop resumes without waiting).
    lock_takeover_idle: Duration = 1.0
    #: At start-up, wait up to require_storage_timeout for the storage to answer its
    #: readiness check (what /readyz asks), and exit 2 if it does not. Off: start
    #: anyway; /readyz answers 503 until the storage answers.
    require_storage: bool = False
    #: How long require_storage waits (the store's start included).
    require_storage_timeout: Annotated[Duration, Field(gt=0)] = 30.0
    #: On SIGTERM, in-flight requests get this long to finish; then they are stopped,
    #: their bytes committed, and the daemon exits.
    shutdown_grace: Duration = 30.0
    cors: CorsConfig = CorsConfig()
    #: Least severe log level written.
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: ``text`` or ``json`` (one JSON object per line).
    log_format: Literal["text", "json"] = "text"
    #: One log line per request (logger ``tusd_py.access``).
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
    #: Most partial uploads one final upload may name (concatenation); more get 400.
    #: Each one costs a lookup (and a pre-access hook) while the final is created.
    max_concat_partials: int = Field(default=100, ge=1, le=1024)
    #: When set, every tus request (not OPTIONS, /healthz, /readyz, /metrics)
    #: must carry ``Authorization: Bearer <token>``; 401 otherwise. For per-user auth use
    #: a pre-create hook instead (docs: Hooks).
    auth_token: SecretStr | None = None
    #: /readyz answers 503 while the storage's local disk (the local driver's data_dir)
    #: has less free space than this (0: not checked). A full disk answers 507.
    min_free_disk: Size = 64 * 1024 * 1024
    #: Serve Prometheus metrics at /metrics.
    metrics: bool = True
    #: Serve the browser demo (Uppy Dashboard + Tus) at GET /. Keep off in production.
    demo: bool = False
    #: Worker processes serving the same listening socket and the same storage (``auto``:
    #: one per CPU). With more than one, a supervisor process starts them, restarts one
    #: that dies, sums their /metrics and drains them all on SIGTERM.
    workers: Annotated[int, BeforeValidator(_workers), Field(ge=1, le=256)] = 1

    @field_serializer("unix_socket_mode")
    def _octal(self, value: int) -> str:
        return f"{value:04o}"

    @field_validator("base_path")
    @classmethod
    def _normalise_base_path(cls, value: str) -> str:
        if not value.startswith("/") or "//" in value or any(c in value for c in "?#{} "):
            raise ValueError("must be an absolute URL path such as /files/")
        return value.rstrip("/") + "/"

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        from ..http.urls import valid_host, valid_prefix

        scheme, sep, rest = value.partition("://")
        host, slash, path = rest.partition("/")
        path = (slash + path).rstrip("/")
        if (not sep or scheme not in ("http", "https") or not valid_host(host)
                or not valid_prefix(path)):
            raise ValueError("must be http(s)://host[:port][/prefix] (no query, no "
                             "credentials, a clean path)")
        return f"{scheme}://{host}{path}"

    @model_validator(mode="after")
    def _one_location_form(self) -> ServerConfig:
        if self.public_url and self.relative_location:
            raise ValueError("public_url and relative_location exclude each other: choose "
                             "absolute Location URLs on public_url, or relative ones")
        return self

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


def _choice(allowed: tuple[str, ...], refused: Mapping[str, str], *,
            case: Callable[[str], str] = str.upper) -> BeforeValidator:
    """A before-validator for a name from ``allowed`` (matched in any case, given back
    as listed); a name in ``refused`` fails with the reason it maps to."""
    canonical = {name.lower(): name for name in allowed}
    reasons = {name.lower(): reason for name, reason in refused.items()}

    def check(value: Any) -> Any:
        if value is None or value == "":
            return None
        text = str(value).strip()
        if text.lower() in canonical:
            return canonical[text.lower()]
        reason = reasons.get(text.lower())
        if reason is not None:
            raise ValueError(f"{case(text)} cannot be used: {reason}")
        raise ValueError(f"must be one of {', '.join(allowed)}")

    return BeforeValidator(check)


#: S3 storage classes objects can be written in and read back at once.
S3_STORAGE_CLASSES = ("STANDARD", "INTELLIGENT_TIERING", "STANDARD_IA", "ONEZONE_IA",
                      "GLACIER_IR", "REDUCED_REDUNDANCY")
_S3_UNREADABLE = ("objects in it cannot be read without a restore, and the driver reads "
                  "its records and incomplete parts back")
S3_SSE = ("AES256", "aws:kms", "aws:kms:dsse")
GCS_STORAGE_CLASSES = ("STANDARD", "NEARLINE", "COLDLINE", "ARCHIVE")
_GCS_KMS_KEY = re.compile(r"projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+")
AZURE_ACCESS_TIERS = ("Hot", "Cool", "Cold")


def _kms_key_name(value: str | None) -> str | None:
    if value is not None and not _GCS_KMS_KEY.fullmatch(value):
        raise ValueError("must be a Cloud KMS key name: projects/PROJECT/locations/LOCATION/"
                         "keyRings/RING/cryptoKeys/KEY (no cryptoKeyVersions)")
    return value or None


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
    #: waiting their turn wait in spill_dir): 16MiB at the defaults, plus up to 8MiB of
    #: store-client buffers and allocator slack (measured 2-6MiB). Disk per PATCH: at most
    #: part_size x (part_concurrency - 1), only while the store is slower than the client.
    part_concurrency: Annotated[int, Field(ge=1, le=64)] = 10
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
    #: The bucket's region (unset: from the AWS configuration).
    region: str | None = None
    #: Multipart part size: S3 wants 5MiB..5GiB; grows with Upload-Length past 10,000 parts
    #: (the bytes of a grown part beyond part_size spill to spill_dir).
    part_size: Annotated[Size, _size_range(5 * MIB, 5 << 30, "S3's part size limits")] = 8 * MIB
    #: Server-side encryption of every object the driver writes
    #: (x-amz-server-side-encryption): AES256 (SSE-S3), aws:kms (SSE-KMS) or aws:kms:dsse
    #: (DSSE-KMS); unset: none asked for (the bucket's default encryption applies).
    server_side_encryption: Annotated[str | None, _choice(S3_SSE, {}, case=str.lower)] = None
    #: The KMS key for aws:kms / aws:kms:dsse (key id, key ARN or alias ARN); unset: the
    #: AWS managed key aws/s3 (or the bucket's default key).
    sse_kms_key_id: Annotated[str, Field(min_length=1)] | None = None
    #: S3 Bucket Keys for aws:kms (fewer KMS requests): true or false on every write;
    #: unset: the bucket's setting.
    bucket_key_enabled: bool | None = None
    #: Storage class of every object the driver writes (x-amz-storage-class): STANDARD,
    #: INTELLIGENT_TIERING, STANDARD_IA, ONEZONE_IA, GLACIER_IR or REDUCED_REDUNDANCY;
    #: unset: STANDARD. GLACIER and DEEP_ARCHIVE are refused (not readable at once).
    storage_class: Annotated[str | None, _choice(S3_STORAGE_CLASSES, {
        "GLACIER": _S3_UNREADABLE, "DEEP_ARCHIVE": _S3_UNREADABLE})] = None
    #: Every part but the last of one size, as Cloudflare R2 requires: an upload's part
    #: size is fixed when it is created (part_size, grown for a known Upload-Length past
    #: 10,000 parts), so a deferred-length upload holds at most part_size x 10,000
    #: (78.1GiB at 8MiB; more: raise part_size). PATCHes that are not multiples of it
    #: send up to twice their bytes. Applies to uploads created while it is on.
    equal_parts: bool = False

    @model_validator(mode="after")
    def _encryption(self) -> S3Storage:
        kms = self.server_side_encryption in ("aws:kms", "aws:kms:dsse")
        if self.sse_kms_key_id is not None and not kms:
            raise ValueError("sse_kms_key_id needs server_side_encryption: aws:kms (or "
                             "aws:kms:dsse)")
        if self.bucket_key_enabled is not None and self.server_side_encryption != "aws:kms":
            raise ValueError("bucket_key_enabled needs server_side_encryption: aws:kms "
                             "(S3 Bucket Keys do not apply to AES256 or aws:kms:dsse)")
        return self


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
    #: Cloud KMS key that encrypts every object the driver writes (CMEK, kmsKeyName):
    #: projects/P/locations/L/keyRings/R/cryptoKeys/K; unset: the bucket's default key,
    #: else Google-managed encryption.
    kms_key_name: Annotated[str | None, AfterValidator(_kms_key_name)] = None
    #: Storage class of the finished upload objects and of records and index markers:
    #: STANDARD, NEARLINE, COLDLINE or ARCHIVE; unset: the bucket's default class. Part
    #: objects (deleted once composed) stay in the bucket's default class.
    storage_class: Annotated[str | None, _choice(GCS_STORAGE_CLASSES, {})] = None


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
    #: Access tier of every blob the driver writes (x-ms-access-tier): Hot, Cool or Cold;
    #: unset: the account's default tier. Archive is refused (an archived blob cannot be
    #: read or appended to until rehydrated).
    access_tier: Annotated[str | None, _choice(AZURE_ACCESS_TIERS, {
        "Archive": "an archived blob cannot be read (records, downloads, concatenation) "
                   "until it is rehydrated; use a lifecycle rule to archive finished uploads"},
        case=str.capitalize)] = None

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
    #: Per attempt; also bounds each Python hook call.
    timeout: Duration = 10.0
    #: Extra attempts after a network error or a 5xx answer (not after a 4xx).
    retries: Annotated[int, Field(ge=0, le=20)] = 3
    #: Wait before retry n: backoff * 2**(n-1).
    backoff: Duration = 1.0
    #: All attempts of one hook call and the waits between them end within this; then
    #: the hook has failed (a blocking hook's request gets 500). Keep it well under a
    #: client's patience: a hanging receiver holds every POST this long.
    total_timeout: Annotated[Duration, Field(gt=0)] = 15.0
    #: Client request headers copied onto the hook request (e.g. Authorization, Cookie).
    forward_headers: StrList = []
    #: Fixed headers sent with every hook request (e.g. a shared secret); masked in dumps.
    headers: dict[str, SecretStr] = {}
    #: PEM file of the CA certificates an https:// receiver's certificate is verified
    #: against (an internal CA); unset: the system's trust store.
    ca_file: str | None = None
    #: PEM client certificate (and ``key_file``, its private key) presented to an
    #: https:// receiver that asks for one (mutual TLS).
    cert_file: str | None = None
    #: Private key of ``cert_file`` (PEM, unencrypted); may be the same file.
    key_file: str | None = None
    #: Do not verify the receiver's certificate (test setups only: anyone on the path
    #: can then read and answer hook requests). Off by default; warned about at start.
    insecure_skip_verify: bool = False
    #: Largest hook response body read; a bigger one is an invalid answer (the hook
    #: failed). tusd's -hooks-http-size-limit (its default is 5 KiB).
    response_size_limit: Annotated[Size, Field(ge=1024)] = 64 * 1024

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value or None

    @field_serializer("url", when_used="json")
    def _masked_url(self, value: str | None) -> str | None:
        return mask_url(value)

    @model_validator(mode="after")
    def _client_cert_pair(self) -> HttpHookConfig:
        if self.key_file and not self.cert_file:
            raise ValueError("key_file needs cert_file (the client certificate it belongs to)")
        return self


class HooksConfig(Section):
    http: HttpHookConfig = HttpHookConfig()
    #: In-process hooks: ``package.module:function`` (sync or async), called in order. The
    #: module comes from the Python path, else from the config file's directory (the
    #: working directory without a config file): no PYTHONPATH needed for a hook module
    #: next to the config file.
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

    _provenance: Provenance = PrivateAttr(default_factory=Provenance)

    @property
    def provenance(self) -> Provenance:
        """Where this configuration came from (defaults when built in code)."""
        return self._provenance


class ConfigError(Exception):
    """A configuration problem, with a message fit for an operator (no traceback)."""


class StartupError(ConfigError):
    """The daemon cannot start (a port in use, storage that does not open): one line
    ``<what>: <why>`` for the operator; the command exits 2, as for a bad config."""
