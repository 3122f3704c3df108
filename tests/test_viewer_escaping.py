"""The report is rendered with autoescaping: text from a result folder (queries, model output, tool errors,
candidate ids, task names, the note) is shown as text, never read as markup, also inside attribute values."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from test_viewer import build_result_folder

from vretrver.report.viewer import write_report

SCRIPT = "<script>alert('query')</script>"
OUTPUT = '</pre><img src=x onerror="alert(1)"><script>alert(2)</script>'
CAND_ID = "cap1' onmouseover='alert(3)\" data-x=\"<b>"
TASK = "i2t'\"<b>"
NOTE = 'a note with <i>tags</i> & "quotes"'


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _replace(x: Any, old: str, new: str) -> Any:
    if isinstance(x, str):
        return new if x == old else x
    if isinstance(x, dict):
        return {k: _replace(v, old, new) for k, v in x.items()}
    if isinstance(x, list):
        return [_replace(v, old, new) for v in x]
    return x


def _edit(path: Path, edit) -> None:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    path.write_text("".join(json.dumps(edit(r), ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _hostile_folder(tmp_path: Path) -> Path:
    results = build_result_folder(tmp_path / "r", source="photos")
    for sub in ("samples", "first_stage", "results", "trajectories"):
        f = results / sub / "demo_i2t.jsonl"
        _edit(f, lambda r: _replace(r, "cap1", CAND_ID))
        f.rename(f.with_name(f"{TASK}.jsonl"))

    def query(r: dict) -> dict:
        r["query"]["text"] = SCRIPT
        return r

    def turns(r: dict) -> dict:
        r["turns"][0]["text"] = OUTPUT
        r["end_reason"] = "<i>ended</i>"
        return r

    _edit(results / "samples" / "demo_t2i.jsonl", query)
    _edit(results / "trajectories" / "demo_t2i.jsonl", turns)
    return results


def test_hostile_text_is_escaped(tmp_path: Path) -> None:
    results = _hostile_folder(tmp_path)
    index = write_report(results, page_size=2, progress=False, note=NOTE)
    pages = sorted(index.parent.glob("*.html"))
    assert len(pages) == 4  # the index, two demo_t2i pages, one page for the task with the odd name
    for path in pages:
        page = _parse(path)
        scripts = [t for t, _ in page.tags if t == "script"]
        assert len(scripts) == (0 if path == index else 1), path.name  # only the filter script
        for tag, attrs in page.tags:
            handlers = {k for k in attrs if k.startswith("on")}
            assert handlers <= {"onchange"}, (path.name, tag, attrs)
            assert "data-x" not in attrs and tag != "i", (path.name, tag, attrs)
        text = "".join(page.text)
        assert NOTE in text, path.name

    t2i = _parse(index.parent / "demo_t2i-001.html")
    text = "".join(t2i.text)
    assert SCRIPT in text and OUTPUT in text and "<i>ended</i>" in text
    # The model's output stays inside its <pre>: no <img> from it.
    assert not [a for t, a in t2i.tags if t == "img" and a.get("src") == "x"]

    # A task name with quotes: a page name of safe characters; the name shown as text and kept whole
    # in attribute values.
    (odd,) = [p for p in pages if p.name.startswith("i2t")]
    assert all(ch.isalnum() or ch in "-_." for ch in odd.name), odd.name
    page = _parse(odd)
    assert ("div", "q") in [(t, a.get("class")) for t, a in page.tags]
    assert {a["data-task"] for t, a in page.tags if a.get("class") == "q"} == {TASK}
    # The candidate id with quotes is one attribute value, read back exactly.
    assert CAND_ID in {a.get("data-did") for t, a in page.tags}
    assert CAND_ID in {a.get("title") for t, a in page.tags}
    home = _parse(index)
    assert f"task-{TASK}" in {a.get("id") for t, a in home.tags}
    assert TASK in "".join(home.text)
