"""Prompt profiles: the template files that define what a reranker sees.

A profile is a folder holding ``profile.json`` (settings), ``system.jinja``, ``user.jinja``, and, for
profiles with tools, ``tools.json`` (a jinja-rendered JSON list of function schemas) and
``observation.jinja`` (how a tool result is shown to the model). Built-in profiles live in
``vretrver/protocol/profiles/``; any folder with the same files can be passed instead of a name, so a user
can match the exact format a checkpoint was trained with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

PROFILES_DIR = Path(__file__).parent / "profiles"
DEFAULT_PROFILE = "v-retrver"

# How the model is told to write crop coordinates, per coordinate convention (see vretrver.tools).
COORDINATE_HINTS = {
    "qwen2.5-vl": " in pixels of the image as you see it",
    "qwen3-vl": " in relative coordinates from 0 to 1000",
}


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

    @property
    def uses_tools(self) -> bool:
        return bool(self.tools)

    def tool_schemas(self, coordinates: str = "qwen2.5-vl") -> list[dict[str, Any]]:
        """The function schemas shown in the system prompt (empty for a profile without tools)."""
        if not self.uses_tools:
            return []
        where = self.folder / "tools.json"
        try:
            text = self.templates["tools"].render(coordinate_hint=COORDINATE_HINTS.get(coordinates, ""))
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
            raise ProfileError(
                f"{self.folder / 'tools.json'}: tools {names} do not match profile.json {self.tools}"
            )
        return schemas


def _env(folder: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(folder)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
        autoescape=False,
    )
    # Keep key order and non-ASCII text as written, like the Qwen chat templates' own tojson.
    env.filters["tojson"] = lambda x: json.dumps(x, ensure_ascii=False)
    return env


@lru_cache(maxsize=32)
def _load(folder: str) -> Profile:
    path = Path(folder)
    meta_file = path / "profile.json"
    if not meta_file.is_file():
        raise ProfileError(f"{path}: not a prompt profile (no profile.json)")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ProfileError(f"{meta_file}:{e.lineno}: invalid JSON ({e.msg})") from None
    for key, typ in (("tools", list), ("max_tool_calls", int), ("stop", list)):
        if not isinstance(meta.get(key), typ):
            raise ProfileError(f"{meta_file}: field '{key}': expected a {typ.__name__}")
    env = _env(path)
    names = ["system", "user"] + (["tools", "observation"] if meta["tools"] else [])
    templates = {}
    for n in names:
        fname = f"{n}.json" if n == "tools" else f"{n}.jinja"
        if not (path / fname).is_file():
            raise ProfileError(f"{path}: missing template file {fname}")
        try:
            templates[n] = env.get_template(fname)
        except jinja2.TemplateSyntaxError as e:
            raise ProfileError(f"{path / fname}:{e.lineno}: template error: {e.message}") from None
    profile = Profile(
        name=meta.get("name", path.name),
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
