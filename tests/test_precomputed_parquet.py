"""V-Retrver's evaluation parquet as the first stage: every hit must become a distinct pool candidate.

The parquets are written with pyarrow in the column layout of the public files (``prompt``, ``images``,
``extra_info`` with ``qid``, ``hit`` entries with ``candidate_images`` / ``candidate_texts``). The
expected values restate LamRA's rules in our own words: ``format_string`` (strip carriage returns,
whitespace, then double quotes; capitalise the first character; add a period unless the text ends in
. ? !), hashed query ids (``dataset_id * 500000 + n``) and candidate ids (``dataset_id * 10000000 + n``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from test_evaluate import IMG, SwapEngine, candidates_file, lines, mbeir, run_cli, swap_cfg  # noqa: F401

from vretrver.benchmarks.registry import load_benchmark
from vretrver.evaluate import (
    EvalConfig,
    after_first_stage,
    evaluate,
    first_stage_runs,
    prepare_task,
    with_candidates,
)
from vretrver.rerank import RerankConfig, rerank_windows
from vretrver.retrieval.precomputed import (
    MIN_PREFIX_CHARS,
    UnresolvedCandidatesError,
    check_losses,
    lamra_format,
    read_candidates,
    read_hit_parquet,
    read_parquet_prompts,
    unhash_did,
    unhash_qid,
)
from vretrver.samples import Candidate, Query, Sample, SampleError, TaskData

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

OURS = "/data/M-BEIR/mbeir_images/mscoco_images/val2014"
AUTHORS = "/remote-home1/someone/LamRA/data/M-BEIR/mbeir_images/mscoco_images/val2014"
SYSTEM = "You are a helpful assistant for multimodal retrieval tasks.\n\n# Tools\n..."
GUIDELINES = (
    "Guidelines: You are given a query ... <answer>Directly answer with the most matching number</answer>"
)


# --------------------------------------------------------------------------- the official layout


def official_row(qid, hits: list[tuple[str, str]], query_text="A query.", query_image="") -> dict:
    """One row as the release's data builders lay it out; ``hits`` are (image path, text) pairs."""
    images = [img for img, _ in hits if img]
    texts = [txt for _, txt in hits if txt]
    parts = [f"({i}) " + ("<image>" if img else "") + txt for i, (img, txt) in enumerate(hits, 1)]
    user = "Query:" + ("<image>" if query_image else "") + query_text + "Candidates:" + "".join(parts)
    return {
        "data_source": "mbeir_test",
        "prompt": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": user + "\n\n" + GUIDELINES},
        ],
        "images": [{"image": p} for p in ([query_image] if query_image else []) + images],
        "ability": "multimodal_reranking",
        "reward_model": {"style": "rule", "ground_truth": [1]},
        "extra_info": {
            "qid": qid,
            "query_image": query_image,
            "query_text": query_text,
            "candidate_images": images,
            "candidate_texts": texts,
            "num_candidates": len(hits),
            "images": ([query_image] if query_image else []) + images,
        },
        "hit": [{"candidate_images": img, "candidate_texts": txt} for img, txt in hits],
    }


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


# Captions as M-BEIR ships them: lower case, no final period, a stray quote or carriage return, and the
# same caption held by several candidates (MSCOCO has many).
CAPTIONS = {
    "9:20": "a cat sitting on a mat",
    "9:21": "a dog running in a park",
    "9:22": '"a red bus on a street"',
    "9:23": "two people riding bikes\r\n",
    "9:24": "a cat sitting on a mat",
    "9:25": "Is this a kitchen?",
    "9:26": "A cat sitting on a mat.",
    "9:27": "a plate of food",
}


def text_task() -> TaskData:
    pool = {d: Candidate(d, text=t) for d, t in CAPTIONS.items()}
    queries = [Sample(f"9:{n}", Query(images=[f"{OURS}/q{n}.jpg"])) for n in (1, 2, 3)]
    return TaskData("mscoco_task3", queries, pool)


def test_lamra_format_and_unhashing():
    assert lamra_format('  "a red bus on a street"  ') == "A red bus on a street."
    assert lamra_format("two people riding bikes\r\n") == "Two people riding bikes."
    assert lamra_format("Is this a kitchen?") == "Is this a kitchen?"
    assert lamra_format("wow!") == "Wow!"
    assert lamra_format("done.") == "Done."
    assert lamra_format('""') == "" and lamra_format(None) == "" and lamra_format("\r") == ""
    assert unhash_qid(9 * 500_000 + 17) == "9:17" and unhash_qid(0) == "0:0"
    assert unhash_did(3 * 10_000_000 + 5) == "3:5"


@pytest.mark.parametrize("form", ["raw", "lamra"])
def test_text_hits_resolve_in_both_forms_and_duplicates_stay_distinct(tmp_path, form):
    def shown(d: str) -> str:
        return CAPTIONS[d] if form == "raw" else lamra_format(CAPTIONS[d])

    order = ["9:25", "9:20", "9:22", "9:24", "9:23", "9:26", "9:21", "9:27"]
    path = write_parquet(tmp_path / "t.parquet", [official_row("9:1", [("", shown(d)) for d in order])])
    got, stats = read_hit_parquet(path, text_task())
    ids = [d for d, _ in got["9:1"]]
    # Every hit is a distinct candidate: the list keeps its length.
    assert len(ids) == len(order) == len(set(ids)) and stats.unresolved_hits == 0
    # Unique captions map to their own ids.
    assert {ids[i] for i in (0, 2, 4, 6, 7)} == {"9:25", "9:22", "9:23", "9:21", "9:27"}
    assert [ids[i] for i in (0, 2, 4, 6, 7)] == ["9:25", "9:22", "9:23", "9:21", "9:27"]
    # The three candidates reading "a cat sitting on a mat" once formatted: each hit takes one of them,
    # pool texts equal to the hit first, then in pool order.
    cats = [ids[i] for i in (1, 3, 5)]
    assert sorted(cats) == ["9:20", "9:24", "9:26"]
    assert cats == (["9:20", "9:24", "9:26"] if form == "raw" else ["9:26", "9:20", "9:24"])
    assert stats.matched["text" if form == "raw" else "text_lamra"] >= 1


def test_more_copies_of_a_caption_than_the_pool_holds_is_a_loss(tmp_path):
    hits = [("", "a plate of food")] * 2
    path = write_parquet(tmp_path / "t.parquet", [official_row("9:1", hits)])
    got, stats = read_hit_parquet(path, text_task())
    assert [d for d, _ in got["9:1"]] == ["9:27"]
    assert stats.unresolved_hits == 1
    assert "row 1 (query 9:1) hit[1]: repeats all 1 candidates listed earlier" in stats.examples[0]


def test_cut_texts_match_as_a_unique_prefix(tmp_path):
    long_a = "a man in a blue shirt is standing next to a large brown horse in a field " * 3
    long_b = "a man in a blue shirt is standing next to a large brown horse in a barn " * 3
    pool = {"9:30": Candidate("9:30", text=long_a), "9:31": Candidate("9:31", text=long_b)}
    task = TaskData("t", [Sample("9:1", Query(text="q"))], pool)
    cut_a = lamra_format(long_a)[:150] + "\ufffd"  # a tokenizer cut may leave a broken character
    shared = os.path.commonprefix([lamra_format(long_a), lamra_format(long_b)])  # both start like this
    assert len(shared) >= MIN_PREFIX_CHARS
    short = lamra_format(long_b)[: MIN_PREFIX_CHARS - 10]
    rows = [official_row("9:1", [("", cut_a), ("", shared), ("", short)])]
    got, stats = read_hit_parquet(write_parquet(tmp_path / "t.parquet", rows), task)
    assert [d for d, _ in got["9:1"]] == ["9:30"]
    assert stats.matched["text_prefix"] == 1 and stats.unresolved_hits == 2
    assert "an ambiguous text prefix" in stats.examples[0]
    assert "no pool candidate" in stats.examples[1]


def test_image_hits_and_image_text_pairs(tmp_path):
    # Two (image, text) candidates share an image: the text tells them apart.
    pool = {
        "5:1": Candidate("5:1", image=f"{OURS}/a.jpg", text="Eiffel tower, a wrought-iron tower"),
        "5:2": Candidate("5:2", image=f"{OURS}/a.jpg", text="Paris, capital of France"),
        "5:3": Candidate("5:3", image=f"{OURS}/b.jpg"),
        "5:4": Candidate("5:4", image="/data/M-BEIR/mbeir_images/oven_images/x/b.jpg"),
    }
    task = TaskData("oven_task8", [Sample("5:9", Query(text="q"))], pool)
    hits = [
        (f"{AUTHORS}/a.jpg", lamra_format("Paris, capital of France")),
        (f"{AUTHORS}/a.jpg", lamra_format("Eiffel tower, a wrought-iron tower")),
        (f"{AUTHORS}/b.jpg", ""),
        ("/elsewhere/b.jpg", ""),  # ends like two pool images in different folders
    ]
    path = write_parquet(tmp_path / "t.parquet", [official_row("5:9", hits)])
    got, stats = read_hit_parquet(path, task)
    assert [d for d, _ in got["5:9"]] == ["5:2", "5:1", "5:3"]
    assert stats.matched == {"image+text_lamra": 2, "image": 1}
    assert stats.unresolved_hits == 1 and "several pool images end like" in stats.examples[0]


def test_hashed_query_ids_are_read_back(tmp_path):
    rows = [
        official_row(9 * 500_000 + 1, [("", "a plate of food")]),
        official_row(9 * 500_000 + 2, [("", "a dog running in a park")]),
        official_row(9 * 500_000 + 77, [("", "Is this a kitchen?")]),
    ]
    path = write_parquet(tmp_path / "t.parquet", rows)
    assert pq.read_schema(path).field("extra_info").type.field("qid").type == pa.int64()
    got, stats = read_hit_parquet(path, text_task())
    assert got == {"9:1": [("9:27", -0.0)], "9:2": [("9:21", -0.0)]}
    assert (stats.unknown_qids, stats.missing_queries) == (1, 1)
    assert "query id 4500077 (read as '9:77') is not a query of mscoco_task3" in stats.examples[0]
    # A row of a query that exists but is scored elsewhere is no loss.
    _, stats = read_hit_parquet(path, text_task(), is_other_query=lambda q: q == "9:77")
    assert (stats.unknown_qids, stats.other_rows) == (0, 1)


def test_hashed_candidate_ids_in_an_id_field(tmp_path):
    rows = [{"qid": "9:1", "hit": [{"did": 9 * 10_000_000 + n} for n in (27, 21, 99)]}]
    got, stats = read_hit_parquet(write_parquet(tmp_path / "t.parquet", rows), text_task())
    assert [d for d, _ in got["9:1"]] == ["9:27", "9:21"]
    assert stats.unknown_dids == 1 and "id '9:99' is not in the pool" in stats.examples[0]


def test_losses_stop_with_count_and_examples_unless_allowed(tmp_path):
    hits = [("", "a plate of food"), ("", "no such caption"), ("/x/none.jpg", "")]
    path = write_parquet(tmp_path / "t.parquet", [official_row("9:1", hits)])
    _, stats = read_hit_parquet(path, text_task())
    assert stats.losses == 2 + 2  # two hits, two queries without a row
    with pytest.raises(UnresolvedCandidatesError) as e:
        check_losses(stats, path, max_unresolved=3)
    msg = str(e.value)
    assert msg.startswith(f"{path}: 4 first-stage entries cannot be used (2 hits matching no distinct")
    assert "2 queries without a row" in msg and "--max-unresolved 4" in msg
    assert f'{path}:row 1 (query 9:1) hit[1]: no pool candidate for text "no such caption"' in msg
    assert 'hit[2]: no pool candidate for image "/x/none.jpg"' in msg
    check_losses(stats, path, max_unresolved=4)
    assert isinstance(e.value, SampleError)


def test_jsonl_lists_count_unknown_and_dropped_ids(tmp_path):
    task = text_task()
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"qid": "9:1", "ranked": ["9:20", "9:77", "9:21"]}) + "\n")
    full = dict(task.pool)
    task.pool.pop("9:21")  # as if dropped for a missing image
    got, stats = read_candidates(path, task, full_pool=full)
    assert got["9:1"] == [("9:20", 0.0)]
    assert (stats.unknown_dids, stats.dropped_dids, stats.missing_queries) == (1, 1, 2)
    assert "ranked[1]: '9:77' is not in the pool" in stats.examples[0]


def test_prompts_are_read_exactly(tmp_path):
    rows = [
        official_row(9 * 500_000 + 1, [("", "a plate of food")]),
        official_row(9 * 500_000 + 2, [("", "a dog running in a park")]),
    ]
    path = write_parquet(tmp_path / "t.parquet", rows)
    prompts = read_parquet_prompts(path, text_task())
    assert list(prompts) == ["9:1", "9:2"]
    assert prompts["9:1"] == rows[0]["prompt"]
    assert prompts["9:1"][1]["content"].startswith("Query:A query.Candidates:(1) a plate of food\n\n")
    bad = official_row("9:1", [])
    bad["prompt"] = [{"role": "user", "content": "x"}]
    with pytest.raises(SampleError, match=re.escape(f"{tmp_path / 'b.parquet'}:row 1: field 'prompt'")):
        read_parquet_prompts(write_parquet(tmp_path / "b.parquet", [bad]), text_task())


# --------------------------------------------------------------------------- through `vretrver eval`


def mscoco_parquet(path: Path, mbeir_root: Path, broken: int = 0) -> Path:
    """mscoco_task0's queries with their first-stage lists as image hits on the authors' machine."""
    fs = {r["qid"]: r["ranked"] for r in lines(candidates_file(path.with_suffix(".jsonl")))}
    rows = []
    for qid in ("9:1", "9:2", "9:3", "9:5", "9:6"):
        ids = [d for d in fs[qid] if d != "9:900"]
        hits = [(f"/remote-home1/x/M-BEIR/{IMG.format(int(d.split(':')[1]))}", "") for d in ids]
        if broken and qid == "9:2":
            hits[1:1] = [("/remote-home1/x/other/nowhere.jpg", "")] * broken
        n = int(qid.split(":")[1])
        rows.append(official_row(9 * 500_000 + n, hits, query_text=f"query {qid}"))
    return write_parquet(path, rows)


def test_eval_with_the_parquet_stops_on_losses_and_counts_them(mbeir, tmp_path, capsys):  # noqa: F811
    src = mscoco_parquet(tmp_path / "mbeir_mscoco_task0_test.parquet", mbeir, broken=2)
    spec = f"precomputed:{tmp_path}/mbeir_{{task}}_test.parquet"
    args = ["--benchmark", "mbeir", "--data-root", str(mbeir), "--tasks", "mscoco_task0", "--retriever", spec]
    code, _, err = run_cli([*args, "--top-n", "10", "--out", str(tmp_path / "a")], capsys)
    assert code == 2 and "Traceback" not in err
    assert f"error: {src}: 2 first-stage entries cannot be used (2 hits matching no distinct" in err
    assert "row 2 (query 9:2) hit[1]: no pool candidate for image" in err
    assert "--max-unresolved 2" in err
    assert not (tmp_path / "a" / "first_stage" / "mscoco_task0.jsonl").exists()

    out = tmp_path / "b"
    code, _, _ = run_cli([*args, "--top-n", "10", "--max-unresolved", "2", "--out", str(out)], capsys)
    assert code == 0
    counts = json.loads((out / "summary.json").read_text())["tasks"]["mscoco_task0"]["counts"]
    assert counts["precomputed_unresolved_hits"] == 2 and counts["precomputed_unknown_qids"] == 0
    # Same lists as from our jsonl: hashed ids mapped back, paths matched by their last components.
    ref = tmp_path / "ref"
    code, _, _ = run_cli(
        [
            *args[:-1],
            f"precomputed:{tmp_path / 'mbeir_mscoco_task0_test.jsonl'}",
            "--top-n",
            "10",
            "--out",
            str(ref),
        ],
        capsys,
    )
    assert code == 0
    assert (
        lines(out / "first_stage" / "mscoco_task0.jsonl")[0]["ranked"]
        == lines(ref / "first_stage" / "mscoco_task0.jsonl")[0]["ranked"]
    )
    # A resumed run reads the lists back and still reports the counts.
    code, _, _ = run_cli([*args, "--top-n", "10", "--max-unresolved", "2", "--out", str(out)], capsys)
    assert code == 0
    again = json.loads((out / "summary.json").read_text())["tasks"]["mscoco_task0"]["counts"]
    assert again == counts


def test_parquet_prompts_reach_the_reranked_samples(mbeir, tmp_path):  # noqa: F811
    src = mscoco_parquet(tmp_path / "mbeir_mscoco_task0_test.parquet", mbeir)
    cfg = swap_cfg(mbeir, src, parquet_prompts=True, profile="official")
    out, s = evaluate(cfg, tmp_path / "res", progress=False, engine=SwapEngine())
    want = {r["extra_info"]["qid"]: r["prompt"] for r in pq.read_table(src).to_pylist()}
    samples = {x["id"]: x for x in lines(out / "samples" / "mscoco_task0.jsonl")}
    assert samples["9:2"]["meta"]["parquet_prompt"] == want[9 * 500_000 + 2]
    assert s["tasks"]["mscoco_task0"]["counts"]["no_parquet_prompt"] == 0
    # The samples the windows are built from carry it into every episode.
    (task,) = load_benchmark("mbeir", data_root=str(mbeir), tasks=["mscoco_task0"], progress=False)
    task = after_first_stage(prepare_task(task), cfg, out)
    fs = first_stage_runs(task, cfg, out, {})
    q = next(q for q in task.queries if q.id == "9:3")
    rcfg = RerankConfig(top_n=5, window=3, stride=2)
    (res,) = rerank_windows([with_candidates(q, fs[q.id], task)], SwapEngine(), rcfg)
    assert [ep.sample.meta["parquet_prompt"] for ep in res.episodes] == [want[9 * 500_000 + 3]] * 2
    with pytest.raises(ValueError, match="--parquet-prompts needs --retriever precomputed:PATH.parquet"):
        EvalConfig(benchmark="mbeir", retriever="offline", parquet_prompts=True).check()


def test_rows_past_a_limit_are_not_unknown_but_foreign_ids_are(mbeir, tmp_path, capsys):  # noqa: F811
    src = mscoco_parquet(tmp_path / "mbeir_mscoco_task0_test.parquet", mbeir)
    spec = f"precomputed:{tmp_path}/mbeir_{{task}}_test.parquet"
    args = ["--benchmark", "mbeir", "--data-root", str(mbeir), "--tasks", "mscoco_task0", "--retriever", spec]
    code, _, err = run_cli([*args, "--limit", "2", "--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    rows = pq.read_table(src).to_pylist()
    rows.append(official_row(9 * 500_000 + 404, [("", "x")]))
    write_parquet(src, rows)
    code, _, err = run_cli([*args, "--limit", "2", "--out", str(tmp_path / "b")], capsys)
    assert code == 2 and "1 rows with an unknown query id" in err
    assert "query id 4500404 (read as '9:404') is not a query of mscoco_task0" in err


def test_mbeir_reader_counts_qrels_of_unknown_queries_and_rejects_an_empty_query_file(mbeir):  # noqa: F811
    qrels = mbeir / "qrels/test/mbeir_mscoco_task0_test_qrels.txt"
    # 9:4 is in the query file (dropped there: no text, no image); 9:77 and 9:78 are not.
    qrels.write_text(qrels.read_text() + "9:77 Q0 9:101 1 0\n9:77 Q0 9:102 1 0\n9:78 Q0 9:103 0 0\n")
    (task,) = load_benchmark("mbeir", data_root=str(mbeir), tasks=["mscoco_task0"], limit=1, progress=False)
    assert task.issues["qrels_unknown_queries"] == 3
    assert task.meta["query_ids"] == {"9:1", "9:2", "9:3", "9:4", "9:5", "9:6"}
    assert [q.id for q in task.queries] == ["9:1"]
    query_file = mbeir / "query/test/mbeir_mscoco_task0_test.jsonl"
    query_file.write_text("\n")
    with pytest.raises(SampleError, match=re.escape(f"{query_file}: the query file is empty")):
        load_benchmark("mbeir", data_root=str(mbeir), tasks=["mscoco_task0"], progress=False)


def test_parquet_prompts_need_a_profile_that_uses_them(mbeir, tmp_path):  # noqa: F811
    src = mscoco_parquet(tmp_path / "mbeir_mscoco_task0_test.parquet", mbeir)
    with pytest.raises(ValueError, match="would ignore the parquet's"):
        swap_cfg(mbeir, src, parquet_prompts=True, profile="v-retrver").check()
    swap_cfg(mbeir, src, parquet_prompts=True, profile="official").check()
