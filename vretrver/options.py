"""Settings declared once, as dataclass fields, and read from the command line, a file and ``key=value``.

A field's metadata (see :func:`option`) holds its help text and how the command line spells it; from that
:func:`add_options` makes the argparse options, and :func:`settings` merges, in order of precedence, the
dataclass defaults, a yaml / json file (``--config``), the options given on the command line and
``key=value`` overrides (LLaMA-Factory's ``llamafactory-cli train x.yaml key=value``, verl's hydra keys).
Mapping-valued options take a JSON object or ``k=v,k=v`` (lm-evaluation-harness's ``--model_args``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

# Where argparse notes the options a command line gave (the others keep their defaults).
GIVEN = "given_options"


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
    choices: Sequence[str] | Callable[[], Sequence[str]] | None = None,
    flag: str | None = None,
    cli_default: Any = dataclasses.MISSING,
    none_words: tuple[str, ...] = (),
    metavar: str | None = None,
    example: str | None = None,
) -> Any:
    """A dataclass field with what the command line needs: help text, choices (or a function giving them
    when the parser is built), the flag (default ``--field-name``), a command-line default that differs
    from the field's (``cli_default``), words that mean None (``none_words``), an example for errors."""
    meta = {
        "help": help,
        "choices": choices,
        "flag": flag,
        "cli_default": cli_default,
        "none_words": none_words,
        "metavar": metavar,
        "example": example,
    }
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def field_kind(cls: type, f: dataclasses.Field) -> type:
    """The field's type without ``| None``: bool, int, float, str, list or dict."""
    hint = typing.get_type_hints(cls)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = args[0]
    origin = typing.get_origin(hint) or hint
    return origin if origin in (bool, int, float, str, list, dict) else str


def _mark(namespace: argparse.Namespace, dest: str) -> None:
    given = getattr(namespace, GIVEN, None)
    if given is None:
        given = []
        setattr(namespace, GIVEN, given)
    given.append(dest)


class _Store(argparse.Action):
    """Store the value and note that the option was given."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        _mark(namespace, self.dest)


class _StoreTrue(argparse.Action):
    def __init__(self, option_strings, dest, default=False, help=None):
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, True)
        _mark(namespace, self.dest)


class _Bool(argparse.BooleanOptionalAction):
    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        _mark(namespace, self.dest)


def add_options(parser: argparse.ArgumentParser, cls: type, names: Iterable[str] | None = None) -> None:
    """An option per field of ``cls`` (or of the fields ``names``), from the fields' metadata.

    Mapping- and list-valued options keep the text given (see :func:`from_text`); a bool field is a
    switch (``--x``), or ``--x / --no-x`` when it defaults to True.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in names if names is not None else list(fields):
        f = fields[name]
        meta = f.metadata
        default = meta.get("cli_default", dataclasses.MISSING)
        if default is dataclasses.MISSING:
            default = f.default if f.default is not dataclasses.MISSING else None
        kind = field_kind(cls, f)
        kw: dict[str, Any] = {"default": default, "help": meta.get("help") or None, "dest": f.name}
        if kind is bool:
            parser.add_argument(flag_of(f), action=_Bool if default else _StoreTrue, **kw)
            continue
        choices = meta.get("choices")
        if callable(choices):
            choices = choices()
        if kind in (int, float):
            kw["type"] = kind
        if meta.get("metavar"):
            kw["metavar"] = meta["metavar"]
        parser.add_argument(flag_of(f), action=_Store, choices=choices, **kw)


# ------------------------------------------------------------------ values from text and files


def scalar(text: str) -> Any:
    """``3`` -> 3, ``0.5`` -> 0.5, ``true`` / ``false``, ``null`` / ``none`` -> None, JSON lists and
    objects as JSON, anything else the text itself."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("null", "none", "~"):
        return None
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    if text.strip()[:1] in ("[", "{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass
    return text


def mapping(text: str | Mapping[str, Any] | None, flag: str, example: str = '{"key": 1}') -> dict[str, Any]:
    """A JSON object, or ``k=v,k=v`` (values read by :func:`scalar`); {} for nothing."""
    if text is None or text == "":
        return {}
    if isinstance(text, Mapping):
        return dict(text)
    if text.lstrip().startswith("{") or "=" not in text:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise SystemExit(
                f"{flag}: expected a JSON object ({e.msg}) or key=value pairs, e.g. '{example}'"
            ) from None
        if not isinstance(value, dict):
            raise SystemExit(f"{flag}: expected a JSON object or key=value pairs, e.g. '{example}'")
        return value
    out: dict[str, Any] = {}
    for part in text.split(","):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise SystemExit(f"{flag}: expected key=value pairs separated by commas, got {part!r}")
        out[key.strip()] = scalar(value.strip())
    return out


def from_text(cls: type, f: dataclasses.Field, text: Any, where: str) -> Any:
    """A field's value from command-line text (or a value already typed, as a file holds it)."""
    meta = f.metadata
    if isinstance(text, str) and text.strip().lower() in meta.get("none_words", ()):
        return None
    kind = field_kind(cls, f)
    if isinstance(text, str):
        if kind is dict:
            return mapping(text, where, meta.get("example") or '{"key": 1}')
        if kind is list:
            value = scalar(text)
            return value if isinstance(value, list) else [t for t in text.split(",") if t]
        if kind is not str:
            text = scalar(text)
    return check_value(cls, f, text, where)


def check_value(cls: type, f: dataclasses.Field, value: Any, where: str) -> Any:
    """``value`` if it has the field's type (an int passes for a float), else a ValueError naming it."""
    kind = field_kind(cls, f)
    optional = type(None) in typing.get_args(typing.get_type_hints(cls)[f.name])
    if value is None and (optional or f.default is None):
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is int and isinstance(value, bool):
        ok = False
    else:
        ok = isinstance(value, kind)
    if kind is list and ok:
        ok = all(isinstance(v, str) for v in value)
    if not ok:
        raise ValueError(f"{where}: expected {kind.__name__}, got {value!r}")
    choices = f.metadata.get("choices")
    if callable(choices):
        choices = choices()
    if choices and value not in choices:
        raise ValueError(f"{where}: expected one of {', '.join(map(str, choices))}, got {value!r}")
    return value


def read_file(path: str | Path) -> dict[str, Any]:
    """The mapping a yaml or json settings file holds."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    else:
        try:
            import yaml
        except ImportError as e:
            raise ValueError(
                f"{path}: reading yaml needs PyYAML (pip install pyyaml), or pass a .json file"
            ) from e
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid yaml ({e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def settings(
    cls: type,
    ns: argparse.Namespace,
    file_values: Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
    source: str = "--config",
    extra_keys: Sequence[str] = (),
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The settings for ``cls(**settings)`` and the values of ``extra_keys`` (keys that are not fields,
    e.g. the output folder), from a file, the options given in ``ns`` and ``key=value`` overrides, each
    overriding the one before; fields set nowhere are left to the dataclass default."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}

    def put(key: str, value: Any, where: str, typed: bool) -> None:
        name = key.replace("-", "_")
        if name in extra_keys:
            extra[name] = value
        elif name in fields:
            f = fields[name]
            values[name] = check_value(cls, f, value, where) if typed else from_text(cls, f, value, where)
        else:
            known = ", ".join([*fields, *extra_keys])
            raise ValueError(f"{where}: unknown setting {key!r}; settings are: {known}")

    for key, value in (file_values or {}).items():
        # A file holds typed values; text stands for a list or a mapping as on the command line.
        f = fields.get(key.replace("-", "_"))
        typed = not (isinstance(value, str) and f is not None and field_kind(cls, f) in (list, dict))
        put(key, value, f"{source} {key}", typed and not _none_word(f, value))
    for name in getattr(ns, GIVEN, None) or ():
        if name in fields:
            put(name, getattr(ns, name), flag_of(fields[name]), typed=False)
    for item in overrides:
        key, eq, text = item.partition("=")
        if not eq or not key:
            raise ValueError(f"expected key=value after the options, got {item!r}")
        put(key.strip(), text, key.strip(), typed=False)
    return values, extra


def _none_word(f: dataclasses.Field | None, value: Any) -> bool:
    return (
        f is not None and isinstance(value, str) and value.strip().lower() in f.metadata.get("none_words", ())
    )
