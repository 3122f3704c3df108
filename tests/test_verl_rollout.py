"""Full rollouts through verl's AgentLoopWorker with our agent loop, tools and reward file, against a
stand-in LLM server on the tiny models; and the train / inference consistency of the prompt.

The stand-in plays scripted assistant turns under vLLM's token-in-token-out contract (stop token ids,
log-probs) and checks, as vLLM would, that every image of the request has one placeholder run of the right
length in the prompt.
"""

from __future__ import annotations

import asyncio
import copy
import math
import os
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vretrver.episode import Episode
from vretrver.integrations.verl.dataset import RLDataConfig, write_rl_parquet
from vretrver.reward import score_episode
from vretrver.samples import Candidate, Query, Sample
from vretrver.tools import ToolConfig

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "EasyR1" / "configs"
FAMILY = {"qwen2_5_vl": ("qwen2_5_vl_7b_rl", "qwen2.5-vl"), "qwen3_vl": ("qwen3_vl_8b_rl", "qwen3-vl")}

SELECT3 = '<think>Compare the query with 2 and 4.</think><tool_call>\n{"name": "select_images", "arguments": {"target_images": [0, 2, 4]}}\n</tool_call>'
CROP = '<think>Zoom into 2.</think><tool_call>\n{"name": "crop_image", "arguments": {"bbox_2d": [0.1, 0.1, 0.6, 0.6], "target_image": 2}}\n</tool_call>'
UNKNOWN = '<think>Try a tool.</think><tool_call>\n{"name": "zoom", "arguments": {}}\n</tool_call>'
ANSWER_GT_FIRST = "<think>2 matches best.</think><answer>[2, 1, 4, 3]</answer><|im_end|>"
ANSWER_GT_SECOND = "<think>1 then 2.</think><answer>[1, 2, 3, 4]</answer><|im_end|>"


def make_sample(photos) -> Sample:
    return Sample(
        id="q1",
        query=Query(
            text="a cat on a sofa", images=[str(photos["astronaut"])], instruction="Find the matching image."
        ),
        candidates=[
            Candidate("c1", text="a cup of coffee", image=str(photos["coffee"])),
            Candidate("c2", text="a cat", image=str(photos["chelsea"])),
            Candidate("c3", text="a text-only candidate"),
            Candidate("c4", image=str(photos["rocket"])),
        ],
        positives=["c2"],
        task="t2i",
        dataset="toy",
    )


class StandInServer:
    """Stand-in for verl's LLMServerClient: each new trajectory (request id) plays the next script."""

    def __init__(self, tokenizer, processor, scripts: list[list[str]]):
        self.tok, self.proc = tokenizer, processor
        self.scripts = [list(s) for s in scripts]
        self.by_request: dict[str, list[str]] = {}
        self.arrived: list[str] = []  # trajectories in order of their first turn
        self.later_turns = 0
        self.calls: list[dict] = []
        self.pad_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")

    def _check_placeholders(self, prompt_ids, images):
        runs, prev = [], None
        for t in prompt_ids:
            if t == self.pad_id:
                if prev != self.pad_id:
                    runs.append(0)
                runs[-1] += 1
            prev = t
        assert len(runs) == len(images or []), (
            f"{len(runs)} image placeholders for {len(images or [])} images"
        )
        if images:
            grid = self.proc.image_processor(images=images, return_tensors="pt")["image_grid_thw"]
            merge = self.proc.image_processor.merge_size**2
            assert runs == [int(g.prod()) // merge for g in grid], (
                "placeholder lengths differ from image features"
            )

    async def generate(self, request_id, *, prompt_ids, sampling_params, image_data=None, **kwargs):
        from verl.workers.rollout.replica import TokenOutput

        self._check_placeholders(prompt_ids, image_data)
        if request_id in self.arrived:
            self.later_turns += 1
        else:
            self.arrived.append(request_id)
            if len(self.arrived) == 3:
                # hold the third trajectory's first turn back until another trajectory's later turn
                # overtakes it, as happens on a loaded server
                for _ in range(200):
                    if self.later_turns:
                        break
                    await asyncio.sleep(0.05)
        if request_id not in self.by_request:  # a script per trajectory, in order of first arrival
            self.by_request[request_id] = self.scripts.pop(0)
        script = self.by_request[request_id]
        ids = self.tok(script.pop(0), add_special_tokens=False)["input_ids"]
        stops = set(sampling_params.get("stop_token_ids") or [])
        for i, t in enumerate(ids):
            if t in stops:
                ids = ids[: i + 1]
                break
        ids = ids[: sampling_params.get("max_tokens", len(ids))]
        self.calls.append(
            {
                "request": request_id,
                "prompt_ids": list(prompt_ids),
                "n_images": len(image_data or []),
                "output": ids,
            }
        )
        return TokenOutput(token_ids=ids, log_probs=[-0.1] * len(ids), stop_reason="completed")


class InProcessRewardHandle:
    """What the agent loop sees of a RewardLoopWorker actor; the data is copied as Ray would serialize it."""

    def __init__(self, worker):
        self.compute_score = types.SimpleNamespace(
            remote=lambda data: worker.compute_score(copy.deepcopy(data))
        )


@pytest.fixture(scope="module")
def event_loop_for_verl():
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # verl binds this loop at construction (no asyncio.run)
    yield loop
    loop.close()
    asyncio.set_event_loop(None)


def compose_config(family: str, model: Path, tmp: Path, **overrides):
    from hydra import compose, initialize_config_dir

    name, _ = FAMILY[family]
    items = {
        "actor_rollout_ref.model.path": str(model),
        "data.max_prompt_length": 4096,
        "data.max_response_length": 4096,
        "actor_rollout_ref.rollout.multi_turn.tool_config_path": str(CONFIGS / "tools.yaml"),
        "actor_rollout_ref.rollout.agent.agent_loop_config_path": str(CONFIGS / "agent_loop.yaml"),
        "reward.custom_reward_function.path": str(ROOT / "EasyR1" / "reward_function" / "v_retrver.py"),
        "+data.cache_dir": str(tmp / "cache"),
        **overrides,
    }
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return compose(config_name=name, overrides=[f"{k}={v}" for k, v in items.items()])


class Rig:
    """Our recipe's config, the RL parquet of one sample, verl's dataset and an AgentLoopWorker."""

    def __init__(self, family, model, photos, tmp, loop):
        from transformers import AutoProcessor
        from verl.experimental.reward_loop.reward_loop import RewardLoopWorker
        from verl.utils.dataset.rl_dataset import RLHFDataset

        self.family, self.loop, self.tmp = family, loop, tmp
        self.sample = make_sample(photos)
        self.coordinates = FAMILY[family][1]
        self.cfg = compose_config(family, model, tmp)
        self.parquet = tmp / f"{family}.parquet"
        write_rl_parquet(
            self.parquet, [self.sample], RLDataConfig(coordinates=self.coordinates), progress=False
        )
        self.proc = AutoProcessor.from_pretrained(model)
        self.tok = self.proc.tokenizer
        self.dataset = RLHFDataset(str(self.parquet), self.tok, self.cfg.data, processor=self.proc)
        self.reward_worker = RewardLoopWorker(self.cfg)

    def run(self, scripts, n=None, response_length=None):
        from omegaconf import OmegaConf
        from verl import DataProto
        from verl.experimental.agent_loop.agent_loop import AgentLoopWorker
        from verl.utils.dataset.rl_dataset import collate_fn

        cfg = self.cfg
        if response_length is not None:
            cfg = copy.deepcopy(cfg)
            OmegaConf.update(cfg, "actor_rollout_ref.rollout.response_length", response_length)
        server = StandInServer(self.tok, self.proc, scripts)
        worker = AgentLoopWorker(
            cfg, server, reward_loop_worker_handles=[InProcessRewardHandle(self.reward_worker)]
        )
        batch = DataProto.from_single_dict(collate_fn([self.dataset[0]]))
        batch.pop(batch_keys=["dummy_tensor"])
        batch = batch.repeat(repeat_times=n or len(scripts), interleave=True)
        out = self.loop.run_until_complete(worker.generate_sequences(batch))
        return out, server


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
