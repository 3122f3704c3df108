"""Stands in for `python` in local_scripts/run_rl.sh (PYTHON=...): `-m verl.trainer.main_ppo ARGS` composes the
config verl would train with from exactly those arguments, validates it as verl does and writes it as JSON to
$COMPOSED_CONFIG instead of training; `-c CODE` and `-m MODULE` run as usual."""

from __future__ import annotations

import json
import os
import runpy
import sys


def compose_main_ppo(args: list[str]) -> None:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    options = dict(a[2:].split("=", 1) for a in args if a.startswith("--"))
    overrides = [a for a in args if not a.startswith("--")]
    with initialize_config_dir(config_dir=options["config-path"], version_base=None):
        cfg = compose(config_name=options["config-name"], overrides=overrides)
    OmegaConf.resolve(cfg)
    validate_config(config=cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    with open(os.environ["COMPOSED_CONFIG"], "w") as f:
        json.dump(OmegaConf.to_container(cfg), f)


if __name__ == "__main__":
    if sys.argv[1:3] == ["-m", "verl.trainer.main_ppo"]:
        compose_main_ppo(sys.argv[3:])
    elif sys.argv[1] == "-c":
        code = sys.argv[2]
        sys.argv = ["-c", *sys.argv[3:]]
        exec(compile(code, "<string>", "exec"), {"__name__": "__main__"})
    else:
        sys.argv = [sys.argv[2], *sys.argv[3:]]
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
