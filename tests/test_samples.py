"""Samples: jsonl round trip, image path resolution, and errors that name file, line and field."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from vretrver.samples import (
    Candidate,
    Query,
    Sample,
    SampleError,
    atomic_write_text,
    iter_samples,
    read_samples,
    write_jsonl,
    write_samples,
)


def good(i: int = 0, **changes) -> dict:
    d = {
        "id": f"q{i}",
        "query": {
            "text": "a dog on a skateboard",
            "images": ["imgs/q.png"],
            "instruction": "Find the image.",
        },
        "candidates": [
            {"id": "c1", "text": "a dog", "image": "imgs/c1.png"},
            {"id": "c2", "text": "a skateboard"},
            {"id": "c3", "image": "/abs/c3.png"},
        ],
        "positives": ["c1"],
        "task": "mscoco_task0",
        "dataset": "mscoco",
        "meta": {"window_start": 0, "source": "test"},
    }
    d.update(changes)
    return d


def write_lines(path: Path, lines: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8"
    )
    return path


def test_round_trip(tmp_path):
    samples = [
        Sample(
            "q1",
            Query("a red bus", ["/data/q1.jpg", "/data/q1b.jpg"], "Retrieve the image."),
            [
                Candidate("c1", "a bus", "/data/c1.jpg"),
                Candidate("c2", "ünïcödé text 中文"),
                Candidate("c3", image="/d/c3.png"),
            ],
            positives=["c1", "c3"],
            task="visualnews_task0",
            dataset="visualnews",
            meta={"rank": [1, 2], "score": 0.5, "nested": {"a": None}},
        ),
        Sample("q2", Query(text="text only"), []),
    ]
    path = tmp_path / "out" / "samples.jsonl"
    write_samples(path, samples)
    assert read_samples(path) == samples
    assert read_samples(path, resolve_images=False) == samples
    assert [s.id for s in iter_samples(path)] == ["q1", "q2"]
    # One JSON object per line, non-ASCII kept as written.
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 and "中文" in lines[0]
    assert Sample.from_dict(json.loads(lines[0])) == samples[0]
    assert list(tmp_path.joinpath("out").iterdir()) == [path]  # no temp file left behind


def test_relative_image_paths_resolve_against_the_file(tmp_path):
    path = write_lines(tmp_path / "sub" / "set.jsonl", [good()])
    (s,) = read_samples(path)
    base = (tmp_path / "sub").resolve()
    assert s.query.images == [str(base / "imgs" / "q.png")]
    assert s.candidates[0].image == str(base / "imgs" / "c1.png")
    assert s.candidates[1].image is None
    assert s.candidates[2].image == "/abs/c3.png"  # absolute paths stay
    (raw,) = read_samples(path, resolve_images=False)
    assert raw.query.images == ["imgs/q.png"] and raw.candidates[0].image == "imgs/c1.png"


def test_relative_path_of_the_file_itself(tmp_path, monkeypatch):
    write_lines(tmp_path / "d" / "set.jsonl", [good()])
    monkeypatch.chdir(tmp_path)
    (s,) = read_samples(Path("d") / "set.jsonl")
    assert os.path.isabs(s.query.images[0])
    assert s.query.images[0] == str(tmp_path.resolve() / "d" / "imgs" / "q.png")


def test_helpers():
    s = Sample.from_dict(good())
    assert s.image_paths() == ["imgs/q.png", "imgs/c1.png", None, "/abs/c3.png"]
    assert s.positive_numbers() == [1]
    assert s.query.modality == "image,text"
    assert [c.modality for c in s.candidates] == ["image,text", "text", "image"]
    two = Sample.from_dict(good(query={"text": None, "images": ["a.png", "b.png"]}))
    assert two.image_paths()[0] == "b.png"  # tools use the last query image
    assert two.query.modality == "image"
    none = Sample.from_dict(good(query={"text": "t"}))
    assert none.image_paths()[0] is None


def test_blank_lines_are_skipped_but_counted(tmp_path):
    path = write_lines(tmp_path / "s.jsonl", [good(1), "", "   ", good(2), {"id": "q3"}])
    with pytest.raises(SampleError) as e:
        read_samples(path)
    assert str(e.value).startswith(f"{path}:5: field 'query'")
    assert [s.id for s in read_samples(write_lines(tmp_path / "t.jsonl", [good(1), "", good(2)]))] == [
        "q1",
        "q2",
    ]


def _q(**kw):
    q = {"text": "t", "images": []}
    q.update(kw)
    return q


def _cands(*items):
    return list(items)


BAD_LINES = [
    ('{"id": "q2", "query": ', "not valid JSON"),
    ("not json at all", "not valid JSON"),
    ("[1, 2, 3]", "field '<line>': expected a JSON object"),
    (good(2, id=None), "field 'id': expected a non-empty string"),
    ({k: v for k, v in good(2).items() if k != "id"}, "field 'id'"),
    (good(2, id=""), "field 'id'"),
    (good(2, id=7), "field 'id': expected a non-empty string, got 7"),
    (good(2, query="a dog"), "field 'query': expected an object"),
    (good(2, query=_q(images="imgs/q.png")), "field 'query.images': expected a list of image paths"),
    (good(2, query=_q(images=[""])), "field 'query.images'"),
    (good(2, query=_q(images=[3])), "field 'query.images'"),
    (good(2, query=_q(text=5)), "field 'query.text': expected a string or null, got 5"),
    (good(2, query=_q(instruction=["x"])), "field 'query.instruction'"),
    (good(2, candidates={"c1": "a dog"}), "field 'candidates': expected a list"),
    (good(2, candidates=_cands({"id": "c1", "text": "x"}, "c2")), "(candidate 2): field 'candidates[]'"),
    (good(2, candidates=_cands({"id": "c1", "text": "x"}, {"text": "no id"})), "(candidate 2): field 'id'"),
    (good(2, candidates=_cands({"id": "c1", "text": 3})), "(candidate 1): field 'text'"),
    (good(2, candidates=_cands({"id": "c1", "image": ["a.png"]})), "(candidate 1): field 'image'"),
    (good(2, candidates=_cands({"id": "c1"})), "(candidate 1): field 'text/image'"),
    (
        good(
            2,
            candidates=_cands(
                {"id": "c1", "text": "x"}, {"id": "c2", "text": "y"}, {"id": "c1", "text": "z"}
            ),
        ),
        "field 'candidates': expected unique candidate ids",
    ),
    (good(2, positives="c1"), "field 'positives': expected a list of ids"),
    (good(2, positives=[1]), "field 'positives'"),
    (good(2, meta=[]), "field 'meta': expected an object"),
    (good(2, task=3), "field 'task': expected a string"),
    (good(2, dataset=None), "field 'dataset'"),
]


@pytest.mark.parametrize("bad, message", BAD_LINES)
def test_bad_line_names_file_line_and_field(tmp_path, bad, message):
    path = write_lines(tmp_path / "set.jsonl", [good(0), good(1), bad, good(3)])
    with pytest.raises(SampleError) as e:
        read_samples(path)
    text = str(e.value)
    assert text.startswith(f"{path}:3")
    assert message in text


def test_iter_samples_yields_the_good_lines_before_the_bad_one(tmp_path):
    path = write_lines(tmp_path / "set.jsonl", [good(0), good(1), "{"])
    it = iter_samples(path)
    assert next(it).id == "q0" and next(it).id == "q1"
    with pytest.raises(SampleError, match=r"set\.jsonl:3: not valid JSON"):
        next(it)


def test_from_dict_names_the_place():
    with pytest.raises(SampleError, match="^row 9: field 'positives'"):
        Sample.from_dict(good(positives=None), where="row 9")


def test_empty_strings_become_none():
    s = Sample.from_dict(good(query={"text": "", "images": [], "instruction": ""}))
    assert s.query.text is None and s.query.instruction is None


def test_write_jsonl_is_atomic(tmp_path):
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [{"a": 1}])

    def rows():
        yield {"a": 2}
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_jsonl(path, rows())
    # The old file is intact and no temp file is left.
    assert path.read_text() == '{"a": 1}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]
    atomic_write_text(tmp_path / "deep" / "x.txt", "hello")
    assert (tmp_path / "deep" / "x.txt").read_text() == "hello"
