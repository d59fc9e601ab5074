"""Reading the configuration: built-in defaults < YAML file < ``TUSD_*`` env vars < CLI flags.

Every key has an env form: ``TUSD_`` + the key path upper-cased, joined by ``__``
(``server.port`` -> ``TUSD_SERVER__PORT``); other ``TUSD_*`` names (``TUSD_CONFIG``, the
client's ``TUSD_URL``, Kubernetes' service links such as ``TUSD_PORT``) are not settings.
The merged result is validated once at start-up; a bad key or value is reported by name
and source, without a traceback. No other module reads the environment.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from .models import AZURE_CONNECTION_STRING_ENV, DRIVERS, Config, ConfigError, Provenance

ENV_PREFIX = "TUSD_"
#: Env var naming the config file (an alternative to ``--config``).
CONFIG_ENV = "TUSD_CONFIG"
#: The client's creation URL (``tusd-py upload``), not a server setting.
URL_ENV = "TUSD_URL"
#: ``TUSD_*`` variables with a meaning of their own (not ``TUSD_<SECTION>__<KEY>``).
SINGLE_VARIABLES = frozenset({CONFIG_ENV, URL_ENV})
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
    file_source = f"file {os.path.abspath(config_file)}" if config_file else ""
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
        sources.update((key, file_source) for key in _leaves(tree))

    env_tree: dict[str, Any] = {}
    ignored: list[str] = []
    for name, raw in sorted(env.items()):
        key_path = _env_key_path(name)
        if key_path is None:
            if name.startswith(ENV_PREFIX) and name not in SINGLE_VARIABLES:
                ignored.append(name)
            continue
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
        config = Config.model_validate(tree)
    except ValidationError as exc:
        default_origin = file_source or "defaults"
        lines = [_describe(err, sources, default_origin) for err in exc.errors()]
        raise ConfigError("invalid configuration:\n" + "\n".join(lines)) from None
    absolute = os.path.abspath(config_file) if config_file else None
    meant = _setting_names()
    config._provenance = Provenance(
        file=absolute, sources=sources, ignored_env=tuple(ignored),
        misspelt_env={name: meant[name] for name in ignored if name in meant},
        base_dir=os.path.dirname(absolute) if absolute and os.path.isfile(absolute)
        else os.getcwd())
    return config


def _env_key_path(name: str) -> list[str] | None:
    """The key path a variable sets (``TUSD_SERVER__PORT`` -> server, port), or None
    for a variable that is not a setting: one without ``__`` after a section name.
    Refuses a malformed setting name (an empty part: ``TUSD_SERVER____PORT``)."""
    if not name.startswith(ENV_PREFIX) or name in SINGLE_VARIABLES:
        return None
    rest = name[len(ENV_PREFIX):]
    if "__" not in rest or rest.startswith("_"):
        return None
    key_path = [part.lower() for part in rest.split("__")]
    if not all(key_path):
        raise ConfigError(f"{name}: malformed variable name (use TUSD_SECTION__KEY)")
    return key_path


def _leaves(tree: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys of a YAML tree's values (mappings are walked, lists are values)."""
    keys: list[str] = []
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            keys += _leaves(value, dotted + ".")
        else:
            keys.append(dotted)
    return keys


def setting_paths(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """Every setting's dotted key (the storage keys of every driver)."""
    paths: list[str] = []
    for name, info in model.model_fields.items():
        nested = [m for m in (info.annotation, *get_args(info.annotation))
                  if isinstance(m, type) and issubclass(m, BaseModel)]
        if not nested:
            paths.append(prefix + name)
        for sub in nested:
            paths += [p for p in setting_paths(sub, f"{prefix}{name}.") if p not in paths]
    return paths


@functools.cache
def _setting_names() -> dict[str, str]:
    """``TUSD_SERVER_PORT`` (``_`` for ``__``) -> ``TUSD_SERVER__PORT``, for every setting."""
    names = {}
    for dotted in setting_paths():
        parts = dotted.upper().split(".")
        names[ENV_PREFIX + "_".join(parts)] = ENV_PREFIX + "__".join(parts)
    return names


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
