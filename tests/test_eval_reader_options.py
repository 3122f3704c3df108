"""`vretrver eval` options that reach the benchmark readers and the scoring, end to end on small files in
the public formats: CIRCO's target-only Recall@k, copies of an id in an upstream candidate list (GeneCIS,
multi-turn FashionIQ, LamRA's concatenated M-BEIR pools), `--pool lamra-global`, `--instruction random`,
`--image-dir` / `--category` / `--vg-dir` / `--reader-args`.

First stages come from precomputed candidate files (exact, hand-checked ranks) or the hash embedder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_benchmarks_zeroshot import circo, dump, genecis, mtfiq  # noqa: F401  (fixtures)
from test_evaluate import IMG, cand, jpeg, lines, mbeir, query, run_cli, write, write_jsonl  # noqa: F401

from vretrver.metrics import MBEIR_TASKS


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def ranked_file(path: Path, rows: dict[str, list[str]]) -> Path:
    write_jsonl(path, [{"qid": q, "ranked": r} for q, r in rows.items()])
    return path


# --------------------------------------------------------------------------- CIRCO


def test_circo_recall_counts_the_target_image_only(circo, tmp_path, capsys):  # noqa: F811
    """Query 0's target (9761) is ranked 2nd under another ground-truth image (489535). CIRCO's own
    scorer gives R@1 = 0 for it; "any positive" would give 1."""
    for i in json.loads((circo / "COCO2017_unlabeled/annotations/image_info_unlabeled2017.json").read_text())[
        "images"
    ]:
        jpeg(circo / "COCO2017_unlabeled/unlabeled2017" / i["file_name"], i["id"] % 7)
    src = ranked_file(tmp_path / "cands.jsonl", {"0": ["489535", "9761", "12", "57541", "13"]})
    out = tmp_path / "res"
    args = ["--benchmark", "circo", "--data-root", str(circo), "--retriever", f"precomputed:{src}"]
    code, stdout, _ = run_cli([*args, "--out", str(out)], capsys)
    assert code == 0
    fs = summary(out)["tasks"]["circo"]["first_stage"]
    assert fs["R@1"] == 0.0 and fs["R@5"] == 1.0
    # mAP uses all three ground-truth images: hits at ranks 1, 2 and 4 -> (1 + 1 + 3/4) / min(3, k)
    assert fs["mAP@5"] == pytest.approx((1 + 1 + 3 / 4) / 3)
    assert fs["mAP@50"] == pytest.approx((1 + 1 + 3 / 4) / 3)
    header = next(x for x in stdout.splitlines() if x.startswith("| task"))
    assert header.index("R@50") < header.index("mAP@5 ") < header.index("mAP@10") < header.index("mAP@50")


# --------------------------------------------------------------------------- multi-turn FashionIQ


@pytest.fixture
def fiq(tmp_path) -> tuple[Path, Path]:
    """The dress category of multi-turn FashionIQ, images in a folder of their own (as in M-BEIR's copy);
    the image split names D3 twice, like the 17 images split.all.val.json names twice."""
    r = tmp_path / "multiturnfashion"
    url = "http://ecx.images-amazon.com/images/I/x.jpg"
    dump(
        r / "data/dress.val.json",
        [
            {
                "target": [url, "D5"],
                "reference": [[url, ["is shorter", "is red"], "D0"], [url, ["has a belt"], "D1"]],
            }
        ],
    )
    dump(r / "image_splits/split.dress.val.json", ["D0", "D1", "D2", "D3", "D4", "D5", "D3"])
    images = tmp_path / "M-BEIR/mbeir_images/fashioniq_images"
    for n in range(6):
        jpeg(images / f"D{n}.jpg", n)
    return r, images


def test_mtfiq_image_dir_category_and_pool_copies(fiq, tmp_path, capsys):
    """The target is 5th of the distinct images, behind D3, which the upstream list holds twice: in the
    upstream ranking (every listed copy embedded) it is 6th, so R@5 is 0; scoring each id once gives 1."""
    root, images = fiq
    src = ranked_file(tmp_path / "cands.jsonl", {"0": ["D1", "D3", "D2", "D4", "D5", "D0"]})
    args = ["--benchmark", "mtfiq", "--data-root", str(root), "--retriever", f"precomputed:{src}"]
    args += ["--image-dir", str(images), "--category", "dress"]
    code, _, err = run_cli([*args, "--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    s = summary(tmp_path / "a")
    t = s["tasks"]["mtfiq"]
    assert t["n_queries"] == 1 and t["first_stage"]["R@5"] == 0.0 and t["first_stage"]["R@10"] == 1.0
    assert t["counts"]["repeated_dids"] == 1
    assert s["config"]["reader_args"] == {"image_dir": str(images), "category": "dress"}
    samples = lines(tmp_path / "a" / "samples" / "mtfiq.jsonl")
    assert samples[0]["query"]["images"] == [str(images / "D0.jpg"), str(images / "D1.jpg")]

    code, _, err = run_cli(
        [*args, "--reader-args", '{"duplicates": "drop"}', "--out", str(tmp_path / "a")], capsys
    )
    assert code == 0, err
    other = [p for p in tmp_path.iterdir() if p.name.startswith("a-")]  # another setting, another folder
    assert len(other) == 1
    t = summary(other[0])["tasks"]["mtfiq"]
    assert t["first_stage"]["R@5"] == 1.0 and t["counts"]["duplicate_dids"] == 1

    # Without --image-dir the images are looked for under the data root.
    code, _, err = run_cli(
        [
            "--benchmark",
            "mtfiq",
            "--data-root",
            str(root),
            "--category",
            "dress",
            "--retriever",
            f"precomputed:{src}",
            "--out",
            str(tmp_path / "b"),
        ],
        capsys,
    )
    assert code == 2 and "multi-turn FashionIQ: missing files" in err and str(root / "images") in err


# --------------------------------------------------------------------------- GeneCIS


def test_genecis_vg_dir_and_gallery_copies(genecis, tmp_path, capsys):  # noqa: F811
    # Visual Genome images outside the data root: reachable only through --vg-dir.
    vg = tmp_path / "VG_100K_all"
    vg.mkdir()
    for d in ("VG_100K", "VG_100K_2"):
        for f in (genecis / d).iterdir():
            shutil.move(str(f), vg / f.name)
        (genecis / d).rmdir()
    base = ["--benchmark", "genecis", "--data-root", str(genecis), "--retriever", "hash"]
    code, _, err = run_cli([*base, "--tasks", "focus_attribute", "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "Visual Genome crops are missing" in err
    code, _, err = run_cli(
        [*base, "--tasks", "focus_attribute", "--vg-dir", str(vg), "--out", str(tmp_path / "y")], capsys
    )
    assert code == 0, err
    assert summary(tmp_path / "y")["tasks"]["genecis_focus_attribute"]["n_queries"] == 1
    assert (genecis / "vg/focus_attribute/7_0_1.jpg").is_file()

    # change_object, query 0: target 285, gallery 632, 724 and 632 again. Ranked 632 > 285 > 724, the
    # GeneCIS scorer's list [285, 632, 724, 632] puts both copies of 632 first: R@2 = 0 (1 if counted once).
    path = genecis / "annotations/change_object.json"
    ann = json.loads(path.read_text())
    ann[0]["gallery"].append({"val_image_id": 632})
    dump(path, ann)
    for n, i in enumerate((139, 285, 632, 724)):
        jpeg(genecis / "val2017" / f"{i:012d}.jpg", n)
    src = ranked_file(tmp_path / "g.jsonl", {"0": ["632", "285", "724"], "1": ["139", "285"]})
    args = ["--benchmark", "genecis", "--data-root", str(genecis), "--tasks", "change_object"]
    args += ["--retriever", f"precomputed:{src}"]
    assert run_cli([*args, "--out", str(tmp_path / "keep")], capsys)[0] == 0
    keep = summary(tmp_path / "keep")["tasks"]["genecis_change_object"]["first_stage"]
    assert keep == {"R@1": 0.5, "R@2": 0.5, "R@3": 1.0}  # query 1 hits at rank 1
    drop_args = [*args, "--reader-args", '{"duplicates": "drop"}', "--out", str(tmp_path / "drop")]
    assert run_cli(drop_args, capsys)[0] == 0
    drop = summary(tmp_path / "drop")["tasks"]["genecis_change_object"]["first_stage"]
    assert drop == {"R@1": 0.5, "R@2": 1.0, "R@3": 1.0}


# --------------------------------------------------------------------------- bad reader arguments


def test_bad_reader_arguments_name_the_reader_and_what_it_takes(circo, tmp_path, capsys):  # noqa: F811
    base = ["--benchmark", "circo", "--data-root", str(circo), "--out", str(tmp_path / "r")]
    code, _, err = run_cli([*base, "--image-dir", str(tmp_path)], capsys)
    assert code == 2 and "Traceback" not in err
    assert err.strip() == (
        "error: circo: reader vretrver.benchmarks.circo.load_circo takes no argument 'image_dir';"
        " it accepts: none"
    )
    code, _, err = run_cli(
        [
            "--benchmark",
            "visdial",
            "--data-root",
            str(tmp_path),
            "--reader-args",
            '{"round": 3}',
            "--out",
            str(tmp_path / "r"),
        ],
        capsys,
    )
    assert code == 2 and "load_visdial takes no argument 'round'; it accepts: rounds, with_caption" in err
    with pytest.raises(SystemExit, match="expected a JSON object"):
        run_cli([*base, "--reader-args", "[1, 2]"], capsys)
    code, _, err = run_cli([*base, "--instruction", "random"], capsys)
    assert code == 2 and "--instruction applies to mbeir / heldout" in err
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- M-BEIR: instructions


INSTRUCTIONS = ["Find a picture for this caption.", "Retrieve the matching image.", "Show me this scene."]


def test_instruction_random_is_seeded_per_query(mbeir, tmp_path, capsys):  # noqa: F811
    """LamRA draws one of the task's instructions at random for each query; here the draw is seeded, so
    a run repeats, and made per query id, so --limit does not change the others' draws."""
    write(
        mbeir / "instructions/query_instructions.tsv",
        "query_modality\tcand_modality\tdataset\tdataset_id\tprompt_1\tprompt_2\tprompt_3\n"
        "text\timage\tMSCOCO\t9\t" + "\t".join(INSTRUCTIONS) + "\n",
    )
    path = mbeir / "query/test/mbeir_mscoco_task0_test.jsonl"
    extra = [json.dumps(query(f"9:{50 + n}", txt=f"Query number {n}.")) for n in range(20)]
    path.write_text(path.read_text() + "\n".join(extra) + "\n")

    def instructions(out: Path) -> dict[str, str]:
        return {s["id"]: s["query"]["instruction"] for s in lines(out / "samples" / "mscoco_task0.jsonl")}

    base = [
        "--benchmark",
        "mbeir",
        "--data-root",
        str(mbeir),
        "--tasks",
        "mscoco_task0",
        "--retriever",
        "hash",
    ]
    assert run_cli([*base, "--out", str(tmp_path / "first")], capsys)[0] == 0
    assert set(instructions(tmp_path / "first").values()) == {INSTRUCTIONS[0]}

    assert run_cli([*base, "--instruction", "random", "--out", str(tmp_path / "r0")], capsys)[0] == 0
    r0 = instructions(tmp_path / "r0")
    assert set(r0.values()) == set(INSTRUCTIONS)  # 25 queries: every instruction is drawn
    assert summary(tmp_path / "r0")["config"]["instruction"] == "random"
    assert run_cli([*base, "--instruction", "random:0", "--out", str(tmp_path / "again")], capsys)[0] == 0
    assert instructions(tmp_path / "again") == r0
    limited = [*base, "--instruction", "random", "--limit", "4", "--out", str(tmp_path / "lim")]
    assert run_cli(limited, capsys)[0] == 0
    lim = instructions(tmp_path / "lim")
    assert len(lim) == 4 and all(r0[q] == v for q, v in lim.items())
    assert run_cli([*base, "--instruction", "random:1", "--out", str(tmp_path / "r1")], capsys)[0] == 0
    assert instructions(tmp_path / "r1") != r0

    # A different instruction setting is a different result folder.
    assert run_cli([*base, "--instruction", "random:1", "--out", str(tmp_path / "first")], capsys)[0] == 0
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("first-")]) == 1
    code, _, err = run_cli([*base, "--instruction", "shuffled", "--out", str(tmp_path / "bad")], capsys)
    assert code == 2 and "instruction must be 'first', 'random' or 'random:SEED'" in err


# --------------------------------------------------------------------------- M-BEIR: lamra-global pool


def add_other_local_pools(root: Path) -> None:
    """One-line local pools for the 14 pairs the fixture lacks. fashioniq_task7's pool holds 9:105 again
    (also in mscoco_task0's pool): LamRA's concatenated index then holds two copies of it."""
    for n, t in enumerate(MBEIR_TASKS):
        name = f"{t}_test" if t.startswith("mscoco_") else t
        path = root / "cand_pool/local" / f"mbeir_{name}_cand_pool.jsonl"
        if path.exists():
            continue
        rows = [cand(f"5:{n}", txt=f"an entry about topic {n}")]
        if t == "fashioniq_task7":
            rows.append(cand("9:105", img=IMG.format(105)))
        write_jsonl(path, rows)


def test_lamra_global_concatenates_local_pools_without_modality_filter(mbeir, tmp_path, capsys):  # noqa: F811
    add_other_local_pools(mbeir)
    # 9:1's positive 9:101 is 5th; above it a text candidate (9:900) and 9:105, held by two local pools.
    src = ranked_file(
        tmp_path / "cands.jsonl",
        {
            "9:1": ["9:900", "9:105", "9:106", "9:107", "9:101"],
            "9:2": ["9:102"],
            **{q: ["9:110"] for q in ("9:3", "9:5", "9:6")},
        },
    )
    base = ["--benchmark", "mbeir", "--data-root", str(mbeir), "--tasks", "mscoco_task0", "--top-n", "10"]
    pre = [*base, "--retriever", f"precomputed:{src}"]
    code, _, err = run_cli([*pre, "--out", str(tmp_path / "local")], capsys)
    assert code == 0, err
    local = summary(tmp_path / "local")["tasks"]["mscoco_task0"]
    # local: the text candidate is filtered out, 9:101 moves up to 4th
    assert local["first_stage"] == pytest.approx({"R@1": 0.25, "R@5": 0.5, "R@10": 0.5})
    assert run_cli([*pre, "--pool", "lamra-global", "--out", str(tmp_path / "lg")], capsys)[0] == 0
    lg = summary(tmp_path / "lg")
    t0 = lg["tasks"]["mscoco_task0"]
    # lamra-global: 9:900 stays (no filter) and 9:105 takes two ranks: 9:101 is 6th
    assert t0["first_stage"] == pytest.approx({"R@1": 0.25, "R@5": 0.25, "R@10": 0.5})
    assert t0["counts"]["repeated_dids"] == 1
    assert lg["config"]["pool"] == "lamra-global"
    fs = {r["qid"]: r["ranked"] for r in lines(tmp_path / "lg" / "first_stage" / "mscoco_task0.jsonl")}
    assert fs["9:1"] == ["9:900", "9:105", "9:106", "9:107", "9:101"]  # ids once; copies count when scored

    # An embedder's first stage searches every local pool, texts included, for a text -> image query.
    hashed = [*base, "--retriever", "hash", "--pool", "lamra-global", "--top-n", "40"]
    assert run_cli([*hashed, "--out", str(tmp_path / "h")], capsys)[0] == 0
    ranked = lines(tmp_path / "h" / "first_stage" / "mscoco_task0.jsonl")[0]["ranked"]
    # the two mscoco pools (12 images + 1 text, 6 texts) and one text from each of the other 14 pools
    assert {"9:900", "9:200", "5:0", "5:15"} <= set(ranked) and len(ranked) == len(set(ranked)) == 13 + 6 + 14

    (mbeir / "cand_pool/local/mbeir_nights_task4_cand_pool.jsonl").unlink()
    code, _, err = run_cli([*pre, "--pool", "lamra-global", "--out", str(tmp_path / "m")], capsys)
    assert code == 2 and "mbeir_nights_task4_cand_pool.jsonl" in err
