"""Prompt profiles: the template files that define what a reranker sees.

A profile is a folder holding ``profile.json`` (settings), ``system.jinja``, ``user.jinja``, and, for
profiles with tools, ``tools.json`` (a jinja-rendered JSON list of function schemas) and
``observation.jinja`` (how a tool result is shown to the model). Built-in profiles live in
``vretrver/protocol/profiles/``; any folder with the same files can be passed instead of a name, so a user
can match the exact format a checkpoint was trained with.

Tools are records of the tool registry (:mod:`vretrver.tool_registry`); a profile lists their names.
``tools.json`` is rendered with ``tool_schemas`` (the records' schemas of the profile's tools, in its
order) and ``schema(name)``, so our profiles write ``{{ tool_schemas | tojson }}`` while a profile that
must show a released text writes it out. ``observation.jinja`` may call ``tool_text()``: the tool
record's sentence about its result.

``profile.json`` may name a profile it ``extends`` (a built-in name or a folder relative to this one): its
settings are inherited and template files this folder lacks are taken from it. Optional settings:

* ``verbatim``: the rendered system and user texts are used exactly (not trimmed);
* ``tool_dialect``: whose tool server the tools imitate, ``v-retrver`` (ours) or ``official``
  (:class:`vretrver.tools.ToolConfig`);
* ``candidate_image_index``: what tool image index k means, ``candidate`` (candidate k's image) or
  ``compact`` (the k-th image among the candidates' images, skipping candidates without one);
* ``action_rule``: ``parser`` (the turn is what :func:`vretrver.protocol.parse_turn` finds first) or
  ``closing-tag`` (every turn holding ``</tool_call>`` is a tool call, any other turn is final);
* ``parquet_prompt``: use a sample's ``meta["parquet_prompt"]`` (the public evaluation parquet's prompt),
  rebuilding its candidate block per window, ``aligned`` or ``upstream`` (see :mod:`.conversation`), or
  null: not used;
* ``official_release``: the profile renders what the public release's checkpoints were trained on;
* ``tool_modules``: modules imported when the profile loads, so that the tools they register exist (a
  dotted module name, or a ``.py`` file relative to the profile folder).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import jinja2

from vretrver.lamra_text import lamra_clean as lamra_text
from vretrver.protocol.parser import ParsedTurn, ToolCall
from vretrver.tools import ToolError, get_tool

PROFILES_DIR = Path(__file__).parent / "profiles"
DEFAULT_PROFILE = "v-retrver"
MAX_EXTENDS = 8  # depth of an ``extends`` chain (a loop is an error, not a hang)

# How the model is told to write crop coordinates, per coordinate convention (see vretrver.tools).
COORDINATE_HINTS = {
    "qwen2.5-vl": " in pixels of the image as you see it",
    "qwen3-vl": " in relative coordinates from 0 to 1000",
}
_CHOICES = {
    "tool_dialect": ("v-retrver", "official"),
    "candidate_image_index": ("candidate", "compact"),
    "action_rule": ("parser", "closing-tag"),
    "parquet_prompt": ("aligned", "upstream"),
}
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"

T = TypeVar("T")


class ProfileError(ValueError):
    pass


@dataclass
class Profile:
    name: str
    folder: Path
    tools: list[str]
    max_tool_calls: int
    stop: list[str]
    description: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    templates: dict[str, jinja2.Template] = field(default_factory=dict, repr=False)
    _tool_texts: dict[str, jinja2.Template] = field(
        default_factory=dict, repr=False, init=False, compare=False
    )

    @property
    def uses_tools(self) -> bool:
        return bool(self.tools)

    @property
    def verbatim(self) -> bool:
        return bool(self.settings.get("verbatim"))

    @property
    def official_release(self) -> bool:
        return bool(self.settings.get("official_release"))

    def tool_schemas(self, coordinates: str = "qwen2.5-vl") -> list[dict[str, Any]]:
        """The function schemas shown in the system prompt (empty for a profile without tools)."""
        if not self.uses_tools:
            return []
        where = self.templates["tools"].filename or self.folder / "tools.json"
        hint = COORDINATE_HINTS.get(coordinates, "")
        try:
            records = [get_tool(name) for name in self.tools]
        except ToolError as e:
            raise ProfileError(
                f"{self.folder / 'profile.json'}: {e}; name its module in 'tool_modules'"
            ) from None
        try:
            text = self.templates["tools"].render(
                coordinate_hint=hint,
                tool_schemas=[r.function_schema(hint) for r in records],
                schema=lambda name: get_tool(name).function_schema(hint),
            )
            schemas = json.loads(text)
            names = [s["function"]["name"] for s in schemas]
        except jinja2.TemplateError as e:
            raise ProfileError(f"{where}: template error: {e}") from None
        except json.JSONDecodeError as e:
            raise ProfileError(f"{where}:{e.lineno}: invalid JSON after rendering ({e.msg})") from None
        except (TypeError, KeyError):
            raise ProfileError(
                f'{where}: expected a JSON list of {{"type": "function", "function": {{"name": ...}}}} schemas'
            ) from None
        if names != self.tools:
            raise ProfileError(f"{where}: tools {names} do not match profile.json {self.tools}")
        return schemas

    def tool_text(self, tool: str | None, variables: dict[str, Any]) -> str:
        """The sentence tool ``tool``'s record adds about its result (its ``observation`` template, rendered
        with the observation template's ``variables``); empty for a tool no record defines."""
        if tool not in self._tool_texts:
            try:
                source = get_tool(tool).observation
            except ToolError:
                source = ""
            env = self.templates["observation"].environment
            self._tool_texts[tool] = env.from_string(source)
        return self._tool_texts[tool].render(**variables)

    def tool_images(self, slots: Sequence[T | None]) -> list[T | None]:
        """Tool image index -> image, from ``[query image, candidate 1's image, ..., candidate K's]``.

        ``candidate`` indexing keeps the list (None where a candidate has no image); ``compact`` indexing,
        the public release's tool server, numbers only the candidates that have an image.
        """
        slots = list(slots)
        if self.settings.get("candidate_image_index") == "compact":
            return slots[:1] + [s for s in slots[1:] if s is not None]
        return slots

    def turn_action(self, text: str, parsed: ParsedTurn) -> tuple[str, ToolCall | None, str | None]:
        """What the harness does with an assistant turn: ``(kind, tool call, reason)``, kind being
        ``"answer"``, ``"tool_call"`` or ``"malformed"`` (the turn ends the episode without an answer).

        The ``closing-tag`` rule is the public release's agent loop: a turn holding ``</tool_call>`` is a
        tool call whatever else it holds (its call is the text between the first ``<tool_call>`` and the
        next ``</tool_call>``, unreadable when there is no opening tag); any other turn is final.
        """
        if self.settings.get("action_rule") != "closing-tag":
            return parsed.kind, parsed.tool_call, parsed.reason
        if TOOL_CALL_CLOSE in text:
            if TOOL_CALL_OPEN not in text:
                return "tool_call", ToolCall(None, None, "", error="no <tool_call> before </tool_call>"), None
            body = text.split(TOOL_CALL_OPEN, 1)[1].split(TOOL_CALL_CLOSE, 1)[0]
            return "tool_call", ToolCall(None, None, body.strip()), None
        if parsed.kind == "answer":
            return "answer", None, None
        return "malformed", None, parsed.reason or "no </tool_call> and no <answer> in the turn"


def _env(search_path: list[Path]) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(p) for p in search_path]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
        autoescape=False,
    )
    # Keep key order and non-ASCII text as written, like the Qwen chat templates' own tojson.
    env.filters["tojson"] = lambda x: json.dumps(x, ensure_ascii=False)
    env.filters["lamra_text"] = lamra_text
    return env


def _read_meta(path: Path) -> dict[str, Any]:
    meta_file = path / "profile.json"
    if not meta_file.is_file():
        raise ProfileError(f"{path}: not a prompt profile (no profile.json)")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ProfileError(f"{meta_file}:{e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(meta, dict):
        raise ProfileError(f"{meta_file}: expected a JSON object of settings")
    return meta


def _chain(path: Path) -> tuple[dict[str, Any], list[Path]]:
    """The settings of a profile folder merged over those it extends, and the template search path."""
    metas, folders = [], []
    while True:
        meta = _read_meta(path)
        metas.append(meta)
        folders.append(path)
        parent = meta.get("extends")
        if parent is None:
            break
        if not isinstance(parent, str) or not parent:
            raise ProfileError(f"{path / 'profile.json'}: field 'extends': expected a profile name or folder")
        if len(folders) >= MAX_EXTENDS:
            raise ProfileError(
                f"{path / 'profile.json'}: 'extends' chain longer than {MAX_EXTENDS} (a loop?)"
            )
        path = PROFILES_DIR / parent if parent in list_profiles() else (path / parent).resolve()
    merged: dict[str, Any] = {}
    for meta in reversed(metas):
        merged.update(meta)
    merged.pop("extends", None)
    merged["name"] = metas[0].get("name", folders[0].name)  # a name is never inherited
    return merged, folders


def _import_tool_modules(modules: Any, search: list[Path], meta_file: Path) -> None:
    """Import the modules a profile names, so that the tools they register exist before it is used."""
    if modules is None:
        return
    if not isinstance(modules, list) or not all(isinstance(m, str) and m for m in modules):
        raise ProfileError(f"{meta_file}: field 'tool_modules': expected a list of module names or .py files")
    for m in modules:
        try:
            if not m.endswith(".py"):
                importlib.import_module(m)
                continue
            file = next((f / m for f in search if (f / m).is_file()), None)
            if file is None:
                raise ProfileError(f"{meta_file}: field 'tool_modules': no file {m} in the profile folder")
            # One module per file, named after its path: loading the profile again imports nothing.
            name = "vretrver_profile_tools_" + hashlib.sha1(str(file.resolve()).encode()).hexdigest()[:16]
            if name not in sys.modules:
                spec = importlib.util.spec_from_file_location(name, file)
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[name]
                    raise
        except ProfileError:
            raise
        except Exception as e:
            raise ProfileError(
                f"{meta_file}: field 'tool_modules': importing {m} failed ({type(e).__name__}: {e})"
            ) from None


@lru_cache(maxsize=32)
def _load(folder: str) -> Profile:
    path = Path(folder)
    meta, search = _chain(path)
    meta_file = path / "profile.json"
    for key, typ in (("tools", list), ("max_tool_calls", int), ("stop", list)):
        if not isinstance(meta.get(key), typ):
            raise ProfileError(f"{meta_file}: field '{key}': expected a {typ.__name__}")
    for key, allowed in _CHOICES.items():
        if meta.get(key) is not None and meta[key] not in allowed:  # null: the setting is off
            raise ProfileError(
                f"{meta_file}: field '{key}': expected one of {list(allowed)}, got {meta[key]!r}"
            )
    _import_tool_modules(meta.get("tool_modules"), search, meta_file)
    env = _env(search)
    names = ["system", "user"] + (["tools", "observation"] if meta["tools"] else [])
    templates = {}
    for n in names:
        fname = f"{n}.json" if n == "tools" else f"{n}.jinja"
        try:
            templates[n] = env.get_template(fname)
        except jinja2.TemplateNotFound:
            raise ProfileError(f"{path}: missing template file {fname}") from None
        except jinja2.TemplateSyntaxError as e:
            raise ProfileError(f"{e.filename}:{e.lineno}: template error: {e.message}") from None
    profile = Profile(
        name=meta["name"],
        folder=path,
        tools=list(meta["tools"]),
        max_tool_calls=meta["max_tool_calls"],
        stop=list(meta["stop"]),
        description=meta.get("description", ""),
        settings={k: v for k, v in meta.items() if k not in ("name", "tools", "max_tool_calls", "stop")},
        templates=templates,
    )
    profile.tool_schemas()  # a broken tools.json fails here, when the profile is loaded
    return profile


def list_profiles() -> list[str]:
    return sorted(p.name for p in PROFILES_DIR.iterdir() if (p / "profile.json").is_file())


def load_profile(name_or_path: str | Path | Profile = DEFAULT_PROFILE) -> Profile:
    """A built-in profile by name, or a profile folder by path."""
    if isinstance(name_or_path, Profile):
        return name_or_path
    p = Path(name_or_path)
    # Only a bare name is a built-in: "./v-retrver" or "v-retrver/" is the user's own folder.
    if str(name_or_path) in list_profiles():
        p = PROFILES_DIR / str(name_or_path)
    elif not p.is_dir():
        raise ProfileError(
            f"unknown prompt profile {str(name_or_path)!r}: expected one of {list_profiles()} or a folder"
        )
    return _load(str(p.resolve()))


def clear_profile_cache() -> None:
    """Forget loaded profiles (they are cached by folder): for code that rewrites a profile folder."""
    _load.cache_clear()


# ----------------------------------------------------------------------------- released checkpoints

# The public release's checkpoints: V-Retrver/V-Retrver-7B, V-Retrver-RFT-7B, V-Retrver-SFT-7B.
_RELEASE_NAME = re.compile(r"v[-_]?retrver", re.I)


def is_release_checkpoint(checkpoint: str | None) -> bool:
    """Whether a checkpoint (hub id or folder) is one of the public release's, by its name (the hub id or the
    folder's last component) or by the name its ``config.json`` records (``_name_or_path``)."""
    if not checkpoint:
        return False
    text = str(checkpoint).rstrip("/\\")
    last = re.split(r"[/\\]", text)[-1]
    if _RELEASE_NAME.search(last) or (text.count("/") == 1 and _RELEASE_NAME.search(text)):
        return True
    cfg = Path(text).expanduser() / "config.json"
    try:
        recorded = json.loads(cfg.read_text(encoding="utf-8")).get("_name_or_path")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(recorded, str) and bool(_RELEASE_NAME.search(recorded))


def checkpoint_profile(checkpoint: str | None, profile: str | None = None) -> str:
    """The prompt profile to run a checkpoint with: ``profile`` when given, else the one it was trained on
    (``official`` for the released V-Retrver checkpoints, ``v-retrver`` for everything else)."""
    return profile or ("official" if is_release_checkpoint(checkpoint) else DEFAULT_PROFILE)


def profile_mismatch_warning(checkpoint: str | None, profile: str | Path | Profile) -> str | None:
    """A one-line warning when a released checkpoint is run with a profile it was not trained on."""
    if not is_release_checkpoint(checkpoint):
        return None
    try:
        prof = load_profile(profile)
    except ProfileError:
        return None  # the caller reports an unknown profile itself
    if prof.official_release:
        return None
    return (
        f"warning: {checkpoint} is a released V-Retrver checkpoint, trained on the official prompt layout; "
        f"profile {prof.name!r} renders another one (use --profile official)"
    )
