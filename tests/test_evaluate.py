"""The evaluation pipeline on small benchmark copies in the distributed formats (real files, real images).

First stage from a precomputed candidate file (exact, hand-checked metrics) and from the hash embedder;
bad input as one clean error line; missing images; counted input problems; ``exclude`` (VIST) and the
CIRCO submission depth; result folders per setting; resuming after an interruption.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from vretrver.cli import main
from vretrver.engines.base import Completion, GenerationConfig
from vretrver.evaluate import EvalConfig, evaluate, load_finished
from vretrver.protocol import Conversation
from vretrver.tools import ToolConfig

IMG = "mbeir_images/mscoco_images/val2014/COCO_val2014_{:012d}.jpg"
COLOURS = [(255, 0, 0), (0, 0, 255), (0, 160, 0), (250, 220, 0), (120, 0, 160), (0, 200, 200)]
IMAGE_IDS = [f"9:{100 + n}" for n in range(12)]


# --------------------------------------------------------------------------- a small M-BEIR copy


def write_jsonl(path: Path, rows: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def jpeg(path: Path, n: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", (40, 30), COLOURS[n % len(COLOURS)])
    im.paste((255 - 20 * n, 20 * n, 128), (0, 0, 8 + 2 * n, 10))  # no two images alike
    im.save(path, quality=90)


def query(qid, txt=None, img=None, modality="text", cand_modality="image"):
    return {
        "qid": qid,
        "query_txt": txt,
        "query_img_path": img,
        "query_modality": modality,
        "query_src_content": None,
        "pos_cand_list": [],
        "neg_cand_list": [],
        "candidate_modality": cand_modality,
    }


def cand(did, txt=None, img=None):
    modality = ",".join(m for m, v in (("image", img), ("text", txt)) if v)
    return {"txt": txt, "img_path": img, "modality": modality, "did": did, "src_content": None}


@pytest.fixture
def mbeir(tmp_path) -> Path:
    """mscoco_task0 (text -> image) and mscoco_task3 (image -> text) with real JPEGs, as distributed."""
    r = tmp_path / "M-BEIR"
    for n in range(12):
        jpeg(r / IMG.format(100 + n), n)
    images = [cand(f"9:{100 + n}", img=IMG.format(100 + n)) for n in range(12)]
    # A text candidate in a text->image pool: the candidate_modality filter must keep it out.
    write_jsonl(
        r / "cand_pool/local/mbeir_mscoco_task0_test_cand_pool.jsonl", [*images, cand("9:900", txt="red")]
    )
    write_jsonl(
        r / "query/test/mbeir_mscoco_task0_test.jsonl",
        [
            query("9:1", txt="A red square."),
            query("9:2", txt="A blue square."),
            query("9:3", txt="A green square."),
            query("9:1", txt="A second line with the id of 9:1."),  # duplicate id
            query("9:4"),  # empty: no text, no image
            query("9:5", txt="Its positive is not in the pool."),
            query("9:6", txt="No qrels line for this one."),
        ],
    )
    write(
        r / "qrels/test/mbeir_mscoco_task0_test_qrels.txt",
        "9:1 Q0 9:101 1 0\n9:2 Q0 9:102 1 0\n9:3 Q0 9:103 1 0\n9:4 Q0 9:104 1 0\n9:5 Q0 9:999 1 0\n",
    )
    texts = [cand(f"9:{200 + n}", txt=f"caption number {n}") for n in range(6)]
    write_jsonl(r / "cand_pool/local/mbeir_mscoco_task3_test_cand_pool.jsonl", texts)
    write_jsonl(
        r / "query/test/mbeir_mscoco_task3_test.jsonl",
        [
            query(f"9:{10 + n}", img=IMG.format(100 + n), modality="image", cand_modality="text")
            for n in range(3)
        ],
    )
    write(
        r / "qrels/test/mbeir_mscoco_task3_test_qrels.txt",
        "".join(f"9:{10 + n} Q0 9:{200 + n} 1 3\n" for n in range(3)),
    )
    write(
        r / "instructions/query_instructions.tsv",
        "query_modality\tcand_modality\tdataset\tdataset_id\tprompt_1\n"
        "text\timage\tMSCOCO\t9\tFind a picture for this caption.\n"
        "image\ttext\tMSCOCO\t9\tFind a caption for this picture.\n",
    )
    return r


def candidates_file(path: Path) -> Path:
    """Precomputed first-stage lists with the positives at known ranks."""
    others = [d for d in IMAGE_IDS if d not in ("9:101", "9:102", "9:103")]
    rows = [
        {"qid": "9:1", "ranked": ["9:900", "9:101", *others[:8]]},  # 9:900 (text) is filtered out: rank 1
        {"qid": "9:2", "ranked": [*others[:2], "9:102", *others[2:7]]},  # rank 3
        {"qid": "9:3", "ranked": [*others[:6], "9:103", *others[6:9]]},  # rank 7
        {"qid": "9:5", "ranked": others[:9]},  # its positive is not in the pool: never found
        {"qid": "9:6", "ranked": others[:9]},  # no positives: not scored
        {"qid": "9:10", "ranked": ["9:200", "9:201"]},
        {"qid": "9:11", "ranked": ["9:200", "9:201"]},
        {"qid": "9:12", "ranked": ["9:200", "9:201"]},
    ]
    write_jsonl(path, rows)
    return path


def mbeir_args(root: Path, retriever: str | None, tasks: str, *more: str) -> list[str]:
    """`vretrver eval` arguments for M-BEIR tasks under ``root``, then ``more``."""
    args = ["--benchmark", "mbeir", "--data-root", str(root), "--tasks", tasks]
    return [*args, *(["--retriever", retriever] if retriever else []), *more]


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(["eval", "--quiet", *args])
    out, err = capsys.readouterr()
    return code, out, err


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


# --------------------------------------------------------------------------- first stage only


def test_precomputed_first_stage_metrics_counts_and_files(mbeir, tmp_path, capsys):
    src = candidates_file(tmp_path / "cands.jsonl")
    out = tmp_path / "res"
    code, stdout, _ = run_cli(
        mbeir_args(
            mbeir, f"precomputed:{src}", "mscoco_task0,mscoco_task3", "--top-n", "10", "--out", str(out)
        ),
        capsys,
    )
    assert code == 0
    s = json.loads((out / "summary.json").read_text())
    t0 = s["tasks"]["mscoco_task0"]
    # Scored: 9:1 (rank 1), 9:2 (rank 3), 9:3 (rank 7), 9:5 (positive not in the pool: 0). 9:6 has none.
    assert t0["n_queries"] == 4
    assert t0["first_stage"] == pytest.approx({"R@1": 0.25, "R@5": 0.5, "R@10": 0.75})
    assert t0["reranked"] is None
    assert t0["counts"]["duplicate_qids"] == 1
    assert t0["counts"]["empty_queries"] == 1
    assert t0["counts"]["no_positives"] == 1
    assert t0["counts"]["positives_not_in_pool"] == 1
    assert t0["counts"]["queries_without_positive_in_pool"] == 1
    t3 = s["tasks"]["mscoco_task3"]
    assert t3["n_queries"] == 3 and t3["first_stage"]["R@1"] == pytest.approx(1 / 3)
    assert s["average"] == {"first_stage": pytest.approx((0.5 + 2 / 3) / 2), "reranked": None}
    md = (out / "summary.md").read_text()
    assert md in stdout
    assert "- mscoco_task0: 1 repeated query ids (later copies dropped)" in md
    assert "- mscoco_task0: 1 queries none of whose positives is in the pool (scored, count 0)" in md
    # The first stage honours candidate_modality even for precomputed lists.
    fs = {r["qid"]: r["ranked"] for r in lines(out / "first_stage" / "mscoco_task0.jsonl")}
    assert fs["9:1"][0] == "9:101" and "9:900" not in fs["9:1"]
    trec = (out / "runs" / "mscoco_task0.trec").read_text().splitlines()
    assert trec[0].split() == ["9:1", "Q0", "9:101", "1", "-1.000000", "first_stage"]
    assert (out / "runs" / "mscoco_task0.first_stage.trec").read_text() == "\n".join(trec) + "\n"
    samples = lines(out / "samples" / "mscoco_task0.jsonl")
    assert [s["id"] for s in samples] == ["9:1", "9:2", "9:3", "9:5", "9:6"]
    assert samples[0]["candidates"][0] == {"id": "9:101", "text": None, "image": str(mbeir / IMG.format(101))}


def test_hash_embedder_first_stage(mbeir, tmp_path, capsys):
    out = tmp_path / "res"
    args = mbeir_args(mbeir, "hash:32", "mscoco_task0,mscoco_task3", "--top-n", "5", "--out", str(out))
    code, _, _ = run_cli(args, capsys)
    assert code == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["tasks"]["mscoco_task0"]["n_queries"] == 4
    fs = lines(out / "first_stage" / "mscoco_task0.jsonl")
    assert [r["qid"] for r in fs] == ["9:1", "9:2", "9:3", "9:5", "9:6"]
    for r in fs:
        assert len(r["ranked"]) == 5 and set(r["ranked"]) <= set(IMAGE_IDS)  # images only
        assert r["scores"] == sorted(r["scores"], reverse=True)
    t3 = lines(out / "first_stage" / "mscoco_task3.jsonl")
    assert all(set(r["ranked"]) <= {f"9:{200 + n}" for n in range(6)} for r in t3)
    assert any((out / "cache").rglob("embeddings.npy"))
    # The same command again reuses the folder and gives the same summary.
    before = (out / "first_stage" / "mscoco_task0.jsonl").stat().st_mtime_ns
    assert run_cli(args, capsys)[0] == 0
    assert (out / "first_stage" / "mscoco_task0.jsonl").stat().st_mtime_ns == before
    assert json.loads((out / "summary.json").read_text())["tasks"] == s["tasks"]


def test_global_pool(mbeir, tmp_path, capsys):
    """--pool global: every task searches the union pool (its modality filter still applies); the setting
    is recorded and gives its own result folder."""
    union = [
        *lines(mbeir / "cand_pool/local/mbeir_mscoco_task0_test_cand_pool.jsonl"),
        *lines(mbeir / "cand_pool/local/mbeir_mscoco_task3_test_cand_pool.jsonl"),
        cand("9:777", img=IMG.format(100)),  # only in the union pool
    ]
    write_jsonl(mbeir / "cand_pool/global/mbeir_union_test_cand_pool.jsonl", union)
    out = tmp_path / "res"
    args = mbeir_args(mbeir, "hash:32", "mscoco_task0,mscoco_task3", "--top-n", "20", "--out", str(out))
    code, _, err = run_cli([*args, "--pool", "global"], capsys)
    assert code == 0
    assert "pool mbeir_" not in err  # --quiet: no progress bar while the pool is read
    fs = {r["qid"]: r["ranked"] for r in lines(out / "first_stage" / "mscoco_task0.jsonl")}
    assert all("9:777" in ranked and set(ranked) <= {*IMAGE_IDS, "9:777"} for ranked in fs.values())
    t3 = lines(out / "first_stage" / "mscoco_task3.jsonl")
    union_texts = {f"9:{200 + n}" for n in range(6)} | {"9:900"}  # 9:900 comes from task0's pool
    assert all(set(r["ranked"]) == union_texts for r in t3)  # texts only, from the whole union
    assert json.loads((out / "config.json").read_text())["pool"] == "global"
    # the local pool is another setting: same --out, another folder
    assert run_cli(args, capsys)[0] == 0
    local = [p for p in tmp_path.iterdir() if p.name.startswith("res-")]
    assert len(local) == 1 and json.loads((local[0] / "config.json").read_text())["pool"] == "local"
    assert "9:777" not in (local[0] / "first_stage" / "mscoco_task0.jsonl").read_text()


def test_global_pool_only_for_mbeir(tmp_path, capsys):
    code, _, err = run_cli(
        ["--benchmark", "tuxpaint", "--pool", "global", "--out", str(tmp_path / "r")], capsys
    )
    assert code == 2 and "pool must be 'local' or, for mbeir / heldout, 'global'" in err
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "file, content, expected",
    [
        (
            "query/test/mbeir_mscoco_task0_test.jsonl",
            json.dumps(query("9:1", txt="ok"))
            + "\n"
            + json.dumps({**query("9:2", txt="x"), "qid": 7})
            + "\n",
            r"mbeir_mscoco_task0_test.jsonl:2: field 'qid': expected a non-empty string, got 7",
        ),
        (
            "query/test/mbeir_mscoco_task0_test.jsonl",
            json.dumps(query("9:1", txt="ok")) + "\n{not json\n",
            r"mbeir_mscoco_task0_test.jsonl:2: not valid JSON",
        ),
        (
            "qrels/test/mbeir_mscoco_task0_test_qrels.txt",
            "9:1 Q0 9:101 1 0\n9:2 Q0 9:102 yes 0\n",
            r"mbeir_mscoco_task0_test_qrels.txt:2: field 'relevance': expected an integer, got \"yes\"",
        ),
        (
            "instructions/query_instructions.tsv",
            "header\nno tabs on this line\n",
            r"query_instructions.tsv:2: expected tab-separated",
        ),
    ],
)
def test_malformed_files_give_one_clean_error_line(mbeir, tmp_path, capsys, file, content, expected):
    write(mbeir / file, content)
    code, _, err = run_cli(
        mbeir_args(mbeir, "hash", "mscoco_task0", "--out", str(tmp_path / "res")),
        capsys,
    )
    assert code == 2
    assert "Traceback" not in err
    # (A reader's progress bar may draw on stderr before the error: the error is the last line.)
    line = err.strip().splitlines()[-1].split("\r")[-1]
    assert line.startswith("error: ") and str(mbeir / file) in line and err.count("error: ") == 1
    assert re.search(expected, line)
    assert not (tmp_path / "res").exists()  # nothing written for a run that could not start


def test_malformed_candidate_file_and_missing_data_root(mbeir, tmp_path, capsys):
    bad = tmp_path / "cands.jsonl"
    bad.write_text('{"qid": "9:1", "ranked": ["9:101"]}\n{"qid": "9:2", "ranked": "9:102"}\n')
    code, _, err = run_cli(
        mbeir_args(mbeir, f"precomputed:{bad}", "mscoco_task0", "--out", str(tmp_path / "res")),
        capsys,
    )
    assert code == 2 and "Traceback" not in err
    assert f"error: {bad}:2: field 'ranked': expected a list of candidate id strings" in err

    code, _, err = run_cli(
        mbeir_args(tmp_path / "nowhere", None, "mscoco_task0", "--out", str(tmp_path / "res2")),
        capsys,
    )
    assert code == 2 and "Traceback" not in err
    assert err.startswith("error: M-BEIR: missing files:\n") and "mbeir_mscoco_task0_test.jsonl" in err

    code, _, err = run_cli(
        ["--benchmark", "tuxpaint", "--window", "0", "--out", str(tmp_path / "r3")], capsys
    )
    assert code == 2 and err.strip() == "error: window must be >= 1, got 0"


def test_missing_images_are_listed_or_skipped_and_counted(mbeir, tmp_path, capsys):
    src = candidates_file(tmp_path / "cands.jsonl")
    for n in (105, 107):
        (mbeir / IMG.format(n)).unlink()
    args = mbeir_args(mbeir, f"precomputed:{src}", "mscoco_task0", "--top-n", "10")
    code, _, err = run_cli([*args, "--out", str(tmp_path / "a")], capsys)
    assert code == 2 and "Traceback" not in err
    assert "mscoco_task0: 2 image files are missing (first 2: " in err
    assert str(mbeir / IMG.format(105)) in err and str(mbeir / IMG.format(107)) in err
    assert "--skip-missing" in err

    code, _, _ = run_cli([*args, "--skip-missing", "--out", str(tmp_path / "b")], capsys)
    assert code == 0
    t0 = json.loads((tmp_path / "b" / "summary.json").read_text())["tasks"]["mscoco_task0"]
    assert t0["counts"]["missing_image_files"] == 2
    assert t0["counts"]["missing_image_candidates"] == 2
    # 9:105 and 9:107 stood above 9:3's positive: it moves from rank 7 to 5 (hence the reported count).
    assert t0["first_stage"] == pytest.approx({"R@1": 0.25, "R@5": 0.75, "R@10": 0.75})
    fs = lines(tmp_path / "b" / "first_stage" / "mscoco_task0.jsonl")
    assert all("9:105" not in r["ranked"] and "9:107" not in r["ranked"] for r in fs)


def test_images_that_do_not_open_are_skipped_and_counted(mbeir, tmp_path, capsys):
    src = candidates_file(tmp_path / "cands.jsonl")
    # 9:105 is no picture at all; 9:107 claims 4 M px, a decompression bomb under a limit of 1.5 M px
    # (PIL refuses files above twice MAX_IMAGE_PIXELS); the other JPEGs are 40 x 30.
    (mbeir / IMG.format(105)).write_text("not a picture")
    Image.new("1", (2000, 2000)).save(mbeir / IMG.format(107), format="PNG")
    args = mbeir_args(mbeir, f"precomputed:{src}", "mscoco_task0", "--top-n", "10", "--skip-missing")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Image, "MAX_IMAGE_PIXELS", 1_500_000)
        code, _, err = run_cli([*args, "--out", str(tmp_path / "b")], capsys)
    assert code == 0
    assert "0 image files are missing and 2 do not open" in err
    t0 = json.loads((tmp_path / "b" / "summary.json").read_text())["tasks"]["mscoco_task0"]
    assert t0["counts"]["unreadable_image_files"] == 2
    assert t0["counts"]["missing_image_candidates"] == 2
    assert "missing_image_files" not in t0["counts"]
    # The same outcome as the two files missing (see the test above): 9:3's positive moves from 7 to 5.
    assert t0["first_stage"] == pytest.approx({"R@1": 0.25, "R@5": 0.75, "R@10": 0.75})


# --------------------------------------------------------------------------- per-query restrictions


def test_vist_never_returns_the_earlier_story_images(tmp_path, capsys):
    """The hash embedder scores a query's own images highest: ``exclude`` must still keep them out."""
    r = tmp_path / "vist"
    anns = []
    for s in range(3):
        for k in range(5):
            pid = f"{s}0{k}"
            jpeg(r / "images/val" / f"{pid}.jpg", 3 * s + k)
            anns.append(
                [
                    {
                        "story_id": f"s{s}",
                        "photo_flickr_id": pid,
                        "worker_arranged_photo_order": k,
                        "text": f"sentence {k} of story {s} .",
                        "storylet_id": f"{s}{k}",
                    }
                ]
            )
    write(r / "sis/val.story-in-sequence.json", json.dumps({"images": [], "albums": [], "annotations": anns}))
    out = tmp_path / "res"
    code, _, _ = run_cli(
        [
            "--benchmark",
            "vist",
            "--data-root",
            str(r),
            "--retriever",
            "hash",
            "--top-n",
            "6",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 0
    fs = {x["qid"]: x["ranked"] for x in lines(out / "first_stage" / "vist.jsonl")}
    assert set(fs) == {"s0", "s1", "s2"}
    for s in range(3):
        earlier = {f"{s}0{k}" for k in range(4)}
        assert len(fs[f"s{s}"]) == 6  # fetched deeper, so the list is still full
        assert not earlier & set(fs[f"s{s}"])
    s = json.loads((out / "summary.json").read_text())
    assert s["tasks"]["vist"]["n_queries"] == 3


def test_circo_test_split_writes_a_top50_submission(tmp_path, capsys):
    r = tmp_path / "CIRCO"
    ids = list(range(1, 61))
    write(
        r / "COCO2017_unlabeled/annotations/image_info_unlabeled2017.json",
        json.dumps({"images": [{"file_name": f"{i:012d}.jpg", "id": i} for i in ids]}),
    )
    for i in ids:
        jpeg(r / "COCO2017_unlabeled/unlabeled2017" / f"{i:012d}.jpg", i)
    write(
        r / "annotations/test.json",
        json.dumps(
            [
                {"id": 0, "reference_img_id": 3, "relative_caption": "at night", "shared_concept": "x"},
                {"id": 1, "reference_img_id": 7, "relative_caption": "two of them", "shared_concept": "y"},
            ]
        ),
    )
    out = tmp_path / "res"
    code, stdout, _ = run_cli(
        [
            "--benchmark",
            "circo",
            "--split",
            "test",
            "--data-root",
            str(r),
            "--retriever",
            "hash",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 0
    sub = json.loads((out / "circo_submission.json").read_text())
    assert set(sub) == {"0", "1"}
    assert all(
        len(v) == 50 and len(set(v)) == 50 and all(isinstance(i, int) for i in v) for v in sub.values()
    )
    fs = {x["qid"]: x["ranked"] for x in lines(out / "first_stage" / "circo.jsonl")}
    assert sub["0"] == [int(d) for d in fs["0"]]
    s = json.loads((out / "summary.json").read_text())
    assert s["tasks"] == {} and s["submissions"] == {"circo": str(out / "circo_submission.json")}
    assert "circo: labels are private; submission file written to" in stdout


# --------------------------------------------------------------------------- result folders and resuming


class SwapEngine:
    """A scripted model: every window is answered with [2, 1] (the first two candidates swap).

    ``interrupt_after``: raise KeyboardInterrupt on the call after that many, like Ctrl-C mid-run.
    """

    name = "swap"

    def __init__(self, interrupt_after: int | None = None):
        self.tool_config = ToolConfig()
        self.calls = 0
        self.conversations = 0
        self.interrupt_after = interrupt_after

    def continue_conversations(
        self, conversations: list[Conversation], gen: GenerationConfig
    ) -> list[Completion]:
        if self.interrupt_after is not None and self.calls >= self.interrupt_after:
            raise KeyboardInterrupt
        self.calls += 1
        self.conversations += len(conversations)
        return [
            Completion(text="<think>the second fits better</think><answer>[2, 1]</answer>")
            for _ in conversations
        ]

    def close(self) -> None:
        pass


def swap_cfg(mbeir: Path, src: Path, **kw) -> EvalConfig:
    base = dict(
        benchmark="mbeir",
        data_root=str(mbeir),
        tasks=["mscoco_task0"],
        retriever=f"precomputed:{src}",
        reranker="swap-model",
        top_n=5,
        window=3,
        stride=2,
        chunk_queries=2,
    )
    return EvalConfig(**{**base, **kw})


def test_reranking_with_a_scripted_model_windows_and_tables(mbeir, tmp_path):
    src = candidates_file(tmp_path / "cands.jsonl")
    out, s = evaluate(swap_cfg(mbeir, src), tmp_path / "res", progress=False, engine=SwapEngine())
    fs = {r["qid"]: r["ranked"] for r in lines(out / "first_stage" / "mscoco_task0.jsonl")}
    res = {r["qid"]: r for r in lines(out / "results" / "mscoco_task0.jsonl")}
    assert list(res) == ["9:1", "9:2", "9:3", "9:5", "9:6"]
    for qid, r in res.items():
        a, b, c, d, e = fs[qid][:5]
        # Windows 2-4 then 0-2, each answered [2, 1]: [a b c d e] -> [a b d c e] -> [b a d c e].
        assert r["reranked"] == [b, a, d, c, e]
        assert r["first_stage"] == fs[qid] and r["answered"] == [True, True]
    trajs = lines(out / "trajectories" / "mscoco_task0.jsonl")
    assert [(t["qid"], t["window_start"]) for t in trajs[:2]] == [("9:1", 2), ("9:1", 0)]
    assert len(trajs) == 10
    t0 = s["tasks"]["mscoco_task0"]
    # Top-5 lists: 9:3's positive (rank 7) is not in them. 9:1's positive moved from rank 1 to 2 and
    # 9:2's from 3 to 4: R@1 drops, R@5 stays.
    assert t0["first_stage"] == pytest.approx({"R@1": 0.25, "R@5": 0.5, "R@10": 0.5})
    assert t0["reranked"] == pytest.approx({"R@1": 0.0, "R@5": 0.5, "R@10": 0.5})
    assert t0["delta"]["R@1"] == pytest.approx(-0.25)
    assert s["average"]["reranked"] == pytest.approx(0.5)
    trec = (out / "runs" / "mscoco_task0.trec").read_text().splitlines()
    assert trec[0].split()[2:] == [fs["9:1"][1], "1", f"{len(fs['9:1']):.6f}", "swap-model"]
    assert len([x for x in trec if x.startswith("9:1 ")]) == len(fs["9:1"])  # the tail follows


def test_interrupted_run_resumes_without_losing_or_repeating_queries(mbeir, tmp_path):
    src = candidates_file(tmp_path / "cands.jsonl")
    # Round-synchronous: saved chunk by chunk, in query order (tests/test_scheduler.py: continuous).
    cfg = swap_cfg(mbeir, src, scheduler="rounds")
    ref_out, ref = evaluate(cfg, tmp_path / "ref", progress=False, engine=SwapEngine())

    # Two windows per query, two queries per chunk: the third engine call is in the second chunk.
    with pytest.raises(KeyboardInterrupt):
        evaluate(cfg, tmp_path / "run", progress=False, engine=SwapEngine(interrupt_after=2))
    res_path = tmp_path / "run" / "results" / "mscoco_task0.jsonl"
    traj_path = tmp_path / "run" / "trajectories" / "mscoco_task0.jsonl"
    assert [r["qid"] for r in lines(res_path)] == ["9:1", "9:2"]
    assert not (tmp_path / "run" / "summary.json").exists()
    # What a kill in the middle of the next append leaves: a trajectory without its result, a torn line.
    with open(traj_path, "a") as f:
        f.write(json.dumps({"qid": "9:3", "window": 0}) + "\n")
    with open(res_path, "a") as f:
        f.write('{"qid": "9:3", "reran')

    engine = SwapEngine()
    out, s = evaluate(cfg, tmp_path / "run", progress=False, engine=engine)
    assert out == tmp_path / "run"
    assert engine.conversations == 3 * 2  # only 9:3, 9:5, 9:6 were reranked, two windows each
    got = lines(res_path)
    assert [r["qid"] for r in got] == ["9:1", "9:2", "9:3", "9:5", "9:6"]
    assert got == lines(ref_out / "results" / "mscoco_task0.jsonl")
    trajs = lines(traj_path)
    assert [t["qid"] for t in trajs] == [q for q in ("9:1", "9:2", "9:3", "9:5", "9:6") for _ in range(2)]
    assert s["tasks"] == ref["tasks"]
    assert (out / "runs" / "mscoco_task0.trec").read_text() == (
        ref_out / "runs" / "mscoco_task0.trec"
    ).read_text()


def test_load_finished_repairs_what_an_interruption_leaves(tmp_path):
    res, traj = tmp_path / "r.jsonl", tmp_path / "t.jsonl"
    res.write_text(
        '{"qid": "a", "reranked": ["x"]}\n{"qid": "a", "reranked": ["y"]}\n{"qid": "b", "reranked": ["z"]}\n{"qid": "c"'
    )
    traj.write_text('{"qid": "a"}\n{"qid": "b"}\n{"qid": "c"}\n{"qid"')
    done = load_finished(res, traj, {"a", "b", "c"})
    assert done == {"a": ["x"], "b": ["z"]}
    assert [r["qid"] for r in lines(res)] == ["a", "b"]
    assert [r["qid"] for r in lines(traj)] == ["a", "b"]
    assert load_finished(tmp_path / "none.jsonl", tmp_path / "none2.jsonl", {"a"}) == {}


def test_changed_settings_start_a_new_result_folder(mbeir, tmp_path, capsys):
    src = candidates_file(tmp_path / "cands.jsonl")
    base = tmp_path / "res"
    first, _ = evaluate(swap_cfg(mbeir, src), base, progress=False, engine=SwapEngine())
    assert first == base
    seen = {first}
    for change in ({"reranker": "another-checkpoint"}, {"profile": "text-cot"}, {"window": 4}, {"top_n": 4}):
        cfg = swap_cfg(mbeir, src, **change)
        out, _ = evaluate(cfg, base, progress=False, engine=SwapEngine())
        assert out == tmp_path / f"res-{cfg.fingerprint()}" and out not in seen
        assert json.loads((out / "config.json").read_text())["fingerprint"] == cfg.fingerprint()
        seen.add(out)
    assert "settings differ" in capsys.readouterr().err
    # Plumbing (chunk size, engine arguments) does not change results: same folder, nothing rerun.
    engine = SwapEngine()
    out, _ = evaluate(
        swap_cfg(mbeir, src, chunk_queries=5, engine_args={"api_key": "secret"}),
        base,
        progress=False,
        engine=engine,
    )
    assert out == base and engine.calls == 0
    assert json.loads((base / "config.json").read_text())["engine_args"] == {"api_key": "***"}


def test_prepare_task_counts_what_other_readers_may_pass_on(tmp_path):
    from vretrver.evaluate import prepare_task
    from vretrver.samples import Candidate, Query, Sample, TaskData

    jpeg(tmp_path / "a.jpg", 0)
    pool = {"a": Candidate("a", image=str(tmp_path / "a.jpg")), "b": Candidate("b", text="b")}
    queries = [
        Sample("q1", Query(text="one"), positives=["a"]),
        Sample("q1", Query(text="one again"), positives=["b"]),
        Sample("q2", Query()),
        Sample("q3", Query(text="three"), positives=["zz"]),
        Sample(
            "q4", Query(text="four"), positives=["a"], meta={"exclude": ["a"]}
        ),  # its positive is excluded
    ]
    t = prepare_task(TaskData("t", queries, pool, issues={"duplicate_qids": 2}))
    assert [q.id for q in t.queries] == ["q1", "q3", "q4"]
    assert t.queries[0].query.text == "one"  # the first copy is kept
    assert t.issues == {"duplicate_qids": 3, "empty_queries": 1, "queries_without_positive_in_pool": 2}
    bad = TaskData("t", [Sample("q", Query(text="x"), meta={"exclude": "a"})], pool)
    with pytest.raises(ValueError, match="field 'meta.exclude': expected a list of candidate ids"):
        prepare_task(bad)


def test_summarize_command_writes_one_table(mbeir, tmp_path, capsys):
    src = candidates_file(tmp_path / "cands.jsonl")
    root = tmp_path / "eval_all"
    args = mbeir_args(mbeir, f"precomputed:{src}", "mscoco_task0", "--top-n", "10")
    assert run_cli([*args, "--out", str(root / "ckpt" / "mbeir")], capsys)[0] == 0
    assert main(["summarize", str(root)]) == 0
    printed = capsys.readouterr().out
    assert (root / "summary.md").read_text() == printed
    assert "| ckpt | - (50.0) |" in printed  # first stage only: mscoco_task0 R@5 = 2/4
