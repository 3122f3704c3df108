"""A static HTML report over an evaluation (or demo, or single-query) result folder.

No server: ``report/index.html`` opens from disk. It holds the summary table, episode statistics and the
plots, and links to pages of queries (``page_size`` per page, one series of pages per task). Each query
shows its text and images, the candidates as thumbnails with first-stage and final rank (ground truth
marked), and every episode (one per window) with the window's numbered candidates and every turn in
order: the assistant's text and the images each tool returned (a crop also as its box drawn on the source
image). A filter bar keeps only failures and / or only queries whose episodes called tools; the filter
lives in the address (``page.html?only=failures,tools``), so it survives paging, and the page links show
how many queries of each page pass it. Every image is written as a file under ``report/img/``.
"""

from __future__ import annotations

import hashlib
import html
import json
import shutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import ImageDraw
from tqdm.auto import tqdm

from vretrver.images import load_image
from vretrver.samples import Sample, atomic_write_text, iter_samples

THUMB = 160
TOOL_THUMB = 280
LEGEND_THUMB = 64
LARGE = 1024  # the copy a tool image links to
TINY_NOTE = (
    "The reranker is a tiny randomly initialised model: its reranked numbers are meaningless; "
    "they only show that the pipeline runs end to end."
)


@dataclass
class QueryView:
    task: str
    sample: Sample
    first_stage: list[str]
    final: list[str] | None
    episodes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def positives(self) -> set[str]:
        return set(self.sample.positives)

    def best_rank(self, ranked: list[str] | None) -> int | None:
        if not ranked:
            return None
        ranks = [i for i, d in enumerate(ranked, 1) if d in self.positives]
        return min(ranks) if ranks else None

    @property
    def failure(self) -> bool:
        """The ground truth is not first in the final ranking (first stage when not reranked)."""
        return bool(self.positives) and self.best_rank(self.final or self.first_stage) != 1

    @property
    def valid_calls(self) -> int:
        return sum(e.get("n_valid_calls", 0) for e in self.episodes)

    @property
    def invalid_calls(self) -> int:
        return sum(e.get("n_invalid_calls", 0) for e in self.episodes)

    @property
    def used_tools(self) -> bool:
        return self.valid_calls + self.invalid_calls > 0


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a results / trajectory file; a damaged line is skipped on its own (and named on stderr)."""
    from vretrver.jsonl import read_appended

    found = read_appended(path)
    for msg in found.damaged:
        print(f"[view] skipped {msg}", file=sys.stderr)
    return found.rows


def load_views(results: Path) -> dict[str, list[QueryView]]:
    """Per task, the queries of a result folder with their rankings and episodes."""
    sample_files = sorted((results / "samples").glob("*.jsonl"))
    if not sample_files:
        raise FileNotFoundError(
            f"{results}: no samples/*.jsonl: not an evaluation, demo or rerank result folder"
        )
    views: dict[str, list[QueryView]] = {}
    for sf in sample_files:
        task = sf.stem
        fs = {r["qid"]: r["ranked"] for r in _read_jsonl(results / "first_stage" / f"{task}.jsonl")}
        final = {r["qid"]: r["reranked"] for r in _read_jsonl(results / "results" / f"{task}.jsonl")}
        eps: dict[str, list[dict[str, Any]]] = {}
        for r in _read_jsonl(results / "trajectories" / f"{task}.jsonl"):
            eps.setdefault(r["qid"], []).append(r)
        views[task] = [
            QueryView(task, s, fs.get(s.id, [c.id for c in s.candidates]), final.get(s.id), eps.get(s.id, []))
            for s in iter_samples(sf, resolve_images=False)
        ]
    return views


class _Images:
    """Thumbnails written once into report/img/, named by a hash of their source and settings.

    Only two kinds of file are read: files inside the result folder (the tool images) and the image paths
    the result folder's samples list (the benchmark's own images). A trajectory naming any other file
    (an absolute path, ``..``) gets no thumbnail, so a result file cannot make the report copy arbitrary
    files. A file that cannot be shown is skipped, with its reason kept for the page and the index.
    """

    def __init__(self, folder: Path, root: Path, known: Iterable[str]):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.root = root.resolve()
        self.known = set(known)
        self.done: dict[tuple[str, int, tuple | None], str | None] = {}
        self.problems: dict[str, str] = {}  # source -> why it is not shown

    def _allowed(self, src: str | Path) -> bool:
        return str(src) in self.known or Path(src).resolve().is_relative_to(self.root)

    def thumb(self, src: str | Path, size: int = THUMB, box: tuple | None = None) -> str | None:
        """``img/<name>.jpg`` relative to the report folder, or None if the source cannot be shown."""
        key = (str(src), size, box)
        if key not in self.done:
            name = hashlib.sha1(repr(key).encode()).hexdigest()[:16] + ".jpg"
            why = self._write(src, size, box, self.folder / name)
            if why is not None:
                self.problems[str(src)] = why
            self.done[key] = None if why else f"img/{name}"
        return self.done[key]

    def _write(self, src: str | Path, size: int, box: tuple | None, dst: Path) -> str | None:
        """Write the thumbnail; or say why not."""
        if not self._allowed(src):
            return "outside the result folder and not a benchmark image"
        try:
            im = load_image(src)
        except FileNotFoundError:
            return "missing"
        except Exception as e:  # broken, not an image, above the size limit: it costs its picture only
            return str(getattr(e, "reason", None) or f"{type(e).__name__}: {e}")
        if box:
            # Drawn at the source's resolution, so the line width is relative to the picture.
            width = max(2, round(max(im.size) / 80))
            ImageDraw.Draw(im).rectangle(box, outline=(230, 30, 30), width=width)
        im.thumbnail((size, size))
        im.save(dst, quality=88)
        return None

    def tag(
        self, src: str | Path, alt: str, size: int = THUMB, cls: str = "", box: tuple | None = None
    ) -> str:
        """The thumbnail's ``<img>``, or a note naming the file and why it is not shown."""
        rel = self.thumb(src, size, box)
        if rel is not None:
            return _img_tag(rel, alt, cls)
        why = self.problems.get(str(src), "missing")
        note = "image missing" if why == "missing" else f"image not shown: {Path(src).name}: {why}"
        return f'<span class="noimg" title="{_e(src)}">{_e(alt)} ({_e(note)})</span>'


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _img_tag(rel: str, alt: str, cls: str = "") -> str:
    return f'<img src="{rel}" alt="{_e(alt)}" class="{cls}" loading="lazy">'


def _problems_html(imgs: _Images, limit: int = 50) -> str:
    """The index's list of images that got no thumbnail (missing, unreadable, too large, refused)."""
    if not imgs.problems:
        return ""
    items = sorted(imgs.problems.items())
    rows = "".join(f"<li>{_e(src)}: {_e(why)}</li>" for src, why in items[:limit])
    more = f"<li>... and {len(items) - limit} more</li>" if len(items) > limit else ""
    return (
        f"<h2>Images not shown</h2><p>{len(items)} image files could not be shown:</p><ul>{rows}{more}</ul>"
    )


CSS = """
body{font-family:system-ui,sans-serif;margin:20px;color:#222;background:#fafafa;max-width:1500px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}
.q{background:#fff;border:1px solid #ddd;border-radius:6px;padding:12px;margin:14px 0}
.q h3{margin:0 0 4px 0}.query{margin:8px 0;font-size:15px}.query img{max-height:160px;vertical-align:middle}
.cands{display:flex;flex-wrap:wrap;gap:8px;margin:6px 0}
.cand{width:170px;font-size:12px;border:2px solid #eee;padding:3px;background:#fff}
.cand.gt{border-color:#2a9d4b;background:#effaf1}.cand img{max-width:160px;max-height:120px;display:block;margin:auto}
.rank{font-weight:600}.up{color:#2a9d4b}.down{color:#b00}
details.ep{margin:10px 0;border-top:1px dashed #ccc;padding-top:6px}details.ep summary{cursor:pointer;color:#444}
.legend{display:flex;flex-wrap:wrap;gap:4px;margin:4px 0}.legend div{font-size:11px;text-align:center;width:70px;border:1px solid #eee}
.legend div.gt{border-color:#2a9d4b}.legend img{max-width:64px;max-height:64px;display:block;margin:auto}
.legend div.txt{width:auto;max-width:260px;text-align:left;padding:2px}
.turn{border-left:4px solid #4a7ebb;margin:8px 0;padding:4px 10px;background:#f4f7fb;font-size:13px}
.turn pre{white-space:pre-wrap;margin:2px 0;font-family:ui-monospace,monospace;font-size:12px}
.turn.tool{border-color:#d9774b;background:#fdf5f0}.turn.invalid{border-color:#b00;background:#fbeeee}
.turn figure{display:inline-block;margin:4px 8px 4px 0;vertical-align:top}
.turn figure img{max-width:280px;max-height:280px;display:block;border:1px solid #ddd}
.turn figcaption{font-size:11px;color:#555}.who{font-weight:600;color:#333}
.bad{color:#b00}.ok{color:#2a9d4b}.meta{color:#666;font-size:12px}.noimg{color:#999;font-size:11px}
.banner{border:2px solid #b00;background:#fff3f3;padding:8px;color:#800}.note{border:1px solid #c90;background:#fffbea;padding:8px;white-space:pre-wrap}
.filters{position:sticky;top:0;background:#fafafa;padding:6px 0;border-bottom:1px solid #ddd;z-index:2}
.hidden{display:none}.plots img{max-width:32%;margin:4px;border:1px solid #ddd;background:#fff}
.nav a.empty{color:#bbb}.nav a{margin-right:4px}
"""

# The filter lives in the address (?only=failures,tools) so that it survives paging; page links carry it.
FILTER_JS = """
function filterState(){
  return {failures:document.getElementById('only-failures').checked,
          tools:document.getElementById('only-tools').checked};
}
function filterQuery(s){
  const on=[]; if(s.failures) on.push('failures'); if(s.tools) on.push('tools');
  return on.length ? '?only='+on.join(',') : '';
}
function applyFilters(){
  const s=filterState();
  let shown=0;
  document.querySelectorAll('.q').forEach(q=>{
    const hide=(s.failures&&q.dataset.failure!=='1')||(s.tools&&q.dataset.tools!=='1');
    q.classList.toggle('hidden',hide); if(!hide) shown++;
  });
  document.getElementById('shown').textContent=shown;
  const key=(s.failures?'f':'')+(s.tools?'t':'');
  const query=filterQuery(s);
  document.querySelectorAll('a[data-page]').forEach(a=>{
    a.href=a.dataset.page+query;
    const n=key ? Number(a.dataset['n'+key]) : Number(a.dataset.n);
    a.title=n+' matching queries';
    a.classList.toggle('empty', n===0);
  });
  document.querySelectorAll('option[data-page]').forEach(o=>{o.value=o.dataset.page+query;});
  if(history.replaceState) history.replaceState(null,'',location.pathname+query+location.hash);
}
function initFilters(){
  const only=(new URLSearchParams(location.search).get('only')||'').split(',');
  document.getElementById('only-failures').checked=only.includes('failures');
  document.getElementById('only-tools').checked=only.includes('tools');
  applyFilters();
}
document.addEventListener('DOMContentLoaded', initFilters);
"""


def _page(title: str, body: str, script: str = "") -> str:
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{CSS}</style>"
        + (f"<script>{script}</script>" if script else "")
        + f"</head><body>{body}</body></html>"
    )


def _rank_cell(fs: int | None, fin: int | None) -> str:
    if fin is None or fs is None:
        return f"<span class='rank'>{fin or fs or '-'}</span>"
    cls = "up" if fin < fs else "down" if fin > fs else ""
    return f"<span class='rank {cls}'>{fin}</span> (first stage {fs})"


def _window_legend(v: QueryView, ids: list[str], imgs: _Images) -> str:
    """The window's candidates as the model numbered them (tool index k = candidate k)."""
    by_id = {c.id: c for c in v.sample.candidates}
    out = ["<div class='legend'>"]
    for k, did in enumerate(ids, 1):
        c = by_id.get(did)
        gt = " gt" if did in v.positives else ""
        if c is not None and c.image:
            out.append(
                f"<div class='{gt.strip()}' title='{_e(did)}'>{imgs.tag(c.image, did, LEGEND_THUMB)}"
                f"<b>{k}</b>{' ✔' if gt else ''}</div>"
            )
        else:
            text = (c.text or "") if c else did
            out.append(
                f"<div class='txt{gt}' title='{_e(did)}'><b>{k}</b>{' ✔' if gt else ''} {_e(text[:90])}</div>"
            )
    out.append("</div>")
    return "".join(out)


def _source_image(s: Sample, window_ids: list[str], idx: int) -> str | None:
    """The file behind tool image index ``idx`` of a window: 0 the query image, k candidate k."""
    if idx == 0:
        return s.query.images[-1] if s.query.images else None
    if not 1 <= idx <= len(window_ids):
        return None
    c = next((c for c in s.candidates if c.id == window_ids[idx - 1]), None)
    return c.image if c else None


def _index_name(idx: int, window_ids: list[str]) -> str:
    if idx == 0:
        return "image 0 (the query)"
    if 1 <= idx <= len(window_ids):
        return f"image {idx} ({window_ids[idx - 1]})"
    return f"image {idx}"


def _assistant_turn(t: dict[str, Any]) -> str:
    p = t.get("parsed") or {}
    kind = p.get("kind")
    label = {"tool_call": "tool call", "answer": "answer", "malformed": "malformed turn"}.get(kind, "turn")
    extra = ""
    if kind == "answer" and p.get("answer") is not None:
        extra = f" · ranking {_e(p['answer'])}"
    if kind == "tool_call" and p.get("tool_call"):
        tc = p["tool_call"]
        extra = f" · {_e(tc.get('name'))}({_e(json.dumps(tc.get('arguments'), ensure_ascii=False))})"
    if p and not p.get("well_formed", True):
        problems = "; ".join(p.get("problems") or []) or "not well formed"
        extra += f" · <span class='bad'>{_e(problems)}</span>"
    return f"<div class='turn assistant'><span class='who'>assistant: {label}</span>{extra}<pre>{_e(t['text'])}</pre></div>"


def _figure(imgs: _Images, src: str | Path, caption: str, cls: str, box: tuple | None = None) -> str:
    """A tool image as a thumbnail that links to a larger copy (what the model saw, in detail)."""
    tag = imgs.tag(src, caption, TOOL_THUMB, cls, box)
    if imgs.thumb(src, TOOL_THUMB, box) is not None:
        tag = f"<a href='{imgs.thumb(src, LARGE, box)}' target='_blank'>{tag}</a>"
    return f"<figure>{tag}<figcaption>{_e(caption)}</figcaption></figure>"


def _tool_turn(t: dict[str, Any], v: QueryView, ids: list[str], imgs: _Images, traj_img: Path) -> str:
    tool = t.get("tool") or {}
    name = tool.get("name") or "?"
    if tool.get("error") or not tool.get("valid", True):
        return (
            f"<div class='turn tool invalid'><span class='who'>tool {_e(name)}: invalid call</span> "
            f"<span class='bad'>{_e(tool.get('error') or '')}</span><pre>{_e(t['text'])}</pre></div>"
        )
    indices = tool.get("indices") or []
    out = [f"<div class='turn tool'><span class='who'>tool {_e(name)}</span> "]
    if name == "crop_image" and indices:
        out.append(
            f"of {_e(_index_name(indices[0], ids))}, box {_e(tool.get('box'))} (source pixels, padded)"
        )
    elif indices:
        out.append("returned " + ", ".join(_e(_index_name(i, ids)) for i in indices))
    out.append("<br>")
    for j, fname in enumerate(t.get("images", [])):
        if name == "select_images" and j < len(indices):
            cap = _index_name(indices[j], ids)
        elif name == "crop_image":
            cap = "the zoomed crop the model saw"
        else:
            cap = f"image {j + 1}"
        out.append(_figure(imgs, traj_img / fname, cap, "toolimg"))
    if name == "crop_image" and tool.get("box") and indices:
        src = _source_image(v.sample, ids, indices[0])
        if src:
            out.append(_figure(imgs, src, "the box on the source image", "boxed", tuple(tool["box"])))
    out.append("</div>")
    return "".join(out)


def _query_html(v: QueryView, imgs: _Images, traj_img: Path) -> str:
    s = v.sample
    fs_r, fin_r = v.best_rank(v.first_stage), v.best_rank(v.final)
    out = [
        f'<div class="q" id="q-{_e(s.id)}" data-qid="{_e(s.id)}" data-task="{_e(v.task)}" '
        f'data-failure="{int(v.failure)}" data-tools="{int(v.used_tools)}">'
    ]
    if v.final is None:
        status = " <span class='meta'>(first stage only)</span>"
    elif not v.positives:
        status = ""
    else:
        status = ' <span class="ok">✔ top-1</span>' if fin_r == 1 else ' <span class="bad">✘ not top-1</span>'
    out.append(f"<h3>{_e(s.id)}{status}</h3>")
    meta = [
        f"ground truth rank: first stage {fs_r or '-'}"
        + ("" if v.final is None else f" → final {fin_r or '-'}"),
    ]
    if v.episodes:
        meta.append(
            f"{len(v.episodes)} episode(s) · tool calls: {v.valid_calls} valid, {v.invalid_calls} invalid"
        )
    out.append(f"<div class='meta'>{' · '.join(meta)}</div>")
    if s.query.instruction:
        out.append(f"<div class='meta'>instruction: {_e(s.query.instruction)}</div>")
    out.append("<div class='query'><b>Query:</b> ")
    out += [imgs.tag(p, "query image") for p in s.query.images]
    out.append(f" {_e(s.query.text or '')}</div>")
    shown = {c.id for c in s.candidates}
    absent = [p for p in s.positives if p not in shown]
    if absent and len(absent) == len(v.positives):
        out.append(
            f"<div class='meta bad'>the ground truth ({_e(', '.join(absent[:5]))}) is not among the "
            f"{len(s.candidates)} first-stage candidates: reranking cannot find it</div>"
        )
    final_rank = {d: i for i, d in enumerate(v.final or [], 1)}
    fs_rank = {d: i for i, d in enumerate(v.first_stage, 1)}
    by_id = {c.id: c for c in s.candidates}
    order = [d for d in (v.final or v.first_stage) if d in by_id]
    order += [c.id for c in s.candidates if c.id not in set(order)]
    out.append("<div class='cands'>")
    for did in order:
        c = by_id[did]
        gt = did in v.positives
        out.append(f"<div class='cand{' gt' if gt else ''}' data-did='{_e(did)}'>")
        if c.image:
            out.append(imgs.tag(c.image, did))
        rank = (
            _rank_cell(fs_rank.get(did), final_rank.get(did))
            if v.final is not None
            else f"<span class='rank'>{fs_rank.get(did, '-')}</span> (first stage)"
        )
        out.append(
            f"<div>{rank}{' · <b>ground truth</b>' if gt else ''}</div>"
            f"<div class='meta'>{_e(did)}</div><div>{_e((c.text or '')[:160])}</div></div>"
        )
    out.append("</div>")
    for w, ep in enumerate(v.episodes):
        ids = ep.get("candidate_ids", [])
        start = ep.get("window_start", 0)
        end = ep.get("end_reason") or ""
        bad = ep.get("failed")
        calls = f"{ep.get('n_valid_calls', 0)} valid / {ep.get('n_invalid_calls', 0)} invalid tool calls"
        head = (
            f"episode {w + 1} of {len(v.episodes)}: window of positions {start + 1}-{start + len(ids)} · {calls} · "
            f"ended: {_e(end)}" + (f" <span class='bad'>(engine failure: {_e(bad)})</span>" if bad else "")
        )
        out.append(f"<details class='ep' open><summary>{head}</summary>")
        out.append(
            "<div class='meta'>the window as the model saw it (tool image k = candidate k; 0 = the query):</div>"
        )
        out.append(_window_legend(v, ids, imgs))
        for t in ep.get("turns", []):
            if t["role"] == "assistant":
                out.append(_assistant_turn(t))
            else:
                out.append(_tool_turn(t, v, ids, imgs, traj_img))
        out.append("</details>")
    out.append("</div>")
    return "".join(out)


# ------------------------------------------------------------------ index


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _summary_html(results: Path) -> tuple[str, dict[str, Any]]:
    summary = results / "summary.json"
    if not summary.is_file():
        return "", {}
    data = json.loads(summary.read_text(encoding="utf-8"))
    cfg = data.get("config", {})
    head = "<tr><th>task</th><th>queries</th><th>metric</th><th>first stage</th><th>reranked</th><th>Δ</th>"
    head += "<th>R@1</th><th>R@5</th><th>R@10</th></tr>"
    rows = ["<table class='summary'>", head]
    for name, e in data["tasks"].items():
        m = e["metric"]
        fs = e["first_stage"].get(m)
        rr = (e.get("reranked") or {}).get(m)
        d = None if rr is None or fs is None else rr - fs
        shown = e.get("reranked") or e["first_stage"]
        rows.append(
            f"<tr><td><a href='#task-{_e(name)}'>{_e(name)}</a></td><td>{e['n_queries']}</td>"
            f"<td>{_e(m)}</td><td>{_pct(fs)}</td><td>{_pct(rr)}</td><td>{'-' if d is None else f'{100 * d:+.1f}'}</td>"
            + "".join(f"<td>{_pct(shown.get(k))}</td>" for k in ("R@1", "R@5", "R@10"))
            + "</tr>"
        )
    avg = data.get("average") or {}
    if len(data["tasks"]) > 1 and avg.get("first_stage") is not None:
        fs, rr = avg.get("first_stage"), avg.get("reranked")
        d = None if rr is None else rr - fs
        rows.append(
            f"<tr><td><b>average</b></td><td></td><td></td><td>{_pct(fs)}</td><td>{_pct(rr)}</td>"
            f"<td>{'-' if d is None else f'{100 * d:+.1f}'}</td><td></td><td></td><td></td></tr>"
        )
    rows.append("</table>")
    setting = (
        f"first stage: {_e(cfg.get('retriever', '?'))}, top-{_e(cfg.get('top_n') or '?')}; reranker: "
        f"{_e(cfg.get('reranker') or 'none (first stage only)')}"
    )
    src = f"<p class='meta'>{setting}. R@k columns: the reranked list when there is one. Settings: config.json</p>"
    return "<h2>Summary</h2>" + "".join(rows) + src, cfg


def _episode_stats_html(views: dict[str, list[QueryView]]) -> str:
    rows = []
    for task, vs in views.items():
        eps = [e for v in vs for e in v.episodes]
        if not eps:
            continue
        n = len(eps)
        answered = sum(bool(e.get("answer") is not None) for e in eps)
        with_tools = sum(bool(e.get("n_valid_calls", 0) + e.get("n_invalid_calls", 0)) for e in eps)
        valid = sum(e.get("n_valid_calls", 0) for e in eps)
        invalid = sum(e.get("n_invalid_calls", 0) for e in eps)
        failed = sum(bool(e.get("failed")) for e in eps)
        rows.append(
            f"<tr><td>{_e(task)}</td><td>{n}</td><td>{100 * answered / n:.0f}%</td><td>{100 * with_tools / n:.0f}%</td>"
            f"<td>{valid / n:.2f}</td><td>{invalid / n:.2f}</td><td>{failed}</td></tr>"
        )
    if not rows:
        return ""
    head = (
        "<tr><th>task</th><th>episodes</th><th>answered</th><th>called a tool</th><th>valid calls / episode</th>"
        "<th>invalid calls / episode</th><th>engine failures</th></tr>"
    )
    return "<h2>Episodes</h2><table>" + head + "".join(rows) + "</table>"


def _plots(views: dict[str, list[QueryView]], out: Path) -> list[str]:
    from vretrver.report import plots

    all_views = [v for vs in views.values() for v in vs]
    changes = [
        v.best_rank(v.first_stage) - v.best_rank(v.final)
        for v in all_views
        if v.final and v.best_rank(v.first_stage) and v.best_rank(v.final)
    ]
    eps = [e for v in all_views for e in v.episodes]
    if not eps and not changes:
        return []
    plots.rank_change_histogram(changes, out / "rank_change.png")
    plots.tool_calls_histogram(
        [e.get("n_valid_calls", 0) for e in eps],
        [e.get("n_invalid_calls", 0) for e in eps],
        out / "tool_calls.png",
    )
    scored = [v for v in all_views if v.final and v.positives]
    plots.recall_by_tool_calls(
        [v.valid_calls for v in scored],
        [float(v.best_rank(v.final) == 1) for v in scored],
        out / "recall_by_tools.png",
    )
    return ["rank_change.png", "tool_calls.png", "recall_by_tools.png"]


def _page_name(task: str, i: int) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in task)
    return f"{safe}-{i + 1:03d}.html"


def _counts(vs: list[QueryView]) -> dict[str, int]:
    return {
        "n": len(vs),
        "nf": sum(v.failure for v in vs),
        "nt": sum(v.used_tools for v in vs),
        "nft": sum(v.failure and v.used_tools for v in vs),
    }


def _page_link(task: str, i: int, vs: list[QueryView], label: str, current: bool = False) -> str:
    data = " ".join(f"data-{k}='{n}'" for k, n in _counts(vs).items())
    inner = f"<b>{_e(label)}</b>" if current else _e(label)
    return f"<a href='{_page_name(task, i)}' data-page='{_page_name(task, i)}' {data}>{inner}</a>"


def _banners(tiny: bool, note: str | None) -> str:
    out = ""
    if tiny:
        out += f"<p class='banner'><b>{_e(TINY_NOTE)}</b></p>"
    if note:
        out += f"<div class='note'>{_e(note)}</div>"
    return out


def write_report(
    results: str | Path,
    page_size: int = 25,
    progress: bool = True,
    note: str | None = None,
    tasks: list[str] | None = None,
    max_queries: int | None = None,
) -> Path:
    """Write ``RESULTS/report/index.html`` (with its pages, images and plots); return its path.

    ``note`` is shown at the top of every page (e.g. why a run has no reranking). ``tasks`` keeps only
    those tasks; ``max_queries`` writes pages for the first N queries of each task (tables and plots
    still count them all), for runs too large to browse whole.
    """
    if page_size < 1:
        raise ValueError(f"page_size must be >= 1, got {page_size}")
    if max_queries is not None and max_queries < 1:
        raise ValueError(f"max_queries must be >= 1, got {max_queries}")
    results = Path(results)
    views = load_views(results)
    if tasks:
        unknown = sorted(set(tasks) - set(views))
        if unknown:
            raise ValueError(f"{results}: no task {', '.join(unknown)}; the folder holds {', '.join(views)}")
        views = {t: vs for t, vs in views.items() if t in tasks}
    out = results / "report"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    known = {p for vs in views.values() for v in vs for p in v.sample.query.images}
    known |= {c.image for vs in views.values() for v in vs for c in v.sample.candidates if c.image}
    imgs = _Images(out / "img", results, known)
    traj_img = results / "trajectories" / "img"
    summary_html, cfg = _summary_html(results)
    tiny = cfg.get("reranker") == "tiny"
    plot_files = _plots(views, out)
    index = [f"<h1>vretrver report: {_e(results.name)}</h1>", _banners(tiny, note), summary_html]
    index.append(_episode_stats_html(views))
    if plot_files:
        index.append(
            "<h2>Plots</h2><div class='plots'>"
            + "".join(f"<img src='{p}' alt='{p}'>" for p in plot_files)
            + "</div>"
        )
    index.append("<h2>Queries</h2>")
    shown = {task: vs[:max_queries] if max_queries else vs for task, vs in views.items()}
    paged = {
        task: [vs[i : i + page_size] for i in range(0, len(vs), page_size)] or [[]]
        for task, vs in shown.items()
    }
    bar = tqdm(total=sum(len(v) for v in shown.values()), desc="report", disable=not progress)
    for task, vs in views.items():
        pages = paged[task]
        c = _counts(vs)
        cut = f" (for the first {len(shown[task])})" if len(shown[task]) < len(vs) else ""
        links = " ".join(
            _page_link(task, i, p, f"{i * page_size + 1}-{i * page_size + len(p)}")
            for i, p in enumerate(pages)
        )
        index.append(
            f"<h3 id='task-{_e(task)}'>{_e(task)}</h3><p>{c['n']} queries · {c['nf']} failures (ground truth not "
            f"first) · {c['nt']} used tools · pages{cut}: {links} · "
            f"<a href='{_page_name(task, 0)}?only=failures'>failures only</a> · "
            f"<a href='{_page_name(task, 0)}?only=tools'>tool users only</a></p>"
        )
        options = "".join(
            f"<option data-page='{_page_name(t, 0)}' value='{_page_name(t, 0)}'{' selected' if t == task else ''}>"
            f"{_e(t)}</option>"
            for t in views
        )
        for i, page in enumerate(pages):
            nav = " ".join(_page_link(task, k, p, str(k + 1), current=k == i) for k, p in enumerate(pages))
            body = [
                f"<p><a href='index.html'>← summary</a> · task <select id='task' "
                f"onchange='location.href=this.value'>{options}</select> · page <span class='nav'>{nav}</span></p>",
                _banners(tiny, note),
                "<div class='filters'><label><input type='checkbox' id='only-failures' onchange='applyFilters()'> "
                "only failures (ground truth not first)</label> <label><input type='checkbox' id='only-tools' "
                f"onchange='applyFilters()'> only queries whose episodes called tools</label> · shown: "
                f"<span id='shown'>{len(page)}</span> of {len(page)} on this page</div>",
            ]
            for v in page:
                body.append(_query_html(v, imgs, traj_img))
                bar.update(1)
            atomic_write_text(
                out / _page_name(task, i), _page(f"{task} page {i + 1}", "".join(body), FILTER_JS)
            )
    bar.close()
    index.append(_problems_html(imgs))
    if imgs.problems:
        src, why = sorted(imgs.problems.items())[0]
        print(
            f"[view] {len(imgs.problems)} image files could not be shown (first: {src}: {why}); "
            f"listed in {out / 'index.html'}",
            file=sys.stderr,
        )
    atomic_write_text(out / "index.html", _page(f"vretrver report: {results.name}", "".join(index)))
    return out / "index.html"


def first_page(report_index: Path, task: str | None = None) -> Path:
    """The first query page of ``task`` (default: the first task) beside ``report/index.html``."""
    pages = [
        p for p in iter_report_pages(report_index.parent) if task is None or p.name == _page_name(task, 0)
    ]
    if not pages:
        raise FileNotFoundError(f"no query pages beside {report_index}")
    return pages[0]


def iter_report_pages(report_dir: Path) -> Iterable[Path]:
    return sorted(p for p in report_dir.glob("*.html") if p.name != "index.html")
