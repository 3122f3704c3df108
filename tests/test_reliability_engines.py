"""What a run does when the engine or its own files misbehave.

``vretrver eval --engine openai`` on the embedded Tux Paint benchmark against a local server that fails
on purpose (:mod:`vretrver.testing.http_faults`): failures are counted in the tables and retried on the
next run; a lone surrogate in model output or in the server's JSON still gives a scored, written
episode. Resuming drops only a damaged line of a results file. A byte that is not UTF-8 in an input
jsonl is one error line naming file, line and byte offset.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vretrver.benchmarks.registry import load_benchmark
from vretrver.benchmarks.tuxpaint import DEFAULT_ROOT
from vretrver.cli import main
from vretrver.evaluate import load_finished
from vretrver.jsonl import REPLACED_FIELD, dumps_line, read_appended
from vretrver.samples import SampleError, iter_jsonl, read_samples, write_jsonl
from vretrver.testing.http_faults import FaultServer

TASKS = ("tuxpaint_t2i", "tuxpaint_i2t")
needs_tuxpaint = pytest.mark.skipif(
    not DEFAULT_ROOT.is_dir(), reason=f"Tux Paint stamps are not installed at {DEFAULT_ROOT}"
)


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer("healthy", lifetime=60) as srv:
        yield srv


@pytest.fixture(scope="module")
def first_stage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Candidate lists for 2 queries per task with the positive second: a [2, 1] answer puts it first."""
    folder = tmp_path_factory.mktemp("candidates")
    for task in load_benchmark("tuxpaint", limit=2):
        rows = []
        for q in task.queries:
            others = [d for d in task.pool if d not in q.positives][:3]
            rows.append({"qid": q.id, "ranked": [others[0], q.positives[0], *others[1:]]})
        write_jsonl(folder / f"{task.name}.jsonl", rows)
    return folder


def run_eval(srv: FaultServer, first_stage: Path, out: Path, capsys, *more: str) -> tuple[int, str]:
    """``vretrver eval`` with the openai engine on ``srv``: 2 queries per task, one window of 4 each."""
    engine_args = {"base_url": srv.base_url, "max_retries": 1, "backoff": 0.01, "timeout": 5}
    code = main(
        [
            "eval", "--quiet", "--benchmark", "tuxpaint", "--limit", "2",
            "--retriever", f"precomputed:{first_stage}/{{task}}.jsonl", "--reranker", "served-model",
            "--engine", "openai", "--engine-args", json.dumps(engine_args),
            "--top-n", "4", "--window", "4", "--out", str(out), *more,
        ]
    )  # fmt: skip
    return code, capsys.readouterr().err


def failures(out: Path, task: str) -> dict[str, int]:
    return json.loads((out / "summary.json").read_text())["tasks"][task]["engine_failures"]


# --------------------------------------------------------------------------- engine failures


@needs_tuxpaint
def test_failed_episodes_are_counted_and_retried_against_a_healthy_server(
    server, first_stage, tmp_path, capsys
):
    out = tmp_path / "res"
    server.mode = "http500"
    code, err = run_eval(server, first_stage, out, capsys)
    assert code == 0
    assert server.count() == 4 * 2  # 4 episodes (2 queries x 2 tasks, one window each), 2 tries each
    summary = json.loads((out / "summary.json").read_text())
    md = (out / "summary.md").read_text()
    for task in TASKS:
        e = summary["tasks"][task]
        assert e["engine_failures"] == {
            "reranked_queries": 2,
            "episodes": 2,
            "failed_episodes": 2,
            "failed_queries": 2,
            "fallback_queries": 2,
        }
        assert e["reranked"]["R@1"] == e["first_stage"]["R@1"] == 0.0  # the first-stage order, kept
        assert f"| {task} | 2 | R@5 | 100.0 | 100.0 (2/2 fell back) | +0.0 |" in md
        assert f"- {task}: 2 of 2 episodes failed; 2 of 2 reranked queries fell back" in md
        assert all(
            "HTTP 500 after 2 tries" in r["failed"][0] for r in lines(out / "results" / f"{task}.jsonl")
        )
    assert "the engine failed 2 of 2 episodes" in err

    # The server is healthy again: the same command reranks exactly the failed queries.
    server.mode = "healthy"
    before = server.count()
    code, err = run_eval(server, first_stage, out, capsys)
    assert code == 0 and server.count() - before == 4
    assert "reranking again 2 queries the engine failed on" in err
    summary = json.loads((out / "summary.json").read_text())
    for task in TASKS:
        e = summary["tasks"][task]
        assert e["engine_failures"]["failed_episodes"] == 0
        assert e["first_stage"]["R@1"] == 0.0 and e["reranked"]["R@1"] == 1.0  # the swap was applied
        rows = lines(out / "results" / f"{task}.jsonl")
        assert len(rows) == 2 and all(r["failed"] == [] and r["answered"] == [True] for r in rows)
        assert len(lines(out / "trajectories" / f"{task}.jsonl")) == 2  # the failed windows' are gone
    assert "fell back" not in (out / "summary.md").read_text()

    # Nothing left to do.
    before = server.count()
    assert run_eval(server, first_stage, out, capsys)[0] == 0 and server.count() == before


@needs_tuxpaint
def test_no_retry_failed_keeps_failed_queries(server, first_stage, tmp_path, capsys):
    out = tmp_path / "res"
    server.mode = "http500"
    run_eval(server, first_stage, out, capsys)
    server.mode = "healthy"
    before = server.count()
    code, _ = run_eval(server, first_stage, out, capsys, "--no-retry-failed")
    assert code == 0 and server.count() == before
    assert failures(out, TASKS[0])["failed_queries"] == 2


@needs_tuxpaint
def test_a_trickling_server_fails_the_run_s_episodes_in_bounded_time(first_stage, tmp_path, capsys):
    import time

    # One byte every 0.5 s: without a total deadline each request would take minutes.
    with FaultServer("drip", drip_interval=0.5, lifetime=60) as srv:
        t = time.monotonic()
        code = main(
            [
                "eval", "--quiet", "--benchmark", "tuxpaint", "--limit", "2", "--tasks", "tuxpaint_t2i",
                "--retriever", f"precomputed:{first_stage}/{{task}}.jsonl", "--reranker", "served-model",
                "--engine", "openai", "--top-n", "4", "--window", "4", "--out", str(tmp_path / "res"),
                "--engine-args", json.dumps({"base_url": srv.base_url, "max_retries": 0, "timeout": 1}),
            ]
        )  # fmt: skip
        held = time.monotonic() - t
    capsys.readouterr()
    assert code == 0 and held < 10
    assert failures(tmp_path / "res", "tuxpaint_t2i")["failed_episodes"] == 2


# --------------------------------------------------------------------------- text UTF-8 cannot hold


TOOL_CALL_WITH_ESCAPE = (
    # The model writes the six characters \ud800 inside its JSON: parsed, they become a lone surrogate.
    '<think>look</think><tool_call>{"name": "select_images", "arguments": '
    '{"target_images": [1], "note": "\\ud800"}}</tool_call>'
)
# Sent by the server as the JSON escape \ud800: the engine's text holds a lone surrogate.
ANSWER_WITH_SURROGATE = "<think>odd \ud800 here</think><answer>[2, 1]</answer>"


def two_turns(body: dict[str, Any], n: int) -> str:
    first = not any(m["role"] == "assistant" for m in body["messages"])
    return TOOL_CALL_WITH_ESCAPE if first else ANSWER_WITH_SURROGATE


@needs_tuxpaint
def test_lone_surrogates_are_written_escaped_and_the_episode_is_scored(server, first_stage, tmp_path, capsys):
    server.script = two_turns
    out = tmp_path / "res"
    code, _ = run_eval(server, first_stage, out, capsys)
    assert code == 0 and server.count() == 4 * 2  # two turns per episode
    summary = json.loads((out / "summary.json").read_text())
    for task in TASKS:
        assert summary["tasks"][task]["reranked"]["R@1"] == 1.0  # the answer counted
        assert len(lines(out / "results" / f"{task}.jsonl")) == 2
        for t in lines(out / "trajectories" / f"{task}.jsonl"):
            assert t["failed"] is None and t["ranking"][:2] == [2, 1]
            # The server's surrogate reaches the turn's text: written as its escape, and listed.
            assert "turns[2].text" in t[REPLACED_FIELD]
            # The one parsed from the model's JSON: the parser may replace it (U+FFFD); if not, the
            # writer escapes it and lists it.
            note = t["turns"][0]["parsed"]["tool_call"]["arguments"]["note"]
            arg_path = "turns[0].parsed.tool_call.arguments.note"
            assert note == "\ufffd" or (note == "\\ud800" and arg_path in t[REPLACED_FIELD])
            assert t["turns"][2]["text"] == "<think>odd \\ud800 here</think><answer>[2, 1]</answer>"
    # The written files read back, so a resume works and has nothing to redo.
    before = server.count()
    assert run_eval(server, first_stage, out, capsys)[0] == 0 and server.count() == before


def test_dumps_line_escapes_only_what_utf8_cannot_encode() -> None:
    clean = {"text": "naïve ✓", "n": [1, 2]}
    assert dumps_line(clean) == json.dumps(clean, ensure_ascii=False)
    row = {"a": ["ok", "x\udc80y"], "b": {"k\ud800": "v"}, "c": 3}
    text = dumps_line(row)
    text.encode("utf-8")  # would raise before the fix
    back = json.loads(text)
    assert back["a"] == ["ok", "x\\udc80y"] and back["b"] == {"k\\ud800": "v"} and back["c"] == 3
    assert back[REPLACED_FIELD] == ["a[1]", "b.k\\ud800<key>"]


def test_write_jsonl_writes_a_lone_surrogate(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [{"qid": "a", "text": "\ud83d"}])  # half of an emoji's surrogate pair
    assert lines(path) == [{"qid": "a", "text": "\\ud83d", REPLACED_FIELD: ["text"]}]


# --------------------------------------------------------------------------- damaged files on resume


def test_a_damaged_line_drops_only_itself(tmp_path: Path, capsys) -> None:
    res, traj = tmp_path / "r.jsonl", tmp_path / "t.jsonl"
    rows = [{"qid": f"q{i}", "reranked": ["a", "b"], "failed": []} for i in range(1, 31)]
    text = [json.dumps(r) for r in rows]
    text[9] = text[9][:20]  # line 10 cut short, its newline kept
    res.write_bytes(("\n".join(text) + "\n").encode() + b'{"qid": "q31", "rera')  # and a torn last line
    traj.write_text("".join(json.dumps({"qid": r["qid"], "window": 0}) + "\n" for r in rows))
    done = load_finished(res, traj, {r["qid"] for r in rows} | {"q31"})
    err = capsys.readouterr().err
    assert sorted(done) == sorted(r["qid"] for r in rows if r["qid"] != "q10")
    assert f"{res}:10: not valid JSON" in err and "damaged line dropped; its query is reranked again" in err
    assert err.count("damaged line") == 1  # the torn last line is repaired quietly
    assert [r["qid"] for r in lines(res)] == [r["qid"] for r in rows if r["qid"] != "q10"]
    assert [t["qid"] for t in lines(traj)] == [r["qid"] for r in rows if r["qid"] != "q10"]


def not_utf8(path: Path, line: int, data: bytes, byte: int) -> str:
    """The expected message: the bad byte's offset in the file and its 1-based place in its line."""
    at = data.index(bytes([byte]))
    col = at - (data.rindex(b"\n", 0, at) + 1)
    return (
        f"{path}:{line}: not UTF-8: byte 0x{byte:02x} at byte offset {at} of the file (byte {col + 1} of "
        "the line); save the file as UTF-8"
    )


def test_a_results_line_that_is_not_utf8_is_dropped_and_reported(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    data = b'{"qid": "a"}\n{"qid": "caf\xe9"}\n{"qid": "c"}\n'
    path.write_bytes(data)
    found = read_appended(path)
    assert [r["qid"] for r in found.rows] == ["a", "c"] and not found.torn_tail
    assert found.damaged == [not_utf8(path, 2, data, 0xE9)]
    assert not_utf8(path, 2, data, 0xE9).endswith(
        "byte offset 25 of the file (byte 13 of the line); save the file as UTF-8"
    )


@needs_tuxpaint
def test_resume_after_damage_reranks_only_the_damaged_query(server, first_stage, tmp_path, capsys):
    out = tmp_path / "res"
    run_eval(server, first_stage, out, capsys)
    res = out / "results" / "tuxpaint_t2i.jsonl"
    good = res.read_text().splitlines()
    res.write_text(good[0][:30] + "\n" + good[1] + "\n")  # line 1 damaged, line 2 intact
    before = server.count()
    code, err = run_eval(server, first_stage, out, capsys)
    assert code == 0 and server.count() - before == 1
    assert f"{res}:1: not valid JSON" in err
    assert sorted(lines(res), key=lambda r: r["qid"]) == sorted(map(json.loads, good), key=lambda r: r["qid"])


# --------------------------------------------------------------------------- bytes that are not UTF-8


def test_iter_jsonl_names_file_line_and_byte_offset(tmp_path: Path) -> None:
    path = tmp_path / "queries.jsonl"
    data = b'{"id": "q1"}\n\n{"id": "q\xff2"}\n'
    path.write_bytes(data)
    with pytest.raises(SampleError) as e:
        list(iter_jsonl(path))
    assert str(e.value) == not_utf8(path, 3, data, 0xFF)
    # A torn multi-byte character at the end of an interrupted append is skipped where allowed.
    path.write_bytes(b'{"id": "q1"}\n{"id": "\xc3')
    assert [w for w, _ in iter_jsonl(path, allow_torn_tail=True)] == [f"{path}:1"]
    with pytest.raises(SampleError, match=":2: not UTF-8: byte 0xc3"):
        list(iter_jsonl(path))


def test_samples_file_with_a_bom_and_a_bad_byte(tmp_path: Path) -> None:
    path = tmp_path / "samples.jsonl"
    good = json.dumps({"id": "s1", "query": {"text": "a cat"}, "candidates": [{"id": "c", "text": "t"}]})
    path.write_bytes(b"\xef\xbb\xbf" + good.encode() + b"\n")
    assert [s.id for s in read_samples(path)] == ["s1"]  # a leading byte-order mark is not an error
    path.write_bytes(good.encode() + b"\n" + good.encode().replace(b"a cat", b"a c\x80t") + b"\n")
    with pytest.raises(SampleError, match=r"samples\.jsonl:2: not UTF-8: byte 0x80 at byte offset"):
        read_samples(path)


@needs_tuxpaint
def test_candidate_list_that_is_not_utf8_is_one_error_line(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "cands.jsonl"
    data = b'{"qid": "x", "ranked": ["a"]}\n{"qid": "caf\xe9", "ranked": ["a"]}\n'
    bad.write_bytes(data)
    code = main(
        ["eval", "--quiet", "--benchmark", "tuxpaint", "--limit", "2", "--retriever", f"precomputed:{bad}",
         "--out", str(tmp_path / "res")]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == f"error: {not_utf8(bad, 2, data, 0xE9)}"
