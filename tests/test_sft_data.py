"""SFT / RFT data: hard-negative samples, teacher synthesis with the rule filter, statistics, resuming,
and rejection sampling with the tiny model."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from photos import ASTRONAUT, CHELSEA, COFFEE, ROCKET
from PIL import Image

from vretrver.protocol import load_profile, system_prompt
from vretrver.protocol.profile import PROFILES_DIR
from vretrver.samples import Candidate, Query, Sample, TaskData, read_samples
from vretrver.sft import (
    FilterConfig,
    HardNegativeConfig,
    ScriptedEngine,
    SynthesisConfig,
    build_training_samples,
    read_records,
    rejection_sample,
    script_from_table,
    summarize,
    synthesize,
)
from vretrver.sft.hard_negatives import allocate, preselect_queries
from vretrver.tools import ToolConfig, crop_image

# ----------------------------------------------------------------------------- hard negatives


def _task(name: str, n_queries: int, n_pool: int = 60) -> TaskData:
    """Text candidates d0..d{n_pool-1}; query q{i}'s positive is d{i % n_pool}."""
    pool = {f"d{j}": Candidate(f"d{j}", text=f"caption number {j}") for j in range(n_pool)}
    queries = [
        Sample(f"q{i}", Query(text=f"query {i}"), positives=[f"d{i % n_pool}"], task=name, dataset=name)
        for i in range(n_queries)
    ]
    return TaskData(name, queries, pool)


def _ranking(task: TaskData, q: Sample, n: int = 100) -> list[tuple[str, float]]:
    """A deterministic stand-in ranking: every pool item, the positive third."""
    qn = int(q.id[1:])
    ids = sorted(task.pool, key=lambda d: ((int(d[1:]) * 7919 + qn * 104729) % 997, d))
    ids.remove(q.positives[0])
    ids.insert(2, q.positives[0])
    return [(d, 1.0 - r / 1000) for r, d in enumerate(ids[:n])]


def _runs(task: TaskData) -> dict[str, list[tuple[str, float]]]:
    return {q.id: _ranking(task, q) for q in task.queries}


def test_hard_negative_samples_exclude_positives_duplicates_and_place_the_positive_uniformly():
    t = _task("t2i", 600)
    # Near-duplicates of q0's positive d0: same text in other words, and same image file.
    t.pool["d0"] = Candidate("d0", text="A red  Bus", image=ROCKET)
    t.pool["d1"] = Candidate("d1", text="a red bus")
    t.pool["d2"] = Candidate("d2", text="something else", image=ROCKET)
    t.queries[0].positives = ["d0", "d5"]  # a second positive that must never be a negative
    t.queries[0].meta["exclude"] = ["d7"]
    runs = _runs(t)
    runs["q0"] = [(d, 1.0) for d in ["d1", "d2", "d5", "d7", "d0"] + [f"d{j}" for j in range(8, 40)]]
    cfg = HardNegativeConfig(k=5, seed=3)
    samples, stats = build_training_samples([t], {"t2i": runs}, cfg)

    assert len(samples) == 600 and stats["tasks"]["t2i"]["samples"] == 600
    by_q = {s.meta["qid"]: s for s in samples}
    s0 = by_q["q0"]
    ids0 = [c.id for c in s0.candidates]
    assert len(ids0) == 5 and len(set(ids0)) == 5
    assert not {"d1", "d2", "d5", "d7"} & set(ids0)  # duplicates, the other positive, the excluded id
    assert len(set(ids0) & {"d0", "d5"}) == 1 and s0.positives[0] in ids0
    assert stats["tasks"]["t2i"]["near_duplicates_removed"] >= 2
    for s in samples:
        ids = [c.id for c in s.candidates]
        assert s.positive_numbers() == [s.meta["positive_position"]]
        top = {d for d, _ in runs[s.meta["qid"]][:100]}
        assert set(ids) - set(s.positives) <= top
        assert all(1 <= r <= 100 for r in s.meta["negative_ranks"])
    # The positive's position is uniform over 1..5: 600 draws, expected 120 each.
    counts = Counter(s.meta["positive_position"] for s in samples)
    chi2 = sum((counts[p] - 120) ** 2 / 120 for p in range(1, 6))
    assert chi2 < 18.5, counts  # p < 0.001 for 4 degrees of freedom
    assert stats["positive_position_counts"] == {str(p): counts[p] for p in range(1, 6)}


def test_hard_negative_samples_are_seeded_per_query_and_balanced_across_tasks():
    big, small, mid = _task("big", 300), _task("small", 20), _task("mid", 80)
    runs = {t.name: _runs(t) for t in (big, small, mid)}
    cfg = HardNegativeConfig(k=4, total=150, max_per_task={"mid": 40}, seed=1)
    samples, stats = build_training_samples([big, small, mid], runs, cfg)
    per_task = Counter(s.task for s in samples)
    # small gives all it has (20); mid is capped at 40; big takes the rest of the 150.
    assert per_task == {"small": 20, "mid": 40, "big": 90}
    assert {n: stats["tasks"][n]["quota"] for n in per_task} == dict(per_task)
    assert all(len(s.candidates) == 4 for s in samples)

    again, _ = build_training_samples([big, small, mid], runs, cfg)
    assert [s.to_dict() for s in again] == [s.to_dict() for s in samples]
    other, _ = build_training_samples(
        [big, small, mid], runs, HardNegativeConfig(k=4, total=150, max_per_task={"mid": 40}, seed=2)
    )
    assert [s.to_dict() for s in other] != [s.to_dict() for s in samples]
    # A query's sample does not depend on the other tasks being there.
    alone, _ = build_training_samples([small], {"small": runs["small"]}, HardNegativeConfig(k=4, seed=1))
    assert [s.to_dict() for s in alone] == [s.to_dict() for s in samples if s.task == "small"]

    assert allocate({"a": 5, "b": 100, "c": 100}, 101, {"a": None, "b": None, "c": 30}) == {
        "a": 5,
        "b": 66,
        "c": 30,
    }
    pre = preselect_queries([big, small, mid], cfg)
    assert [len(t.queries) for t in pre] == [113 + 8, 20, 50 + 8]


def test_hard_negative_samples_skip_queries_without_enough_negatives_and_escape_placeholders():
    t = _task("t", 3, n_pool=5)  # k=5: every other pool item is a negative of every query
    t.queries[1].query.text = "a <image> of a cat"
    t.pool["d4"] = Candidate("d4", text="caption <video> four")
    runs = _runs(t)
    runs["q2"] = runs["q2"][:3]  # positive + 2 negatives: too few for k=5
    samples, stats = build_training_samples([t], {"t": runs}, HardNegativeConfig(k=5, hard_pool=9))
    assert [s.meta["qid"] for s in samples] == ["q0", "q1"]
    assert stats["tasks"]["t"]["too_few_negatives"] == 1
    q1 = next(s for s in samples if s.meta["qid"] == "q1")
    assert q1.query.text == "a [image] of a cat"
    for s in samples:
        assert next(c.text for c in s.candidates if c.id == "d4") == "caption [video] four"
    assert stats["tasks"]["t"]["escaped_placeholders"] == 3
    assert t.pool["d4"].text == "caption <video> four" and t.queries[1].query.text == "a <image> of a cat"
    with pytest.raises(ValueError, match="k must be >= 2"):
        HardNegativeConfig(k=1)


def test_hard_negatives_from_the_real_first_stage(tmp_path):
    from vretrver.retrieval import first_stage

    t = _task("t", 12, n_pool=40)
    runs = first_stage(t, "hash:32", top_n=100, cache_dir=tmp_path)
    samples, _ = build_training_samples([t], {"t": runs}, HardNegativeConfig(k=5, hard_pool=30))
    assert len(samples) == 12
    for s in samples:
        assert len({c.id for c in s.candidates}) == 5 and len(s.positive_numbers()) == 1


# ----------------------------------------------------------------------------- teacher synthesis


def call(name: str, args: dict, think: str = "Candidates 1 and 2 are close; a closer look decides.") -> str:
    return (
        f"<think>{think}</think>\n<tool_call>\n{json.dumps({'name': name, 'arguments': args})}\n</tool_call>"
    )


def answer(numbers, think: str = "The evidence settles it.") -> str:
    return f"<think>{think}</think>\n<answer>{json.dumps(numbers)}</answer>"


def _sample(sid: str, task: str, marker: str, positive_number: int = 2) -> Sample:
    cands = [
        Candidate("c1", "a ginger cat on a sofa", CHELSEA),
        Candidate("c2", "an astronaut portrait", ASTRONAUT),
        Candidate("c3", "a cup of coffee", COFFEE),
    ]
    return Sample(
        sid,
        Query(text=f"{marker}: a person in a white space suit", images=[ROCKET]),
        cands,
        positives=[cands[positive_number - 1].id],
        task=task,
    )


SELECT = call("select_images", {"target_images": [0, 1, 2]})
CROP = call("crop_image", {"bbox_2d": [100, 50, 300, 250], "target_image": 2})
GOOD = answer([2, 1, 3])

# marker -> trajectories per attempt (attempt = generation seed). Verdicts in comments.
TABLE = {
    "S1": [[SELECT, CROP, GOOD]],  # kept at attempt 0
    "S2": [[GOOD]],  # kept: no tool call is fine by default
    "S3": [["I think it is 2. <answer>[2, 1, 3]</answer>"], [SELECT, GOOD]],  # malformed, then kept
    "S4": [
        [call("select_images", {"target_images": [0, 9]}), GOOD],
        [CROP, answer([1, 2, 3])],
    ],  # invalid call; positive not first
    "S5": [[SELECT, CROP, SELECT, GOOD], [CROP, GOOD]],  # over budget (third call), then kept
    "S6": [[SELECT], [GOOD]],  # engine error (the script runs dry), then kept
    "S7": [
        [answer("2, 1, 3")],
        [answer([2, 1, 3], think="")],
    ],  # answer not an int list; then kept (empty think is well formed)
}
EXPECTED_KEPT = {"S1#0", "S2#0", "S3#1", "S5#1", "S6#1", "S7#1"}


def _teacher_samples() -> list[Sample]:
    tasks = {
        "S1": "mscoco_task0",
        "S2": "mscoco_task0",
        "S3": "mscoco_task0",
        "S4": "cirr_task7",
        "S5": "cirr_task7",
        "S6": "cirr_task7",
        "S7": "cirr_task7",
    }
    return [_sample(m, t, m) for m, t in tasks.items()]


def test_annotation_profile_is_v_retrver_plus_teacher_guidance():
    for name in ("tools.json", "observation.jinja", "user.jinja"):
        assert (PROFILES_DIR / "annotation" / name).read_bytes() == (
            PROFILES_DIR / "v-retrver" / name
        ).read_bytes()
    teacher, student = load_profile("annotation"), load_profile("v-retrver")
    assert teacher.tools == student.tools and teacher.max_tool_calls == student.max_tool_calls
    assert teacher.stop == student.stop and teacher.settings["export_profile"] == "v-retrver"
    t_sys, s_sys = system_prompt(teacher), system_prompt(student)
    assert t_sys.startswith(s_sys) and len(t_sys) > len(s_sys) + 200
    guidance = t_sys[len(s_sys) :]
    for word in (
        "analyse the query",
        "Compare the candidates",
        "select_images",
        "subset",
        "crop_image",
        "zoom",
    ):
        assert word in guidance


def test_scripted_teacher_stands_in_for_72b_filter_keeps_exactly_the_valid_trajectories(tmp_path):
    samples = _teacher_samples()
    engine = ScriptedEngine(script_from_table(TABLE), ToolConfig())
    cfg = SynthesisConfig(attempts=3, keep_per_sample=1, temperature=0.7, seed=0)
    stats = synthesize(samples, engine, tmp_path, cfg, progress=False)
    records = read_records(tmp_path / "trajectories.jsonl")
    by_id = {r["id"]: r for r in records}

    assert {r["id"] for r in records if r["kept"]} == EXPECTED_KEPT
    # Samples stop after their first kept trajectory: S1, S2 ran once; the others twice; S4 three times.
    assert set(by_id) == EXPECTED_KEPT | {"S3#0", "S4#0", "S4#1", "S4#2", "S5#0", "S6#0", "S7#0"}
    assert by_id["S3#0"]["reasons"] == ["malformed_turn"]  # the answer is there, but no <think>
    assert by_id["S4#0"]["reasons"] == ["invalid_tool_call"]
    assert by_id["S4#1"]["reasons"] == ["positive_not_first"]
    assert by_id["S4#2"]["reasons"] == ["invalid_tool_call"]  # attempt 2 wraps to trajectory 0
    assert by_id["S5#0"]["reasons"] == ["over_budget", "no_answer"]
    assert by_id["S6#0"]["reasons"] == ["engine_error", "no_answer"]
    assert by_id["S7#0"]["reasons"] == ["malformed_turn"]

    a, mscoco, cirr = stats["all"], stats["tasks"]["mscoco_task0"], stats["tasks"]["cirr_task7"]
    assert (mscoco["samples"], mscoco["tried"], mscoco["accepted"], mscoco["kept"]) == (3, 4, 3, 3)
    assert (cirr["samples"], cirr["tried"], cirr["accepted"], cirr["kept"], cirr["samples_kept"]) == (
        4,
        9,
        3,
        3,
        3,
    )
    assert cirr["rejections"] == {
        "engine_error": 1,
        "malformed_turn": 1,
        "invalid_tool_call": 2,
        "over_budget": 1,
        "no_answer": 2,
        "positive_not_first": 1,
    }
    assert sum(cirr["first_reasons"].values()) == cirr["tried"] - cirr["accepted"]
    assert a["tried"] == 13 and a["kept"] == 6 and a["acceptance_rate"] == round(6 / 13, 4)
    assert json.loads((tmp_path / "stats.json").read_text())["all"] == a

    # The observations and images are what our tools produce, saved with the kept trajectories.
    s1 = by_id["S1#0"]["trajectory"]
    crop_turn = s1["turns"][3]
    assert crop_turn["role"] == "tool" and crop_turn["tool"]["valid"]
    saved = Image.open(tmp_path / crop_turn["images"][0])
    expected = crop_image(
        {"bbox_2d": [100, 50, 300, 250], "target_image": 2}, samples[0].image_paths(), ToolConfig()
    )
    assert saved.size == expected.images[0].size and crop_turn["tool"]["box"] == list(expected.box)
    assert len(s1["turns"][1]["images"]) == 3 and crop_turn["text"].startswith("<tool_response>\n<image>")
    # Rejected trajectories keep no image files by default.
    assert not (tmp_path / "images" / "S4").exists()
    assert all(r["profile"] == "annotation" and r["export_profile"] == "v-retrver" for r in records)


def test_synthesis_sends_all_live_episodes_of_a_chunk_in_one_engine_call(tmp_path):
    samples = [_sample(f"S1-{i}", "t", "S1") for i in range(5)] + [
        _sample(f"S2-{i}", "t", "S2") for i in range(5)
    ]
    engine = ScriptedEngine(script_from_table(TABLE))
    synthesize(samples, engine, tmp_path, SynthesisConfig(attempts=1, temperature=0.0), progress=False)
    assert engine.calls == 3  # rounds: three turns for the longest trajectory, not one call per episode
    engine = ScriptedEngine(script_from_table(TABLE))
    synthesize(
        samples,
        engine,
        tmp_path / "chunks",
        SynthesisConfig(attempts=1, temperature=0.0, chunk_size=4),
        progress=False,
    )
    assert engine.calls == 3 + 3 + 1  # chunks: 4 x S1; 1 x S1 + 3 x S2; 2 x S2 (one turn)


def test_synthesis_writes_a_record_whose_turn_holds_a_lone_surrogate(tmp_path):
    # A model (or server) can produce the JSON escape \\ud800, which UTF-8 cannot encode.
    odd = answer([2, 1, 3], think="the caption says \ud800 here")
    samples = [_sample("S1-0", "t", "S1")]
    engine = ScriptedEngine(script_from_table({"S1": [[odd]]}))
    synthesize(samples, engine, tmp_path, SynthesisConfig(attempts=1, temperature=0.0), progress=False)
    records = read_records(tmp_path / "trajectories.jsonl")
    assert len(records) == 1 and "\\ud800" in records[0]["trajectory"]["turns"][0]["text"]


def test_synthesis_resumes_without_repeating_attempts(tmp_path):
    samples = _teacher_samples()
    calls: list[str] = []
    base = script_from_table(TABLE)

    def flaky(conv, gen):
        calls.append("x")
        if len(calls) == 7:
            raise KeyboardInterrupt  # the first chunk took 5 turns; the run stops inside the second
        return base(conv, gen)

    cfg = SynthesisConfig(attempts=3, keep_per_sample=1, temperature=0.7, chunk_size=3)
    with pytest.raises(KeyboardInterrupt):
        synthesize(samples, ScriptedEngine(flaky), tmp_path, cfg, progress=False)
    first = read_records(tmp_path / "trajectories.jsonl")
    assert [r["sample_id"] for r in first] == ["S1", "S2", "S3"]  # the first chunk was saved
    with open(tmp_path / "trajectories.jsonl", "a") as f:
        f.write('{"id": "torn')  # a half-written line, as a crash would leave it

    engine = ScriptedEngine(base)
    stats = synthesize(samples, engine, tmp_path, cfg, progress=False)
    records = read_records(tmp_path / "trajectories.jsonl")
    assert len({r["id"] for r in records}) == len(records) == 13
    assert {r["id"] for r in records if r["kept"]} == EXPECTED_KEPT
    assert stats["all"]["tried"] == 13
    with pytest.raises(ValueError, match="other settings"):
        synthesize(
            samples,
            engine,
            tmp_path,
            SynthesisConfig(attempts=3, temperature=0.7, max_tool_calls=3),
            progress=False,
        )


def test_filter_options_and_stats_from_records():
    traj = {
        "turns": [{"role": "assistant", "text": GOOD, "parsed": {"kind": "answer", "well_formed": True}}],
        "answer": [2, 1],
        "failed": None,
        "end_reason": "answer",
        "n_valid_calls": 0,
    }
    from vretrver.sft import judge

    assert judge(traj, [2], 3, 2) == []
    assert judge(traj, [2], 3, 2, FilterConfig(require_full_ranking=True)) == ["incomplete_ranking"]
    assert judge(traj, [2], 3, 2, FilterConfig(min_tool_calls=1)) == ["too_few_tool_calls"]
    assert judge(traj, [1], 3, 2) == ["positive_not_first"]
    stats = summarize(
        [
            {"task": "a", "sample_id": "x", "kept": True, "reasons": [], "trajectory": {"n_valid_calls": 2}},
            {"task": "a", "sample_id": "x", "kept": False, "reasons": [], "trajectory": {}},
            {"task": "a", "sample_id": "y", "kept": False, "reasons": ["no_answer"], "trajectory": {}},
        ]
    )
    a = stats["tasks"]["a"]
    assert (a["samples"], a["samples_kept"], a["tried"], a["accepted"], a["kept"]) == (2, 1, 3, 2, 1)
    assert a["mean_tool_calls_kept"] == 2.0 and a["rejections"] == {"no_answer": 1}


# ----------------------------------------------------------------------------- rejection sampling


def test_rejection_sampling_keeps_every_distinct_accepted_trajectory(tmp_path):
    table = {"R": [[SELECT, GOOD], [SELECT, GOOD], [GOOD], [answer([3, 2, 1])]]}
    engine = ScriptedEngine(script_from_table(table))
    stats = rejection_sample(
        [_sample("R", "t", "R")], engine, tmp_path, k=4, temperature=1.0, seed=0, progress=False
    )
    records = read_records(tmp_path / "trajectories.jsonl")
    assert [(r["attempt"], r["accepted"], r["kept"], r["duplicate"]) for r in records] == [
        (0, True, True, False),
        (1, True, False, True),
        (2, True, True, False),
        (3, False, False, False),
    ]
    assert stats["all"]["acceptance_rate"] == 0.75 and stats["all"]["kept"] == 2
    assert records[0]["profile"] == records[0]["export_profile"] == "v-retrver"
    with pytest.raises(ValueError, match="temperature > 0"):
        rejection_sample([_sample("R", "t", "R")], engine, tmp_path / "x", temperature=0.0, progress=False)


@pytest.mark.slow  # loads the tiny model and samples 2 x 2 x 2 trajectories (about a minute on 2 loaded cores)
def test_rejection_sampling_with_the_tiny_model_and_a_fixed_seed_reports_acceptance(tiny_qwen25vl, tmp_path):
    from vretrver.engines.hf import HFEngine
    from vretrver.samples import write_samples

    samples = [_sample("A", "mscoco_task0", "A"), _sample("B", "cirr_task7", "B", positive_number=3)]
    write_samples(tmp_path / "samples.jsonl", samples)
    samples = read_samples(tmp_path / "samples.jsonl")
    engine = HFEngine(str(tiny_qwen25vl), device="cpu")
    kw = dict(k=2, temperature=1.0, seed=7, max_new_tokens=16, progress=False)
    stats = rejection_sample(samples, engine, tmp_path / "run1", **kw)
    again = rejection_sample(samples, engine, tmp_path / "run2", **kw)

    for name, n in (("mscoco_task0", 1), ("cirr_task7", 1)):
        st = stats["tasks"][name]
        assert st["samples"] == n and st["tried"] == 2
        assert st["acceptance_rate"] == round(st["accepted"] / st["tried"], 4)
        assert sum(st["first_reasons"].values()) == st["tried"] - st["accepted"]
    assert stats["all"]["tried"] == 4 and 0.0 <= stats["all"]["acceptance_rate"] <= 1.0
    # Random weights: the turns are gibberish, so the filter rejects them, and says why.
    assert stats["all"]["accepted"] == 0 and stats["all"]["rejections"]["malformed_turn"] == 4
    texts = [
        [t["text"] for t in r["trajectory"]["turns"]]
        for r in read_records(tmp_path / "run1" / "trajectories.jsonl")
    ]
    texts2 = [
        [t["text"] for t in r["trajectory"]["turns"]]
        for r in read_records(tmp_path / "run2" / "trajectories.jsonl")
    ]
    assert texts == texts2 and len({t[0] for t in texts}) > 1  # seeded, yet the k samples differ
    assert again["all"] == stats["all"]


# ----------------------------------------------------------------------------- command line


def test_cli_data_samples_synthesis_records_and_export(tmp_path):
    import subprocess
    import sys

    from vretrver.cli import main

    # A small Tux Paint layout (drawings with caption files), read by the real benchmark reader.
    root = tmp_path / "stamps"
    colours = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white", "grey", "pink"]
    for i, c in enumerate(colours):
        folder = root / ("animals" if i % 2 else "food")
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40 + 4 * i, 32), c).save(folder / f"{c}_thing.png")
        (folder / f"{c}_thing.txt").write_text(f"a {c} thing\n")
    out = tmp_path / "samples.jsonl"
    rc = main(
        [
            "data",
            "samples",
            "--benchmark",
            "tuxpaint",
            "--data-root",
            str(root),
            "--split",
            "full",
            "--tasks",
            "tuxpaint_t2i",
            "--retriever",
            "hash:16",
            "--k",
            "3",
            "--hard-pool",
            "9",
            "--max-per-task",
            "6",
            "--work-dir",
            str(tmp_path / "fs"),
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    samples = read_samples(out)
    stats = json.loads(Path(str(out) + ".stats.json").read_text())
    assert len(samples) == 6 and stats["tasks"]["tuxpaint_t2i"]["samples"] == 6
    assert all(len(s.candidates) == 3 and len(s.positive_numbers()) == 1 for s in samples)
    assert (tmp_path / "fs" / "tuxpaint_t2i.full.jsonl").is_file()  # first-stage lists kept for reruns

    # Records from a scripted teacher, exported through the command line and the data_tools script.
    table = {s.query.text: [[answer([s.positive_numbers()[0]])]] for s in samples}
    synthesize(
        samples,
        ScriptedEngine(script_from_table(table)),
        tmp_path / "run",
        SynthesisConfig(attempts=1, temperature=0.0),
        progress=False,
    )
    assert (
        main(
            [
                "data",
                "export",
                "--records",
                str(tmp_path / "run"),
                "--data-dir",
                str(tmp_path / "lf"),
                "--name",
                "tux",
            ]
        )
        == 0
    )
    rows = json.loads((tmp_path / "lf" / "tux.json").read_text())
    assert len(rows) == 6 and [t["from"] for t in rows[0]["conversations"]] == ["system", "human", "gpt"]
    script = Path(__file__).resolve().parents[1] / "data_tools" / "export_llamafactory.py"
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            "--records",
            str(tmp_path / "run"),
            "--data-dir",
            str(tmp_path / "lf2"),
            "--name",
            "tux",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "lf2" / "tux.json").read_text()) == rows


def test_convert_turn_rewrites_the_call_after_the_reasoning_only(sample_photos):
    from vretrver.sft.coordinates import convert_turn

    photo = str(sample_photos["astronaut"])  # 512 x 512: Qwen2.5-VL sees it at 504 x 504
    mention = '<tool_call>{"name": "crop_image", "arguments": {"bbox_2d": [1, 1, 2, 2], "target_image": 0}}</tool_call>'
    call = '{"name": "crop_image", "arguments": {"bbox_2d": [126, 126, 252, 252], "target_image": 0}}'
    text = f"<think>I could write {mention} but zoom instead.</think>\n<tool_call>\n{call}\n</tool_call>"
    out = convert_turn(text, [photo], ToolConfig(), ToolConfig(coordinates="qwen3-vl"))
    assert mention in out  # the tag the reasoning mentions is left alone
    # 126 / 504 * 1000 = 250, 252 / 504 * 1000 = 500
    assert '"bbox_2d": [250, 250, 500, 500]' in out.split("</think>")[1]
