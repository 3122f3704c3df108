"""RL data: samples -> the parquet that verl's ``RLHFDataset`` reads, and its validation.

One row per sample (a query with K numbered candidates and at least one positive among them):

* ``prompt``: the conversation our protocol builds (system prompt with the tool schemas, the user turn),
  as ``{"role", "content"}`` messages whose image parts are ``<image>`` markers, the convention
  ``RLHFDataset`` turns back into image parts;
* ``images``: the images in marker order, all in one representation per file: ``{"bytes": ...}`` (the
  file's own bytes, self-contained) or ``{"image": "/abs/path"}`` (small files, needs a shared file system);
* ``reward_model.ground_truth``: the positives' candidate numbers (1-based);
* ``extra_info.vretrver``: the profile, coordinate convention, tool budget, K, candidate ids and the
  image map (tool image index -> position among the prompt images, -1 when there is no such image);
* ``extra_info.tools_kwargs``: the per-sample arguments of each tool (its ``create_kwargs``: the image map);
* ``agent_name``: ``vretrver_agent`` (our agent loop, :mod:`vretrver.integrations.verl.agent_loop`).

The file is written with an explicit arrow schema (one type per column, no empty structs) through a
temporary file renamed into place.
"""

from __future__ import annotations

import io
import os
import random
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image

from vretrver.integrations.verl import AGENT_NAME, SAMPLE_INFO_KEY
from vretrver.protocol import build_conversation, load_profile
from vretrver.samples import Candidate, Query, Sample
from vretrver.tools import COORDINATES

IMAGE_MARKER = "<image>"
# RLHFDataset splits message text on these; a literal one in sample text would shift every image.
RESERVED_MARKERS = ("<image>", "<video>", "<audio>")
IMAGE_MODES = ("bytes", "path")
ABILITY = "multimodal_reranking"


class RLDataError(ValueError):
    """A sample cannot become an RL row, or an RL parquet file is malformed (message names where)."""


@dataclass(frozen=True)
class RLDataConfig:
    profile: str = "v-retrver"
    coordinates: str = "qwen2.5-vl"  # the model family's crop convention: it changes the tool schema text
    max_tool_calls: int | None = None  # default: the profile's
    image_mode: str = "bytes"
    max_candidates: int | None = None  # keep the first K (a positive outside them replaces the K-th)
    shuffle_candidates: bool = False  # shuffle each sample's candidates (seeded by seed and sample id)
    seed: int = 0
    data_source: str | None = None  # default: "vretrver/<dataset or task>"
    agent_name: str = AGENT_NAME

    def __post_init__(self) -> None:
        if self.coordinates not in COORDINATES:
            raise ValueError(f"coordinates: expected one of {COORDINATES}, got {self.coordinates!r}")
        if self.image_mode not in IMAGE_MODES:
            raise ValueError(f"image_mode: expected one of {IMAGE_MODES}, got {self.image_mode!r}")
        if self.max_candidates is not None and self.max_candidates < 1:
            raise ValueError(f"max_candidates: expected >= 1, got {self.max_candidates}")
        if self.max_tool_calls is not None and self.max_tool_calls < 0:
            raise ValueError(f"max_tool_calls: expected >= 0, got {self.max_tool_calls}")


@dataclass
class BuildReport:
    written: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    examples: dict[str, str] = field(default_factory=dict)  # reason -> first sample id

    def skip(self, reason: str, sample_id: str) -> None:
        self.skipped[reason] += 1
        self.examples.setdefault(reason, sample_id)

    def summary(self) -> str:
        lines = [f"wrote {self.written} rows"]
        for reason, n in self.skipped.most_common():
            lines.append(f"skipped {n}: {reason} (first: {self.examples[reason]})")
        return "\n".join(lines)


# --------------------------------------------------------------------------- schema


def rl_schema(image_mode: str = "bytes", with_tools: bool = True):
    """The arrow schema of an RL parquet file (one representation for ``images``)."""
    import pyarrow as pa

    image_type = (
        pa.struct([("bytes", pa.binary())]) if image_mode == "bytes" else pa.struct([("image", pa.string())])
    )
    info = [
        ("profile", pa.string()),
        ("coordinates", pa.string()),
        ("max_tool_calls", pa.int64()),
        ("num_candidates", pa.int64()),
        ("candidate_ids", pa.list_(pa.string())),
        ("image_map", pa.list_(pa.int64())),
    ]
    extra = [
        ("index", pa.int64()),
        ("sample_id", pa.string()),
        ("task", pa.string()),
        ("dataset", pa.string()),
        (SAMPLE_INFO_KEY, pa.struct(info)),
    ]
    if with_tools:
        per_tool = pa.struct([("create_kwargs", pa.struct([("image_map", pa.list_(pa.int64()))]))])
        extra.append(("tools_kwargs", pa.struct([("select_images", per_tool), ("crop_image", per_tool)])))
    return pa.schema(
        [
            ("data_source", pa.string()),
            ("agent_name", pa.string()),
            ("ability", pa.string()),
            ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
            ("images", pa.list_(image_type)),
            ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.list_(pa.int64()))])),
            ("extra_info", pa.struct(extra)),
        ]
    )


# --------------------------------------------------------------------------- rows


def _select_candidates(sample: Sample, cfg: RLDataConfig) -> list[Candidate]:
    cands = list(sample.candidates)
    if cfg.max_candidates is not None and len(cands) > cfg.max_candidates:
        kept = cands[: cfg.max_candidates]
        pos = set(sample.positives)
        if not any(c.id in pos for c in kept):
            first_pos = next((c for c in cands if c.id in pos), None)
            if first_pos is not None:
                kept[-1] = first_pos
        cands = kept
    if cfg.shuffle_candidates:
        random.Random(f"{cfg.seed}:{sample.id}").shuffle(cands)
    return cands


def _image_map(
    sample: Sample, profile, coordinates: str, max_tool_calls: int | None
) -> tuple[Any, list[int]]:
    """Render the conversation with stand-in image names to learn where each tool image lands."""
    tags = [f"\x01q{j}" for j in range(len(sample.query.images))]
    stand_in = replace(
        sample,
        query=Query(text=sample.query.text, images=tags, instruction=sample.query.instruction),
        candidates=[
            Candidate(id=c.id, text=c.text, image=f"\x01c{k}" if c.image else None)
            for k, c in enumerate(sample.candidates, 1)
        ],
    )
    conv = build_conversation(stand_in, profile, coordinates, max_tool_calls)
    position = {tag: i for i, tag in enumerate(conv.images)}
    query_tag = tags[-1] if tags else None
    slots = [position.get(query_tag) if query_tag else None]
    slots += [position.get(f"\x01c{k}") for k in range(1, len(sample.candidates) + 1)]
    # The profile says what tool index k means (candidate k, or the k-th candidate image).
    image_map = [-1 if p is None else p for p in profile.tool_images(slots)]
    real = {f"\x01q{j}": p for j, p in enumerate(sample.query.images)}
    real.update({f"\x01c{k}": c.image for k, c in enumerate(sample.candidates, 1) if c.image})
    conv.images = [real[t] for t in conv.images]
    return conv, image_map


def _message_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        parts = [{"type": "text", "text": content}]
    else:
        parts = content
    out = []
    for p in parts:
        if p.get("type") == "image":
            out.append(IMAGE_MARKER)
            continue
        text = p.get("text", "")
        for marker in RESERVED_MARKERS:
            if marker in text:
                raise RLDataError(
                    f"{where}: the text contains {marker!r}, which verl reads as a media placeholder"
                )
        out.append(text)
    return "".join(out)


def _load_image_field(path: str, mode: str, where: str) -> dict[str, Any]:
    try:
        if mode == "bytes":
            data = Path(path).read_bytes()
            with Image.open(io.BytesIO(data)) as im:
                im.size  # noqa: B018 - reads the header: fails on files that are not images
            return {"bytes": data}
        with Image.open(path) as im:
            im.size  # noqa: B018
        return {"image": os.path.abspath(path)}
    except (OSError, ValueError, Image.DecompressionBombError) as e:  # the last is no OSError
        raise RLDataError(f"{where}: cannot read image {path}: {e}") from None


def sample_to_row(
    sample: Sample, index: int, cfg: RLDataConfig = RLDataConfig(), where: str | None = None
) -> dict:
    """One RL row for ``sample``; raises :class:`RLDataError` when it cannot be one."""
    where = where or f"sample {sample.id!r}"
    profile = load_profile(cfg.profile)
    cands = _select_candidates(sample, cfg)
    if not cands:
        raise RLDataError(f"{where}: field 'candidates': expected at least one candidate")
    s = replace(sample, candidates=cands)
    gt = s.positive_numbers()
    if not gt:
        raise RLDataError(f"{where}: field 'positives': no positive among the candidates")
    budget = profile.max_tool_calls if cfg.max_tool_calls is None else cfg.max_tool_calls
    conv, image_map = _image_map(s, profile, cfg.coordinates, budget)
    prompt = [
        {"role": m["role"], "content": _message_text(m["content"], f"{where} ({m['role']} message)")}
        for m in conv.messages
    ]
    n_markers = sum(m["content"].count(IMAGE_MARKER) for m in prompt)
    if n_markers != len(conv.images):  # pragma: no cover - the renderer keeps them in step
        raise RLDataError(f"{where}: {n_markers} image markers for {len(conv.images)} images")
    images = [
        _load_image_field(str(p), cfg.image_mode, f"{where} (image {i})") for i, p in enumerate(conv.images)
    ]
    info = {
        "profile": str(cfg.profile),
        "coordinates": cfg.coordinates,
        "max_tool_calls": budget,
        "num_candidates": len(cands),
        "candidate_ids": [c.id for c in cands],
        "image_map": image_map,
    }
    extra: dict[str, Any] = {
        "index": index,
        "sample_id": s.id,
        "task": s.task or "",
        "dataset": s.dataset or "",
        SAMPLE_INFO_KEY: info,
    }
    if profile.uses_tools:
        extra["tools_kwargs"] = {
            name: {"create_kwargs": {"image_map": image_map}} for name in ("select_images", "crop_image")
        }
    return {
        "data_source": cfg.data_source or f"vretrver/{s.dataset or s.task or 'rerank'}",
        "agent_name": cfg.agent_name,
        "ability": ABILITY,
        "prompt": prompt,
        "images": images,
        "reward_model": {"style": "rule", "ground_truth": gt},
        "extra_info": extra,
    }


def iter_rows(
    samples: Iterable[Sample], cfg: RLDataConfig, report: BuildReport, source: str = ""
) -> Iterator[dict[str, Any]]:
    """Rows for the usable samples; samples without candidates or positives are skipped and counted."""
    index = 0
    for sample in samples:
        where = f"{source}: sample {sample.id!r}" if source else f"sample {sample.id!r}"
        if not sample.candidates:
            report.skip("no candidates", sample.id)
            continue
        if not set(sample.positives) & {c.id for c in sample.candidates}:
            report.skip("no positive among the candidates", sample.id)
            continue
        yield sample_to_row(sample, index, cfg, where)
        index += 1


def write_rl_parquet(
    path: str | os.PathLike,
    samples: Iterable[Sample],
    cfg: RLDataConfig = RLDataConfig(),
    source: str = "",
    rows_per_group: int = 64,
    progress: bool = True,
) -> BuildReport:
    """Write the RL parquet for ``samples`` atomically; returns what was written and skipped."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    report = BuildReport()
    schema = rl_schema(cfg.image_mode, load_profile(cfg.profile).uses_tools)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            buf: list[dict[str, Any]] = []
            for row in tqdm(
                iter_rows(samples, cfg, report, source), desc="rl rows", unit="row", disable=not progress
            ):
                buf.append(row)
                if len(buf) >= rows_per_group:
                    writer.write_table(pa.Table.from_pylist(buf, schema=schema))
                    report.written += len(buf)
                    buf = []
            if buf:
                writer.write_table(pa.Table.from_pylist(buf, schema=schema))
                report.written += len(buf)
        if report.written == 0:
            raise RLDataError(f"{source or path}: no usable samples ({report.summary()})")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return report


# --------------------------------------------------------------------------- validation


def read_rl_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def _check(cond: bool, where: str, field_name: str, expected: str, got: Any = None) -> None:
    if not cond:
        shown = "" if got is None else f", got {str(got)[:80]!r}"
        raise RLDataError(f"{where}: field '{field_name}': expected {expected}{shown}")


def validate_rl_row(row: dict[str, Any], where: str, decode_images: bool = False) -> None:
    """Check one row against what ``RLHFDataset`` and the agent loop need."""
    prompt = row.get("prompt")
    _check(isinstance(prompt, list) and len(prompt) >= 1, where, "prompt", "a list of messages", prompt)
    for i, m in enumerate(prompt):
        _check(
            isinstance(m, dict) and m.get("role") in ("system", "user", "assistant"),
            where,
            f"prompt[{i}].role",
            "system / user / assistant",
            m,
        )
        _check(isinstance(m.get("content"), str), where, f"prompt[{i}].content", "a string", m.get("content"))
    images = row.get("images") or []
    n_markers = sum(m["content"].count(IMAGE_MARKER) for m in prompt)
    _check(
        n_markers == len(images), where, "images", f"{n_markers} images (one per <image> marker)", len(images)
    )
    kinds = {tuple(sorted(k for k, v in img.items() if v is not None)) for img in images}
    _check(
        len(kinds) <= 1 and kinds <= {("bytes",), ("image",)},
        where,
        "images",
        "one representation: {'bytes'} or {'image': path}",
        kinds,
    )
    if decode_images:
        for j, img in enumerate(images):
            try:
                src = io.BytesIO(img["bytes"]) if img.get("bytes") is not None else img["image"]
                with Image.open(src) as im:
                    im.size  # noqa: B018
            except (OSError, ValueError, KeyError, Image.DecompressionBombError) as e:
                raise RLDataError(f"{where}: field 'images[{j}]': not a readable image ({e})") from None
    rm = row.get("reward_model") or {}
    gt = rm.get("ground_truth")
    extra = row.get("extra_info") or {}
    info = extra.get(SAMPLE_INFO_KEY)
    _check(isinstance(info, dict), where, f"extra_info.{SAMPLE_INFO_KEY}", "an object")
    k = info.get("num_candidates")
    _check(
        isinstance(k, int) and k >= 1,
        where,
        f"extra_info.{SAMPLE_INFO_KEY}.num_candidates",
        "an integer >= 1",
        k,
    )
    _check(
        isinstance(gt, list) and gt and all(isinstance(g, int) and 1 <= g <= k for g in gt),
        where,
        "reward_model.ground_truth",
        f"candidate numbers between 1 and {k}",
        gt,
    )
    _check(
        info.get("coordinates") in COORDINATES,
        where,
        f"extra_info.{SAMPLE_INFO_KEY}.coordinates",
        f"one of {COORDINATES}",
        info.get("coordinates"),
    )
    try:
        profile = load_profile(info.get("profile"))
    except Exception as e:
        raise RLDataError(f"{where}: field 'extra_info.{SAMPLE_INFO_KEY}.profile': {e}") from None
    image_map = info.get("image_map")
    # Compact tool indices number only the candidates that have an image: the map may be shorter.
    compact = profile.settings.get("candidate_image_index") == "compact"
    _check(
        isinstance(image_map, list)
        and (1 <= len(image_map) <= k + 1 if compact else len(image_map) == k + 1)
        and all(-1 <= p < len(images) for p in image_map),
        where,
        f"extra_info.{SAMPLE_INFO_KEY}.image_map",
        f"{'at most ' if compact else ''}{k + 1} positions in -1..{len(images) - 1}",
        image_map,
    )
    ids = info.get("candidate_ids")
    _check(
        isinstance(ids, list) and len(ids) == k,
        where,
        f"extra_info.{SAMPLE_INFO_KEY}.candidate_ids",
        f"{k} ids",
        ids,
    )
    budget = info.get("max_tool_calls")
    _check(
        isinstance(budget, int) and budget >= 0,
        where,
        f"extra_info.{SAMPLE_INFO_KEY}.max_tool_calls",
        "an integer >= 0",
        budget,
    )
    if profile.uses_tools:
        tk = extra.get("tools_kwargs") or {}
        for name in profile.tools:
            got = ((tk.get(name) or {}).get("create_kwargs") or {}).get("image_map")
            _check(
                got == image_map,
                where,
                f"extra_info.tools_kwargs.{name}.create_kwargs.image_map",
                "the sample's image map",
                got,
            )
    _check(row.get("agent_name") == AGENT_NAME, where, "agent_name", repr(AGENT_NAME), row.get("agent_name"))


def validate_rl_parquet(path: str | os.PathLike, decode_images: bool = False) -> dict[str, Any]:
    """Validate every row of an RL parquet file; returns counts. Raises :class:`RLDataError`."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise RLDataError(f"{path}: no such file")
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        raise RLDataError(f"{path}: not a parquet file ({e})") from None
    names = set(pf.schema_arrow.names)
    missing = sorted({"prompt", "images", "reward_model", "extra_info", "data_source", "agent_name"} - names)
    if missing:
        raise RLDataError(f"{path}: missing columns {missing}")
    n = 0
    stats: Counter = Counter()
    for batch in pf.iter_batches(batch_size=64):
        for row in batch.to_pylist():
            validate_rl_row(row, f"{path}: row {n}", decode_images)
            stats["images"] += len(row.get("images") or [])
            stats[f"profile={row['extra_info'][SAMPLE_INFO_KEY]['profile']}"] += 1
            n += 1
    if n == 0:
        raise RLDataError(f"{path}: no rows")
    return {"rows": n, **dict(stats)}
