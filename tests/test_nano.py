"""V-Retrver-nano: the synthetic benchmark (deterministic, disjoint splits, a mark the model's input
loses and a crop recovers), the rule-based teacher, the small tokenizer and the nano checkpoint."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vretrver.nano import data
from vretrver.nano.data import (
    COLOURS,
    GREY,
    MARK_BOX,
    TASKS,
    gallery_samples,
    load_nano,
    query_spec,
    render,
)
from vretrver.nano.model import BUILDER_VERSION
from vretrver.nano.teacher import plan_turns
from vretrver.protocol import parse_turn
from vretrver.tools import crop_image

# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def nano_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("nano-data")


@pytest.fixture(scope="session")
def nano_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vretrver.nano.model import build_nano_model, nano_model_path

    if os.environ.get("VRETRVER_CACHE"):
        return nano_model_path()
    return build_nano_model(tmp_path_factory.mktemp("nano-model"))


@functools.lru_cache(maxsize=2)
def _processor(path: Path):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(path)


# --------------------------------------------------------------------------------------------- pixels


def model_view(processor, img: Image.Image) -> np.ndarray:
    """The image as the model receives it (H x W x 3, 0-255), rebuilt from the processor's patches."""
    ip = processor.image_processor
    out = ip(images=[img], return_tensors="np")
    t, h, w = (int(v) for v in out["image_grid_thw"][0])
    m, p, tp = ip.merge_size, ip.patch_size, ip.temporal_patch_size
    x = np.asarray(out["pixel_values"]).reshape(t, h // m, w // m, m, m, 3, tp, p, p)
    x = x.transpose(0, 6, 1, 3, 7, 2, 4, 8, 5)[0, 0].reshape(h * p, w * p, 3)
    return (x * np.array(ip.image_std) + np.array(ip.image_mean)) * 255


def _tones() -> tuple[np.ndarray, list[str]]:
    names = list(COLOURS)
    tones = [COLOURS[n] for n in names] + [data.complement(COLOURS[n]) for n in names]
    return np.array(tones, dtype=float), names + names


def read_colour(pixels: np.ndarray, min_deviation: float = 40) -> str | None:
    """The palette colour the pixels show: each pixel far from grey votes for its nearest tone (a
    colour or a complement, which names its colour); None when no pixel stands out from grey."""
    px = pixels.reshape(-1, 3).astype(float)
    px = px[np.abs(px - GREY).max(axis=1) > min_deviation]
    if not len(px):
        return None
    tones, names = _tones()
    nearest = np.linalg.norm(px[:, None] - tones[None], axis=2).argmin(axis=1)
    votes: dict[str, int] = {}
    for i in nearest:
        votes[names[i]] = votes.get(names[i], 0) + 1
    return max(votes, key=votes.get)


def _specs(n: int) -> list[data.CandidateSpec]:
    return [c for t in TASKS for i in range(n) for c in query_spec(t, "test", i).candidates]


# --------------------------------------------------------------------------------------------- generator


def test_generation_is_deterministic(tmp_path: Path) -> None:
    a = load_nano(tmp_path / "a", split="test", size=3)
    b = load_nano(tmp_path / "b", split="test", size=3)
    for ta, tb in zip(a, b):
        assert [q.to_dict()["positives"] for q in ta.queries] == [q.positives for q in tb.queries]
        assert [q.query.text for q in ta.queries] == [q.query.text for q in tb.queries]
        for cid, c in ta.pool.items():
            assert Path(c.image).read_bytes() == Path(tb.pool[cid].image).read_bytes()
    # Reading again reuses the files; a limit takes the first queries of the same stream.
    again = load_nano(tmp_path / "a", split="test", size=3, limit=2)
    assert [q.id for q in again[0].queries] == [q.id for q in a[0].queries[:2]]
    assert query_spec("nano_colour", "test", 5, seed=1) != query_spec("nano_colour", "test", 5, seed=0)


def test_splits_are_disjoint(nano_root: Path) -> None:
    def digest(t) -> set[str]:
        return {hashlib.sha1(Path(c.image).read_bytes()).hexdigest() for c in t.pool.values()}

    train = load_nano(nano_root, split="train", size=20)
    test = load_nano(nano_root, split="test", size=20)
    for tr, te in zip(train, test):
        assert not set(tr.pool) & set(te.pool)
        assert not {q.id for q in tr.queries} & {q.id for q in te.queries}
        assert not digest(tr) & digest(te)
        assert len(digest(tr)) == len(tr.pool)  # no two images alike within a split either


def test_palette_tones_are_distinct_8_bit_colours() -> None:
    tones, _ = _tones()
    assert ((tones >= 1) & (tones <= 255)).all()
    distances = np.linalg.norm(tones[:, None] - tones[None], axis=2) + np.eye(len(tones)) * 999
    assert distances.min() > 90  # no colour near another or near another's complement
    assert np.linalg.norm(tones - GREY, axis=1).min() > 90  # nor near the background


def test_queries_and_ground_truth(nano_root: Path) -> None:
    for task in load_nano(nano_root, split="test", size=20):
        assert task.metric == "R@1" and task.name in TASKS
        for q in task.queries:
            gallery, detail = q.meta["gallery"], q.meta["detail"]
            assert len(gallery) == data.DEFAULT_K and set(gallery) <= set(task.pool)
            assert len(q.positives) == 1 and q.positives[0] in gallery
            labels = [detail["labels"][c] for c in gallery]
            assert len(set(labels)) == len(labels)  # one right answer per query
            assert detail["labels"][q.positives[0]] == detail["target"]
            assert detail["target"] in q.query.text
            if task.name == "nano_colour_shape":
                colour, shape = (detail["marks"][q.positives[0]][k] for k in ("colour", "shape"))
                others = [detail["marks"][c] for c in gallery if c != q.positives[0]]
                assert any(m["colour"] == colour for m in others)  # hard negatives both ways
                assert any(m["shape"] == shape for m in others)
    # The positive sits anywhere among the candidates.
    positions = {query_spec("nano_colour", "train", i).positive for i in range(40)}
    assert positions == set(range(data.DEFAULT_K))


def test_mark_is_lost_at_input_resolution_and_recovered_by_the_crop(nano_model: Path) -> None:
    processor = _processor(nano_model)
    cfg = data.tool_config()
    from vretrver.tools import ToolConfig

    assert ToolConfig.from_processor(processor) == cfg  # the model's processor sets the tools' geometry
    box = data.model_box()
    assert box == [36, 12, 40, 16]
    seen_decoy = 0
    for spec in _specs(6):
        img = render(spec)
        whole = model_view(processor, img)
        assert whole.shape == (56, 56, 3)
        x1, y1, x2, y2 = box
        # Within a few grey levels around the mark (measured: at most 6): its colour is not in the input.
        assert np.abs(whole[y1 - 1 : y2 + 1, x1 - 1 : x2 + 1] - GREY).max() < 8
        seen_decoy += read_colour(whole) is not None
        crop = crop_image({"bbox_2d": box, "target_image": 1}, [None, img], cfg)
        assert crop.valid
        view = model_view(processor, crop.images[0])
        assert view.shape == (56, 56, 3)
        assert np.abs(view - GREY).max() > 90
        assert read_colour(view) == spec.mark.colour
    assert seen_decoy > 0  # the decoys, unlike the mark, survive the shrinking


# --------------------------------------------------------------------------------------------- teacher


def test_teacher_judges_every_crop_and_carries_the_match_to_the_answer(nano_root: Path) -> None:
    task = load_nano(nano_root, tasks=["nano_colour_shape"], split="test", size=12)[0]
    seen_positions = set()
    for sample in gallery_samples(task):
        target = sample.meta["detail"]["target"]
        labels = [sample.meta["detail"]["labels"][c.id] for c in sample.candidates]
        pos = sample.positive_numbers()[0]
        seen_positions.add(pos)
        turns = plan_turns(sample, data.tool_config(), budget=5)
        assert len(turns) == 6  # a crop of every candidate, then the answer
        for j, turn in enumerate(turns, 1):
            assert turn.startswith(f"<think>Looking for {target}.")
            if j > 1:  # each turn names the previous crop, judges it, and carries the match found so far
                verdict = "Match" if j - 1 == pos else "No"
                found = f" Found {pos}." if j - 1 >= pos else ""
                assert f"Looking for {target}. Candidate {j - 1}: {labels[j - 2]}. {verdict}.{found}" in turn
            parsed = parse_turn(turn)
            if j <= 5:
                assert parsed.kind == "tool_call" and parsed.well_formed
                assert parsed.tool_call.arguments == {"bbox_2d": [36, 12, 40, 16], "target_image": j}
        final = parse_turn(turns[-1])
        # The match, then the candidates after it, then those before it.
        assert final.kind == "answer" and final.answer == [pos, *range(pos + 1, 6), *range(1, pos)]
        # With a smaller budget it ranks only on what it saw: unseen candidates before seen mismatches.
        short = plan_turns(sample, data.tool_config(), budget=2)
        assert len(short) == 3 and short[:2] == turns[:2]
        answer = parse_turn(short[-1]).answer
        if pos > 2:
            assert answer == [3, 4, 5, 1, 2] and "No match seen." in short[-1]
        else:
            assert answer[0] == pos
        none = parse_turn(plan_turns(sample, data.tool_config(), budget=0)[-1])
        assert none.kind == "answer" and none.answer == [1, 2, 3, 4, 5]
    assert len(seen_positions) > 2


def test_teacher_that_stops_at_the_match_answers_in_the_turn_that_says_found(nano_root: Path) -> None:
    from vretrver.nano.teacher import stops_at_match

    task = load_nano(nano_root, tasks=["nano_colour"], split="test", size=40)[0]
    samples = gallery_samples(task)
    for sample in samples:
        pos = sample.positive_numbers()[0]
        full = plan_turns(sample, data.tool_config(), budget=5)
        short = plan_turns(sample, data.tool_config(), budget=5, stop_at_match=True)
        # The same crops up to the match; the next turn judges it and answers instead of cropping on.
        assert short[:pos] == full[:pos] and len(short) == pos + 1
        final = parse_turn(short[-1])
        assert final.kind == "answer" and final.well_formed
        assert final.answer == parse_turn(full[-1]).answer == [pos, *range(pos + 1, 6), *range(1, pos)]
        assert short[-1].split("</think>")[0].endswith(f"Match. Found {pos}.")
    # The share is a fixed draw per sample: none, all, and about the share asked for.
    assert not any(stops_at_match(s, 0.0) for s in samples) and all(stops_at_match(s, 1.0) for s in samples)
    drawn = [stops_at_match(s, 0.3) for s in samples]
    assert drawn == [stops_at_match(s, 0.3) for s in samples] and 4 <= sum(drawn) <= 20


def test_teacher_trajectories_pass_the_real_episode_and_show_the_mark(nano_root: Path, tmp_path) -> None:
    from vretrver.nano.teacher import NanoTeacher, stops_at_match
    from vretrver.sft import SynthesisConfig, read_records, synthesize

    samples = [s for t in load_nano(nano_root, split="test", size=3) for s in gallery_samples(t)]
    teacher = NanoTeacher(
        samples=samples,
        profile="v-retrver",
        max_tool_calls=5,
        tool_config=data.tool_config(),
        stop_share=0.5,
    )
    cfg = SynthesisConfig(profile="v-retrver", attempts=1, max_tool_calls=5)
    stats = synthesize(samples, teacher, tmp_path, cfg, progress=False)
    assert stats["all"]["kept"] == len(samples)
    by_id = {s.id: s for s in samples}
    crops = []
    for rec in read_records(tmp_path / "trajectories.jsonl"):
        sample = by_id[rec["sample_id"]]
        traj = rec["trajectory"]
        pos = sample.positive_numbers()[0]
        assert traj["answer"][0] == pos
        tools = [t for t in traj["turns"] if t["role"] == "tool"]
        crops.append(len(tools))
        assert len(tools) == (pos if stops_at_match(sample, 0.5) else 5) and all(
            t["tool"]["valid"] for t in tools
        )
        x1, y1, x2, y2 = MARK_BOX
        for t in tools:  # the crop that came back holds the whole mark
            bx1, by1, bx2, by2 = t["tool"]["box"]
            assert bx1 <= x1 and by1 <= y1 and bx2 >= x2 and by2 >= y2
    assert 5 in crops and min(crops) < 5  # both endings among the samples


# --------------------------------------------------------------------------------------------- tokenizer


def test_tokenizer_is_small_and_round_trips(nano_model: Path) -> None:
    from transformers import AutoTokenizer

    from vretrver.nano.tokenizer import corpus_texts, qwen25vl_added_tokens

    tok = AutoTokenizer.from_pretrained(nano_model)
    assert 300 < len(tok) <= 2048 + 22
    texts = corpus_texts(n_per_task=2)
    odd = 'Zoom 日本語 ü 🤖 \t<tool_call> {"bbox_2d": [1.5, -2]} <|im_end|>\n\n'
    for text in [*texts, odd]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    for t in qwen25vl_added_tokens():  # each added token is one id, with Qwen's special flag
        ids = tok(t["content"], add_special_tokens=False)["input_ids"]
        assert len(ids) == 1
        if t["special"]:
            assert t["content"] in tok.all_special_tokens
    # <tool_call> is not special: it survives decoding with skip_special_tokens.
    ids = tok("<tool_call>\n{}\n</tool_call><|im_end|>", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == "<tool_call>\n{}\n</tool_call>"
    # The protocol's texts are cheap: the whole teacher conversation takes few tokens per character.
    assert len(tok(texts[0])["input_ids"]) < len(texts[0]) / 3


def test_chat_template_renders_like_qwen25vl(nano_model: Path) -> None:
    from vretrver.nano.tokenizer import nano_conversations
    from vretrver.testing.tiny_models import chat_template_text

    processor = _processor(nano_model)
    messages = nano_conversations(n_per_task=1)[0]
    text = processor.apply_chat_template(messages, tokenize=False)
    from transformers.utils.chat_template_utils import render_jinja_template

    expected, _ = render_jinja_template(
        conversations=[messages], chat_template=chat_template_text("qwen2_5_vl")
    )
    assert text == expected[0]
    assert text.startswith("<|im_start|>system\nYou are a multimodal retrieval assistant.")
    assert text.count("<|image_pad|>") == 10  # 5 candidates, 5 crops


# --------------------------------------------------------------------------------------------- model


def test_model_folder_loads_and_generates(nano_model: Path, nano_root: Path) -> None:
    import torch
    from transformers import AutoModelForImageTextToText

    from vretrver.engines.render import chat_prompt, conversation_images
    from vretrver.protocol import build_conversation

    info = json.loads((nano_model / "vretrver_nano.json").read_text())
    config = json.loads((nano_model / "config.json").read_text())
    assert info["builder_version"] == BUILDER_VERSION and info["parameters"] < 3_000_000
    assert config["model_type"] == "qwen2_5_vl"
    assert config["text_config"]["hidden_size"] == 128 and config["text_config"]["num_hidden_layers"] == 4
    assert config["vision_config"]["depth"] == 2 and config["vision_config"]["hidden_size"] == 64
    processor = _processor(nano_model)
    assert config["text_config"]["vocab_size"] >= len(processor.tokenizer)
    model = AutoModelForImageTextToText.from_pretrained(nano_model)
    sample = gallery_samples(load_nano(nano_root, tasks=["nano_colour"], split="test", size=1)[0])[0]
    conv = build_conversation(sample, "v-retrver", max_tool_calls=5)
    inputs = processor(
        text=[chat_prompt(processor, conv)], images=conversation_images(conv), return_tensors="pt"
    )
    assert inputs["image_grid_thw"].tolist() == [[1, 4, 4]] * 5  # 2 x 2 merged tokens per image
    n_prompt = inputs["input_ids"].shape[1]
    assert n_prompt < 700
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > n_prompt


def test_nano_is_a_builtin_benchmark(nano_root: Path) -> None:
    from vretrver.benchmarks import load_benchmark, registry
    from vretrver.cli import build_parser
    from vretrver.nano.data import benchmark_spec

    spec = registry.get_spec("nano")
    assert spec is benchmark_spec() and "nano" in registry.names()
    assert (spec.top_n, spec.window, spec.ks, spec.paper_metric) == (5, 5, (1, 2, 3), "R@1")
    assert "nano" not in registry.files_table()  # it reads no files: nothing to list in the README's table
    assert registry.paper_metric_of("nano_colour_shape") == "R@1"
    tasks = load_benchmark("nano", nano_root, tasks=["nano_colour"], limit=2)
    assert [t.name for t in tasks] == ["nano_colour"] and len(tasks[0].queries) == 2
    ns = build_parser().parse_args(["eval", "--benchmark", "nano", "--retriever", "hash"])
    assert ns.benchmark == "nano"


def test_nano_checkpoint_is_a_qwen2_5_vl_family_member(nano_model: Path) -> None:
    """The nano checkpoint is a Qwen2.5-VL (model_type qwen2_5_vl): it shares that family's record, so the
    crop convention, LLaMA-Factory template and RL recipe follow without a record of its own."""
    from vretrver.families import family_of_checkpoint, family_of_processor
    from vretrver.tools import ToolConfig

    assert family_of_checkpoint(nano_model).name == "qwen2_5_vl"
    processor = _processor(nano_model)
    assert family_of_processor(processor).name == "qwen2_5_vl"
    cfg = ToolConfig.from_processor(processor)
    assert (cfg.coordinates, cfg.min_pixels, cfg.max_pixels) == ("qwen2.5-vl", 56 * 56, 56 * 56)


def test_eval_machinery_runs_on_nano(nano_model: Path, nano_root: Path, tmp_path: Path) -> None:
    """The offline-free first stage (hash) and the reranking loop with the transformers engine."""
    from vretrver.evaluate import EvalConfig, evaluate

    cfg = EvalConfig(
        benchmark="nano",
        data_root=str(nano_root),
        split="test",
        limit=2,
        retriever="hash",
        reranker=str(nano_model),
        engine="hf",
        max_tool_calls=5,
        max_new_tokens=24,
    )
    out, summary = evaluate(cfg, tmp_path / "run", progress=False)
    for task in TASKS:
        entry = summary["tasks"][task]
        assert entry["n_queries"] == 2 and entry["metric"] == "R@1"
        rows = [json.loads(line) for line in (out / "results" / f"{task}.jsonl").read_text().splitlines()]
        assert len(rows) == 2 and all(len(r["reranked"]) == 5 for r in rows)
