"""A model family added from outside the package: one record plus its own files (here: its transformers
classes, and the model_type entry verl ships for a family it supports) and no edit anywhere else, run
through evaluation, the SFT export to LLaMA-Factory, the verl rollout rig and the RL recipe's frozen
vision encoder.

The toy family ``toy_vl`` has its own ``model_type``, config and model classes (built on Qwen2.5-VL's and
registered with transformers' Auto classes, as any out-of-tree model would be), shares Qwen2.5-VL's
processor class (as Qwen3.5 shares Qwen3-VL's), and, unlike Qwen2.5-VL, writes crop boxes in relative
0-1000 coordinates: every step below must read that from the record.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoProcessor,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLVideoProcessor,
)

from vretrver.families import Family, get_family, register_family, unregister_family
from vretrver.testing.tiny_models import QWEN2_5_VL_TINY, build_tiny_model
from vretrver.tools import ToolConfig

HERE = Path(__file__).resolve().parent


# --------------------------------------------------------------------- the family's own files


class ToyVLConfig(Qwen2_5_VLConfig):
    model_type = "toy_vl"


class ToyVLForConditionalGeneration(Qwen2_5_VLForConditionalGeneration):
    config_class = ToyVLConfig


AutoConfig.register("toy_vl", ToyVLConfig, exist_ok=True)
AutoModelForImageTextToText.register(ToyVLConfig, ToyVLForConditionalGeneration, exist_ok=True)

TOY = Family(
    name="toy_vl",
    model_types=("toy_vl",),
    coordinates="qwen3-vl",  # relative 0-1000, though its classes are Qwen2.5-VL's
    llamafactory_template="qwen2_vl",
    model_classes=(ToyVLForConditionalGeneration,),
    chat_template=get_family("qwen2_5_vl").chat_template_path(),
    tiny=replace(
        QWEN2_5_VL_TINY,
        classes=lambda: (
            ToyVLConfig,
            ToyVLForConditionalGeneration,
            Qwen2_5_VLProcessor,
            Qwen2VLVideoProcessor,
        ),
    ),
    recipe="qwen2_5_vl_7b",  # the RL recipe it trains with
)

# A crop box in relative coordinates: valid for the toy family, far outside its tiny images in pixels.
CROP_1000 = (
    '<think>Zoom into 2.</think><tool_call>\n{"name": "crop_image", "arguments": '
    '{"bbox_2d": [100, 100, 600, 600], "target_image": 2}}\n</tool_call>'
)


@pytest.fixture(scope="module")
def toy_family():
    register_family(TOY)
    yield TOY
    unregister_family(TOY.name)


@pytest.fixture(scope="module")
def toy_model(toy_family, tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("toy") / "toy_vl", family="toy_vl")


# --------------------------------------------------------------------- lookups


def test_the_record_is_what_every_lookup_reads(toy_model, tmp_path, sample_photos):
    from vretrver.cli import main
    from vretrver.cli_rl import family_of_model
    from vretrver.families import family_of_checkpoint
    from vretrver.integrations.llamafactory import TEMPLATES, template_for_model
    from vretrver.integrations.verl.dataset import read_rl_rows
    from vretrver.samples import write_samples
    from vretrver.testing.tiny_models import chat_template_text

    config = json.loads((toy_model / "config.json").read_text())
    assert config["model_type"] == "toy_vl" and config["architectures"] == ["ToyVLForConditionalGeneration"]
    assert family_of_checkpoint(toy_model) is TOY
    processor = AutoProcessor.from_pretrained(toy_model)
    assert type(processor) is Qwen2_5_VLProcessor  # Qwen2.5-VL's processor; the checkpoint tells them apart
    assert processor.chat_template == chat_template_text("toy_vl") == chat_template_text("qwen2_5_vl")
    assert ToolConfig.from_processor(processor).coordinates == "qwen3-vl"
    assert template_for_model(toy_model) == TEMPLATES["toy_vl"] == "qwen2_vl"
    assert family_of_model(str(toy_model)) == "qwen3-vl"

    from verl_rig import make_sample

    write_samples(tmp_path / "s.jsonl", [make_sample(sample_photos)])
    out = tmp_path / "rl.parquet"

    def build(*args: str) -> int:
        return main(["rl", "data", "build", str(tmp_path / "s.jsonl"), "--out", str(out), *args, "--quiet"])

    assert build("--model", str(toy_model)) == 0
    assert read_rl_rows(out)[0]["extra_info"]["vretrver"]["coordinates"] == "qwen3-vl"
    assert build("--model-family", "toy_vl") == 0
    assert read_rl_rows(out)[0]["extra_info"]["vretrver"]["coordinates"] == "qwen3-vl"


# --------------------------------------------------------------------- evaluation


class Recording:
    """Wraps an engine and keeps the system prompt of every conversation it is asked to continue."""

    def __init__(self, engine):
        self.engine, self.systems = engine, []
        self.name, self.tool_config = engine.name, engine.tool_config

    def continue_conversations(self, conversations, gen):
        self.systems += [c.messages[0]["content"] for c in conversations]
        return self.engine.continue_conversations(conversations, gen)

    def close(self) -> None:
        pass


def test_evaluation_reranks_with_the_toy_family(toy_model, tmp_path):
    from vretrver.benchmarks.tuxpaint import DEFAULT_ROOT
    from vretrver.engines.hf import HFEngine
    from vretrver.evaluate import EvalConfig, evaluate

    if not DEFAULT_ROOT.is_dir():
        pytest.skip(f"Tux Paint stamps are not installed at {DEFAULT_ROOT}")
    cfg = EvalConfig(
        benchmark="tuxpaint",
        tasks=["tuxpaint_t2i"],
        limit=2,
        retriever="hash",
        reranker=str(toy_model),
        top_n=8,
        window=8,
        stride=4,
        max_new_tokens=8,
    )
    engine = Recording(HFEngine(str(toy_model), device="cpu"))
    assert engine.tool_config.coordinates == "qwen3-vl"
    out, summary = evaluate(cfg, tmp_path / "eval", progress=False, engine=engine)
    entry = summary["tasks"]["tuxpaint_t2i"]
    assert entry["n_queries"] == 2 and entry["reranked"] is not None
    assert len((out / "trajectories" / "tuxpaint_t2i.jsonl").read_text().splitlines()) == 2
    # the model was asked for the toy family's crop convention
    assert engine.systems and all("relative coordinates from 0 to 1000" in s for s in engine.systems)


# --------------------------------------------------------------------- SFT export


def test_sft_export_renders_our_protocol_through_llamafactory(toy_model, tmp_path, monkeypatch):
    from test_llamafactory_export import collapse, synthesize_one, teacher_turns

    from vretrver.episode import Episode
    from vretrver.integrations.llamafactory import ExportConfig, export_llamafactory, render_with_llamafactory
    from vretrver.sft import read_records
    from vretrver.sft.records import record_sample

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    processor = AutoProcessor.from_pretrained(toy_model)
    student = ToolConfig.from_processor(processor)
    teacher = ToolConfig()  # Qwen2.5-VL's pixel boxes: the export converts them to the toy's convention
    run = synthesize_one(tmp_path / "run", teacher)
    record = read_records(run / "trajectories.jsonl")[0]
    report = export_llamafactory(
        run,
        tmp_path / "data",
        ExportConfig(name="toy", model=str(toy_model), cutoff_len=8192),
        progress=False,
    )
    assert report["rows"] == 1 and report["crop_boxes_converted_records"] == 1
    rows, tokenizer = render_with_llamafactory(
        tmp_path / "data", "toy", toy_model, cutoff_len=8192, work_dir=tmp_path / "lf"
    )
    lf_ids = rows[0]["input_ids"]
    assert report["tokens"]["max"] == len(lf_ids)

    ep = Episode(record_sample(record), "v-retrver", student)
    for t in teacher_turns(teacher):
        ep.step(t.replace("<image> tag", "[image] tag"))
    ours = processor.apply_chat_template(ep.conversation.messages, tokenize=False)
    pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert tokenizer.decode(collapse(lf_ids, pad), skip_special_tokens=False) == ours
    assert "relative coordinates from 0 to 1000" in ours


# --------------------------------------------------------------------- verl rollout rig


@pytest.fixture(scope="module")
def event_loop_for_verl():
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # verl binds this loop at construction (no asyncio.run)
    yield loop
    loop.close()
    asyncio.set_event_loop(None)


@pytest.fixture(scope="module")
def rig(toy_model, sample_photos, tmp_path_factory, event_loop_for_verl):
    from verl.utils.tokenizer import continuous_token_wiring as wiring
    from verl_rig import Rig

    # verl picks how it joins turns' token ids by model_type: the support verl ships for a real family
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(wiring._MODEL_TYPE_TO_FAMILY, "toy_vl", wiring.ContinuousTokenModelFamily.QWEN25_VL)
        yield Rig("toy_vl", toy_model, sample_photos, tmp_path_factory.mktemp("toy-rig"), event_loop_for_verl)


def test_rollout_reads_relative_boxes_and_scores(rig):
    from verl_rig import ANSWER_GT_FIRST, SELECT3

    assert rig.coordinates == "qwen3-vl"
    out, server = rig.run([[SELECT3, CROP_1000, ANSWER_GT_FIRST]])
    rec = out.non_tensor_batch["vretrver_rollout"][0]
    assert (rec["end_reason"], rec["n_valid_calls"], rec["n_invalid_calls"]) == ("answer", 2, 0)
    assert float(out.non_tensor_batch["score"][0]) == pytest.approx(0.2 + 0.8 + (0.2 - 0.1))
    first_prompt = server.tok.decode(server.calls[0]["prompt_ids"])
    assert "relative coordinates from 0 to 1000" in first_prompt


# The rig's own checks of the built-in families, unchanged, on the toy family: the rollout's tokens, masks
# and reward, and its prompts equal to evaluation's and to LLaMA-Factory's.
from test_verl_rollout import (  # noqa: E402
    test_full_rollout_tool_calls_image_observations_answer_and_reward,  # noqa: F401
    test_prompt_equals_evaluation_and_llamafactory,  # noqa: F401
)

# --------------------------------------------------------------------- the RL recipe's frozen vision

FROZEN_CHECK = """
import json, sys
sys.path.insert(0, sys.argv[3])
from test_extend_family import TOY
from vretrver.families import register_family
register_family(TOY)
import vretrver.integrations.verl.frozen_vision  # what verl imports as the model's external_lib
from transformers import AutoModelForImageTextToText
model = AutoModelForImageTextToText.from_pretrained(sys.argv[1])
model.save_pretrained(sys.argv[2])
grads = {n: p.requires_grad for n, p in model.named_parameters()}
print(json.dumps({"cls": type(model).__name__, "grads": grads}))
"""


def test_frozen_vision_covers_the_toy_family(toy_model, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", FROZEN_CHECK, str(toy_model), str(tmp_path / "saved"), str(HERE)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    vision = {n: g for n, g in out["grads"].items() if n.startswith("model.visual.")}
    language = {n: g for n, g in out["grads"].items() if not n.startswith("model.visual.")}
    assert vision and not any(vision.values()) and language and all(language.values())
    assert out["cls"] == "ToyVLForConditionalGeneration"
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved["architectures"] == ["ToyVLForConditionalGeneration"]
