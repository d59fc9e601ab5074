"""Saying which configuration is in effect: the dump (secrets masked), where each value
came from, where the storage is; for ``check-config`` and the daemon's start-up lines."""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel

from .models import AzureStorage, Config, GCSStorage, LocalStorage, S3Storage, StorageConfig


def dump_config(config: Config, width: int = 80) -> str:
    """The effective config as YAML, secrets masked."""
    data = config.model_dump(mode="json")  # SecretStr dumps as '**********'
    return yaml.safe_dump(data, sort_keys=False, width=width)


def config_file_text(config: Config) -> str:
    """``file /abs/tusd.yaml``, or ``built-in defaults (no config file)``."""
    file = config.provenance.file
    return f"file {file}" if file else "built-in defaults (no config file)"


def origin_summary(config: Config) -> str:
    """Where the settings came from in one line: the file, then the variables and the
    command-line keys that override it."""
    sources = config.provenance.sources
    env = sorted({src[4:] for src in sources.values() if src.startswith("env ")})
    flags = sorted(key for key, src in sources.items() if src == "command line")
    parts = [config_file_text(config)]
    if env:
        parts.append(f"env {', '.join(env)}")
    if flags:
        parts.append(f"command line {', '.join(flags)}")
    return "; ".join(parts)


def storage_location(storage: StorageConfig) -> str:
    """Where the driver keeps uploads, in a form an operator can look up (no secrets)."""
    if isinstance(storage, LocalStorage):
        return os.path.abspath(storage.data_dir)
    if isinstance(storage, S3Storage | GCSStorage):
        scheme = "s3" if isinstance(storage, S3Storage) else "gs"
        where = f"{scheme}://{storage.bucket}/{storage.prefix}"
        return f"{where} at {storage.endpoint_url}" if storage.endpoint_url else where
    if isinstance(storage, AzureStorage):
        where = f"container {storage.container}"
        if storage.prefix:
            where += f", prefix {storage.prefix}"
        account = _azure_account(storage)
        return f"{where} at {account}" if account else where
    return "this process's memory (lost when it exits)"


def _azure_account(storage: AzureStorage) -> str | None:
    if storage.account_url:
        parts = urlsplit(storage.account_url)
        return f"{parts.scheme}://{parts.netloc}" if parts.netloc else None
    if storage.connection_string is None:
        return None
    fields = dict(item.split("=", 1) for item in
                  storage.connection_string.get_secret_value().split(";") if "=" in item)
    if fields.get("BlobEndpoint"):
        return fields["BlobEndpoint"].rstrip("/")
    return f"account {fields['AccountName']}" if fields.get("AccountName") else None


def changed_keys(model: BaseModel, prefix: str = "") -> list[str]:
    """The dotted keys whose value is not the model's default (required keys included)."""
    keys: list[str] = []
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            keys += changed_keys(value, f"{prefix}{name}.")
        elif info.is_required() or value != info.get_default(call_default_factory=True):
            keys.append(prefix + name)
    return keys


def env_notes(config: Config) -> list[str]:
    """One line per ignored ``TUSD_*`` variable spelt like a setting (a likely typo)."""
    return [f"{name} is not a setting and is ignored (did you mean {meant}?)"
            for name, meant in config.provenance.misspelt_env.items()]


_KEY_LINE = re.compile(r"^( *)([^ #:'\"-][^:]*):(?: |$)")


def describe_config(config: Config) -> str:
    """``check-config``'s output: where the config came from, where the storage is, then
    the effective config as YAML (secrets masked) with ``# <source>`` after each value
    that is not the default (``file <path>``, ``env <NAME>``, ``command line``)."""
    provenance = config.provenance
    header = [f"# config: {config_file_text(config)}",
              f"# storage: {config.storage.driver} driver, {storage_location(config.storage)}"]
    header += [f"# {note}" for note in env_notes(config)]
    if provenance.ignored_env:
        header.append(f"# not settings, ignored: {', '.join(provenance.ignored_env)}")
    header.append("# values that differ from the defaults end with where they came from")
    changed = set(changed_keys(config))
    lines: list[str] = []
    path: list[tuple[int, str]] = []  # (indent, key) of the mappings the line is in
    # One line per value (no folding), so a comment can follow every value.
    for line in dump_config(config, width=1 << 30).splitlines():
        match = _KEY_LINE.match(line)
        if match:
            indent = len(match.group(1))
            while path and path[-1][0] >= indent:
                path.pop()
            path.append((indent, match.group(2)))
            key = ".".join(k for _, k in path)
            if key in changed:
                line += f"  # {provenance.source_of(key) or 'default'}"
        lines.append(line)
    return "\n".join(header + lines) + "\n"
