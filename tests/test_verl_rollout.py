"""Full rollouts through verl's AgentLoopWorker with our agent loop, tools and reward file, against a
stand-in LLM server on the tiny models (tests/verl_rig.py); and the train / inference consistency of the
prompt."""

from __future__ import annotations

import asyncio
import math
import os

import numpy as np
import pytest
from PIL import Image
from verl_rig import ANSWER_GT_FIRST, ANSWER_GT_SECOND, CROP, SELECT3, UNKNOWN, Rig

from vretrver.episode import Episode
from vretrver.reward import score_episode
from vretrver.tools import ToolConfig


@pytest.fixture(scope="module")
def event_loop_for_verl():
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # verl binds this loop at construction (no asyncio.run)
    yield loop
    loop.close()
    asyncio.set_event_loop(None)


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def rig(request, sample_photos, tmp_path_factory, event_loop_for_verl):
    model = request.getfixturevalue("tiny_qwen25vl" if request.param == "qwen2_5_vl" else "tiny_qwen3vl")
    return Rig(
        request.param, model, sample_photos, tmp_path_factory.mktemp(request.param), event_loop_for_verl
    )


def trajectory(out, server, i):
    """Row i of the batch, and the stand-in's calls for that trajectory."""
    rec = out.non_tensor_batch["vretrver_rollout"][i]
    first_outputs = [c for c in server.calls if c["output"]]
    mine = None
    for req in dict.fromkeys(c["request"] for c in first_outputs):
        calls = [c for c in server.calls if c["request"] == req]
        texts = [server.tok.decode(c["output"], skip_special_tokens=True) for c in calls]
        if texts == rec["turns"]:
            mine = calls
    assert mine is not None, "no stand-in trajectory matches the recorded turns"
    return rec, mine


def test_full_rollout_tool_calls_image_observations_answer_and_reward(rig):
    import torch

    out, server = rig.run([[SELECT3, CROP, ANSWER_GT_FIRST], [UNKNOWN, ANSWER_GT_SECOND]])
    assert len(out) == 2
    batch = out.batch
    P = batch["prompts"].shape[1]
    expected = {
        # ranked first with 2 valid calls: 0.2 + 0.8 + (0.2 - 0.1)
        ("answer", 2, 0): 1.1,
        # an invalid call, ranked second: 0.2 + 0.8 * exp(-1/2)
        ("answer", 0, 1): 0.2 + 0.8 * math.exp(-0.5),
    }
    seen = set()
    for i in range(2):
        rec, calls = trajectory(out, server, i)
        key = (rec["end_reason"], rec["n_valid_calls"], rec["n_invalid_calls"])
        seen.add(key)
        # the reward manager called our reward file: the score sits on the last response token
        resp_len = int(batch["attention_mask"][i, P:].sum())
        assert float(batch["rm_scores"][i, resp_len - 1]) == pytest.approx(expected[key])
        assert float(batch["rm_scores"][i].sum()) == pytest.approx(expected[key])
        assert out.non_tensor_batch["n_valid_calls"][i] == key[1]
        # the response mask covers exactly the tokens the model generated
        resp = batch["responses"][i, :resp_len].tolist()
        mask = batch["response_mask"][i, :resp_len].tolist()
        generated = [t for c in calls for t in c["output"]]
        assert [t for t, m in zip(resp, mask) if m == 1] == generated
        assert sum(mask) == len(generated) and batch["response_mask"][i, resp_len:].sum() == 0
        masked = rig.tok.decode([t for t, m in zip(resp, mask) if m == 0])
        assert masked.count("<|im_start|>user\n<tool_response>") == len(calls) - 1
        assert masked.count("<|im_start|>assistant\n") == len(calls) - 1
        # the prompt is verl's left-padded prompt: identical for both rollouts
        assert batch["prompts"][i].tolist() == batch["prompts"][0].tolist()
    assert seen == set(expected)

    # the select_images call returned 3 images: 3 more placeholders, 3 more sets of image features
    i = next(j for j in range(2) if out.non_tensor_batch["vretrver_rollout"][j]["n_valid_calls"] == 2)
    rec, calls = trajectory(out, server, i)
    assert [c["n_images"] for c in calls] == [4, 4 + 3, 4 + 3 + 1]
    mmi = out.non_tensor_batch["multi_modal_inputs"][i]
    grid = mmi["image_grid_thw"]
    assert grid.shape[0] == 8
    ids = batch["input_ids"][i][batch["attention_mask"][i].bool()]
    pad = rig.tok.convert_tokens_to_ids("<|image_pad|>")
    assert int((ids == pad).sum()) == int(grid.prod(-1).sum()) // rig.proc.image_processor.merge_size**2

    # and the real tiny model accepts the training sequence (features and placeholders must match)
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(rig.cfg.actor_rollout_ref.model.path)
    with torch.no_grad():
        logits = model(
            input_ids=ids[None],
            attention_mask=torch.ones_like(ids)[None],
            pixel_values=mmi["pixel_values"],
            image_grid_thw=grid,
            mm_token_type_ids=(ids == pad).long()[None],  # 1 marks image tokens (M-RoPE positions)
        ).logits
    assert logits.shape[1] == ids.shape[0] and torch.isfinite(logits.float()).all()


def test_rollout_follows_the_evaluation_harness_rule_for_rule(rig):
    """The same turns through vretrver.episode.Episode (evaluation) and through the agent loop: same tool
    results, counts, end, and the same reward."""
    scripts = [
        [CROP, SELECT3, SELECT3],  # still calling tools when the budget (2) ends: no answer
        ["<think>no action here</think>"],  # malformed: ends at once
        [UNKNOWN, CROP, ANSWER_GT_FIRST],
    ]
    out, server = rig.run(scripts)
    order = [c["request"] for c in server.calls]
    assert order.index(server.arrived[2]) > 2, "the turns of the trajectories did not interleave"
    tool_config = ToolConfig.from_processor(rig.proc)
    by_turns = {tuple(r["turns"]): r for r in out.non_tensor_batch["vretrver_rollout"]}
    for script in scripts:
        ep = Episode(rig.sample, tool_config=tool_config)
        texts = []
        for turn in script:
            text = rig.tok.decode(
                rig.tok(turn, add_special_tokens=False)["input_ids"], skip_special_tokens=True
            )
            texts.append(text)
            if ep.step(text).kind != "observation":
                break
        rec = by_turns[tuple(texts)]
        assert (rec["n_valid_calls"], rec["n_invalid_calls"]) == (ep.n_valid_calls, ep.n_invalid_calls)
        assert rec["end_reason"] == ep.end_reason
        j = list(by_turns).index(tuple(texts))
        assert out.non_tensor_batch["score"][j] == pytest.approx(score_episode(ep).score)
        # the observations the model saw are the evaluation's observation texts, images in place
        P = out.batch["prompts"].shape[1]
        resp_len = int(out.batch["attention_mask"][j, P:].sum())
        decoded = rig.tok.decode(out.batch["responses"][j, :resp_len].tolist())
        for t in ep.turns:
            if t.role == "tool":
                assert t.text.replace("<image>", "") in _collapse_vision(decoded)
    assert sorted(np.round(out.non_tensor_batch["score"].astype(float), 4).tolist()) == sorted(
        [round(-0.1, 4), 0.0, round(0.2 + 0.8 + 0.2, 4)]
    )


def test_response_budget_is_never_exceeded(rig):
    """A turn is capped by the response budget left, and an observation that does not fit ends the
    trajectory unanswered: the reward never scores text cut from the training sequence."""
    n_select = len(rig.tok(SELECT3, add_special_tokens=False)["input_ids"])
    L = n_select + 8  # room for the tool call, not for its observation
    long_answer = "<think>" + "very " * 200 + "long</think><answer>[2, 1, 3, 4]</answer><|im_end|>"
    out, _ = rig.run([[SELECT3, ANSWER_GT_FIRST], [long_answer]], response_length=L)
    assert out.batch["responses"].shape[1] == L
    ends = {r["end_reason"] for r in out.non_tensor_batch["vretrver_rollout"]}
    assert ends == {"response length", "malformed turn: no <tool_call> or <answer> in the turn"}
    for i, rec in enumerate(out.non_tensor_batch["vretrver_rollout"]):
        assert not rec["truncated"]
        generated = sum(len(rig.tok(t, add_special_tokens=False)["input_ids"]) for t in rec["turns"])
        assert int(out.batch["response_mask"][i].sum()) == generated <= L
        # neither an answer nor a format reward; one valid call is free
        assert out.non_tensor_batch["score"][i] == 0.0


def _collapse_vision(text: str) -> str:
    import re

    return re.sub(r"<\|vision_start\|>(<\|image_pad\|>)+<\|vision_end\|>", "", text)


def _collapse_pads(text: str) -> str:
    import re

    return re.sub(r"(<\|image_pad\|>)+", "<|image_pad|>", text)


def test_prompt_equals_evaluation_and_llamafactory(rig, tmp_path, monkeypatch):
    """The tokens verl trains on are the tokens evaluation sends (same images, same ids) and the text
    LLaMA-Factory trains on (image pads collapsed), for the whole multi-turn conversation."""
    from vretrver.engines.render import chat_prompt, conversation_images
    from vretrver.protocol import build_conversation

    out, server = rig.run([[SELECT3, CROP, ANSWER_GT_FIRST]])
    rec, calls = trajectory(out, server, 0)

    # 1) the first prompt: token for token what evaluation feeds the processor
    conv = build_conversation(rig.sample, "v-retrver", rig.coordinates)
    enc = rig.proc(text=[chat_prompt(rig.proc, conv)], images=conversation_images(conv), return_tensors="pt")
    assert calls[0]["prompt_ids"] == enc["input_ids"][0].tolist()

    # 2) every later prompt: what evaluation sends after the same turns and tool results
    ep = Episode(rig.sample, tool_config=ToolConfig.from_processor(rig.proc))
    for n, text in enumerate(rec["turns"][:-1], 1):
        assert ep.step(text).kind == "observation"
        enc = rig.proc(
            text=[chat_prompt(rig.proc, ep.conversation)],
            images=conversation_images(ep.conversation),
            return_tensors="pt",
        )
        assert calls[n]["prompt_ids"] == enc["input_ids"][0].tolist()
    ep.step(rec["turns"][-1])

    # 3) LLaMA-Factory: the SFT row of the same conversation renders the same text
    from vretrver.integrations.llamafactory import (
        conversation_to_sharegpt,
        render_with_llamafactory,
        update_dataset_info,
    )

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    turns, images, _ = conversation_to_sharegpt(ep.conversation)
    paths = []
    for j, img in enumerate(images):
        if isinstance(img, Image.Image):
            p = tmp_path / f"tool_{j}.png"
            img.save(p)
            img = str(p)
        paths.append(os.path.abspath(img))
    import json

    (tmp_path / "rl_check.json").write_text(json.dumps([{"conversations": turns, "images": paths}]))
    update_dataset_info(tmp_path, "rl_check", "rl_check.json")
    rows, lf_tok = render_with_llamafactory(
        tmp_path, "rl_check", rig.cfg.actor_rollout_ref.model.path, work_dir=tmp_path / "lf"
    )
    lf_text = _collapse_pads(lf_tok.decode(rows[0]["input_ids"]))
    P = out.batch["prompts"].shape[1]
    valid = out.batch["attention_mask"][0].bool()
    verl_text = _collapse_pads(rig.tok.decode(out.batch["input_ids"][0][valid].tolist()))
    assert lf_text.startswith(verl_text) and lf_text[len(verl_text) :].strip() == ""
    assert P > 0
