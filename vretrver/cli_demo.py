"""``vretrver demo`` (the main job on the embedded Tux Paint benchmark; ``--reranker nano``: V-Retrver-nano
on its synthetic benchmark), ``vretrver rerank`` (one query) and ``vretrver view`` (the HTML report of any
result folder)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from vretrver.engines.factory import RERANK_ENGINES
from vretrver.jsonl import SampleError, iter_jsonl, read_appended, write_jsonl
from vretrver.samples import Candidate, Query, Sample, TaskData, write_samples

DEFAULT_RERANKER = "V-Retrver/V-Retrver-7B"
DEMO_LIMIT = 50  # queries per task
DEMO_TOP_N = 10
DEMO_OUT = "runs/demo"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}
# A checkpoint with more weights than this is not run on a CPU unless the engine is told to (device "cpu").
CPU_LIMIT_BYTES = 4 * 2**30


def _engine_args(ns: argparse.Namespace) -> dict:
    from vretrver.cli import json_object_option

    return json_object_option(getattr(ns, "engine_args", None), "--engine-args", '{"device": "cuda"}')


def _has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def reranker_unavailable(reranker: str, engine: str, engine_args: dict | None = None) -> str | None:
    """Why ``reranker`` cannot be run here (None if it can): not downloadable, no GPU, too little GPU memory.

    Nothing large is downloaded on a machine that could not run the checkpoint anyway.
    """
    if reranker == "tiny" or engine == "openai":
        return None
    on_cpu = (engine_args or {}).get("device") == "cpu"
    gpu = _has_gpu()
    path = Path(reranker).expanduser()
    if not path.is_dir() and (reranker.startswith((".", "/", "~")) or reranker.count("/") > 1):
        return f"there is no checkpoint folder {reranker} (and it is not a hub id of the form owner/name)"
    if not path.is_dir():
        try:
            from huggingface_hub import snapshot_download
        except ImportError:
            return "the huggingface_hub package is not installed, so the checkpoint cannot be fetched"
        try:
            path = Path(snapshot_download(reranker, local_files_only=True))
        except Exception:  # not in the local cache: a download is needed
            if not gpu and not on_cpu:
                return f"the checkpoint {reranker!r} is not downloaded and this machine has no GPU to run it"
            if os.environ.get("HF_HUB_OFFLINE") == "1":
                return f"the checkpoint {reranker!r} is not in the local cache and HF_HUB_OFFLINE=1 forbids a download"
            try:
                path = Path(snapshot_download(reranker))
            except Exception as e:  # no network, unknown id, gated repo ...
                first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")[:120]
                return (
                    f"the checkpoint {reranker!r} could not be downloaded: the model hub is not reachable or "
                    f"does not hold it ({type(e).__name__}: {first})"
                )
    size = sum(f.stat().st_size for f in path.glob("*.safetensors")) + sum(
        f.stat().st_size for f in path.glob("*.bin")
    )
    if not gpu and not on_cpu and size > CPU_LIMIT_BYTES:
        return f"the checkpoint ({size / 2**30:.0f} GB of weights) needs a GPU and none is visible"
    if gpu and not on_cpu:
        import torch

        free, _ = torch.cuda.mem_get_info()
        if size * 1.15 > free:  # weights plus room for activations and the KV cache
            return f"the GPU has {free / 2**30:.0f} GB free; the checkpoint needs more than {size / 2**30:.0f} GB"
    return None


def unavailable_message(why: str, what_ran: str, command: str, tiny_command: str) -> str:
    """One paragraph: why nothing was reranked, what ran instead, and the command that would rerank."""
    return (
        f"No reranking in this run: {why}. {what_ran} To rerank with this checkpoint, run on a machine with a "
        "GPU (a 7B checkpoint needs about 20 GB of GPU memory) that can reach the model hub or holds the "
        f"checkpoint (--reranker /path/to/folder):\n\n    {command}\n\n"
        '(--engine hf --engine-args \'{"device": "cuda"}\' works without vLLM.) '
        f"`{tiny_command}` runs the reranking mechanics here with a tiny random model "
        "(its numbers are meaningless)."
    )


def cmd_demo(ns: argparse.Namespace) -> int:
    from vretrver.evaluate import EvalConfig, evaluate
    from vretrver.protocol.profile import checkpoint_profile
    from vretrver.report.viewer import TINY_NOTE, write_report

    reranker: str | None = ns.reranker
    if reranker == "nano" or reranker.startswith("nano:"):
        return cmd_demo_nano(ns)
    engine_args = _engine_args(ns)
    message = None
    why = reranker_unavailable(reranker, ns.engine, engine_args)
    if why:
        same = "".join(  # the options this run was given, so the suggested runs match it
            f" --{opt.replace('_', '-')} {shlex.quote(str(getattr(ns, opt)))}"
            for opt, default in (
                ("limit", DEMO_LIMIT),
                ("top_n", DEMO_TOP_N),
                ("out", DEMO_OUT),
                ("profile", None),
            )
            if getattr(ns, opt) != default
        )
        message = unavailable_message(
            why,
            "The first stage ran and is scored and reported as usual.",
            f"vretrver demo --reranker {shlex.quote(reranker)} --engine vllm{same}",
            f"vretrver demo --reranker tiny{same}",
        )
        print(f"[demo] {why}: running the first stage only (details at the end)", file=sys.stderr)
        reranker = None
    tiny = reranker == "tiny"
    cfg = EvalConfig(
        benchmark="tuxpaint",
        profile=checkpoint_profile(reranker, ns.profile),
        limit=ns.limit,
        retriever="offline",
        reranker=reranker,
        engine=ns.engine,
        engine_args=engine_args,
        top_n=ns.top_n,
        max_new_tokens=ns.max_new_tokens or (48 if tiny else 1024),
        chunk_queries=8,  # small chunks: the progress bar moves and an interrupted run loses little
        # One embedding cache for every demo setting (each setting gets its own result folder).
        cache_dir=str(Path(ns.out) / "cache"),
    )
    out, summary = evaluate(cfg, ns.out, progress=True)
    report = write_report(out, note=message)
    print((out / "summary.md").read_text(encoding="utf-8"))
    if tiny:
        print(f"NOTE: {TINY_NOTE}\n")
    if message:
        print(message + "\n")
    print(f"results: {out}\nreport:  {report}")
    return 0


def cmd_demo_nano(ns: argparse.Namespace) -> int:
    """``vretrver demo --reranker nano[:PATH]``: V-Retrver-nano (trained on first use) on the synthetic
    nano benchmark, with the settings run_nano.sh evaluates it with, on the CPU."""
    from vretrver.evaluate import EvalConfig, evaluate
    from vretrver.nano.trained import NANO_NOTE, TrainingFailed, eval_settings, trained_checkpoint
    from vretrver.report.viewer import write_report

    try:
        checkpoint = trained_checkpoint(ns.reranker)
    except TrainingFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    cfg = EvalConfig(
        **eval_settings(),
        limit=ns.limit,
        reranker=str(checkpoint),
        engine=ns.engine,
        engine_args={"device": "cpu"} if ns.engine_args is None else _engine_args(ns),  # 1.5M parameters
        profile=ns.profile or "nano",
        max_new_tokens=ns.max_new_tokens or 96,
        chunk_queries=8,
        cache_dir=str(Path(ns.out) / "cache"),
    )
    out, _ = evaluate(cfg, ns.out, progress=True)
    summary = out / "summary.md"
    # The result folder says what its numbers are, as the console and the report do.
    summary.write_text(summary.read_text(encoding="utf-8") + f"\nNOTE: {NANO_NOTE}\n", encoding="utf-8")
    report = write_report(out, note=NANO_NOTE)
    print(summary.read_text(encoding="utf-8"))
    print(f"results: {out}\nreport:  {report}")
    return 0


# ------------------------------------------------------------------ one query


def _candidates_from_args(ns: argparse.Namespace) -> list[Candidate]:
    cands: list[Candidate] = []
    if ns.candidates_jsonl:
        base = Path(ns.candidates_jsonl).resolve().parent
        for i, (where, d) in enumerate(iter_jsonl(ns.candidates_jsonl), 1):
            cid = d.get("id", f"c{i}")
            if not isinstance(cid, str) or not cid:
                raise SampleError(f"{where}: field 'id': expected a non-empty string")
            img = d.get("image")
            if img is not None and not isinstance(img, str):
                raise SampleError(f"{where}: field 'image': expected a path")
            if not (d.get("text") or img):
                raise SampleError(
                    f"{where}: field 'text'/'image': expected a candidate with text or an image"
                )
            img = img if img is None or os.path.isabs(img) else str(base / img)
            if img is not None and not os.path.isfile(img):
                raise SampleError(f"{where}: field 'image': file not found: {img}")
            cands.append(Candidate(cid, d.get("text"), img))
    paths = list(ns.candidates or [])
    if ns.candidates_dir:
        paths += sorted(
            str(p) for p in Path(ns.candidates_dir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
        )
    for p in paths:
        if not os.path.isfile(p):
            raise SampleError(f"candidate image {p}: file not found")
        cands.append(Candidate(Path(p).name, None, str(Path(p).resolve())))
    if not cands:
        raise SampleError("no candidates: give --candidates, --candidates-dir or --candidates-jsonl")
    seen: set[str] = set()
    for c in cands:
        if c.id in seen:
            raise SampleError(
                f"candidate id {c.id!r} is given twice (ids are jsonl 'id' fields or file names)"
            )
        seen.add(c.id)
    return cands


def _rerank_command(ns: argparse.Namespace, reranker: str, engine: str | None) -> str:
    """``vretrver rerank`` of the same query and candidates with another reranker / engine."""
    parts = ["vretrver", "rerank", "--reranker", reranker] + (["--engine", engine] if engine else [])
    for opt in ("query_text", "query_image", "candidates_dir", "candidates_jsonl"):
        if getattr(ns, opt):
            parts += ["--" + opt.replace("_", "-"), getattr(ns, opt)]
    if ns.candidates:
        parts += ["--candidates", *ns.candidates]
    return " ".join(shlex.quote(p) for p in parts)


def _single_task(ns: argparse.Namespace, cands: list[Candidate]) -> tuple[TaskData, dict[str, Any], Path]:
    """The one query as a task of its own, its first stage (the candidates in the order given) and the
    result folder, written as an evaluation writes them, so that the report reads it like any run."""
    query = Sample(
        id="query",
        query=Query(
            text=ns.query_text, images=[str(Path(ns.query_image).resolve())] if ns.query_image else []
        ),
        task="single",
    )
    task = TaskData("single", [query], {c.id: c for c in cands})
    out = Path(ns.out)
    for sub in ("results", "trajectories"):  # a rerank run always starts fresh
        f = out / sub / "single.jsonl"
        if f.exists():
            f.unlink()
    fs = {query.id: [(c.id, float(len(cands) - i)) for i, c in enumerate(cands)]}
    write_jsonl(
        out / "first_stage" / "single.jsonl",
        [{"qid": "query", "ranked": [c.id for c in cands], "scores": [s for _, s in fs["query"]]}],
    )
    write_samples(out / "samples" / "single.jsonl", [Sample(**{**query.__dict__, "candidates": cands})])
    return task, fs, out


def _print_episodes(path: Path) -> None:
    """Each window's turns, one line each: the assistant's text and what each tool returned."""
    for ep in read_appended(path).rows:
        ids = ep.get("candidate_ids", [])
        start = ep.get("window_start", 0)
        print(
            f"--- window of candidates {start + 1}-{start + len(ids)} (numbered 1-{len(ids)} in the prompt) ---"
        )
        for t in ep["turns"]:
            if t["role"] == "assistant":
                print(f"[assistant] {t['text'].strip()}")
                continue
            tool = t.get("tool") or {}
            if tool.get("error"):
                print(f"[tool {tool.get('name')}] invalid call: {tool['error']}")
            else:
                box = f", box {tool['box']}" if tool.get("box") else ""
                print(f"[tool {tool.get('name')}] returned image(s) {tool.get('indices')}{box}")
        print(f"(episode ended: {ep.get('end_reason')})")


def cmd_rerank(ns: argparse.Namespace) -> int:
    from vretrver.evaluate import EvalConfig, Reranker, rerank_task
    from vretrver.protocol.profile import checkpoint_profile, profile_mismatch_warning
    from vretrver.report.viewer import TINY_NOTE, first_page, write_report

    if not (ns.query_text or ns.query_image):
        raise SystemExit("give the query: --query-text and/or --query-image")
    if ns.query_image and not os.path.isfile(ns.query_image):
        raise SystemExit(f"--query-image {ns.query_image}: file not found")
    cands = _candidates_from_args(ns)
    why = reranker_unavailable(ns.reranker, ns.engine, _engine_args(ns))
    if why:
        tiny = _rerank_command(ns, "tiny", None)
        print(
            unavailable_message(why, "Nothing was reranked.", _rerank_command(ns, ns.reranker, "vllm"), tiny)
        )
        return 2
    task, fs, out = _single_task(ns, cands)
    cfg = EvalConfig(
        benchmark="single",
        reranker=ns.reranker,
        engine=ns.engine,
        engine_args=_engine_args(ns),
        profile=checkpoint_profile(ns.reranker, ns.profile),
        top_n=len(cands),
        max_tool_calls=ns.max_tool_calls,
        temperature=ns.temperature,
        # The tiny random model never stops on its own: keep its turns short unless asked otherwise.
        max_new_tokens=48 if ns.reranker == "tiny" and ns.max_new_tokens == 1024 else ns.max_new_tokens,
        seed=ns.seed,
    )
    cfg.check()
    warning = profile_mismatch_warning(ns.reranker, cfg.profile)
    if warning:
        print(warning, file=sys.stderr)
    reranker = Reranker(cfg)
    try:
        ranked = rerank_task(task, fs, cfg, out, reranker, progress=False)["query"]
    finally:
        reranker.close()
    _print_episodes(out / "trajectories" / "single.jsonl")
    print("\nranking (most relevant first):")
    by_id = {c.id: c for c in cands}
    for i, d in enumerate(ranked, 1):
        c = by_id[d]
        print(f"{i:3d}. {d}" + (f"  {c.text[:80]}" if c.text else ""))
    note = TINY_NOTE if ns.reranker == "tiny" else None
    report = write_report(out, progress=False, note=note)
    print(f"\nHTML view of the episode: {first_page(report)}")
    return 0


def cmd_view(ns: argparse.Namespace) -> int:
    from vretrver.report.viewer import write_report

    report = write_report(ns.results, page_size=ns.page_size, tasks=ns.task, max_queries=ns.max_queries)
    print(f"report: {report}")
    return 0


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    from vretrver.cli import add_rerank_options

    p = sub.add_parser(
        "demo", help="the whole pipeline on the embedded Tux Paint benchmark (or nano), with an HTML report"
    )
    p.add_argument(
        "--reranker",
        default=DEFAULT_RERANKER,
        help="checkpoint folder or hub id; 'tiny' (a tiny random model: the mechanics only); 'nano' "
        "(V-Retrver-nano on its synthetic benchmark, on the CPU; trained on first use with "
        "local_scripts/run_nano.sh, resumable); 'nano:PATH' (a nano checkpoint folder or a run folder of "
        f"run_nano.sh) (default: {DEFAULT_RERANKER})",
    )
    p.add_argument("--limit", type=int, default=DEMO_LIMIT, help=f"queries per task (default: {DEMO_LIMIT})")
    p.add_argument(
        "--top-n",
        type=int,
        default=DEMO_TOP_N,
        help=f"first-stage candidates to rerank (default: {DEMO_TOP_N}; nano: each query's 5 images)",
    )
    p.add_argument("--out", default=DEMO_OUT, help=f"result folder (default: {DEMO_OUT})")
    p.add_argument("--engine", choices=RERANK_ENGINES, default="hf")
    p.add_argument("--engine-args", help="engine settings as JSON")
    p.add_argument("--max-new-tokens", type=int, help="default: 1024 (48 for the tiny model, 96 for nano)")
    p.add_argument(
        "--profile",
        help="prompt profile name or folder (default: official for a released V-Retrver checkpoint, "
        "else v-retrver)",
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("rerank", help="rerank candidates for one query; print the turns; write an HTML view")
    p.add_argument("--query-text")
    p.add_argument("--query-image")
    p.add_argument("--candidates", nargs="*", help="candidate image files")
    p.add_argument("--candidates-dir", help="a folder of candidate images")
    p.add_argument("--candidates-jsonl", help='jsonl lines {"id": ..., "text": ..., "image": ...}')
    p.add_argument("--reranker", required=True, help="checkpoint folder or hub id, or 'tiny'")
    p.add_argument("--out", default="runs/rerank", help="where the trajectory and HTML view go")
    add_rerank_options(p)
    p.set_defaults(func=cmd_rerank)

    p = sub.add_parser("view", help="write the static HTML report of a result folder")
    p.add_argument("results", help="an eval / demo / rerank result folder")
    p.add_argument("--page-size", type=int, default=25, help="queries per page (default: 25)")
    p.add_argument("--task", action="append", help="only this task (repeat for several; default: all)")
    p.add_argument(
        "--max-queries", type=int, help="pages for the first N queries of each task only (large runs)"
    )
    p.set_defaults(func=cmd_view)
