"""The transformers engine on a tiny random Qwen2.5-VL: batches, stop strings, episodes, failures."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from vretrver.engines import GenerationConfig, make_engine
from vretrver.engines.hf import HFEngine
from vretrver.episode import Episode
from vretrver.protocol import build_conversation
from vretrver.rerank import run_episodes
from vretrver.samples import Candidate, Query, Sample

SELECT_CALL = '<think>compare</think><tool_call>{"name": "select_images", "arguments": {"target_images": [1, 2]}}</tool_call>'


@pytest.fixture(scope="module")
def engine(tiny_qwen25vl: Path) -> HFEngine:
    eng = HFEngine(str(tiny_qwen25vl), device="cpu", dtype="float32", batch_size=4)
    yield eng
    eng.close()


def make_sample(sid: str, query_image: Path, cand_images: list[Path], text: str = "a photo") -> Sample:
    return Sample(
        id=sid,
        query=Query(text=text, images=[str(query_image)]),
        candidates=[
            Candidate(id=f"{sid}-c{i}", text=f"candidate {i}", image=str(p))
            for i, p in enumerate(cand_images)
        ],
    )


@pytest.fixture(scope="module")
def samples(sample_photos: dict[str, Path]) -> list[Sample]:
    p = sample_photos
    return [
        make_sample("s0", p["astronaut"], [p["coffee"], p["chelsea"], p["rocket"]]),
        make_sample("s1", p["rocket"], [p["motorcycle"], p["camera"]], text="a rocket on its pad"),
        make_sample("s2", p["chelsea"], [p["astronaut"], p["coffee"], p["camera"], p["rocket"]]),
    ]


def test_tool_config_comes_from_the_processor(engine: HFEngine) -> None:
    ip = engine.processor.image_processor
    assert engine.tool_config.coordinates == "qwen2.5-vl"
    assert engine.tool_config.factor == ip.patch_size * ip.merge_size == 28
    assert engine.tool_config.max_pixels == ip.size["longest_edge"]


def test_prompt_tokens_expand_every_image(engine: HFEngine, samples: list[Sample]) -> None:
    conv = build_conversation(samples[0])
    ids = engine.prompt_token_ids(conv)
    tok = engine.tokenizer
    vision_start = tok.convert_tokens_to_ids("<|vision_start|>")
    pad = tok.convert_tokens_to_ids("<|image_pad|>")
    assert ids.count(vision_start) == len(conv.images) == 4
    # each image becomes (h / 28) * (w / 28) merged tokens, at least 4 with this processor
    assert ids.count(pad) >= 4 * len(conv.images)
    assert tok.decode(ids[-3:]) == "<|im_start|>assistant\n"


def test_batch_of_three_conversations(engine: HFEngine, samples: list[Sample]) -> None:
    convs = [build_conversation(s) for s in samples]
    outs = engine.continue_conversations(convs, GenerationConfig(max_new_tokens=6, stop=[]))
    assert len(outs) == 3
    for conv, out in zip(convs, outs):
        assert out.error is None and isinstance(out.text, str) and out.text
        assert out.finish_reason in ("length", "stop")
        assert 1 <= out.n_completion_tokens <= 6
        # the padded batch reports each row's own prompt length
        assert out.n_prompt_tokens == len(engine.prompt_token_ids(conv))
    # left padding: a row in a batch continues the same way as alone
    alone = engine.continue_conversations(convs[1:2], GenerationConfig(max_new_tokens=6, stop=[]))
    assert alone[0].text == outs[1].text


def test_stop_string_ends_the_turn_and_is_kept(engine: HFEngine, samples: list[Sample]) -> None:
    conv = build_conversation(samples[2])
    free = engine.continue_conversations([conv], GenerationConfig(max_new_tokens=12, stop=[]))[0].text
    assert len(free) > 8
    stop = free[5:8]
    out = engine.continue_conversations([conv], GenerationConfig(max_new_tokens=12, stop=[stop]))[0]
    end = free.find(stop) + len(stop)
    assert out.text == free[:end] and out.text.endswith(stop)
    assert out.finish_reason == "stop"


def test_tool_observation_with_two_images_continues(engine: HFEngine, samples: list[Sample]) -> None:
    ep = Episode(samples[0], tool_config=engine.tool_config)
    step = ep.step(SELECT_CALL)
    assert step.kind == "observation" and len(step.images) == 2
    before = engine.prompt_token_ids(build_conversation(samples[0]))
    after = engine.prompt_token_ids(ep.conversation)
    vision_start = engine.tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert after.count(vision_start) == before.count(vision_start) + 2
    out = engine.continue_conversations([ep.conversation], GenerationConfig(max_new_tokens=4))[0]
    assert out.error is None and out.text


def test_episodes_complete_through_run_episodes(engine: HFEngine, samples: list[Sample]) -> None:
    episodes = run_episodes(samples, engine, gen=GenerationConfig(max_new_tokens=8))
    assert [e.sample.id for e in episodes] == ["s0", "s1", "s2"]
    for ep in episodes:
        assert ep.done and ep.failed is None
        assert sorted(ep.ranking) == list(range(1, ep.k + 1))
        assert ep.turns and ep.turns[0].role == "assistant"


def test_a_failing_conversation_fails_only_its_episode(
    engine: HFEngine, samples: list[Sample], sample_photos: dict[str, Path], tmp_path: Path
) -> None:
    unreadable = tmp_path / "broken.png"
    unreadable.write_bytes(b"not an image at all")
    # Loads fine, but the processor refuses it (aspect ratio above 200): the whole padded batch fails,
    # and the engine must fall back to one by one.
    sliver = tmp_path / "sliver.png"
    Image.new("RGB", (600, 2), "red").save(sliver)
    p = sample_photos
    bad_file = make_sample("bad-file", p["coffee"], [unreadable, p["rocket"]])
    bad_shape = make_sample("bad-shape", p["coffee"], [sliver, p["rocket"]])
    batch = [samples[0], bad_file, samples[1], bad_shape]
    episodes = run_episodes(batch, engine, gen=GenerationConfig(max_new_tokens=4))
    by_id = {e.sample.id: e for e in episodes}
    assert "could not be read" in by_id["bad-file"].failed
    assert "aspect ratio" in by_id["bad-shape"].failed
    for sid in ("s0", "s1"):
        assert by_id[sid].failed is None and by_id[sid].turns
    # failed episodes still end with a full ranking (the prior order)
    assert by_id["bad-file"].ranking == [1, 2]


def test_make_engine_by_name(tiny_qwen25vl: Path) -> None:
    eng = make_engine("hf", str(tiny_qwen25vl), device="cpu", batch_size=2)
    assert isinstance(eng, HFEngine) and eng.batch_size == 2 and eng.device == "cpu"
    with pytest.raises(ValueError, match="unknown engine kind"):
        make_engine("onnx", str(tiny_qwen25vl))
    with pytest.raises(ValueError, match="device"):
        HFEngine(str(tiny_qwen25vl), device="tpu")
