"""A run's settings declared once: the CLI options are EvalConfig's fields, ``--config FILE`` reads them
(a result folder's config.json included), ``key=value`` words override them, and mapping options take
JSON or ``k=v,k=v``."""

from __future__ import annotations

import dataclasses
import json

import pytest
from test_evaluate import SwapEngine, candidates_file, mbeir, swap_cfg  # noqa: F401  (fixtures)

import vretrver.evaluate as evaluate_mod
import vretrver.evaluation.reranker as reranker_mod
from vretrver.cli import build_parser, json_object_option, main
from vretrver.evaluate import EvalConfig, evaluate
from vretrver.options import flag_of


class Captured(Exception):
    pass


@pytest.fixture
def captured(monkeypatch):
    """``vretrver eval`` stops where the run would start and hands over its settings."""

    def capture(cfg, out, progress=True):
        cfg.check()
        raise Captured(cfg, out)

    monkeypatch.setattr(evaluate_mod, "evaluate", capture)

    def run(args: list[str]) -> tuple[EvalConfig, str]:
        with pytest.raises(Captured) as e:
            main(["eval", *args])
        return e.value.args

    return run


def test_a_result_folders_config_json_runs_the_same_again(mbeir, tmp_path, monkeypatch, capsys):  # noqa: F811
    src = candidates_file(tmp_path / "cands.jsonl")
    cfg = swap_cfg(mbeir, src, engine_args={"device": "cpu", "api_key": "sk-secret"})
    first, summary = evaluate(cfg, tmp_path / "a", progress=False, engine=SwapEngine())
    # The same run from its config.json alone, in a new folder, building its engine from the settings.
    monkeypatch.setattr(reranker_mod, "make_reranker_engine", lambda cfg, model=None: SwapEngine())
    assert (
        main(["eval", "--quiet", "--config", str(first / "config.json"), "--out", str(tmp_path / "b")]) == 0
    )
    err = capsys.readouterr().err
    assert "api_key masked in the file and left out" in err
    again = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert again["tasks"] == summary["tasks"] and again["average"] == summary["average"]
    old, new = (json.loads((d / "config.json").read_text()) for d in (first, tmp_path / "b"))
    assert new == {**old, "engine_args": {"device": "cpu"}}  # the secret is not in the file to copy
    # Given its own folder, the config resumes there (same fingerprint: no sibling folder).
    assert main(["eval", "--quiet", "--config", str(first / "config.json"), "--out", str(first)]) == 0
    assert "results: " + str(first) in capsys.readouterr().out
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("a-")]


def test_precedence_file_then_options_then_key_value(captured, tmp_path):
    run = tmp_path / "run.yaml"
    run.write_text(
        "benchmark: mbeir\n"
        "tasks: [mscoco_task0, mscoco_task3]\n"
        "data_root: /data/M-BEIR\n"
        "reranker: V-Retrver/V-Retrver-7B\n"
        "engine: vllm\n"
        "engine_args: {tensor_parallel_size: 2}\n"
        "top_n: 30\n"
        "window: 10\n"
        "out: runs/from-file\n"
    )
    cfg, out = captured(["--config", str(run)])
    assert (cfg.benchmark, cfg.tasks, cfg.top_n, cfg.window, out) == (
        "mbeir",
        ["mscoco_task0", "mscoco_task3"],
        30,
        10,
        "runs/from-file",
    )
    assert cfg.engine_args == {"tensor_parallel_size": 2}
    assert cfg.profile == "official"  # the released checkpoint's own, as without a file
    cfg, out = captured(
        ["--config", str(run), "--top-n", "20", "--out", "runs/x", "top-n=12", "tasks=oven_task6", "seed=3"]
    )
    assert (cfg.top_n, cfg.tasks, cfg.seed, cfg.window, out) == (12, ["oven_task6"], 3, 10, "runs/x")
    cfg, _ = captured(["--config", str(run), "reranker=none", "engine_args=device=cuda,dtype=bfloat16"])
    assert cfg.reranker is None and cfg.engine_args == {"device": "cuda", "dtype": "bfloat16"}
    assert cfg.profile == "v-retrver"


def test_engine_args_take_key_value_pairs(captured):
    base = ["--benchmark", "tuxpaint", "--out", "x"]
    cfg, _ = captured([*base, "--engine-args", "device=cpu,batch_size=4,timeout=1.5,trust=true,x=null"])
    assert cfg.engine_args == {"device": "cpu", "batch_size": 4, "timeout": 1.5, "trust": True, "x": None}
    cfg, _ = captured([*base, "--engine-args", '{"base_url": "http://h:8000/v1?a=b"}'])
    assert cfg.engine_args == {"base_url": "http://h:8000/v1?a=b"}
    cfg, _ = captured([*base, "--reader-args", "test_size=5"])
    assert cfg.reader_args == {"test_size": 5}
    assert json_object_option("device=cuda", "--engine-args") == {"device": "cuda"}
    with pytest.raises(SystemExit, match="expected key=value pairs"):
        json_object_option("device=cuda,oops", "--engine-args")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["top_n=many"], "top_n: expected int, got 'many'"),
        (["topn=5"], "unknown setting 'topn'"),
        (["justaword"], "expected key=value after the options"),
        (["window_mode=theirs"], "window_mode: expected one of ours, official"),
    ],
)
def test_bad_settings_are_one_line(args, message, capsys):
    assert main(["eval", "--benchmark", "tuxpaint", "--out", "x", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_files_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    for text, message in (
        ("benchmark: tuxpaint\nwindows: 3\n", "unknown setting 'windows'"),
        ("benchmark: tuxpaint\nlimit: [1]\n", "limit: expected int"),
        ("- benchmark\n", "expected a mapping of settings"),
        ("benchmark: nope\n", "benchmark: expected one of mbeir, heldout"),
    ):
        bad.write_text(text)
        assert main(["eval", "--config", str(bad), "--out", "x"]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert main(["eval", "--out", "x"]) == 2
    assert "--benchmark is required" in capsys.readouterr().err


def test_every_setting_is_an_option_with_its_help():
    eval_parser = build_parser()._subparsers._group_actions[0].choices["eval"]
    actions = {a.dest: a for a in eval_parser._actions}
    for f in dataclasses.fields(EvalConfig):
        assert f.name in actions, f"{f.name} has no option"
        assert flag_of(f) in actions[f.name].option_strings
        assert actions[f.name].help == f.metadata["help"] and f.metadata["help"]
    ns = build_parser().parse_args(["eval", "--benchmark", "mbeir"])
    # Defaults the options show are the settings' own (the reranker's 'none' means None).
    for f in dataclasses.fields(EvalConfig):
        if f.name not in ("benchmark", "reranker", "profile", "reader_args", "engine_args"):
            assert getattr(ns, f.name) == f.default, f.name
    assert ns.overrides == []
