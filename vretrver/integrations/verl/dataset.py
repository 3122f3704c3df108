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
temporary file renamed into place. Tool names come from the profile: a profile's tools get their
``tools_kwargs`` whatever they are. Reading a file back and checking it is :mod:`.validation`'s part.
"""

from __future__ import annotations

import io
import os
import random
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image

from vretrver.integrations.verl import AGENT_NAME, SAMPLE_INFO_KEY
from vretrver.integrations.verl.validation import (  # noqa: F401 - the validation's names, re-exported
    IMAGE_MARKER,
    RLDataError,
    read_rl_rows,
    validate_rl_parquet,
    validate_rl_row,
)
from vretrver.protocol import DEFAULT_PROFILE, build_conversation, load_profile
from vretrver.samples import Candidate, Query, Sample
from vretrver.tools import COORDINATES

# RLHFDataset splits message text on these; a literal one in sample text would shift every image.
RESERVED_MARKERS = ("<image>", "<video>", "<audio>")
IMAGE_MODES = ("bytes", "path")
ABILITY = "multimodal_reranking"


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


def rl_schema(image_mode: str = "bytes", tools: Sequence[str] | None = None):
    """The arrow schema of an RL parquet file (one representation for ``images``) whose samples use
    ``tools`` (default: the default profile's; none: no ``tools_kwargs`` column)."""
    import pyarrow as pa

    if tools is None:
        tools = load_profile(DEFAULT_PROFILE).tools

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
    if tools:
        per_tool = pa.struct([("create_kwargs", pa.struct([("image_map", pa.list_(pa.int64()))]))])
        extra.append(("tools_kwargs", pa.struct([(name, per_tool) for name in tools])))
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
        extra["tools_kwargs"] = {name: {"create_kwargs": {"image_map": image_map}} for name in profile.tools}
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
    schema = rl_schema(cfg.image_mode, load_profile(cfg.profile).tools)
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
