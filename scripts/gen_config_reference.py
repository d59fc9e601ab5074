"""Write docs/configuration/reference.md from the config models (tusd_py/config/models.py).

Walks ``Config.model_fields`` recursively (one table per section, one per storage driver
of the ``storage`` union) and takes each key's type, default and constraints from the
model and its meaning from the ``#:`` comment above the field in the source. The page is
checked in; tests/docs fails when it differs from what this script writes.

Usage: .venv/bin/python scripts/gen_config_reference.py [--check] [OUTPUT]
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import sys
import textwrap
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tusd_py.config import load  # noqa: E402
from tusd_py.config import models as config  # noqa: E402

OUTPUT = ROOT / "docs" / "configuration" / "reference.md"
ENV_PREFIX = load.ENV_PREFIX


@dataclass(frozen=True)
class Key:
    """One configuration key: its dotted path and what the reference says about it."""

    path: str
    type: str
    default: str
    meaning: str

    @property
    def env(self) -> str:
        return ENV_PREFIX + "__".join(part.upper() for part in self.path.split("."))


@dataclass(frozen=True)
class Table:
    """The keys of one section (``server``, ``server.cors``) or one storage driver."""

    section: str
    driver: str | None
    doc: str
    keys: tuple[Key, ...]


# -- the meaning of a field: the ``#:`` comment above it ----------------------------


def _own_comments(cls: type) -> dict[str, str]:
    """Field name -> the ``#:`` lines right above its annotation in ``cls``'s body."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    tree = ast.parse(source)
    body = tree.body[0]
    assert isinstance(body, ast.ClassDef)
    out: dict[str, str] = {}
    for node in body.body:
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        comment: list[str] = []
        i = node.lineno - 2  # the line above, 0-based
        while i >= 0 and lines[i].strip().startswith("#:"):
            comment.insert(0, lines[i].strip()[2:].strip())
            i -= 1
        if comment:
            out[node.target.id] = " ".join(comment)
    return out


def comments_of(model: type[BaseModel]) -> dict[str, str]:
    """``#:`` comments of ``model``'s fields, inherited ones included (nearest class wins)."""
    out: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if isinstance(cls, type) and issubclass(cls, BaseModel) and cls is not BaseModel:
            out.update(_own_comments(cls))
    return out


def meaning_of(field: FieldInfo, comment: str | None) -> str:
    text = field.description or comment or ""
    return _rst_to_md(text)


def _rst_to_md(text: str) -> str:
    """Docstring-style ````literal```` to Markdown code; outside code, characters that
    Markdown would read as markup (a table's pipe, HTML's ``<``, emphasis) are escaped."""
    parts = text.replace("``", "`").split("`")
    for i in range(0, len(parts), 2):  # the even parts are outside code spans
        parts[i] = parts[i].replace("|", "\\|").replace("<", "&lt;").replace("*", "\\*")
    return "`".join(parts)


# -- type and default, as a user writes them -----------------------------------------


def _validator_funcs(alias: Any) -> set[Any]:
    return {getattr(m, "func", None) for m in typing.get_args(alias)[1:]} - {None}


SIZE_FUNCS = _validator_funcs(config.Size)
DURATION_FUNCS = _validator_funcs(config.Duration)
LIST_FUNCS = _validator_funcs(config.StrList)


def _kind(field: FieldInfo) -> str | None:
    funcs = {getattr(m, "func", None) for m in field.metadata}
    if funcs & SIZE_FUNCS:
        return "size"
    if funcs & DURATION_FUNCS:
        return "duration"
    if funcs & LIST_FUNCS:
        return "list"
    return None


def _strip_none(annotation: Any) -> tuple[Any, bool]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _type_name(annotation: Any) -> str:
    if annotation is bool:
        return "boolean"
    if annotation is int:
        return "integer"
    if annotation is float:
        return "number"
    if annotation is str:
        return "string"
    if annotation is SecretStr:
        return "string (secret)"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin is list:
        return "list of " + _plural(_type_name(args[0]))
    if origin is dict:
        return "map of " + _plural(_type_name(args[1]))
    return getattr(annotation, "__name__", str(annotation))


def _plural(name: str) -> str:
    if name.startswith("one of "):
        return name[len("one of "):]
    return name.replace("string", "strings", 1)


def _bounds(field: FieldInfo) -> list[tuple[str, float]]:
    """The field's numeric limits as (operator, value); ``>= 0`` goes without saying."""
    out: list[tuple[str, float]] = []
    for m in field.metadata:
        if isinstance(m, annotated_types.Ge) and m.ge != 0:
            out.append((">=", float(m.ge)))  # type: ignore[arg-type]
        elif isinstance(m, annotated_types.Gt):
            out.append((">", float(m.gt)))  # type: ignore[arg-type]
        elif isinstance(m, annotated_types.Le):
            out.append(("<=", float(m.le)))  # type: ignore[arg-type]
        elif isinstance(m, annotated_types.Lt):
            out.append(("<", float(m.lt)))  # type: ignore[arg-type]
    return out


def type_of(field: FieldInfo) -> str:
    annotation, optional = _strip_none(field.annotation)
    kind = _kind(field)
    show: typing.Callable[[float], str]
    if kind == "size":
        text, show = "size", lambda v: _size(int(v))
    elif kind == "duration":
        text, show = "duration", _duration
    else:
        text, show = _type_name(annotation), lambda v: f"{v:g}"
    bounds = [f"{op} {show(value)}" for op, value in _bounds(field)]
    if bounds:
        text += " (" + ", ".join(bounds) + ")"
    if optional:
        text += ", optional"
    return text


def _size(n: int) -> str:
    for unit, factor in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n and n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)


def _duration(seconds: float) -> str:
    if seconds == 0:
        return "0"
    for unit, factor in (("h", 3600), ("m", 60), ("s", 1)):
        if seconds % factor == 0:
            return f"{int(seconds // factor)}{unit}"
    return f"{round(seconds * 1000)}ms"


def default_of(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    kind = _kind(field)
    if kind == "size":
        return f"`{_size(int(value))}`"
    if kind == "duration":
        return f"`{_duration(float(value))}`"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, list | dict):
        return "`" + json.dumps(value) + "`"
    if value == "":
        return '`""`'
    return f"`{value}`"


# -- the walk -------------------------------------------------------------------------


def _section_model(field: FieldInfo) -> type[BaseModel] | None:
    annotation = field.annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _union_models(field: FieldInfo) -> list[type[BaseModel]]:
    models = [a for a in typing.get_args(field.annotation)
              if isinstance(a, type) and issubclass(a, BaseModel)]
    return models if len(models) > 1 else []


def _driver_of(model: type[BaseModel]) -> str:
    [name] = typing.get_args(model.model_fields["driver"].annotation)
    return str(name)


def _doc(model: type[BaseModel]) -> str:
    doc = model.__doc__ or ""
    return _rst_to_md(" ".join(doc.split()))


def _keys(model: type[BaseModel], prefix: str, skip: frozenset[str] = frozenset()) -> list[Key]:
    comments = comments_of(model)
    keys = []
    for name, field in model.model_fields.items():
        if name in skip or _section_model(field) or _union_models(field):
            continue
        keys.append(Key(f"{prefix}{name}", type_of(field), default_of(field),
                        meaning_of(field, comments.get(name))))
    return sorted(keys, key=lambda k: k.default != "required")  # required keys first


def walk(model: type[BaseModel] = config.Config, prefix: str = "") -> list[Table]:
    """Every table of the reference, in the models' order (sections after their keys)."""
    tables: list[Table] = []
    own = _keys(model, prefix)
    if own and prefix:
        tables.append(Table(prefix.rstrip("."), None, _doc(model), tuple(own)))
    for name, field in model.model_fields.items():
        sub = _section_model(field)
        if sub is not None:
            tables.extend(walk(sub, f"{prefix}{name}."))
            continue
        union = _union_models(field)
        if union:
            by_driver = {_driver_of(m): m for m in union}
            order = [d for d in getattr(config, "DRIVERS", ()) if d in by_driver]
            order += [d for d in by_driver if d not in order]
            for driver in order:
                member = by_driver[driver]
                tables.append(Table(f"{prefix}{name}", driver, _doc(member),
                                    tuple(_keys(member, f"{prefix}{name}.", frozenset({"driver"})))))
    return tables


def all_keys(tables: list[Table] | None = None) -> set[tuple[str | None, str]]:
    """(driver or None, dotted key) of every key, ``storage.driver`` included."""
    tables = walk() if tables is None else tables
    out: set[tuple[str | None, str]] = set()
    for table in tables:
        if table.driver is not None:
            out.add((None, f"{table.section}.driver"))
        out.update((table.driver, key.path) for key in table.keys)
    return out


# -- the page -------------------------------------------------------------------------

HEADER = """\
<!-- Generated by scripts/gen_config_reference.py from tusd_py/config/models.py: do not edit.
     Run `.venv/bin/python scripts/gen_config_reference.py` after changing the models. -->

# Configuration reference

Every key of the configuration, generated from the config models. How the file, the
environment and flags combine is on [Configuration](index.md).

- Under each key is its environment variable: `{prefix}` + the key path upper-cased
  and joined by `__`. Lists take comma-separated values or a JSON list
  (`a,b` or `["a","b"]`); maps take a JSON object.
- **Sizes** are bytes, written `1048576`, `8MiB` or `5MB`; **durations** are seconds,
  written `60`, `250ms`, `30s`, `5m`, `24h` or `7d`.
- Values of a *secret* type are masked in `tusd-py check-config`'s output.
"""


def _table_md(table: Table) -> list[str]:
    lines = ["| Key and env | Type | Default | Meaning |", "|---|---|---|---|"]
    for key in table.keys:
        lines.append(f"| `{key.path}`<br>`{key.env}` | {key.type} | {key.default} | {key.meaning} |")
    return lines


def render(tables: list[Table] | None = None) -> str:
    tables = walk() if tables is None else tables
    out = [HEADER.format(prefix=ENV_PREFIX)]
    seen_union: set[str] = set()
    for table in tables:
        if table.driver is None:
            out.append(f"## `{table.section}`\n")
            if table.doc:
                out.append(table.doc + "\n")
        else:
            if table.section not in seen_union:
                seen_union.add(table.section)
                drivers = ", ".join(f"`{t.driver}`" for t in tables
                                    if t.section == table.section and t.driver)
                env = Key(f"{table.section}.driver", "", "", "").env
                out.append(f"## `{table.section}`\n")
                out.append(f"`{table.section}.driver` (env `{env}`, default `local`) picks the "
                           f"driver: one of {drivers}. Each driver has its own keys; a key of "
                           "another driver is refused by name.\n")
            out.append(f"### `driver: {table.driver}`\n")
            if table.doc:
                out.append(table.doc + "\n")
            if not table.keys:
                out.append("No other keys.\n")
                continue
        out.append("\n".join(_table_md(table)) + "\n")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", nargs="?", type=Path, default=OUTPUT)
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if OUTPUT differs from what would be written")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is stale: run scripts/gen_config_reference.py", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
