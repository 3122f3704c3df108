"""M-BEIR reader on small files written in the distributed format (field names, paths, qrels, TSV)."""

import json
from pathlib import Path

import pytest

from vretrver.benchmarks import TASK_GROUPS, MissingDataError, load_benchmark
from vretrver.benchmarks.mbeir import load_mbeir, read_instructions, read_qrels
from vretrver.samples import SampleError

IMG = "mbeir_images/mscoco_images/val2014/COCO_val2014_{:012d}.jpg"


def query(qid, txt=None, img=None, modality="text", cand_modality="image", pos=(), **extra):
    d = {
        "qid": qid,
        "query_txt": txt,
        "query_img_path": img,
        "query_modality": modality,
        "query_src_content": None,
        "pos_cand_list": list(pos),
        "neg_cand_list": [],
    }
    if cand_modality is not None:
        d["candidate_modality"] = cand_modality
    d.update(extra)
    return d


def cand(did, txt=None, img=None):
    modality = ",".join(m for m, v in (("image", img), ("text", txt)) if v)
    return {"txt": txt, "img_path": img, "modality": modality, "did": did, "src_content": None}


def write_jsonl(path: Path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write(path: Path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "M-BEIR"
    coco_images = [cand(f"9:{n}", img=IMG.format(n)) for n in (100, 101, 102, 103)]
    coco_texts = [cand("9:200", txt="A dog on a beach."), cand("9:201", txt="Two cats on a sofa.")]
    write_jsonl(
        r / "query/test/mbeir_mscoco_task0_test.jsonl",
        [
            # pos_cand_list deliberately disagrees with the qrels: positives must come from the qrels
            query("9:1", txt="  A dog runs on the beach. ", pos=["9:101"]),
            query("9:2", txt="Two cats sleeping.", cand_modality=None, pos=["9:103"]),
            query("9:1", txt="duplicate of 9:1", pos=["9:100"]),
            query("9:3", txt=None, img=None, pos=["9:100"]),  # empty query
            query("9:4", txt="A query with no positive in the qrels."),
            query("9:5", txt="Its positive is not in the pool.", pos=["9:999"]),
        ],
    )
    write(
        r / "qrels/test/mbeir_mscoco_task0_test_qrels.txt",
        "9:1 Q0 9:100 1 0\n9:1 Q0 9:101 0 0\n9:1 Q0 9:102 1 0\n\n9:2 Q0 9:103 1 0\n9:5 Q0 9:999 1 0\n",
    )
    write_jsonl(
        r / "query/test/mbeir_mscoco_task3_test.jsonl",
        [query("9:10", img=IMG.format(100), modality="image", cand_modality="text", pos=["9:200"])],
    )
    write(r / "qrels/test/mbeir_mscoco_task3_test_qrels.txt", "9:10 Q0 9:200 1 3\n")
    write_jsonl(
        r / "query/test/mbeir_cirr_task7_test.jsonl",
        [query("8:1", txt="is red instead", img="mbeir_images/cirr_images/dev/a.png", modality="image,text")],
    )
    write(r / "qrels/test/mbeir_cirr_task7_test_qrels.txt", "8:1 Q0 8:7 1 7\n")
    # MSCOCO: separate test pools; the plain file is the val pool and must not be read for test
    write_jsonl(r / "cand_pool/local/mbeir_mscoco_task0_test_cand_pool.jsonl", coco_images)
    write_jsonl(
        r / "cand_pool/local/mbeir_mscoco_task0_cand_pool.jsonl", [cand("9:555", img=IMG.format(555))]
    )
    write_jsonl(r / "cand_pool/local/mbeir_mscoco_task3_test_cand_pool.jsonl", coco_texts)
    write_jsonl(
        r / "cand_pool/local/mbeir_cirr_task7_cand_pool.jsonl",
        [cand("8:7", img="mbeir_images/cirr_images/dev/b.png")],
    )
    write_jsonl(
        r / "cand_pool/global/mbeir_union_test_cand_pool.jsonl",
        coco_images + coco_texts + [cand("8:7", img="mbeir_images/cirr_images/dev/b.png")],
    )
    write(
        r / "instructions/query_instructions.tsv",
        "query_modality\tcand_modality\tdataset\tdataset_id\tprompt_1\tprompt_2\tprompt_3\n"
        "text\timage\tMSCOCO\t9\tCOCO t2i first.\tCOCO t2i second.\t\n"
        "image\ttext\tMSCOCO\t9\tCOCO i2t first.\t\t\n"
        "image,text\timage\tCIRR\t8\t\tCIRR first non-empty.\tCIRR third.\n",
    )
    return r


def by_name(tasks):
    return {t.name: t for t in tasks}


def test_reads_queries_positives_instructions_and_modalities(root):
    tasks = by_name(load_mbeir(root, ["mscoco_task0", "mscoco_task3", "cirr_task7"]))
    t2i = tasks["mscoco_task0"]
    assert [s.id for s in t2i.queries] == ["9:1", "9:2", "9:4", "9:5"]
    q1 = t2i.queries[0]
    assert q1.query.text == "A dog runs on the beach."
    assert q1.query.images == []
    assert q1.positives == ["9:100", "9:102"]  # from the qrels, relevance 0 dropped
    assert q1.query.instruction == "COCO t2i first."
    assert q1.task == "mscoco_task0" and q1.dataset == "mbeir"
    assert q1.meta == {"candidate_modality": "image", "query_modality": "text", "split": "test"}
    # no candidate_modality field: taken from the task id (task 0 targets images)
    assert t2i.queries[1].meta["candidate_modality"] == "image"
    assert t2i.metric == "R@5"

    i2t = tasks["mscoco_task3"].queries[0]
    assert i2t.query.images == [str(root.resolve() / IMG.format(100))]
    assert i2t.query.instruction == "COCO i2t first."
    assert i2t.meta["candidate_modality"] == "text"

    cirr = tasks["cirr_task7"].queries[0]
    assert cirr.query.text == "is red instead"
    assert cirr.query.images[0].endswith("mbeir_images/cirr_images/dev/a.png")
    assert cirr.query.instruction == "CIRR first non-empty."
    assert cirr.meta["query_modality"] == "image,text"


def test_mscoco_test_uses_its_separate_pool_and_paths_are_absolute(root):
    t2i = load_mbeir(root, ["mscoco_task0"])[0]
    assert sorted(t2i.pool) == ["9:100", "9:101", "9:102", "9:103"]
    c = t2i.pool["9:101"]
    assert c.image == str(root.resolve() / IMG.format(101)) and c.text is None
    assert t2i.meta["pool_path"].endswith("cand_pool/local/mbeir_mscoco_task0_test_cand_pool.jsonl")
    texts = load_mbeir(root, ["mscoco_task3"])[0].pool
    assert texts["9:200"].text == "A dog on a beach." and texts["9:200"].image is None


def test_global_pool_is_read_once_and_shared(root):
    tasks = load_mbeir(root, ["mscoco_task0", "mscoco_task3", "cirr_task7"], pool="global")
    assert tasks[0].pool is tasks[1].pool is tasks[2].pool
    assert len(tasks[0].pool) == 7
    assert all(t.meta["pool"] == "global" for t in tasks)


def test_issue_counts(root):
    t2i = load_mbeir(root, ["mscoco_task0"])[0]
    assert t2i.issues == {
        "duplicate_qids": 1,
        "empty_queries": 1,
        "no_positives": 1,
        "positives_not_in_pool": 1,
    }
    cirr = load_mbeir(root, ["cirr_task7"], check_images=True)[0]
    assert cirr.issues == {"missing_query_images": 1}


def test_no_instruction_is_counted(root):
    write(root / "instructions/query_instructions.tsv", "header\n" + "text\ttext\tX\t2\tsomething\n")
    t = load_mbeir(root, ["mscoco_task3"])[0]
    assert t.issues["no_instruction"] == 1 and t.queries[0].query.instruction is None


def test_limit_keeps_first_queries_and_full_pool(root):
    t = load_mbeir(root, ["mscoco_task0"], limit=2)[0]
    assert [s.id for s in t.queries] == ["9:1", "9:2"]
    assert len(t.pool) == 4


def test_bad_query_line_names_file_line_and_field(root):
    path = root / "query/test/mbeir_mscoco_task0_test.jsonl"
    lines = path.read_text().splitlines()
    bad = json.loads(lines[1])
    del bad["qid"]
    lines[1] = json.dumps(bad)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SampleError, match=r"mbeir_mscoco_task0_test\.jsonl:2: field 'qid'"):
        load_mbeir(root, ["mscoco_task0"])
    lines[1] = "{not json"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SampleError, match=r"mbeir_mscoco_task0_test\.jsonl:2: not valid JSON"):
        load_mbeir(root, ["mscoco_task0"])


def test_bad_pool_line_is_reported(root):
    path = root / "cand_pool/local/mbeir_mscoco_task3_test_cand_pool.jsonl"
    path.write_text(path.read_text() + json.dumps(cand("9:300")) + "\n")
    with pytest.raises(SampleError, match=r"test_cand_pool\.jsonl:3: field 'txt/img_path'"):
        load_mbeir(root, ["mscoco_task3"])


def test_bad_qrels_and_tsv_lines(tmp_path):
    q = tmp_path / "q.txt"
    q.write_text("9:1 Q0 9:2 1 0\n9:1 Q0 9:3 yes 0\n")
    with pytest.raises(SampleError, match=r"q\.txt:2: field 'relevance': expected an integer"):
        read_qrels(q)
    q.write_text("9:1 Q0 9:2 1\n")
    with pytest.raises(SampleError, match=r"q\.txt:1: field '<line>': expected 5 fields"):
        read_qrels(q)
    t = tmp_path / "i.tsv"
    t.write_text("header\ntext\timage\tMSCOCO\t9\n")
    with pytest.raises(SampleError, match=r"i\.tsv:2: expected tab-separated"):
        read_instructions(t)


def test_missing_files_are_all_listed(root):
    (root / "qrels/test/mbeir_cirr_task7_test_qrels.txt").unlink()
    (root / "instructions/query_instructions.tsv").unlink()
    with pytest.raises(MissingDataError) as e:
        load_mbeir(root, ["cirr_task7"])
    assert "mbeir_cirr_task7_test_qrels.txt" in str(e.value)
    assert "query_instructions.tsv" in str(e.value)


def test_registry_groups_and_arguments(root):
    assert TASK_GROUPS["heldout"] == (
        "nights_task4",
        "oven_task6",
        "oven_task8",
        "infoseek_task6",
        "infoseek_task8",
    )
    assert len(TASK_GROUPS["mbeir"]) == 16
    tasks = load_benchmark("mbeir", root, tasks=["cirr_task7"], limit=1, pool="global")
    assert [t.name for t in tasks] == ["cirr_task7"] and len(tasks[0].pool) == 7
    with pytest.raises(ValueError, match="pass data_root"):
        load_benchmark("heldout")
    with pytest.raises(ValueError, match="task names look like"):
        load_mbeir(root, ["mscoco"])
