"""The reward's per-run overrides, as the reward file documents them, compose with verl's hydra config and
reach the reward's settings."""

from __future__ import annotations

import re

import pytest
from test_verl_config import ROOT, compose

REWARD_FILE = ROOT / "EasyR1" / "reward_function" / "v_retrver.py"
KWARGS = "reward.custom_reward_function.reward_kwargs"
BASE = ["actor_rollout_ref.model.path=/nonexistent"]


def documented_overrides() -> list[str]:
    """The hydra overrides the reward file's docstring shows (``[+]reward...reward_kwargs.<key>=<value>``)."""
    import ast

    doc = ast.get_docstring(ast.parse(REWARD_FILE.read_text(encoding="utf-8")))
    return re.findall(r"``(\+{0,2}" + re.escape(KWARGS) + r"\.\w+=[^`]+)``", doc or "")


def test_the_docstring_shows_both_forms():
    shown = documented_overrides()
    assert f"{KWARGS}.variant=public" in shown
    assert f"+{KWARGS}.k_r=3" in shown


@pytest.mark.parametrize("recipe", ["qwen2_5_vl_7b_rl", "qwen3_vl_8b_rl"])
def test_documented_overrides_compose(recipe):
    cfg = compose(recipe, BASE + documented_overrides())
    kwargs = cfg.reward.custom_reward_function.reward_kwargs
    assert kwargs.variant == "public" and kwargs.k_r == 3


def test_double_plus_adds_or_replaces():
    cfg = compose("qwen2_5_vl_7b_rl", BASE + [f"++{KWARGS}.variant=text-only", f"++{KWARGS}.sigma=2.0"])
    kwargs = cfg.reward.custom_reward_function.reward_kwargs
    assert kwargs.variant == "text-only" and kwargs.sigma == 2.0


def test_plus_on_a_key_the_recipe_sets_is_refused():
    """Why the docs give the variant without ``+``: hydra will not add a key that is already there."""
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="already"):
        compose("qwen2_5_vl_7b_rl", BASE + [f"+{KWARGS}.variant=public"])


def test_the_overridden_settings_reach_the_reward(monkeypatch: pytest.MonkeyPatch):
    """verl calls the reward file's compute_score with reward_kwargs as keyword arguments."""
    from omegaconf import OmegaConf
    from verl.utils.import_utils import load_extern_object

    cfg = compose("qwen2_5_vl_7b_rl", BASE + documented_overrides())
    rf = cfg.reward.custom_reward_function
    fn = load_extern_object(str(ROOT / rf.path), rf.name)
    seen = {}

    def fake(data_source, solution_str, ground_truth, extra_info=None, **settings):
        seen.update(settings)
        return 0.0

    monkeypatch.setitem(fn.__globals__, "_compute_score", fake)
    fn("src", "<answer>[1]</answer>", 1, {}, **OmegaConf.to_container(rf.reward_kwargs))
    assert seen == {"variant": "public", "k_r": 3}
