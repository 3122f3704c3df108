"""RL data: samples -> the parquet verl's RLHFDataset reads, and its validation."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vretrver.integrations.verl.dataset import (
    RLDataConfig,
    RLDataError,
    read_rl_rows,
    rl_schema,
    validate_rl_parquet,
    write_rl_parquet,
)
from vretrver.samples import Candidate, Query, Sample, write_samples


def make_sample(photos, sid="q1", positives=("c2",), query_text="a cat", **kw) -> Sample:
    return Sample(
        id=sid,
        query=Query(
            text=query_text, images=[str(photos["astronaut"])], instruction="Find the matching image."
        ),
        candidates=[
            Candidate("c1", text="a cup of coffee", image=str(photos["coffee"])),
            Candidate("c2", text="a cat", image=str(photos["chelsea"])),
            Candidate("c3", text="text only"),
            Candidate("c4", image=str(photos["rocket"])),
        ],
        positives=list(positives),
        task="t2i",
        dataset="toy",
        **kw,
    )


def test_rows_hold_our_prompt_images_ground_truth_and_tool_arguments(tmp_path, sample_photos):
    out = tmp_path / "train.parquet"
    report = write_rl_parquet(out, [make_sample(sample_photos)], progress=False)
    assert report.written == 1
    (row,) = read_rl_rows(out)
    system, user = row["prompt"]
    assert (
        system["role"] == "system" and "<tools>" in system["content"] and "select_images" in system["content"]
    )
    assert user["content"].count("<image>") == 4 == len(row["images"])
    assert "(3) text only" in user["content"] and "Query: <image>a cat" in user["content"]
    # the images are the files' own bytes, in prompt order: query, candidates 1, 2, 4
    order = ["astronaut", "coffee", "chelsea", "rocket"]
    assert [img["bytes"] for img in row["images"]] == [sample_photos[n].read_bytes() for n in order]
    assert row["reward_model"] == {"style": "rule", "ground_truth": [2]}
    info = row["extra_info"]["vretrver"]
    assert info["image_map"] == [0, 1, 2, -1, 3]  # tool index -> prompt image; candidate 3 has none
    assert info["num_candidates"] == 4 and info["max_tool_calls"] == 2 and info["coordinates"] == "qwen2.5-vl"
    assert info["candidate_ids"] == ["c1", "c2", "c3", "c4"]
    for tool in ("select_images", "crop_image"):
        assert row["extra_info"]["tools_kwargs"][tool]["create_kwargs"]["image_map"] == info["image_map"]
    assert row["agent_name"] == "vretrver_agent" and row["data_source"] == "vretrver/toy"
    assert validate_rl_parquet(out, decode_images=True)["rows"] == 1


def test_rlhf_dataset_reads_the_parquet(tmp_path, sample_photos, tiny_qwen25vl):
    from omegaconf import OmegaConf
    from transformers import AutoProcessor
    from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn

    out = tmp_path / "train.parquet"
    write_rl_parquet(out, [make_sample(sample_photos), make_sample(sample_photos, sid="q2")], progress=False)
    proc = AutoProcessor.from_pretrained(tiny_qwen25vl)
    cfg = OmegaConf.create(
        {
            "max_prompt_length": 8192,
            "filter_overlong_prompts": True,
            "return_raw_chat": True,
            "cache_dir": str(tmp_path / "cache"),
            "filter_overlong_prompts_workers": 1,
        }
    )
    ds = RLHFDataset(str(out), proc.tokenizer, cfg, processor=proc)
    assert len(ds) == 2  # the length filter ran on our prompts and kept both
    row = ds[0]
    kinds = [p["type"] for p in row["raw_prompt"][1]["content"]]
    assert kinds.count("image") == 4 and kinds[0] == "text"
    first = next(p for p in row["raw_prompt"][1]["content"] if p["type"] == "image")
    assert first["image"].size == Image.open(sample_photos["astronaut"]).size  # the original, not resized
    assert row["tools_kwargs"]["crop_image"]["create_kwargs"]["image_map"] == [0, 1, 2, -1, 3]
    assert row["index"] == 0 and row["agent_name"] == "vretrver_agent"
    assert len(collate_fn([row, ds[1]])["raw_prompt"]) == 2


def test_path_mode_and_text_only_profile(tmp_path, sample_photos):
    out = tmp_path / "paths.parquet"
    write_rl_parquet(
        out,
        [make_sample(sample_photos)],
        RLDataConfig(image_mode="path", coordinates="qwen3-vl"),
        progress=False,
    )
    (row,) = read_rl_rows(out)
    assert row["images"][0] == {"image": str(Path(sample_photos["astronaut"]).resolve())}
    assert "relative coordinates from 0 to 1000" in row["prompt"][0]["content"]
    out = tmp_path / "text.parquet"
    write_rl_parquet(out, [make_sample(sample_photos)], RLDataConfig(profile="text-cot"), progress=False)
    (row,) = read_rl_rows(out)
    assert "tools_kwargs" not in row["extra_info"] and "<tools>" not in row["prompt"][0]["content"]
    assert row["extra_info"]["vretrver"]["max_tool_calls"] == 0
    assert validate_rl_parquet(out)["rows"] == 1


def test_unusable_samples_are_skipped_and_counted(tmp_path, sample_photos):
    samples = [
        make_sample(sample_photos, sid="ok"),
        make_sample(sample_photos, sid="nopos", positives=["zz"]),
    ]
    samples.append(Sample(id="empty", query=Query(text="x")))
    report = write_rl_parquet(tmp_path / "t.parquet", samples, progress=False)
    assert report.written == 1
    assert report.skipped == {"no positive among the candidates": 1, "no candidates": 1}
    assert "first: nopos" in report.summary()
    with pytest.raises(RLDataError, match="no usable samples"):
        write_rl_parquet(tmp_path / "none.parquet", samples[1:], progress=False)
    assert not (tmp_path / "none.parquet").exists()


def test_bad_samples_raise_with_their_location(tmp_path, sample_photos):
    bad = make_sample(sample_photos, query_text="see <image> here")
    with pytest.raises(RLDataError, match=r"sample 'q1' \(user message\).*<image>"):
        write_rl_parquet(tmp_path / "t.parquet", [bad], progress=False)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    s = make_sample(sample_photos)
    s.candidates[0].image = str(broken)
    with pytest.raises(RLDataError, match=r"sample 'q1' \(image 1\): cannot read image .*broken.png"):
        write_rl_parquet(tmp_path / "t.parquet", [s], progress=False)


def test_an_oversized_image_is_an_error_naming_it(tmp_path, sample_photos, monkeypatch):
    from PIL import Image

    big = tmp_path / "huge.png"
    Image.new("RGB", (1000, 1000)).save(big)
    # PIL refuses twice MAX_IMAGE_PIXELS at open: 1,000,000 pixels is then a decompression bomb, while the
    # sample photos (at most 273,280 pixels) still open.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300_000)
    s = make_sample(sample_photos)
    s.candidates[0].image = str(big)
    with pytest.raises(RLDataError, match=r"sample 'q1' \(image 1\): cannot read image .*huge.png"):
        write_rl_parquet(tmp_path / "t.parquet", [s], progress=False)


def test_max_candidates_keeps_the_positive_and_shuffle_is_seeded(tmp_path, sample_photos):
    s = make_sample(sample_photos, positives=["c4"])
    write_rl_parquet(tmp_path / "k.parquet", [s], RLDataConfig(max_candidates=2), progress=False)
    (row,) = read_rl_rows(tmp_path / "k.parquet")
    assert row["extra_info"]["vretrver"]["candidate_ids"] == ["c1", "c4"]
    assert row["reward_model"]["ground_truth"] == [2]
    ids = []
    for name in ("a", "b"):
        write_rl_parquet(
            tmp_path / f"{name}.parquet", [s], RLDataConfig(shuffle_candidates=True, seed=3), progress=False
        )
        (row,) = read_rl_rows(tmp_path / f"{name}.parquet")
        ids.append(row["extra_info"]["vretrver"]["candidate_ids"])
        assert row["reward_model"]["ground_truth"] == [ids[-1].index("c4") + 1]
    assert ids[0] == ids[1] and sorted(ids[0]) == ["c1", "c2", "c3", "c4"]


def test_validation_names_row_and_field(tmp_path, sample_photos):
    out = tmp_path / "t.parquet"
    write_rl_parquet(out, [make_sample(sample_photos)], progress=False)
    rows = read_rl_rows(out)
    rows[0]["reward_model"]["ground_truth"] = [9]
    pq.write_table(pa.Table.from_pylist(rows, schema=rl_schema()), tmp_path / "bad_gt.parquet")
    with pytest.raises(RLDataError, match=r"row 0: field 'reward_model.ground_truth'"):
        validate_rl_parquet(tmp_path / "bad_gt.parquet")
    rows = read_rl_rows(out)
    rows[0]["images"] = rows[0]["images"][:3]
    pq.write_table(pa.Table.from_pylist(rows, schema=rl_schema()), tmp_path / "bad_img.parquet")
    with pytest.raises(RLDataError, match=r"row 0: field 'images': expected 4 images"):
        validate_rl_parquet(tmp_path / "bad_img.parquet")
    with pytest.raises(RLDataError, match="no such file"):
        validate_rl_parquet(tmp_path / "missing.parquet")


def test_cli_build_and_validate(tmp_path, sample_photos, tiny_qwen3vl, capsys):
    from vretrver.cli import main

    src = tmp_path / "samples.jsonl"
    write_samples(src, [make_sample(sample_photos, sid=f"q{i}") for i in range(3)])
    out = tmp_path / "rl" / "train.parquet"
    assert (
        main(["rl", "data", "build", str(src), "--out", str(out), "--model", str(tiny_qwen3vl), "--quiet"])
        == 0
    )
    assert "wrote 3 rows" in capsys.readouterr().out
    assert read_rl_rows(out)[0]["extra_info"]["vretrver"]["coordinates"] == "qwen3-vl"
    assert main(["rl", "data", "validate", str(out), "--decode-images"]) == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "x", "query": {"text": "q"}, "candidates": [{"id": "a"}]}) + "\n")
    assert main(["rl", "data", "build", str(bad), "--out", str(tmp_path / "b.parquet"), "--quiet"]) == 2
    assert f"{bad}:1" in capsys.readouterr().err
