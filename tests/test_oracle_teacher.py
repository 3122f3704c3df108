"""The rule-based teacher (``--engine oracle``): synthetic trajectories from the ground truth that pass
the real parser, tools and rule filter, are labelled as synthetic in records, statistics and export, and
are deterministic for a seed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from photos import ASTRONAUT, CHELSEA, COFFEE, ROCKET
from PIL import Image

from vretrver.engines.base import GenerationConfig
from vretrver.engines.factory import make_engine
from vretrver.engines.oracle import SOURCE, OracleEngine
from vretrver.integrations.llamafactory import ExportConfig, export_llamafactory
from vretrver.protocol import build_conversation, parse_turn
from vretrver.samples import Candidate, Query, Sample, write_samples
from vretrver.sft import SynthesisConfig, read_records, synthesize
from vretrver.tools import ToolConfig, smart_resize


def _samples() -> list[Sample]:
    """Text -> image (positive 3), image -> text (positive 2) and text -> text (no image anywhere)."""
    imgs = [ASTRONAUT, CHELSEA, COFFEE, ROCKET]
    t2i = Sample(
        "t2i:1",
        Query(text="a cup of coffee", instruction="Find the photo."),
        [Candidate(f"i{j}", image=p) for j, p in enumerate(imgs)],
        positives=["i2"],
        task="t2i",
    )
    i2t = Sample(
        "i2t:1",
        Query(images=[CHELSEA]),
        [
            Candidate("c0", text="a rocket"),
            Candidate("c1", text="a ginger cat"),
            Candidate("c2", text="a cup"),
        ],
        positives=["c1"],
        task="i2t",
    )
    t2t = Sample(
        "t2t:1",
        Query(text="red bus"),
        [Candidate("a", text="a blue car"), Candidate("b", text="a red bus")],
        positives=["b"],
        task="t2t",
    )
    return [t2i, i2t, t2t]


def _turns(rec: dict) -> list[dict]:
    return rec["trajectory"]["turns"]


@pytest.mark.parametrize("profile", ["v-retrver", "annotation"])
def test_oracle_trajectories_pass_the_real_parser_tools_and_filter(tmp_path, profile):
    samples = _samples()
    engine = OracleEngine(samples=samples, profile=profile)
    stats = synthesize(
        samples, engine, tmp_path, SynthesisConfig(profile=profile, attempts=2), progress=False
    )
    recs = read_records(tmp_path / "trajectories.jsonl")
    assert stats["all"]["acceptance_rate"] == 1.0 and stats["all"]["kept"] == 3
    by_sample = {r["sample_id"]: r for r in recs if r["kept"]}
    for s in samples:
        rec = by_sample[s.id]
        turns = _turns(rec)
        assistant = [t for t in turns if t["role"] == "assistant"]
        assert all(t["parsed"]["well_formed"] for t in assistant)
        assert all(t["tool"]["valid"] for t in turns if t["role"] == "tool")
        # The answer is a full permutation with the positive first.
        answer = rec["trajectory"]["answer"]
        assert answer[0] == s.positive_numbers()[0] and sorted(answer) == list(
            range(1, len(s.candidates) + 1)
        )
        calls = [t["parsed"]["tool_call"] for t in assistant if t["parsed"]["kind"] == "tool_call"]
        assert len(calls) <= 2
        if s.id == "t2i:1":  # candidates have images: the positive's image is looked at, no query image
            assert calls[0]["name"] == "select_images" and 3 in calls[0]["arguments"]["target_images"]
            assert 0 not in calls[0]["arguments"]["target_images"]
        elif s.id == "i2t:1":  # only the query image exists
            assert calls[0]["arguments"] == {"target_images": [0]}
        else:  # no image anywhere: no tool to call
            assert calls == [] and len(assistant) == 1
        # The reasoning names what it looks at: the candidates selected, or the query image.
        if calls:
            think = assistant[0]["text"].split("</think>")[0]
            targets = calls[0]["arguments"]["target_images"]
            assert all(str(i) in think for i in targets if i > 0) and (0 not in targets or "query" in think)
        assert rec["source"] == SOURCE and rec["synthetic"] is True and rec["engine"] == SOURCE
    assert stats["sources"] == {SOURCE: len(recs)} and stats["synthetic_records"] == len(recs)
    assert "synthetic" in stats["note"] and "not model output" in stats["note"]
    saved = json.loads((tmp_path / "stats.json").read_text())
    assert saved["sources"] == stats["sources"]


@pytest.mark.parametrize("coordinates", ["qwen2.5-vl", "qwen3-vl"])
def test_oracle_crop_boxes_lie_inside_the_image_in_the_family_convention(coordinates):
    samples = _samples()
    cfg = ToolConfig(coordinates=coordinates)
    engine = OracleEngine(samples=samples, tool_config=cfg)
    boxes = []
    for seed in range(40):
        for turn in engine.plan(samples[0], seed):
            parsed = parse_turn(turn)
            assert parsed.well_formed, (turn, parsed.problems)
            if parsed.tool_call and parsed.tool_call.name == "crop_image":
                boxes.append(parsed.tool_call.arguments["bbox_2d"])
    assert len(boxes) > 10  # most plans zoom in when the budget allows
    w, h = Image.open(COFFEE).size  # the positive of the t2i sample
    if coordinates == "qwen3-vl":  # relative 0..1000
        lim_w = lim_h = 1000
    else:  # pixels of the image as the processor resized it
        lim_h, lim_w = smart_resize(h, w, cfg.factor, cfg.min_pixels, cfg.max_pixels)
    for x1, y1, x2, y2 in boxes:
        assert all(isinstance(v, int) for v in (x1, y1, x2, y2))
        assert 0 <= x1 < x2 <= lim_w and 0 <= y1 < y2 <= lim_h
        assert x2 > 1 and y2 > 1  # never read as normalised [0, 1] coordinates


def test_oracle_is_deterministic_for_a_seed_and_varies_with_it():
    samples = _samples()
    a = OracleEngine(samples=samples, seed=0)
    b = OracleEngine(samples=samples, seed=0)
    c = OracleEngine(samples=samples, seed=1)
    plans = lambda e: [e.plan(s, attempt) for s in samples for attempt in range(5)]  # noqa: E731
    assert plans(a) == plans(b)
    assert plans(a) != plans(c)


def test_oracle_refuses_conversations_of_unknown_samples():
    samples = _samples()
    engine = make_engine("oracle", "oracle", samples=samples[:1])
    other = build_conversation(samples[1])
    mine = build_conversation(samples[0])
    out = engine.continue_conversations([other, mine], GenerationConfig())
    assert out[0].text is None and "no known sample" in out[0].error
    assert out[1].error is None and out[1].text.endswith("</tool_call>")


def test_oracle_data_is_labelled_in_the_export_and_the_cli_statistics(tmp_path, capsys):
    from vretrver.cli import main

    samples_file = tmp_path / "samples.jsonl"
    write_samples(samples_file, _samples())
    rc = main(
        [
            "data",
            "synthesize",
            "--engine",
            "oracle",
            "--model",
            "oracle",
            "--samples",
            str(samples_file),
            "--out",
            str(tmp_path / "teacher"),
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert f"sources: {SOURCE} 3" in printed and "not model output" in printed
    report = export_llamafactory(
        tmp_path / "teacher", tmp_path / "lf", ExportConfig(name="vr"), progress=False
    )
    assert report["rows"] == 3 and report["rows_per_source"] == {SOURCE: 3}
    rows = json.loads(Path(report["file"]).read_text())
    assert all(r["source"] == SOURCE for r in rows)


def test_oracle_with_a_query_image_and_one_candidate_image_names_both(tmp_path):
    mixed = Sample(
        "i2i:1",
        Query(text="same scene", images=[ROCKET]),
        [Candidate("a", text="no image here"), Candidate("b", image=ASTRONAUT), Candidate("c", text="words")],
        positives=["b"],
        task="i2i",
    )
    engine = OracleEngine(samples=[mixed])
    stats = synthesize([mixed], engine, tmp_path, SynthesisConfig(attempts=3), progress=False)
    assert stats["all"]["acceptance_rate"] == 1.0
    for rec in read_records(tmp_path / "trajectories.jsonl"):
        first = _turns(rec)[0]
        call = first["parsed"]["tool_call"]
        assert call["arguments"] == {"target_images": [0, 2]}
        think = first["text"].split("</think>")[0]
        assert "Candidate 2 " in think and "query image" in think
