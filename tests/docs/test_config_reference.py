"""The configuration reference cannot drift from the config models: the checked-in page is
what scripts/gen_config_reference.py writes, and every key of the models (walked here on
their own, not by the generator) is in the page and in config/tusd.yaml, and nothing else
is. Keys are compared per storage driver."""

from __future__ import annotations

import importlib.util
import re
import sys
import typing
from pathlib import Path
from types import ModuleType

from pydantic import BaseModel

from tests.plugins.daemon import ROOT
from tusd_py.config import Config

PAGE = ROOT / "docs" / "configuration" / "reference.md"
CONFIG_YAML = ROOT / "config" / "tusd.yaml"
#: (driver, dotted key): driver is None for keys outside the storage union.
DriverKey = tuple[str | None, str]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_config_reference", ROOT / "scripts" / "gen_config_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def model_keys(model: type[BaseModel] = Config, prefix: str = "") -> set[DriverKey]:
    """Every leaf key of the models; the members of a union (storage) per driver."""
    keys: set[DriverKey] = set()
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        annotation = field.annotation
        members = [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys |= model_keys(annotation, path + ".")
        elif len(members) > 1:
            keys.add((None, f"{path}.driver"))
            for member in members:
                [driver] = typing.get_args(member.model_fields["driver"].annotation)
                keys |= {(driver, key) for _, key in model_keys(member, path + ".")
                         if key != f"{path}.driver"}
        else:
            keys.add((None, path))
    return keys


def page_keys(text: str) -> tuple[set[DriverKey], dict[str, str]]:
    """(driver, key) of every table row of the reference page, and each key's meaning."""
    keys: set[DriverKey] = set()
    meanings: dict[str, str] = {}
    driver = None
    for line in text.splitlines():
        if line.startswith("## "):
            driver = None
        elif m := re.match(r"### `driver: (\w+)`", line):
            driver = m.group(1)
        elif m := re.match(r"\| `([a-z_.]+)`<br>`TUSD_[A-Z_]+` \|", line):
            keys.add((driver, m.group(1)))
            meanings[m.group(1)] = line.rstrip(" |").rsplit(" | ", 1)[-1].strip()
        elif m := re.match(r"`(storage\.driver)` \(env `TUSD_STORAGE__DRIVER`", line):
            keys.add((None, m.group(1)))
    return keys, meanings


def yaml_keys(text: str) -> set[DriverKey]:
    """Every key written in the YAML file, commented out or not. Under ``storage``, a
    comment line ``# <driver> driver ...`` starts that driver's keys."""
    keys: set[DriverKey] = set()
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing sections
    driver = None
    for line in text.splitlines():
        m = re.match(r"^(\s*)(#\s?)?\s*([a-z_]+):(\s|$)", line)
        if not m:
            if stack and stack[0][1] == "storage" and (
                    d := re.match(r"^\s+#\s*(\w+) driver\b", line)):
                driver = d.group(1)
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if not stack:
            driver = None
        path = ".".join([k for _, k in stack] + [m.group(3)])
        in_storage = stack and stack[0][1] == "storage"
        keys.add((driver if in_storage and m.group(3) != "driver" else None, path))
        stack.append((indent, m.group(3)))
    sections = {key for _, key in keys if any(k.startswith(key + ".") for _, k in keys)}
    return {(d, k) for d, k in keys if k not in sections}


def test_the_reference_page_is_what_the_generator_writes() -> None:
    expected = _generator().render()
    assert PAGE.read_text(encoding="utf-8") == expected, (
        "docs/configuration/reference.md is stale: run "
        "`.venv/bin/python scripts/gen_config_reference.py`")


def test_every_key_of_the_models_is_in_the_reference_and_nothing_else() -> None:
    keys, _ = page_keys(PAGE.read_text(encoding="utf-8"))
    expected = model_keys()
    assert keys - expected == set(), "in the reference but not in the models"
    assert expected - keys == set(), "in the models but not in the reference"
    assert len(expected) > 40  # the walk found the real models


def test_every_key_has_a_meaning() -> None:
    _, meanings = page_keys(PAGE.read_text(encoding="utf-8"))
    missing = sorted(key for key, meaning in meanings.items() if not meaning)
    assert missing == [], "add a `#:` comment above these fields in tusd_py/config.py"


def test_every_key_of_the_models_is_in_config_tusd_yaml_and_nothing_else() -> None:
    keys = yaml_keys(CONFIG_YAML.read_text(encoding="utf-8"))
    expected = model_keys()
    assert keys - expected == set(), "in config/tusd.yaml but not in the models"
    assert expected - keys == set(), "in the models but not in config/tusd.yaml"


def test_the_yaml_reader_sees_comments_and_drivers(tmp_path: Path) -> None:
    text = ("server:\n  port: 8080   # --port\n  # auth_token: x\n  cors:\n    enabled: true\n"
            "storage:\n  driver: local  # local | s3\n  # local driver (the default):\n"
            "  # data_dir: ./data\n  # s3 driver (docs): credentials, never this file:\n"
            "  # bucket: b\n# Precedence: flags > env\nhooks:\n  python: []\n")
    assert yaml_keys(text) == {
        (None, "server.port"), (None, "server.auth_token"), (None, "server.cors.enabled"),
        (None, "storage.driver"), ("local", "storage.data_dir"), ("s3", "storage.bucket"),
        (None, "hooks.python")}
