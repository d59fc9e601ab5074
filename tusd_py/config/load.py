"""Reading the configuration: built-in defaults < YAML file < ``TUSD_*`` env vars < CLI flags.

Every key has an env form: ``TUSD_`` + the key path upper-cased, joined by ``__``
(``server.port`` -> ``TUSD_SERVER__PORT``). The merged result is validated once at
start-up; a bad key or value is reported by name and source, without a traceback.
No other module reads the environment.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import ValidationError

from .models import AZURE_CONNECTION_STRING_ENV, DRIVERS, Config, ConfigError

ENV_PREFIX = "TUSD_"
#: Env var naming the config file (an alternative to ``--config``).
CONFIG_ENV = "TUSD_CONFIG"
DEFAULT_CONFIG_PATHS = ("config/tusd.yaml", "/etc/tusd-py/tusd.yaml")


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
