"""Delivery of hook requests to an HTTP endpoint, as tusd's ``-hooks-http`` does.

One POST per hook with the JSON ``HookRequest`` body; a 2xx answer's body (JSON, may be
empty) is the ``HookResponse``. Network errors, timeouts and 5xx answers are retried
``retries`` times with exponential backoff, all within ``total_timeout``; a 4xx answer is
final. Each delivery carries
an ``Idempotency-Key`` header derived from the event (``payload.idempotency_key``): the
same on every retry and on every replica, so a receiver can drop a duplicate caused by a
retry after a lost answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Mapping
from typing import Any

import aiohttp

from ..config import ConfigError, HttpHookConfig, mask_url

log = logging.getLogger(__name__)

#: After this many deliveries in a row failed (network error, timeout, 5xx after every
#: retry), the endpoint is not called for ``BREAKER_COOLDOWN`` seconds: hooks fail at
#: once (and are counted) instead of each paying for connects and timeouts.
BREAKER_THRESHOLD = 5
BREAKER_COOLDOWN = 5.0
#: What a client is told about an answer that is not a hook response.
INVALID_RESPONSE = "invalid hook response"


class HookError(Exception):
    """A hook could not be delivered or answered badly (after every retry).

    ``str(error)`` is for the log (it may name the endpoint); ``public`` is the short
    reason a client is told when the failure refuses its request (no URL, no details).
    """

    public = "hook failed"

    def __init__(self, message: str, public: str | None = None) -> None:
        super().__init__(message)
        if public is not None:
            self.public = public


class _Retryable(HookError):
    pass


class HookUnavailable(HookError):
    """Every attempt failed with a network error, a timeout or a 5xx."""

    public = "hook endpoint unavailable"


class CircuitOpen(HookUnavailable):
    """The endpoint is skipped for a while after failing ``BREAKER_THRESHOLD`` times in a row."""


def client_tls(config: HttpHookConfig) -> ssl.SSLContext | bool:
    """The TLS settings of the hook client: the system's trust store (``True``), or a
    context with ``ca_file``, the client certificate, or no verification at all
    (``insecure_skip_verify``, warned about). A file that cannot be read is a
    ``ConfigError`` at start-up, not a failure of every hook later."""
    if not (config.ca_file or config.cert_file or config.insecure_skip_verify):
        return True
    try:
        context = ssl.create_default_context(cafile=config.ca_file)
        if config.cert_file:
            context.load_cert_chain(config.cert_file, config.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"hooks.http TLS files: {exc}") from None
    if config.insecure_skip_verify:
        log.warning("hooks.http.insecure_skip_verify: the hook receiver's certificate is "
                    "not verified; anyone on the path can read and answer hook requests "
                    "(for test setups only)")
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class HttpHook:
    name = "http"

    def __init__(self, config: HttpHookConfig) -> None:
        assert config.url is not None
        self.url = config.url
        self.timeout = config.timeout
        self.retries = config.retries
        self.backoff = config.backoff
        self.total_timeout = config.total_timeout
        self.forward_headers = tuple(config.forward_headers)
        self.static_headers = {k: v.get_secret_value() for k, v in config.headers.items()}
        self.size_limit = config.response_size_limit
        self.ssl = client_tls(config)
        self.session: aiohttp.ClientSession | None = None
        self.failures = 0  # deliveries failed in a row
        self.open_until = 0.0  # loop time until which the endpoint is skipped

    async def start(self) -> None:
        if self.session is None:
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64, ttl_dns_cache=60, ssl=self.ssl),
                timeout=aiohttp.ClientTimeout(total=self.timeout or None),
                raise_for_status=False)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    def describe(self) -> str:
        return f"HTTP hook {mask_url(self.url)}"

    async def invoke(self, payload: Mapping[str, Any], *, forward: Mapping[str, str],
                     key: str) -> Any:
        """POST ``payload``; returns the decoded JSON answer (None when empty)."""
        if self.session is None:
            raise HookError("HTTP hook client is not running")
        loop = asyncio.get_running_loop()
        if self.open_until > loop.time():
            raise CircuitOpen(f"endpoint skipped for {BREAKER_COOLDOWN:g}s after "
                              f"{self.failures} failed deliveries in a row")
        try:
            try:
                async with asyncio.timeout(self.total_timeout):
                    result = await self._deliver(payload, forward, key)
            except TimeoutError:
                raise HookUnavailable(
                    f"no answer within hooks.http.total_timeout ({self.total_timeout:g}s, "
                    "retries included)") from None
        except HookUnavailable:
            self.failures += 1
            if self.failures >= BREAKER_THRESHOLD:
                self.open_until = loop.time() + BREAKER_COOLDOWN
            raise
        self.failures = 0
        return result

    async def _deliver(self, payload: Mapping[str, Any], forward: Mapping[str, str],
                       key: str) -> Any:
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "Idempotency-Key": key}
        headers.update(self.static_headers)
        headers.update(forward)
        attempt = 0
        while True:
            try:
                return await self._post(body, headers)
            except _Retryable as exc:
                if attempt >= self.retries:
                    raise HookUnavailable(f"{exc} (after {attempt + 1} attempt(s))") from None
                delay = self.backoff * (2 ** attempt)
                attempt += 1
                log.debug("hook %s: %s; retry %d in %.2fs", payload.get("Type"), exc, attempt, delay)
                if delay:
                    await asyncio.sleep(delay)

    async def _post(self, body: bytes, headers: Mapping[str, str]) -> Any:
        assert self.session is not None
        try:
            async with self.session.post(self.url, data=body, headers=headers) as response:
                content = await response.content.read(self.size_limit + 1)
                status = response.status
        except TimeoutError:
            raise _Retryable(f"no answer within {self.timeout:g}s") from None
        except aiohttp.ClientConnectorCertificateError as exc:  # retrying cannot help
            raise HookUnavailable(f"TLS: {exc.certificate_error}") from None
        except aiohttp.ClientError as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}") from None
        if status >= 500:
            raise _Retryable(f"endpoint answered {status}")
        if not 200 <= status < 300:
            raise HookError(f"endpoint answered {status}", f"hook endpoint answered {status}")
        if len(content) > self.size_limit:
            raise HookError(f"hook response larger than hooks.http.response_size_limit "
                            f"({self.size_limit} bytes)", INVALID_RESPONSE)
        if not content.strip():
            return None
        try:
            return json.loads(content)
        except (ValueError, UnicodeDecodeError):
            raise HookError("hook response is not JSON", INVALID_RESPONSE) from None
