"""The RL reward (the paper's EAPO reward and its variants): every term and variant on hand-written
trajectories, and the verl reward file called through verl's own reward manager."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from vretrver.reward import (
    RewardSettings,
    apply_group_curiosity,
    ground_truth_position,
    group_curiosity_bonus,
    rank_term,
    reward_settings,
    score_trajectory,
    tool_term,
)

ROOT = Path(__file__).resolve().parent.parent
REWARD_FILE = ROOT / "EasyR1" / "reward_function" / "v_retrver.py"
K = 20

SELECT = '<think>Candidates 1 and 2 look alike.</think><tool_call>\n{"name": "select_images", "arguments": {"target_images": [1, 2]}}\n</tool_call>'
CROP = '<think>Zoom in.</think><tool_call>\n{"name": "crop_image", "arguments": {"bbox_2d": [0, 0, 50, 50], "target_image": 1}}\n</tool_call>'


def answer(order: list[int], think: bool = True) -> str:
    body = "[" + ", ".join(str(i) for i in order) + "]"
    return ("<think>So the order is clear.</think>" if think else "") + f"<answer>{body}</answer>"


def with_gt_at(k: int, gt: int = 7) -> list[int]:
    """A full ranking of 1..K with the ground truth at 1-based position k."""
    others = [i for i in range(1, K + 1) if i != gt]
    return others[: k - 1] + [gt] + others[k - 1 :]


def score(turns, n_valid=0, n_invalid=0, gt=7, variant="eapo", response=None, **kw):
    settings = reward_settings(variant, **kw)
    return score_trajectory(
        turns, gt, n_valid, n_invalid, num_candidates=K, settings=settings, response=response
    )


# --------------------------------------------------------------------------- EAPO (paper default)

# k -> exp(-(k-1)^2 / 2) for k <= K_r = 5, else 0 (the paper's values: 1.0, 0.607, 0.135, ...)
RANK = {1: 1.0, 2: math.exp(-0.5), 3: math.exp(-2.0), 4: math.exp(-4.5), 5: math.exp(-8.0), 6: 0.0}


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 6])
def test_eapo_rank_term_by_position(k):
    b = score([answer(with_gt_at(k))])
    assert b.position == k
    assert b.rank == pytest.approx(RANK[k])
    assert b.format == 1.0 and b.tool == 0.0
    assert b.score == pytest.approx(0.2 + 0.8 * RANK[k])


def test_rank_values_quoted_in_the_method():
    assert [round(rank_term(k), 3) for k in (1, 2, 3)] == [1.0, 0.607, 0.135]
    assert rank_term(6, k_r=5) == 0.0 and rank_term(6, k_r=None) > 0
    assert rank_term(None) == 0.0


@pytest.mark.parametrize(
    "n_valid, k, expected_tool",
    [
        (0, 1, 0.0),  # right, but no evidence gathered: no bonus
        (1, 1, 0.2),  # eta for the first valid call
        (3, 1, 0.2 - 0.1 * 2),  # rho per valid call beyond tau = 1
        (1, 2, 0.0),  # bonus only when ranked first
        (3, 2, -0.2),
    ],
)
def test_eapo_tool_term(n_valid, k, expected_tool):
    turns = [SELECT] * min(n_valid, 2) + [answer(with_gt_at(k))]
    b = score(turns, n_valid=n_valid)
    assert b.tool == pytest.approx(expected_tool)
    assert b.score == pytest.approx(0.2 * 1.0 + 0.8 * RANK[k] + expected_tool)


def test_eapo_maximum_is_1_2():
    b = score([SELECT, answer(with_gt_at(1))], n_valid=1)
    assert b.score == pytest.approx(1.2)
    assert (b.format, b.rank, b.tool) == (1.0, 1.0, pytest.approx(0.2))


def test_invalid_calls_neither_earn_the_bonus_nor_count_against_tau():
    turns = [
        '<think>x</think><tool_call>\n{"name": "zoom", "arguments": {}}\n</tool_call>',
        answer(with_gt_at(1)),
    ]
    b = score(turns, n_valid=0, n_invalid=1)
    assert b.tool == 0.0 and b.score == pytest.approx(1.0) and b.n_invalid_calls == 1
    b = score([SELECT, CROP, answer(with_gt_at(1))], n_valid=1, n_invalid=1)
    assert b.tool == pytest.approx(0.2) and b.score == pytest.approx(1.2)


def test_no_answer_earns_no_format_or_rank():
    # still calling tools when the budget ended: the last turn is a tool call
    b = score([SELECT, CROP, SELECT], n_valid=2)
    assert (b.answered, b.format, b.rank, b.position) == (0, 0.0, 0.0, 0)
    assert b.tool == pytest.approx(-0.1)  # one valid call beyond tau still costs rho
    assert b.score == pytest.approx(-0.1)
    b = score(["<think>I am not sure."])  # cut off mid-turn
    assert b.score == 0.0 and b.answered == 0
    assert score([]).score == 0.0


def test_answer_that_is_not_a_bracketed_list_earns_the_tag_half():
    # The halves are independent: "7, 1, 2" is well tagged (0.5) but not a bracketed list (0).
    b = score(["<think>ok</think><answer>7, 1, 2</answer>"])
    assert b.rank == 1.0 and b.position == 1
    assert b.format == 0.5
    assert b.score == pytest.approx(0.2 * 0.5 + 0.8)
    b = score(["<think>ok</think><answer>[7, 1, two]</answer>"])
    assert b.format == 0.5 and b.position == 1


def test_format_half_credit():
    # A turn without <think> breaks "every turn well-tagged"; the final answer is still an integer list.
    b = score([answer(with_gt_at(1), think=False)])
    assert b.format == 0.5 and b.score == pytest.approx(0.2 * 0.5 + 0.8)
    # Text between </think> and the call breaks the tags of a call the harness still ran.
    chatty = SELECT.replace("</think>", "</think>Let me look.")
    b = score([chatty, answer(with_gt_at(1))], n_valid=1)
    assert b.format == 0.5 and b.tool == pytest.approx(0.2)
    # Neither half: no <think> and no list.
    assert score(["<answer>7, 1</answer>"]).format == 0.0


@pytest.mark.parametrize(
    "body",
    [
        '```json\n{"name": "select_images", "arguments": {"target_images": [1]}}\n```',  # code fence
        '{"name": "select_images", "arguments": {"target_images": [1,',  # broken JSON
        '{"name": "crop_image", "arguments": {"bbox_2d": [NaN, 0, 1, 1], "target_image": 1}}',  # not JSON
        '{"name": "zoom", "arguments": {}}',  # unknown tool
    ],
)
def test_what_a_tool_call_holds_is_no_tag_failure(body):
    # A broken call is an invalid call (the harness counts it), not a format failure.
    b = score([f"<think>x</think><tool_call>{body}</tool_call>", answer(with_gt_at(1))], n_invalid=1)
    assert b.format == 1.0 and b.score == pytest.approx(1.0)


@pytest.mark.parametrize("truncated", ["[7, 1, 2", "[7, 1, 2]", "[7, 1, 2]</answ"])
def test_an_answer_without_its_closing_tag_is_no_answer(truncated):
    # A generation cut by the length limit: no rank, no format, no tool bonus (the penalty stays).
    b = score([f"<think>ok</think><answer>{truncated}"])
    assert (b.answered, b.format, b.rank, b.position, b.score) == (0, 0.0, 0.0, 0, 0.0)
    b = score([SELECT, CROP, f"<think>ok</think><answer>{truncated}"], n_valid=2)
    assert b.score == pytest.approx(-0.1) and b.tool == pytest.approx(-0.1)


@pytest.mark.parametrize("body", ["[]", "[ ]", "[\n]", "[,]"])
def test_an_empty_list_is_not_a_list(body):
    b = score([f"<think>ok</think><answer>{body}</answer>"])
    assert b.format == 0.5 and b.rank == 0.0  # well tagged only


@pytest.mark.parametrize(
    "body, position",
    [
        ("[\uff17, 1, 2]", 0),  # full-width 7 is no digit: 1 and 2 are the only entries
        ("[1, \uff17, 7]", 2),
        ("[\u0667, \u0661]", 0),  # Arabic-Indic 7, 1
        ("[\u0967, 7]", 1),  # Devanagari 1 is no entry either
    ],
)
def test_only_ascii_digits_are_digits(body, position):
    b = score([f"<think>ok</think><answer>{body}</answer>"])
    assert b.position == position
    assert b.format == 0.5  # not a list of integers


def test_position_counts_entries_as_written():
    # k = first occurrence in the answer as written: duplicates and out-of-range entries take positions.
    assert score([answer([1, 2, 3])], gt=7).rank == 0.0  # ground truth not listed
    assert score([answer([2, 2, 7])], gt=7).position == 3
    assert score([answer([99, 0, 7])], gt=7).position == 3
    assert score([answer([7, 7, 1])], gt=7).position == 1  # the first occurrence counts
    assert score([answer([-7, 7])], gt=7).position == 2
    b = score([answer([1, 1, 1, 1, 1, 7])], gt=7)
    assert b.position == 6 and b.rank == 0.0  # beyond K_r = 5
    assert ground_truth_position([3, 1, 5], [5, 1]) == 2  # several positives: the best placed counts
    assert ground_truth_position(None, [1]) is None


def test_tool_term_function():
    assert tool_term(1, 1) == pytest.approx(0.2)
    assert tool_term(1, 4, eta=0.5, rho=0.25, tau=2) == pytest.approx(0.5 - 0.5)


# --------------------------------------------------------------------------- public variant


OBS = "\nuser\n<tool_response>\nThe selected images 1, 2 at high resolution.\n</tool_response>\nassistant\n"


def public(turns, n_valid=0, gt=7, **kw):
    """The public variant on a decoded response: the turns with observations between them."""
    return score(turns, n_valid=n_valid, gt=gt, variant="public", response=OBS.join(turns), **kw)


def test_public_variant_weights_no_cutoff_penalty_and_clip():
    s = reward_settings("public")
    assert (s.alpha, s.beta, s.k_r, s.eta, s.rho, s.scoring) == (0.3, 0.7, None, 0.0, 0.05, "public")
    b = public([SELECT, answer(with_gt_at(1))], n_valid=1)
    assert b.score == pytest.approx(1.0)  # no eta bonus in the public reward
    b = public([answer(with_gt_at(6))])
    assert b.rank == pytest.approx(math.exp(-12.5)) and b.rank > 0  # no K_r cut-off
    b = public([SELECT, CROP, answer(with_gt_at(1))], n_valid=3)
    assert b.tool == pytest.approx(-0.1) and b.score == pytest.approx(0.9)
    b = public([SELECT], n_valid=40)
    assert b.score == -0.5  # clipped from -1.95
    with pytest.raises(ValueError, match="decoded response"):
        score([SELECT, answer([7])], variant="public")  # turns alone do not show the tool results


@pytest.mark.parametrize(
    "response, fmt, position",
    [
        # The tag check spans the whole response: one think at the very start, an answer somewhere after.
        ("<think>a</think><answer>[7, 1]</answer>", 1.0, 1),
        (" <think>a</think><answer>[7, 1]</answer>", 0.0, 1),  # must start with <think>: rank still counts
        ("<think>a</think><tool_call>{}</tool_call>" + OBS + "no think here <answer>[2, 7]</answer>", 1.0, 2),
        ("<answer>[7]</answer>", 0.0, 1),
        # The list: a Python list whose items are all ints (True is one); else digit runs.
        ("<think>a</think><answer>[True, 7]</answer>", 1.0, 2),
        ("<think>a</think><answer>7, 1</answer>", 0.5, 1),
        ("<think>a</think><answer>[1.5, 7]</answer>", 0.5, 3),  # digit runs 1, 5, 7
        ("<think>a</think><answer>[7, 1, two]</answer>", 0.5, 0),  # not a Python literal: no ranking
        ("<think>a</think><answer>[]</answer>", 1.0, 0),  # an empty list is a list of ints here
        ("<think>a</think><answer>\u0667, 1</answer>", 0.5, 1),  # Unicode digits, like the regex module
        ("<think>a</think><answer>[7, 1, 2", 0.0, 0),  # unclosed: no answer
        # the FIRST <answer>...</answer> of the response is parsed, even one inside the reasoning
        ("<think>not <answer>[3, 7]</answer> yet</think><answer>[7, 3]</answer>", 1.0, 2),
    ],
)
def test_public_reading_of_the_decoded_response(response, fmt, position):
    b = score([response], variant="public")
    assert (b.format, b.position) == (fmt, position)
    assert b.score == pytest.approx(
        0.3 * fmt + 0.7 * (math.exp(-((position - 1) ** 2) / 2) if position else 0)
    )


def test_public_group_curiosity():
    # 2 of 8 rollouts used a valid tool: rate 0.25 < 0.6 -> 0.6 * (0.6 - 0.25) = 0.21 for those two
    used = [True, True] + [False] * 6
    assert group_curiosity_bonus(used) == pytest.approx([0.21, 0.21] + [0.0] * 6)
    assert group_curiosity_bonus([True] * 5 + [False] * 3) == [0.0] * 8  # rate 0.625 >= 0.6
    assert group_curiosity_bonus([False] * 8) == [0.0] * 8
    group = [public([SELECT, answer(with_gt_at(1))], n_valid=1)] + [
        public([answer(with_gt_at(2))]) for _ in range(3)
    ]
    out = apply_group_curiosity(group, "public")
    assert out[0].curiosity == pytest.approx(0.6 * (0.6 - 0.25))
    assert out[0].score == pytest.approx(1.0 + 0.21)
    assert [o.score for o in out[1:]] == pytest.approx([g.score for g in group[1:]])
    assert group_curiosity_bonus([True, False], "eapo") == [0.0, 0.0]  # EAPO has no group term


# --------------------------------------------------------------------------- text-only variant


def test_text_only_variant():
    b = score([answer(with_gt_at(1))], variant="text-only")
    assert b.score == pytest.approx(1.0) and b.tool == 0.0
    b = score([answer(with_gt_at(2))], variant="text-only")
    assert b.score == pytest.approx(0.2 + 0.8 * math.exp(-0.5))
    # a tool call is not part of the text-only format, and earns nothing
    b = score([SELECT, answer(with_gt_at(1))], n_valid=1, variant="text-only")
    assert b.format == 0.5 and b.tool == 0.0 and b.score == pytest.approx(0.9)


def test_settings_by_name_and_overrides():
    assert reward_settings() == RewardSettings()
    assert reward_settings("paper") == reward_settings("eapo")
    assert reward_settings("text_only") == reward_settings("text-only")
    assert reward_settings("eapo", k_r=3).k_r == 3
    with pytest.raises(ValueError, match="unknown reward variant"):
        reward_settings("grpo")
    with pytest.raises(ValueError, match="unknown reward settings"):
        reward_settings("eapo", gamma=1.0)
    with pytest.raises(ValueError, match="sigma"):
        RewardSettings(sigma=0)
    with pytest.raises(ValueError, match="n_valid_calls"):
        score_trajectory([answer([1])], 1, -1)


# --------------------------------------------------------------------------- the verl reward file


def _record(turns, n_valid, n_invalid=0):
    return {
        "vretrver_rollout": {
            "turns": turns,
            "n_valid_calls": n_valid,
            "n_invalid_calls": n_invalid,
            "num_candidates": K,
        },
        "vretrver": {"num_candidates": K},
    }


def test_reward_file_reads_the_recorded_tool_count():
    from verl.utils.import_utils import load_extern_object

    fn = load_extern_object(str(REWARD_FILE), "compute_score")
    turns = [SELECT, answer(with_gt_at(1))]
    out = fn("vretrver/toy", "ignored text", [7], _record(turns, n_valid=1))
    assert out["score"] == pytest.approx(1.2) and out["format"] == 1.0 and out["n_valid_calls"] == 1
    # the text shows a tool call, but the rollout recorded it as invalid: no bonus
    out = fn("vretrver/toy", "ignored text", [7], _record(turns, n_valid=0, n_invalid=1))
    assert out["score"] == pytest.approx(1.0)
    assert all(isinstance(v, (int, float)) for v in out.values())  # verl logs every entry
    # no record: a single-turn response is scored from the text itself, with no tool calls
    out = fn("vretrver/toy", answer(with_gt_at(2)), {"ground_truth": [7]}, {})
    assert out["score"] == pytest.approx(0.2 + 0.8 * math.exp(-0.5))
    with pytest.raises(ValueError, match="vretrver_agent"):
        fn("vretrver/toy", SELECT + "\nuser\n<tool_response>\n...\n</tool_response>", [7], {})
    # the public variant reads the decoded response verl passes, as the public code does
    out = fn("vretrver/toy", OBS.join(turns), [7], _record(turns, n_valid=1), variant="public")
    assert out["score"] == pytest.approx(1.0)
    out = fn("vretrver/toy", "x", [7], _record(turns, n_valid=1), variant="public")
    assert out["score"] == 0.0
    with pytest.raises(ValueError, match="unknown reward settings"):
        fn("vretrver/toy", "x", [7], _record(turns, 1), alpha_typo=1)


def test_reward_file_through_verl_reward_manager(tiny_qwen25vl):
    """verl loads the file from the config, its naive reward manager calls it, and gets our score."""
    import torch
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer
    from verl import DataProto
    from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls
    from verl.trainer.ppo.reward import get_custom_reward_fn

    cfg = OmegaConf.create(
        {
            "reward": {
                "custom_reward_function": {
                    "path": str(REWARD_FILE),
                    "name": "compute_score",
                    "reward_kwargs": {"variant": "eapo"},
                }
            }
        }
    )
    fn = get_custom_reward_fn(cfg)
    tok = AutoTokenizer.from_pretrained(tiny_qwen25vl)
    turns = [SELECT, answer(with_gt_at(2))]
    resp = tok("".join(turns), add_special_tokens=False)["input_ids"]
    prompt = tok("rank these", add_special_tokens=False)["input_ids"]
    P, R = 8, len(resp) + 4
    prompts = torch.full((1, P), tok.pad_token_id)
    prompts[0, -len(prompt) :] = torch.tensor(prompt)
    responses = torch.full((1, R), tok.pad_token_id)
    responses[0, : len(resp)] = torch.tensor(resp)
    attn = torch.zeros(1, P + R, dtype=torch.long)
    attn[0, P - len(prompt) : P] = 1
    attn[0, P : P + len(resp)] = 1
    rollout = np.empty(1, dtype=object)
    rollout[0] = {"vretrver_rollout": _record(turns, 1)["vretrver_rollout"]}
    data = DataProto.from_dict(
        tensors={"prompts": prompts, "responses": responses, "attention_mask": attn},
        non_tensors={
            "data_source": np.array(["vretrver/toy"], dtype=object),
            "reward_model": np.array([{"ground_truth": [7]}], dtype=object),
            "extra_info": np.array([{"vretrver": {"num_candidates": K}}], dtype=object),
            "tool_extra_fields": rollout,
        },
    )
    rm = get_reward_manager_cls("naive")(config=cfg, tokenizer=tok, compute_score=fn)
    out = rm.loop.run_until_complete(rm.run_single(data))  # verl binds its event loop at construction
    expected = 0.2 + 0.8 * math.exp(-0.5)  # ranked second: no tool bonus, one valid call is free
    assert out["reward_score"] == pytest.approx(expected)
    info = out["reward_extra_info"]
    assert (
        info["rank"] == pytest.approx(math.exp(-0.5)) and info["position"] == 2 and info["n_valid_calls"] == 1
    )
