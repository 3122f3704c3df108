"""Export of trajectories to LLaMA-Factory: render equality with our protocol (through LLaMA-Factory's own
data pipeline and template, for Qwen2.5-VL and Qwen3-VL), validation, and crop-box conversion."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from photos import ASTRONAUT, CHELSEA, COFFEE, ROCKET

from vretrver.episode import Episode
from vretrver.integrations.llamafactory import (
    TEMPLATES,
    ExportConfig,
    dataset_info_entry,
    export_llamafactory,
    render_chatml,
    render_with_llamafactory,
    template_for_model,
    validate_row,
)
from vretrver.protocol import load_profile, system_prompt
from vretrver.samples import Candidate, Query, Sample
from vretrver.sft import ScriptedEngine, SynthesisConfig, read_records, script_from_table, synthesize
from vretrver.tools import ToolConfig, crop_image


def call(name: str, args: dict, think: str = "Candidates 2 and 3 look alike; compare them closely.") -> str:
    return (
        f"<think>{think}</think>\n<tool_call>\n{json.dumps({'name': name, 'arguments': args})}\n</tool_call>"
    )


def answer(numbers, think: str = "Candidate 3 matches the query.") -> str:
    return f"<think>{think}</think>\n<answer>{json.dumps(numbers)}</answer>"


def make_sample(sid: str = "mscoco_task0:q1", text: str = "a rocket <image> on the launch pad") -> Sample:
    """A literal <image> in the query text, a text-only and an image-only candidate, a query image."""
    return Sample(
        sid,
        Query(text=text, images=[ROCKET], instruction="Retrieve the image that matches the caption."),
        [
            Candidate("c1", "a ginger cat", CHELSEA),
            Candidate("c2", "a rocket lifting off"),  # text only
            Candidate("c3", image=ASTRONAUT),  # image only
            Candidate("c4", "coffee", COFFEE),
        ],
        positives=["c3"],
        task="mscoco_task0",
    )


def teacher_turns(cfg: ToolConfig) -> list[str]:
    # A pixel box inside candidate 3's image as the model sees it (the tiny processors resize heavily).
    return [
        call("select_images", {"target_images": [0, 3, 4]}),
        call(
            "crop_image",
            {"bbox_2d": [0.2, 0.2, 0.6, 0.7], "target_image": 3},
            think="Zoom into the suit. <image> tag!",
        ),
        answer([3, 2, 1, 4]),
    ]


def synthesize_one(
    out: Path, cfg: ToolConfig, sample: Sample | None = None, turns: list[str] | None = None
) -> Path:
    sample = sample or make_sample()
    turns = turns or teacher_turns(cfg)
    engine = ScriptedEngine(script_from_table({"rocket": [turns]}), cfg)
    synthesize([sample], engine, out, SynthesisConfig(attempts=1, temperature=0.0), progress=False)
    return out


def collapse(ids: list[int], pad: int) -> list[int]:
    out: list[int] = []
    for i in ids:
        if not (i == pad and out and out[-1] == pad):
            out.append(i)
    return out


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_export_renders_exactly_our_protocol_text_through_llamafactory(family, request, tmp_path):
    """LLaMA-Factory's converter + template + image plugin on the exported row == our protocol rendered
    with the checkpoint's chat template (image pads collapsed), token for token."""
    from transformers import AutoProcessor

    model = request.getfixturevalue("tiny_qwen25vl" if family == "qwen2_5_vl" else "tiny_qwen3vl")
    processor = AutoProcessor.from_pretrained(model)
    cfg = ToolConfig.from_processor(processor)
    run = synthesize_one(tmp_path / "run", cfg)  # the teacher runs the annotation profile
    record = read_records(run / "trajectories.jsonl")[0]
    assert record["kept"], record["reasons"]

    data = tmp_path / "data"
    report = export_llamafactory(
        run, data, ExportConfig(name="vr", model=str(model), cutoff_len=8192), progress=False
    )
    assert report["rows"] == 1 and report["escaped_placeholders"] == 1  # the <image> the teacher wrote
    rows, tokenizer = render_with_llamafactory(data, "vr", model, cutoff_len=8192, work_dir=tmp_path / "lf")
    assert len(rows) == 1
    lf_ids = rows[0]["input_ids"]
    assert report["tokens"]["max"] == len(lf_ids)  # our length check counts what LLaMA-Factory builds

    # Our protocol: the same sample (as cleaned for training) and turns through an Episode, rendered by
    # the checkpoint's own chat template, as every engine does at inference and in RL rollouts.
    from vretrver.sft.records import record_sample

    ep = Episode(record_sample(record), "v-retrver", cfg)
    for t in teacher_turns(cfg):
        ep.step(t.replace("<image> tag", "[image] tag"))
    ours = processor.apply_chat_template(ep.conversation.messages, tokenize=False)
    pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    lf_text = tokenizer.decode(collapse(lf_ids, pad), skip_special_tokens=False)
    assert lf_text == ours
    assert collapse(lf_ids, pad) == tokenizer(ours, add_special_tokens=False)["input_ids"]
    assert lf_text.count("<|vision_start|>") == 4 + 3 + 1  # query + 3 candidate images, 3 selected, 1 crop
    assert "How to annotate" not in lf_text and "a rocket [image] on the launch pad" in lf_text

    # Only the assistant turns are learned.
    learned = tokenizer.decode([t for t in rows[0]["labels"] if t != -100])
    assert learned == "".join(
        m["content"] + "<|im_end|>\n" for m in ep.conversation.messages if m["role"] == "assistant"
    )
    assert TEMPLATES[
        json.loads((Path(model) / "config.json").read_text())["model_type"]
    ] == template_for_model(model)


def test_exported_row_layout_and_dataset_info(tmp_path):
    run = synthesize_one(tmp_path / "run", ToolConfig())
    data = tmp_path / "data"
    data.mkdir()
    (data / "dataset_info.json").write_text(json.dumps({"other": {"file_name": "other.json"}}))
    report = export_llamafactory(run, data, ExportConfig(name="vr_sft"), progress=False)
    info = json.loads((data / "dataset_info.json").read_text())
    assert info == {"other": {"file_name": "other.json"}, "vr_sft": dataset_info_entry("vr_sft.json")}
    rows = json.loads((data / "vr_sft.json").read_text())
    row = rows[0]
    roles = [t["from"] for t in row["conversations"]]
    assert roles == ["system", "human", "gpt", "observation", "gpt", "observation", "gpt"]
    conv = row["conversations"]
    assert conv[0]["value"] == system_prompt(load_profile("v-retrver"))  # tool schemas in the system text
    assert conv[3]["value"] == "<image><image><image>The selected images 0, 3, 4 at high resolution."
    assert conv[5]["value"] == "<image>The zoomed region of image 3."
    assert conv[4]["value"].endswith("</tool_call>") and "[image] tag" in conv[4]["value"]
    # <image> order: query, candidates 1, 3, 4 (2 is text only), then the tool images, copied next to the data.
    assert row["images"][:4] == [ROCKET, CHELSEA, ASTRONAUT, COFFEE]
    assert len(row["images"]) == 8 and all(p.startswith("vr_sft_images/") for p in row["images"][4:])
    assert all((data / p).is_file() for p in row["images"][4:])
    assert sum(t["value"].count("<image>") for t in conv) == len(row["images"])
    assert report["tokens"].startswith("not counted") and report["tool_images"] == 4
    assert json.loads((data / "vr_sft.report.json").read_text())["rows"] == 1


def test_export_validation_drops_and_reports_bad_rows(tmp_path, tiny_qwen25vl):
    from PIL import Image

    good = synthesize_one(tmp_path / "good", ToolConfig())
    # A record whose candidate image is gone, and one whose query image is not an image at all.
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    gone = tmp_path / "gone.png"
    Image.new("RGB", (64, 48), "red").save(gone)
    s_gone = make_sample("t:gone", "a rocket")
    s_gone.candidates[0] = Candidate("c1", "a red square", str(gone))
    bad_gone = synthesize_one(tmp_path / "gone", ToolConfig(), s_gone, [answer([3, 1, 2, 4])])
    gone.unlink()
    s_broken = make_sample("t:broken", "a rocket")
    s_broken.candidates[3] = Candidate("c4", "noise", str(broken))
    bad_broken = synthesize_one(tmp_path / "broken", ToolConfig(), s_broken, [answer([3, 1, 2, 4])])
    rejected = synthesize_one(
        tmp_path / "rejected", ToolConfig(), make_sample("t:rej"), [answer([1, 3, 2, 4])]
    )

    sources = [good, bad_gone, bad_broken, rejected]
    report = export_llamafactory(sources, tmp_path / "data", ExportConfig(name="v"), progress=False)
    assert report["rows"] == 1 and report["records_read"] == 4 and report["records_not_kept"] == 1
    assert report["dropped"] == {"invalid_row": 2}
    details = " | ".join(e["detail"] for e in report["dropped_examples"])
    assert "image file not found" in details and str(gone) in details
    assert "image does not open" in details and str(broken) in details

    # Length: the good row has a few hundred tokens with the tiny processor; a small cutoff catches it.
    small = ExportConfig(name="v", model=str(tiny_qwen25vl), cutoff_len=200)
    report = export_llamafactory(good, tmp_path / "d2", small, progress=False)
    assert (
        report["rows"] == 0
        and report["over_cutoff_len"]["count"] == 1
        and report["dropped"] == {"over_cutoff_len": 1}
    )
    keep = ExportConfig(name="v", model=str(tiny_qwen25vl), cutoff_len=200, over_cutoff="keep")
    report = export_llamafactory(good, tmp_path / "d3", keep, progress=False)
    assert report["rows"] == 1 and report["over_cutoff_len"]["ids"] == ["mscoco_task0:q1#0"]
    assert report["tokens"]["max"] > 200


def test_validate_row_checks_roles_placeholders_and_files(tmp_path):
    img = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (40, 30)).save(img)
    ok = {
        "conversations": [
            {"from": "system", "value": "s"},
            {"from": "human", "value": "<image>q"},
            {"from": "gpt", "value": "a"},
        ],
        "images": ["a.png"],
    }
    problems, sizes = validate_row(ok, tmp_path)
    assert problems == [] and sizes == [(40, 30)]
    bad = {
        "conversations": [{"from": "human", "value": "<image><image>q"}, {"from": "human", "value": "x"}],
        "images": ["a.png", "missing.png"],
    }
    problems, _ = validate_row(bad, tmp_path)
    text = " | ".join(problems)
    assert "role 'human' where gpt or function_call must come" in text
    assert "image file not found" in text
    odd = {"conversations": [{"from": "human", "value": "<video> q"}], "images": []}
    text = " | ".join(validate_row(odd, tmp_path)[0])
    assert "must end with a gpt turn" in text and "literal <video>" in text
    assert (
        render_chatml(ok)
        == "<|im_start|>system\ns<|im_end|>\n<|im_start|>user\n<image>q<|im_end|>\n<|im_start|>assistant\na<|im_end|>\n"
    )


def test_export_converts_crop_boxes_to_the_students_convention(tmp_path):
    teacher = ToolConfig()  # Qwen2.5-VL: pixels of the image as the teacher's processor resized it
    box = [150, 100, 350, 300]
    turns = [call("crop_image", {"bbox_2d": box, "target_image": 3}), answer([3, 1, 2, 4])]
    run = synthesize_one(tmp_path / "run", teacher, make_sample(text="a rocket"), turns)
    report = export_llamafactory(
        run, tmp_path / "data", ExportConfig(name="q3", coordinates="qwen3-vl"), progress=False
    )
    assert report["crop_boxes_converted_records"] == 1
    row = json.loads((tmp_path / "data" / "q3.json").read_text())[0]
    conv = row["conversations"]
    assert "relative coordinates from 0 to 1000" in conv[0]["value"]
    new_box = json.loads(conv[2]["value"].split("<tool_call>\n")[1].split("\n</tool_call>")[0])["arguments"][
        "bbox_2d"
    ]
    assert new_box != box and all(isinstance(v, int) and 0 <= v <= 1000 for v in new_box)
    # The converted box crops the same region of the original image (to rounding).
    images = make_sample().image_paths()
    a = crop_image({"bbox_2d": box, "target_image": 3}, images, teacher).box
    b = crop_image({"bbox_2d": new_box, "target_image": 3}, images, ToolConfig(coordinates="qwen3-vl")).box
    assert all(abs(x - y) <= 2 for x, y in zip(a, b)), (a, b)
    assert conv[2]["value"].startswith("<think>Candidates 2 and 3 look alike")
