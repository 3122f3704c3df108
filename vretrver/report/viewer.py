"""A static HTML report over an evaluation (or demo, or single-query) result folder.

No server: ``report/index.html`` opens from disk. It holds the summary table, episode statistics and the
plots, and links to pages of queries (``page_size`` per page, one series of pages per task). Each query
shows its text and images, the candidates as thumbnails with first-stage and final rank (ground truth
marked), and every episode (one per window) with the window's numbered candidates and every turn in
order: the assistant's text and the images each tool returned (a crop also as its box drawn on the source
image). A filter bar keeps only failures and / or only queries whose episodes called tools; the filter
lives in the address (``page.html?only=failures,tools``), so it survives paging, and the page links show
how many queries of each page pass it. Every image is written as a file under ``report/img/``.

The markup, style and script are Jinja templates in ``report/templates/``, rendered with autoescaping:
this module only gathers what each page shows.
"""

from __future__ import annotations

import functools
import json
import shutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup
from tqdm.auto import tqdm

from vretrver.report.overview import episode_stats, summary_table, write_plots
from vretrver.report.result_folder import QueryView, load_views
from vretrver.report.thumbnails import LEGEND_THUMB, Picture, Thumbnails
from vretrver.samples import Sample, atomic_write_text, safe_name
from vretrver.tools import describe_call

TINY_NOTE = (
    "The reranker is a tiny randomly initialised model: its reranked numbers are meaningless; "
    "they only show that the pipeline runs end to end."
)
PROBLEMS_LISTED = 50  # images without a thumbnail named on the index; the rest are counted


@functools.cache
def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("vretrver.report", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.globals["tiny_note"] = TINY_NOTE
    return env


def _render(template: str, **context: Any) -> str:
    return _templates().get_template(template).render(**context)


# ------------------------------------------------------------------ one query


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


def _assistant_turn(t: dict[str, Any]) -> dict[str, Any]:
    p = t.get("parsed") or {}
    kind = p.get("kind")
    label = {"tool_call": "tool call", "answer": "answer", "malformed": "malformed turn"}.get(kind, "turn")
    ranking = str(p["answer"]) if kind == "answer" and p.get("answer") is not None else None
    call = None
    if kind == "tool_call" and p.get("tool_call"):
        tc = p["tool_call"]
        call = f"{tc.get('name')}({json.dumps(tc.get('arguments'), ensure_ascii=False)})"
    problems = None
    if p and not p.get("well_formed", True):
        problems = "; ".join(p.get("problems") or []) or "not well formed"
    return {"role": "assistant", "label": label, "ranking": ranking, "call": call, "problems": problems,
            "text": t["text"]}  # fmt: skip


def _tool_turn(
    t: dict[str, Any], s: Sample, ids: list[str], imgs: Thumbnails, traj_img: Path
) -> dict[str, Any]:
    tool = t.get("tool") or {}
    name = tool.get("name") or "?"
    turn: dict[str, Any] = {"role": "tool", "name": name, "text": t["text"], "invalid": False}
    if tool.get("error") or not tool.get("valid", True):
        return {**turn, "invalid": True, "error": tool.get("error") or ""}
    indices = tool.get("indices") or []
    images = t.get("images", [])
    # Headings and captions come from the tool's record (vretrver.tool_registry), so a new tool brings its own.
    cap = describe_call(name, indices, tool.get("box"), len(images), lambda i: _index_name(i, ids))
    what = cap.heading
    figures: list[Picture] = [
        imgs.figure(traj_img / fname, caption, "toolimg") for fname, caption in zip(images, cap.images)
    ]
    if cap.box:
        src = _source_image(s, ids, indices[0])
        if src:
            figures.append(imgs.figure(src, cap.box, "boxed", tuple(tool["box"])))
    return {**turn, "what": what, "figures": figures}


def _episode(ep: dict[str, Any], v: QueryView, imgs: Thumbnails, traj_img: Path) -> dict[str, Any]:
    ids = ep.get("candidate_ids", [])
    start = ep.get("window_start", 0)
    by_id = {c.id: c for c in v.sample.candidates}
    legend = []  # the window's candidates as the model numbered them (tool index k = candidate k)
    for did in ids:
        c = by_id.get(did)
        item = {"id": did, "gt": did in v.positives, "pic": None, "text": ""}
        if c is not None and c.image:
            item["pic"] = imgs.picture(c.image, did, LEGEND_THUMB)
        else:
            item["text"] = ((c.text or "") if c else did)[:90]
        legend.append(item)
    turns = [
        _assistant_turn(t) if t["role"] == "assistant" else _tool_turn(t, v.sample, ids, imgs, traj_img)
        for t in ep.get("turns", [])
    ]
    return {
        "first": start + 1,
        "last": start + len(ids),
        "valid": ep.get("n_valid_calls", 0),
        "invalid": ep.get("n_invalid_calls", 0),
        "end": ep.get("end_reason") or "",
        "failed": ep.get("failed"),
        "legend": legend,
        "turns": turns,
    }


def _candidates(v: QueryView, imgs: Thumbnails) -> list[dict[str, Any]]:
    """The candidates in final order (first-stage order when not reranked), with both ranks."""
    s = v.sample
    final_rank = {d: i for i, d in enumerate(v.final or [], 1)}
    fs_rank = {d: i for i, d in enumerate(v.first_stage, 1)}
    by_id = {c.id: c for c in s.candidates}
    order = [d for d in (v.final or v.first_stage) if d in by_id]
    order += [c.id for c in s.candidates if c.id not in set(order)]
    out = []
    for did in order:
        c = by_id[did]
        fs, fin = fs_rank.get(did), final_rank.get(did)
        move = "" if fs is None or fin is None else "up" if fin < fs else "down" if fin > fs else ""
        out.append(
            {
                "id": did,
                "gt": did in v.positives,
                "pic": imgs.picture(c.image, did) if c.image else None,
                "reranked": v.final is not None,
                "first_stage": fs,
                "final": fin,
                "move": move,
                "text": (c.text or "")[:160],
            }
        )
    return out


def _query_html(v: QueryView, imgs: Thumbnails, traj_img: Path) -> Markup:
    s = v.sample
    fs_r, fin_r = v.best_rank(v.first_stage), v.best_rank(v.final)
    if v.final is None:
        status = "first stage only"
    elif not v.positives:
        status = ""
    else:
        status = "top-1" if fin_r == 1 else "not top-1"
    meta = [
        f"ground truth rank: first stage {fs_r or '-'}"
        + ("" if v.final is None else f" → final {fin_r or '-'}")
    ]
    if v.episodes:
        meta.append(
            f"{len(v.episodes)} episode(s) · tool calls: {v.valid_calls} valid, {v.invalid_calls} invalid"
        )
    shown = {c.id for c in s.candidates}
    absent = [p for p in s.positives if p not in shown]
    q = {
        "id": s.id,
        "task": v.task,
        "failure": int(v.failure),
        "tools": int(v.used_tools),
        "status": status,
        "meta": meta,
        "instruction": s.query.instruction,
        "images": [imgs.picture(p, "query image") for p in s.query.images],
        "text": s.query.text or "",
        # Named when no ground truth made the first stage's cut: reranking cannot help such a query.
        "absent": absent[:5] if absent and len(absent) == len(v.positives) else [],
        "n_candidates": len(s.candidates),
        "candidates": _candidates(v, imgs),
        "episodes": [_episode(ep, v, imgs, traj_img) for ep in v.episodes],
    }
    return Markup(_render("query.html", q=q))


# ------------------------------------------------------------------ pages


def _page_name(task: str, i: int) -> str:
    return f"{safe_name(task)}-{i + 1:03d}.html"


def _counts(vs: list[QueryView]) -> dict[str, int]:
    """How many queries pass each filter: all, failures, tool users, both (the page links' data-n*)."""
    return {
        "n": len(vs),
        "nf": sum(v.failure for v in vs),
        "nt": sum(v.used_tools for v in vs),
        "nft": sum(v.failure and v.used_tools for v in vs),
    }


@dataclass
class _Task:
    """One task's series of query pages."""

    name: str
    views: list[QueryView]  # every query (the counts)
    pages: list[list[QueryView]]  # the queries that get pages, page by page
    page_size: int

    def links(self, numbered: bool) -> list[dict[str, Any]]:
        """Links to the pages, labelled by page number or by the range of queries they hold."""
        return [
            {
                "page": _page_name(self.name, i),
                "counts": _counts(p),
                "label": str(i + 1)
                if numbered
                else f"{i * self.page_size + 1}-{i * self.page_size + len(p)}",
            }
            for i, p in enumerate(self.pages)
        ]

    def index_entry(self) -> dict[str, Any]:
        n_shown = sum(len(p) for p in self.pages)
        return {
            "task": self.name,
            "counts": _counts(self.views),
            "cut": f" (for the first {n_shown})" if n_shown < len(self.views) else "",
            "links": self.links(numbered=False),
            "first_page": _page_name(self.name, 0),
        }


def _tasks(views: dict[str, list[QueryView]], page_size: int, max_queries: int | None) -> list[_Task]:
    out = []
    for task, vs in views.items():
        shown = vs[:max_queries] if max_queries else vs
        pages = [shown[i : i + page_size] for i in range(0, len(shown), page_size)] or [[]]
        out.append(_Task(task, vs, pages, page_size))
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
    imgs = Thumbnails(out / "img", results, known)
    summary, cfg = summary_table(results)
    common = {"tiny": cfg.get("reranker") == "tiny", "note": note, "filters": False}
    series = _tasks(views, page_size, max_queries)
    _write_query_pages(series, out, imgs, results / "trajectories" / "img", common, progress)
    problems = sorted(imgs.problems.items())
    if problems:
        src, why = problems[0]
        print(
            f"[view] {len(problems)} image files could not be shown (first: {src}: {why}); "
            f"listed in {out / 'index.html'}",
            file=sys.stderr,
        )
    index = _render(
        "index.html",
        title=f"vretrver report: {results.name}",
        summary=summary,
        episode_stats=episode_stats(views),
        plots=write_plots(views, out),
        tasks=[t.index_entry() for t in series],
        problems=problems,
        problem_limit=PROBLEMS_LISTED,
        **common,
    )
    atomic_write_text(out / "index.html", index)
    return out / "index.html"


def _write_query_pages(
    series: list[_Task], out: Path, imgs: Thumbnails, traj_img: Path, common: dict[str, Any], progress: bool
) -> None:
    options = [{"task": t.name, "page": _page_name(t.name, 0)} for t in series]
    bar = tqdm(total=sum(len(p) for t in series for p in t.pages), desc="report", disable=not progress)
    for t in series:
        links = t.links(numbered=True)
        for i, page in enumerate(t.pages):
            queries = []
            for v in page:
                queries.append(_query_html(v, imgs, traj_img))
                bar.update(1)
            html = _render(
                "page.html",
                **{**common, "filters": True},
                title=f"{t.name} page {i + 1}",
                task=t.name,
                task_options=options,
                links=links,
                page_index=i,
                queries=queries,
            )
            atomic_write_text(out / _page_name(t.name, i), html)
    bar.close()


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
