"""The EAPO reward's whole table, cell by cell, through the harness and through verl's reward entries.

Every combination of: tags intact / broken, answer written as a list / not, ground truth at position
1..20 / absent, 0..4 valid and 0..2 invalid tool calls. Each trajectory is played through
:class:`vretrver.episode.Episode` (real tools on real images), then scored by ``score_episode``, by
``compute_score`` of the verl integration and by the EasyR1 reward file; each score is compared with the
EAPO formula of the paper, computed here from how the cell was built.

The ``public`` variant is compared with the public training code's reward (reward_manager_v_retrver.py),
restated below, applied to the response as verl would decode it: the conversation rendered by the real
Qwen chat templates, tokenized by the real Qwen tokenizer and decoded with ``skip_special_tokens=True``.
"""

from __future__ import annotations

import ast
import importlib.util
import itertools
import json
import math
import random
from pathlib import Path

import pytest
import regex  # the public code's regular-expression module
from photos import ASTRONAUT, CHELSEA
from PIL import Image

from vretrver.episode import Episode
from vretrver.integrations.verl.reward import compute_score
from vretrver.reward import decoded_response, score_episode
from vretrver.samples import Candidate, Query, Sample

ROOT = Path(__file__).resolve().parent.parent
K, GT = 20, 7
MAX_CALLS = 6  # room for 4 valid and 2 invalid calls


# --------------------------------------------------------------------------- the paper's formula


def paper_reward(tags_ok: bool, is_list: bool, k: int | None, n_valid: int, answered: bool = True) -> float:
    """R = 0.2 r_format + 0.8 r_rank + r_tool (the paper's EAPO constants)."""
    r_format = (0.5 * tags_ok + 0.5 * is_list) if answered else 0.0
    r_rank = math.exp(-((k - 1) ** 2) / 2.0) if answered and k is not None and k <= 5 else 0.0
    first = answered and k == 1
    r_tool = 0.2 * (first and n_valid > 0) - 0.1 * max(0, n_valid - 1)
    return 0.2 * r_format + 0.8 * r_rank + r_tool


# --------------------------------------------------------------------------- the public code, restated


def public_code_reward(response: str, ground_truth: int, n_valid: int) -> float:
    """The public training code's reward of one decoded response, without the group curiosity term.

    Format: 0.5 when the whole response fully matches <think>..</think>..<answer>..</answer>.., 0.5 more
    when the first answer is a Python list of ints. Ranking: that list, or else the digit runs of the
    answer, or none if anything fails; Gaussian of the first index of the ground truth, sigma 1, no
    cut-off. Weights 0.3 / 0.7; 0.05 off per valid call beyond the first; clipped to [-0.5, 1.5].
    (The public code evaluates the bracketed answer as Python; a literal reading is the same for every
    answer these tests write.)
    """
    ranking, as_list = None, False
    found = regex.search(r"<answer>(.*?)</answer>", response, flags=regex.DOTALL)
    if found is not None:
        inner = found.group(1).strip()
        try:
            if inner.startswith("[") and inner.endswith("]"):
                value = ast.literal_eval(inner)
                if isinstance(value, list) and all(isinstance(x, int) for x in value):
                    ranking, as_list = value, True
            if ranking is None:
                runs = regex.findall(r"\d+", inner)
                ranking = [int(r) for r in runs] if runs else None
        except Exception:
            ranking = None
    tags = regex.fullmatch(r"<think>(.*?)</think>.*<answer>(.*?)</answer>.*", response, flags=regex.DOTALL)
    r_format = 0.5 + 0.5 * as_list if tags is not None else 0.0
    r_rank = 0.0
    if ranking and ground_truth in ranking:
        k = ranking.index(ground_truth) + 1
        r_rank = math.exp(-((k - 1) ** 2) / 2.0)
    penalty = -0.05 * (n_valid - 1) if n_valid > 1 else 0.0
    return max(-0.5, min(1.5, 0.3 * r_format + 0.7 * r_rank + penalty))


def verl_decoded_response(tokenizer, template: str, messages: list[dict]) -> str:
    """The response part of a conversation as verl's reward manager sees it: rendered by the chat
    template, tokenized, decoded with skip_special_tokens=True."""
    first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
    prompt = tokenizer.apply_chat_template(
        messages[:first], chat_template=template, tokenize=False, add_generation_prompt=True
    )
    ends_on_model = messages[-1]["role"] == "assistant"
    full = tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=not ends_on_model
    )
    assert full.startswith(prompt)
    response = full[len(prompt) :]
    if ends_on_model:  # the model's <|im_end|> decodes to nothing; the newline after it is not generated
        assert response.endswith("<|im_end|>\n")
        response = response[: -len("\n")]
    ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    return tokenizer.decode(ids, skip_special_tokens=True)


# --------------------------------------------------------------------------- building the cells


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Sample:
    """20 candidates with small real photos (small, so the tools run fast), candidate 7 the positive."""
    folder = tmp_path_factory.mktemp("table-images")
    paths = []
    for name, src in (("query", ASTRONAUT), ("cand", CHELSEA)):
        with Image.open(src) as im:
            path = folder / f"{name}.png"
            im.convert("RGB").resize((64, 48)).save(path)
            paths.append(str(path))
    cands = [Candidate(f"c{i}", f"candidate photo {i}", paths[1]) for i in range(1, K + 1)]
    return Sample("table:1", Query("a photo", [paths[0]], "Find the photo."), cands, positives=[f"c{GT}"])


def call(name: str, args: object) -> str:
    return json.dumps({"name": name, "arguments": args})


VALID_CALLS = [
    call("select_images", {"target_images": [1, 2]}),
    call("crop_image", {"bbox_2d": [0.1, 0.1, 0.6, 0.6], "target_image": 3}),
    call("select_images", {"target_images": [0]}),
    call("crop_image", {"bbox_2d": [5, 5, 40, 30], "target_image": 7}),
]
INVALID_CALLS = [
    '{"name": "select_images", "arguments": {"target_images": [1,',  # broken JSON
    call("zoom", {"factor": 2}),  # unknown tool
    call("select_images", {"target_images": [99]}),  # index out of range
    '{"name": "crop_image", "arguments": {"bbox_2d": [NaN, 0, 1, 1], "target_image": 1}}',  # not JSON
]
BREAKS = ["no think", "text between", "text after", "two thinks"]


def turn(action: str, body: str, broken: str | None = None) -> str:
    think = "<think>Looking at the candidates again.</think>"
    close = f"</{action}>"
    after = ""
    between = "\n"
    if broken == "no think":
        think = ""
    elif broken == "text between":
        between = "\nLet me check.\n"
    elif broken == "text after":
        after = " Done."
    elif broken == "two thinks":
        think = think + "<think>One more thought.</think>"
    return f"{think}{between}<{action}>\n{body}\n{close}{after}"


def answer_entries(position: int | None, seed: int) -> list[int]:
    """A ranking as the model writes it, with the ground truth first appearing at ``position`` (1-based)
    or absent; some cells put a duplicate or an out-of-range number before it, which occupy positions."""
    rng = random.Random(seed)
    others = [n for n in range(1, K + 1) if n != GT]
    rng.shuffle(others)
    if position is None:
        return others
    before = others[: position - 1]
    if position >= 3 and seed % 3 == 0:
        before[-1] = before[0]  # a duplicate
    if position >= 2 and seed % 3 == 1:
        before[-1] = 25  # beyond the 20 candidates
    return before + [GT] + others[position - 1 :]


def write_answer(entries: list[int], is_list: bool, seed: int) -> str:
    if is_list:
        return "[" + (", " if seed % 2 else ",").join(map(str, entries)) + "]"
    return (", " if seed % 2 else " > ").join(map(str, entries))


CELLS = list(itertools.product([True, False], [True, False], [*range(1, K + 1), None], range(5), range(3)))


def play(sample: Sample, cell: tuple, seed: int) -> Episode:
    tags_ok, is_list, position, n_valid, n_invalid = cell
    calls = [("valid", VALID_CALLS[i % 4]) for i in range(n_valid)]
    calls += [("invalid", INVALID_CALLS[(seed + i) % 4]) for i in range(n_invalid)]
    random.Random(seed).shuffle(calls)
    bodies = [("tool_call", body) for _, body in calls]
    bodies.append(("answer", write_answer(answer_entries(position, seed), is_list, seed)))
    broken_at = None if tags_ok else seed % len(bodies)
    ep = Episode(sample, max_tool_calls=MAX_CALLS)
    for i, (action, body) in enumerate(bodies):
        ep.step(turn(action, body, BREAKS[seed % 4] if i == broken_at else None))
    assert ep.done and ep.answer is not None
    assert (ep.n_valid_calls, ep.n_invalid_calls) == (n_valid, n_invalid), cell
    return ep


def assistant_texts(ep: Episode) -> list[str]:
    return [t.text for t in ep.turns if t.role == "assistant"]


def rollout_info(ep: Episode) -> dict:
    record = {
        "turns": assistant_texts(ep),
        "n_valid_calls": ep.n_valid_calls,
        "n_invalid_calls": ep.n_invalid_calls,
        "num_candidates": K,
    }
    return {"vretrver_rollout": record, "vretrver": {"num_candidates": K}}


def load_reward_file():
    path = ROOT / "EasyR1" / "reward_function" / "v_retrver.py"
    spec = importlib.util.spec_from_file_location("easyr1_v_retrver_reward", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.compute_score


@pytest.fixture(scope="module")
def played(sample) -> list[tuple[tuple, Episode]]:
    return [(cell, play(sample, cell, seed)) for seed, cell in enumerate(CELLS)]


# --------------------------------------------------------------------------- the table


def test_the_table_has_every_cell():
    assert len(CELLS) == 2 * 2 * 21 * 5 * 3


def test_every_cell_matches_the_paper_formula(played):
    easyr1 = load_reward_file()
    wrong = []
    for cell, ep in played:
        tags_ok, is_list, position, n_valid, _ = cell
        expected = paper_reward(tags_ok, is_list, position, n_valid)
        got = {
            "episode": score_episode(ep).score,
            "verl": compute_score(
                "table", decoded_response(ep.conversation.messages), [GT], rollout_info(ep)
            )["score"],
            "easyr1": easyr1("table", "", [GT], rollout_info(ep))["score"],
        }
        for where, score in got.items():
            if score != pytest.approx(expected, abs=1e-12):
                wrong.append((cell, where, score, expected, assistant_texts(ep)))
    assert not wrong, f"{len(wrong)} cells differ, e.g. {wrong[:3]}"


def test_terms_of_a_few_cells(played):
    by_cell = dict(played)
    b = score_episode(by_cell[(True, False, 1, 1, 0)])  # well tagged, "7, 1, ..." not a list
    assert (b.format, b.rank, b.tool, b.position) == (0.5, 1.0, pytest.approx(0.2), 1)
    b = score_episode(by_cell[(False, True, 3, 0, 2)])  # a broken turn, a list
    assert (b.format, b.position, b.n_invalid_calls) == (0.5, 3, 2)
    b = score_episode(by_cell[(True, True, None, 4, 0)])
    assert (b.format, b.rank, b.position, b.tool) == (1.0, 0.0, 0, pytest.approx(-0.3))


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_public_variant_is_the_public_code_on_every_cell(played, tiny_qwen25vl, family):
    from transformers import AutoTokenizer

    from vretrver.testing.tiny_models import chat_template_text

    tok = AutoTokenizer.from_pretrained(tiny_qwen25vl)
    template = chat_template_text(family)
    easyr1 = load_reward_file()
    wrong = []
    for cell, ep in played[::7] if family == "qwen3_vl" else played:
        response = verl_decoded_response(tok, template, ep.conversation.messages)
        assert decoded_response(ep.conversation.messages) == response
        expected = public_code_reward(response, GT, ep.n_valid_calls)
        got = {
            "episode": score_episode(ep, "public").score,
            "verl": compute_score("table", response, [GT], rollout_info(ep), variant="public")["score"],
            "easyr1": easyr1("table", response, [GT], rollout_info(ep), variant="public")["score"],
        }
        wrong += [(cell, w, s, expected) for w, s in got.items() if s != pytest.approx(expected, abs=1e-12)]
    assert not wrong, f"{len(wrong)} cells differ, e.g. {wrong[:3]}"


# --------------------------------------------------------------------------- through a verl rollout

ROLLOUT_SCRIPTS = [
    # an unknown tool, then a list: the tag check spans tool calls and observations alike
    [
        '<think>Try a tool.</think><tool_call>\n{"name": "zoom", "arguments": {}}\n</tool_call>',
        "<think>2 first.</think><answer>[2, 1, 4, 3]</answer><|im_end|>",
    ],
    # an answer smuggled into the tool name: the public code reads the first answer of the response
    [
        '<think>Hm.</think><tool_call>\n{"name": "<answer>[1, 2]</answer>", "arguments": {}}\n</tool_call>',
        "<think>Then 2.</think><answer>2, 1</answer><|im_end|>",
    ],
    # a valid crop without reasoning (the response no longer starts with <think>), then a Python list
    # holding True
    [
        'Zoom.<tool_call>\n{"name": "crop_image", "arguments": {"bbox_2d": [0.1, 0.1, 0.6, 0.6], "target_image": 2}}\n</tool_call>',
        "So: <answer>[True, 2]</answer><|im_end|>",
    ],
    ["<think>2.</think><answer>[2, 1, 4, 3]<|im_end|>"],  # no closing tag
]


def test_public_variant_in_a_verl_rollout_reads_what_verl_decodes(sample_photos, tiny_qwen25vl, tmp_path):
    """Our agent loop and verl's reward loop (the EasyR1 file, variant public), scripted turns: verl's
    score is the public code's reward of the response verl decoded, and the harness scores the same
    turns the same way."""
    import asyncio

    from verl_rig import Rig

    from vretrver.tools import ToolConfig

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # verl binds this loop at construction
    try:
        overrides = {"reward.custom_reward_function.reward_kwargs.variant": "public"}
        rig = Rig("qwen2_5_vl", tiny_qwen25vl, sample_photos, tmp_path, loop, overrides)
        out, _ = rig.run(ROLLOUT_SCRIPTS)
    finally:
        loop.close()
        asyncio.set_event_loop(None)
    gt = rig.sample.positive_numbers()[0]
    prompt_len = out.batch["prompts"].shape[1]
    records = list(out.non_tensor_batch["vretrver_rollout"])
    seen = []
    for script in ROLLOUT_SCRIPTS:
        ep = Episode(rig.sample, tool_config=ToolConfig.from_processor(rig.proc))
        for text in script:
            decoded_turn = rig.tok.decode(
                rig.tok(text, add_special_tokens=False)["input_ids"], skip_special_tokens=True
            )
            if ep.step(decoded_turn).kind != "observation":
                break
        j = next(i for i, r in enumerate(records) if r["turns"] == assistant_texts(ep))
        n = int(out.batch["attention_mask"][j, prompt_len:].sum())
        response = rig.tok.decode(out.batch["responses"][j, :n].tolist(), skip_special_tokens=True)
        assert decoded_response(ep.conversation.messages) == response
        expected = public_code_reward(response, gt, records[j]["n_valid_calls"])
        assert out.non_tensor_batch["score"][j] == pytest.approx(expected)
        assert score_episode(ep, "public").score == pytest.approx(expected)
        seen.append(round(expected, 6))
    # tags + list; tags + the smuggled list, rank 2; no tags, rank 2; no answer
    second = math.exp(-0.5)
    assert seen == [1.0, round(0.3 + 0.7 * second, 6), round(0.7 * second, 6), 0.0]
