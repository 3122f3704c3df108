"""The rollout rig shared by the verl tests: our recipe's config, one sample's RL parquet, verl's dataset and
an AgentLoopWorker driving our agent loop against a stand-in LLM server that plays scripted turns.

The stand-in plays scripted assistant turns under vLLM's token-in-token-out contract (stop token ids,
log-probs) and checks, as vLLM would, that every image of the request has one placeholder run of the right
length in the prompt.
"""

from __future__ import annotations

import asyncio
import copy
import types
from pathlib import Path

from vretrver.families import get_family
from vretrver.integrations.verl.dataset import RLDataConfig, write_rl_parquet
from vretrver.samples import Candidate, Query, Sample

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "EasyR1" / "configs"

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


def compose_config(family: str, model: Path, tmp: Path, **overrides):
    from hydra import compose, initialize_config_dir

    name = f"{get_family(family).recipe}_rl"  # the family's verl recipe
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

    def __init__(self, family, model, photos, tmp, loop, overrides: dict | None = None):
        from transformers import AutoProcessor
        from verl.experimental.reward_loop.reward_loop import RewardLoopWorker
        from verl.utils.dataset.rl_dataset import RLHFDataset

        self.family, self.loop, self.tmp = family, loop, tmp
        self.sample = make_sample(photos)
        self.coordinates = get_family(family).coordinates
        self.cfg = compose_config(family, model, tmp, **(overrides or {}))
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
