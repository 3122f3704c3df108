"""The ``official`` profile renders exactly what the public V-Retrver release renders for its checkpoints.

The expected texts are built here, independently of our templates, from a restatement of the release's
code: LamRA's rerank message and text cleaning, the release's RL data builder (system prompt, user turn,
guidelines), verl's prompt rendering, the release's tool server (observation and error texts), its agent
loop (turn boundaries, the invalid-action prefix) and its sliding-window driver's rebuild of the candidate
block. Our side runs the real code paths: Episode + the checkpoint's chat template (evaluation), the RL
parquet, the LLaMA-Factory export and verl's AgentLoopWorker with our agent loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import re
from pathlib import Path

import pytest
from photos import ASTRONAUT, CHELSEA, COFFEE, DATA, ROCKET

from vretrver.engines.render import chat_prompt, conversation_images
from vretrver.episode import Episode
from vretrver.protocol import ProfileError, build_conversation, load_profile, system_prompt
from vretrver.protocol.conversation import parquet_window_prompt
from vretrver.protocol.profile import is_release_checkpoint, profile_mismatch_warning
from vretrver.samples import Candidate, Query, Sample
from vretrver.tools import ToolConfig, select_images

CAMERA = str(DATA / "camera.png")  # 512 x 512 greyscale
PHOTOS = [ASTRONAUT, CHELSEA, COFFEE, ROCKET, CAMERA]

# ----------------------------------------------------------------------------------------------------------
# The release's strings (prepare_lamra_train.py: `system_prompt` and `guideline`, the pair its builder uses).
# Note the crop_image schema line: one closing brace short, as released.
# ----------------------------------------------------------------------------------------------------------

RELEASE_SYSTEM = (
    "You are a helpful assistant for multimodal retrieval tasks.\n"
    "\n"
    "# Tools\n"
    "\n"
    "You may call one or more functions to assist with the user query.\n"
    "\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n"
    "<tools>\n"
    '{"type": "function", "function": {"name": "crop_image", "description": "Zoom in on the image based on the bounding box coordinates.", "parameters": {"type": "object", "properties": {"bbox_2d": {"type": "array", "description": "coordinates for bounding box of the area you want to zoom in. minimum value is 0 and maximum value is the width/height of the image.", "items": {"type": "number"}}, "target_image": {"type": "number", "description": "The index of the image to crop. Index from 1 to the number of images. Choose 1 to operate on original image."}}, "required": ["bbox_2d", "target_image"]}}\n'
    '{"type": "function", "function": {"name": "select_images", "description": "Select exactly one candidate image for detailed analysis from the provided candidate list.", "parameters": {"type": "object", "properties": {"target_images": {"type": "array", "description": "List containing exactly one candidate image index to select for detailed analysis (e.g., [3] to select candidate 3).", "items": {"type": "integer", "description": "Candidate image index from 1 to the number of candidates."}, "minItems": 1, "maxItems": 1}}, "required": ["target_images"]}}}\n'
    "</tools>\n"
    "\n"
    "For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n"
    "<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call>"
)
RELEASE_GUIDELINE = (
    "Guidelines: You are given a query (which can be text, image, or both) and multiple candidate items (which can be text, image, or both). Your task is to evaluate each candidate against the query and select the best match. Determine if it is beneficial to employ the given visual operations (tools). You can use the following tools:\n"
    "1. `crop_image`: Zoom in on specific areas of the query image or selected candidate images for detailed analysis\n"
    "2. `select_images`: Select specific candidate images from the provided list for detailed comparison\n"
    "\n"
    "Analyze the visual and textual features step by step and provide your final answer in the format:\n"
    "<think>Your reasoning process here</think><answer>Directly answer with the most matching number</answer>"
)
# The release's other pairs (system_prompt_original_0N / guideline_original_0N): length and SHA-256 of the
# exact strings (trailing newlines and the stray '""' of the first one included).
RELEASE_VARIANTS = {
    "official-original-01": (
        (3209, "876d3356f1b90b57cbb961321a96c20ee541d08264322b3eedc9988a4c90ac43"),
        (470, "edafd371d62b9b73060c9162c2d66489240a89e4a7117783e4a1547e1ef1056e"),
    ),
    "official-original-02": (
        (3507, "848d58b7c5d934cb6cd29b5916ce9be0f7cb812e92704f31427a44e1989ebf86"),
        (688, "c245a8cbba75fcab1974fbb7d5d79917ba016dd09afde36f90ddaae39371aef1"),
    ),
}
# The release's agent loop puts this in front of the observation of an invalid action.
INVALID_PREFIX = "Your action is not valid, please check the format and try again."
# LamRA's listwise rerank message opens with this instruction; the release's builder drops it.
LAMRA_HEADER = (
    "I will provide you with a query followed by multiple candidates in the format: (1) cand1 (2) cand2, "
    "etc. Each candidate is independent of the others. Evaluate each candidate against the query, and "
    "respond with the number corresponding to the candidate that best meets the requirements of the query."
)

# ----------------------------------------------------------------------------------------------------------
# Restatement of the release's prompt pipeline
# ----------------------------------------------------------------------------------------------------------


def lamra_format(s: str | None) -> str:
    """LamRA's cleaning: strip, no carriage returns, no surrounding double quotes, first letter upper case,
    a final period unless the text already ends a sentence."""
    s = (s or "").replace("\r", "").strip().strip('"')
    if not s:
        return s
    s = s[:1].upper() + s[1:]
    return s if s[-1] in (".", "?", "!") else s + "."


def lamra_message(sample: Sample) -> list[dict]:
    """LamRA's rerank message content for a sample: header, 'Query:', the query image and the instruction +
    query text, 'Candidates:', then '(i) ', image and text per candidate (an empty text with an image is
    left out, an empty text without one stays as an empty text item)."""
    content: list[dict] = [{"type": "text", "text": LAMRA_HEADER}, {"type": "text", "text": "Query:"}]
    q_text = lamra_format(f"{lamra_format(sample.query.instruction)} {sample.query.text or ''}")
    q_img = sample.query.images[-1] if sample.query.images else None
    if q_img:
        content.append({"type": "image", "image": q_img})
    if not q_img or q_text:
        content.append({"type": "text", "text": q_text})
    content.append({"type": "text", "text": "Candidates:"})
    for i, c in enumerate(sample.candidates, 1):
        content.append({"type": "text", "text": f"({i}) "})
        text = lamra_format(c.text)
        if c.image:
            content.append({"type": "image", "image": c.image})
        if not c.image or text:
            content.append({"type": "text", "text": text})
    return content


def release_user_text(content: list[dict], guideline: str = RELEASE_GUIDELINE) -> tuple[str, list[str]]:
    """The release's data builder over a LamRA message: its section rules, '<image>' per image, then a blank
    line and the guidelines. Also returns the images in placeholder order."""
    out, images, section, numbered = "", [], None, False
    for item in content:
        if item["type"] == "image":
            out += "<image>"
            images.append(item["image"])
            continue
        text = item["text"]
        if not text:
            continue
        if "Query:" in text:
            section = "query"
            out += text
        elif "Candidates:" in text:
            section = "candidates"
            out += text
        elif text.startswith("(") and ")" in text[:5]:
            out += text
            numbered = True
        elif section == "query" or (section == "candidates" and text.strip() and numbered):
            out += text
    return out + "\n\n" + guideline, images


def verl_parts(text: str) -> list[dict]:
    """verl's RLHFDataset: a message text split at its <image> markers, empty pieces dropped."""
    return [
        {"type": "image"} if seg == "<image>" else {"type": "text", "text": seg}
        for seg in re.split("(<image>)", text)
        if seg != ""
    ]


def verl_prompt(processor, system: str, user: str) -> str:
    messages = [
        {"role": "system", "content": verl_parts(system)},
        {"role": "user", "content": verl_parts(user)},
    ]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def release_turn(processor, response: str, observation: str, valid: bool) -> str:
    """What the release's agent loop appends after an action turn: the response cut after its first
    </tool_call>, the turn-end token, then the observation rendered as a one-message chat (system role,
    generation prompt) whose first 'system' becomes 'user', after a newline."""
    cut = response.split("</tool_call>")[0] + "</tool_call>"
    obs = observation if valid else INVALID_PREFIX + observation
    content = [
        {"type": "image"} if seg == "<image>" else {"type": "text", "text": seg}
        for seg in re.split("(<image>|<video>)", obs)
    ]
    rendered = processor.apply_chat_template(
        [{"role": "system", "content": content}], add_generation_prompt=True, tokenize=False
    )
    return cut + "<|im_end|>" + "\n" + rendered.replace("system", "user", 1)


NO_IMAGES = "No images available. Please ensure query_image or candidate_images are provided in extra_field."
NO_QUERY = (
    "Query image does not exist. Please do not choose query image again and analyze based on query text."
)
NO_CANDIDATES = "Candidate images do not exist. Please do not choose candidate images again and analyze based on candidates' text."


def out_of_range(n: int) -> str:
    return (
        "Invalid target_images indices. Each index should be an integer equal to 0 for the query image or "
        f"between 1 and the number of candidate images ({n}) for candidate images."
    )


def release_server(
    body: str | None, has_query: bool, n: int, sizes: list[tuple[int, int]]
) -> tuple[str, bool]:
    """(observation, valid) of the release's tool server for the text between <tool_call> and </tool_call>
    (None: no opening tag), with a query image or not and n candidate images; ``sizes`` are the sizes of the
    images a valid call returns."""
    try:
        call = json.loads(body)
        name = call.get("name", "")
        if name not in ["zoom_in", "crop_image_normalized", "select_frames", "crop_image", "select_images"]:
            return "", False
    except Exception:
        return "", False
    if "arguments" not in call:
        return "Missing 'arguments' in the tool call.", False
    args = call["arguments"]
    if not isinstance(args, dict):
        return f"'arguments' should be a dictionary of parameters key-value pairs, got {type(args)}.", False
    if name == "select_images":
        if "target_images" not in args:
            return "Missing parameters: target_images", False
        targets = args["target_images"]
        if not isinstance(targets, list):
            return "Invalid target_images format. It should be a list of integers.", False
        if not has_query and n == 0:
            return NO_IMAGES, False
        problems = []
        for i in targets:
            if not isinstance(i, int):
                problems.append(f"Index {i} is not an integer")
            elif i == 0 and not has_query:
                problems.append(f"Index {i}: {NO_QUERY}")
            elif i != 0 and n == 0:
                problems.append(f"Index {i}: {NO_CANDIDATES}")
            elif i != 0 and not 1 <= i <= n:
                problems.append(f"Index {i}: {out_of_range(n)}")
        if problems:
            return "Invalid indices found: " + "; ".join(problems), False
        if not targets:
            return "Error processing images: list index out of range", False
        w, h = sizes[0]
        head = "Here are the selected images for detailed analysis. "
        return head + f"(Image Size: {w}x{h}, Numbered 1 to {len(targets)}):" + "<image>" * len(targets), True
    missing = [p for p in ("bbox_2d", "target_image") if p not in args]
    target = args.get("target_image")
    with contextlib.suppress(Exception):  # the server's int() of the index, failures ignored
        target = int(target)
    if missing:
        return "Missing parameters: " + ", ".join(missing), False
    if not isinstance(args["bbox_2d"], list) or len(args["bbox_2d"]) != 4:
        return "Invalid bbox_2d format. It should be a list of four numbers.", False
    if not has_query and n == 0:
        return NO_IMAGES, False
    if not isinstance(target, int):
        return "Invalid target_image format. It should be an integer.", False
    if target == 0 and not has_query:
        return NO_QUERY, False
    if target != 0 and n == 0:
        return NO_CANDIDATES, False
    if target != 0 and not 1 <= target <= n:
        return out_of_range(n), False
    w, h = sizes[0]
    return f"Here is the cropped image. (Image Size: {w}x{h})\n<image>", True


def tool_call_body(text: str) -> str | None:
    """The release's reading of a response: the text between the first <tool_call> and the next </tool_call>."""
    if "<tool_call>" not in text:
        return None
    return text.split("<tool_call>")[1].split("</tool_call>")[0]


# ----------------------------------------------------------------------------------------------------------
# Random samples and turns
# ----------------------------------------------------------------------------------------------------------

WORDS = [
    "dog",
    "a",
    "red",
    "car",
    "Street",
    "the",
    "of",
    "two",
    "(b)",
    "x:",
    "é",
    "{{",
    "{%",
    "100%",
    "Query:",
]
INSTRUCTIONS = [
    "retrieve an image that matches the caption",
    "Find a Wikipedia paragraph that answers the question",
    '"identify the product shown."',
    None,
]


def random_text(rng: random.Random) -> str:
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 8)))
    r = rng.random()
    if r < 0.15:
        text = f'"{text}"'
    elif r < 0.25:
        text = f"  {text}\r\n "
    elif r < 0.35:
        text += rng.choice(["?", "!", ".", '"'])
    return text


def random_sample(rng: random.Random, i: int, photos: list[str]) -> Sample:
    q_image = rng.random() < 0.6
    q_text = random_text(rng) if (rng.random() < 0.8 or not q_image) else None
    style = rng.choice(["image", "text", "both", "mixed", "mixed"])
    cands = []
    for k in range(rng.randint(1, 20)):
        has_image = {"image": True, "text": False, "both": True}.get(style, rng.random() < 0.6)
        has_text = style in ("text", "both") or (style == "mixed" and (rng.random() < 0.6 or not has_image))
        text = random_text(rng) if has_text else None
        if has_text and rng.random() < 0.05:
            text = '""'  # cleaned away: the candidate shows no text
        cands.append(Candidate(f"c{k}", text, rng.choice(photos) if has_image else None))
    query = Query(
        text=q_text, images=[rng.choice(photos)] if q_image else [], instruction=rng.choice(INSTRUCTIONS)
    )
    return Sample(f"s{i}", query, cands)


def tool_text(think: str, body: str) -> str:
    return f"<think>{think}</think>\n<tool_call>\n{body}\n</tool_call>"


def random_action(rng: random.Random, has_query: bool, n: int) -> tuple[str, str]:
    """An assistant turn holding a tool call, and its kind."""
    existing = ([0] if has_query else []) + list(range(1, n + 1))
    kinds = ["select_range", "crop_missing", "crop_badbox", "args_str", "no_args", "unknown", "bad_json"]
    kinds += ["fenced", "select_empty", "select_not_list", "crop_notint", "no_open", "select_notint"]
    if existing:
        kinds += ["crop_ok"] * 4 + ["select_ok"] * 4 + ["crop_strindex", "alias", "answer_then_call"]
    kind = rng.choice(kinds)
    box = sorted(rng.sample(range(5, 95), 2))
    box2 = sorted(rng.sample(range(5, 95), 2))
    bbox = [box[0] / 100, box2[0] / 100, box[1] / 100, box2[1] / 100]

    def call(name, args, key="arguments"):
        return json.dumps({"name": name, key: args})

    target = rng.choice(existing) if existing else 1
    body = {
        "crop_ok": lambda: call("crop_image", {"bbox_2d": bbox, "target_image": target}),
        "alias": lambda: call("zoom_in", {"bbox_2d": bbox, "target_image": target}),
        "crop_strindex": lambda: call("crop_image", {"bbox_2d": bbox, "target_image": str(target)}),
        "select_ok": lambda: call(
            "select_images", {"target_images": [rng.choice(existing) for _ in range(rng.randint(1, 5))]}
        ),
        "select_range": lambda: call("select_images", {"target_images": [rng.choice([-1, n + 1, n + 3]), 0]}),
        "select_notint": lambda: call("select_images", {"target_images": [1.5, "2"]}),
        "select_empty": lambda: call("select_images", {"target_images": []}),
        "select_not_list": lambda: call("select_images", {"target_images": 3}),
        "crop_missing": lambda: call("crop_image", rng.choice([{}, {"bbox_2d": bbox}])),
        "crop_badbox": lambda: call("crop_image", {"bbox_2d": bbox[:3], "target_image": 0}),
        "crop_notint": lambda: call("crop_image", {"bbox_2d": bbox, "target_image": "first"}),
        "args_str": lambda: call("crop_image", json.dumps({"bbox_2d": bbox, "target_image": 0})),
        "no_args": lambda: call("select_images", {"target_images": [1]}, key="parameters"),
        "unknown": lambda: call("zoom", {"target_images": [1]}),
        "bad_json": lambda: '{"name": "crop_image", "arguments": {"bbox_2d": [1, 2, 3, 4]',
        "fenced": lambda: "```json\n" + call("select_images", {"target_images": [1]}) + "\n```",
        "no_open": lambda: call("select_images", {"target_images": [1]}),
        "answer_then_call": lambda: call("select_images", {"target_images": [target]}),
    }[kind]()
    think = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6)))
    if kind == "no_open":
        return f"<think>{think}</think>\n{body}\n</tool_call>", kind
    if kind == "answer_then_call":
        return f"<think>{think}</think><answer>[1]</answer>\n<tool_call>\n{body}\n</tool_call>", kind
    return tool_text(think, body), kind


def expected_images(text: str, slots: list[str | None], cfg: ToolConfig) -> list:
    """The images a valid call returns, made from the image the release's index names (compact indexing:
    index k is the k-th candidate image)."""
    args = json.loads(tool_call_body(text))
    name, a = args["name"], args["arguments"]
    if name == "select_images":
        return [select_images({"target_images": [0]}, [slots[i]], cfg).images[0] for i in a["target_images"]]
    from vretrver.images import load_image
    from vretrver.tools import resize_for_model

    img = load_image(slots[int(a["target_image"])])
    return [resize_for_model(img.crop(_release_crop_box(a["bbox_2d"], *img.size)), cfg)]


# ----------------------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_photos(tmp_path_factory) -> list[str]:
    """Small images of different sizes and modes (the layout is the point here, not the pixels)."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    out = []
    for i, (size, mode) in enumerate(
        [((120, 90), "RGB"), ((64, 200), "L"), ((300, 170), "RGBA"), ((97, 97), "RGB")]
    ):
        path = folder / f"p{i}.png"
        Image.open(ASTRONAUT).convert(mode).resize(size).save(path)
        out.append(str(path))
    return out


@pytest.fixture(scope="module")
def proc25(tiny_qwen25vl):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_qwen25vl)


# ----------------------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------------------


def test_system_prompt_and_tool_schemas_are_the_release_bytes():
    profile = load_profile("official")
    for coordinates in ("qwen2.5-vl", "qwen3-vl"):  # the release's schema text has no coordinate hint
        assert system_prompt(profile, coordinates) == RELEASE_SYSTEM
    assert profile.tools == ["crop_image", "select_images"]  # the release's order
    # tools.json holds the schemas as valid JSON; the system prompt prints the crop line a brace short
    lines = RELEASE_SYSTEM.split("<tools>\n")[1].split("</tools>")[0].splitlines()
    schemas = profile.tool_schemas()
    assert json.dumps(schemas[0], ensure_ascii=False)[:-1] == lines[0]
    assert json.dumps(schemas[1], ensure_ascii=False) == lines[1]
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[0])
    assert profile.stop == ["</tool_call>"] and profile.max_tool_calls == 2  # action stop, max_turns=2

    for name, ((n_sys, sha_sys), (n_gl, sha_gl)) in RELEASE_VARIANTS.items():
        variant = load_profile(name)
        text = system_prompt(variant)
        assert (len(text), hashlib.sha256(text.encode()).hexdigest()) == (n_sys, sha_sys), name
        user = build_conversation(Sample("s", Query(text="x"), [Candidate("a", "y")]), variant).messages[1]
        user_text = "".join(p.get("text", "<image>") for p in user["content"])
        guideline = user_text.split("\n\n", 1)[1]
        assert (len(guideline), hashlib.sha256(guideline.encode()).hexdigest()) == (n_gl, sha_gl), name
        # the variants inherit everything else from `official`
        assert variant.settings["tool_dialect"] == "official" and variant.official_release
        assert variant.templates["observation"].filename.endswith("official/observation.jinja")


def test_lamra_cleaning_quirks_are_kept():
    sample = Sample(
        "s",
        Query(text='the dog "rex"', images=[], instruction="  find the caption\r"),
        [
            Candidate("a", '"quoted text"', ASTRONAUT),
            Candidate("b", "what is it?"),
            Candidate("c", '""', CHELSEA),
        ],
    )
    conv = build_conversation(sample, "official")
    text = "".join(p.get("text", "<image>") for p in conv.messages[1]["content"])
    # instruction cleaned, then cleaned again with the query text; the closing quote is stripped away
    assert text.startswith(
        'Query:Find the caption. the dog "rex.Candidates:(1) <image>Quoted text.(2) What is it?'
    )
    assert "(3) <image>\n\nGuidelines:" in text  # a text cleaned to nothing is left out
    assert text == release_user_text(lamra_message(sample))[0]


def test_random_conversations_render_byte_equal_to_the_release(proc25, small_photos):
    """200 random samples (text / image / mixed queries and candidates, 1-20 candidates) with up to three
    tool turns of every kind: after each turn, the prompt evaluation sends equals the release's."""
    rng = random.Random(20260211)
    cfg = ToolConfig.from_processor(proc25)
    kinds_seen: set[str] = set()
    n_obs = 0
    for i in range(200):
        sample = random_sample(rng, i, small_photos)
        content = lamra_message(sample)
        user, user_images = release_user_text(content)
        expected = verl_prompt(proc25, RELEASE_SYSTEM, user)
        ep = Episode(sample, "official", cfg)
        assert chat_prompt(proc25, ep.conversation) == expected, sample.id
        assert ep.conversation.images == user_images
        # the server's image lists: the query image, and the candidates' images in order
        slots = ([sample.query.images[-1]] if sample.query.images else [None]) + [
            c.image for c in sample.candidates if c.image
        ]
        has_query, n = slots[0] is not None, len(slots) - 1
        for turn in range(rng.randint(0, 3)):
            text, kind = random_action(rng, has_query, n)
            kinds_seen.add(kind)
            step = ep.step(text)
            if turn == 2:  # a third call is beyond the release's two turns: the trajectory ends unanswered
                assert step.kind == "ended" and ep.answer is None
                break
            body = tool_call_body(text)
            valid_shape, _ = release_server(body, has_query, n, [(1, 1)])
            images = expected_images(text, slots, cfg) if _is_valid(valid_shape) else []
            obs, valid = release_server(body, has_query, n, [im.size for im in images])
            assert step.kind == "observation", (sample.id, kind)
            assert [im.tobytes() for im in step.images] == [im.tobytes() for im in images], (sample.id, kind)
            expected += release_turn(proc25, text, obs, valid)
            assert chat_prompt(proc25, ep.conversation) == expected, (sample.id, kind)
            n_obs += 1
            assert len(conversation_images(ep.conversation)) == len(ep.conversation.images)
        if not ep.done:
            assert ep.step("<think>done</think>\n<answer>[1]</answer>").kind == "answer"
    assert n_obs > 150
    assert kinds_seen >= {"crop_ok", "select_ok", "bad_json", "no_open", "answer_then_call", "select_range"}


def _is_valid(observation: str) -> bool:
    return observation.startswith("Here ")


def test_opening_prompt_through_the_qwen3_vl_template(tiny_qwen3vl, small_photos):
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(tiny_qwen3vl)
    rng = random.Random(7)
    for i in range(40):
        sample = random_sample(rng, i, small_photos)
        user, _ = release_user_text(lamra_message(sample))
        conv = build_conversation(sample, "official", "qwen3-vl")
        assert chat_prompt(proc, conv) == verl_prompt(proc, RELEASE_SYSTEM, user)


# ---------------------------------------------------------------------------------- parquet prompts


def regenerate_window(original: str, texts: list[str], images: list[str], window_size: int = 20) -> str:
    """The release's sliding-window driver (regenerate_window_prompt_from_hits), restated: the block from
    'Candidates:' to 'Guidelines:' becomes window_size parts '(i) ' + '<image>' if the window has any image
    + the i-th non-empty text."""
    m = re.search(r"(Candidates:.*?)Guidelines:", original, re.DOTALL)
    parts = []
    for i in range(window_size):
        text = texts[i] if texts and i < len(texts) else ""
        parts.append(f"({i + 1}) <image>{text}" if images else f"({i + 1}) {text}")
    return original.replace(m.group(1), "Candidates:" + "".join(parts) + "\n\n")


def hit_texts(candidates: list[Candidate]) -> list[str]:
    """The texts of a window's parquet hits (non-empty only): written as LamRA's evaluation data writes them."""
    return [t for t in (lamra_format(c.text) for c in candidates) if t]


def _parquet_case(rng: random.Random, styles: str) -> tuple[Sample, Sample, list[Candidate]]:
    """A 50-candidate query whose parquet prompt is the release's, and its window 30-49."""
    cands = []
    for k in range(50):
        style = styles if styles != "mixed" else rng.choice(["image", "text", "both"])
        text = f"candidate text {k}" if style in ("text", "both") else None
        cands.append(Candidate(f"d{k}", text, PHOTOS[k % 5] if style in ("image", "both") else None))
    full = Sample("q", Query(text="a red car", images=[ROCKET], instruction="find the image"), cands)
    user, _ = release_user_text(lamra_message(full))
    meta = {
        "parquet_prompt": [{"role": "system", "content": RELEASE_SYSTEM}, {"role": "user", "content": user}]
    }
    window = cands[30:50]
    return full, Sample("q", full.query, window, meta=dict(meta, window_start=30)), window


@pytest.mark.parametrize("style", ["both", "image", "text"])
def test_parquet_prompt_window_is_rebuilt_as_the_release_does(style, proc25):
    full, sample, window = _parquet_case(random.Random(1), style)
    conv = build_conversation(sample, "official")
    user = sample.meta["parquet_prompt"][1]["content"]
    expected = regenerate_window(user, hit_texts(window), [c.image for c in window if c.image])
    assert conv.messages[0]["content"] == RELEASE_SYSTEM
    assert "".join(p.get("text", "<image>") for p in conv.messages[1]["content"]) == expected
    assert conv.images == [ROCKET] + [c.image for c in window if c.image]
    assert chat_prompt(proc25, conv) == verl_prompt(proc25, RELEASE_SYSTEM, expected)
    # the parquet's text is used as it is (here LamRA-cleaned, with the instruction), not re-rendered
    assert "Query:<image>Find the image. a red car.Candidates:(1) " in expected
    # and the episode's tools index the window's images like the release's server
    cfg = ToolConfig.from_processor(proc25)
    ep = Episode(sample, "official", cfg)
    call = _call("select_images", {"target_images": [0, 2]})
    step = ep.step(call)
    slots = [ROCKET] + [c.image for c in window if c.image]
    if len(slots) > 2:
        assert [im.tobytes() for im in step.images] == [
            im.tobytes() for im in expected_images(call, slots, cfg)
        ]
    else:
        assert step.images == [] and ep.turns[-1].text.endswith(NO_CANDIDATES)


def test_parquet_prompt_mixed_window_aligned_and_upstream(tmp_path):
    full, sample, window = _parquet_case(random.Random(3), "mixed")
    assert {bool(c.image) for c in window} == {True, False} and {bool(c.text) for c in window} == {
        True,
        False,
    }
    user = sample.meta["parquet_prompt"][1]["content"]

    # aligned (default): each number next to its own image and text, as the training prompts
    conv = build_conversation(sample, "official")
    text = "".join(p.get("text", "<image>") for p in conv.messages[1]["content"])
    block = "".join(
        f"({i}) " + ("<image>" if c.image else "") + lamra_format(c.text) for i, c in enumerate(window, 1)
    )
    assert text == user.replace(
        re.search(r"(Candidates:.*?)Guidelines:", user, re.S).group(1), "Candidates:" + block + "\n\n"
    )
    assert conv.images == [ROCKET] + [c.image for c in window if c.image]

    # upstream, selectable: the release's own rule, byte for byte, which here misplaces images (and says so)
    (tmp_path / "up").mkdir()
    (tmp_path / "up" / "profile.json").write_text(
        json.dumps({"extends": "official", "parquet_prompt": "upstream"})
    )
    expected = regenerate_window(user, hit_texts(window), [c.image for c in window if c.image])
    assert parquet_window_prompt(user, window, "upstream") == expected
    with pytest.raises(ProfileError, match="placeholders for .* images"):
        build_conversation(sample, str(tmp_path / "up"))
    # with text-only candidates upstream renders (numbers and texts drift apart where texts are missing)
    texts_only = [Candidate(f"t{k}", f"text {k}" if k % 3 else None, None) for k in range(1, 21)]
    texts_only = [c if c.text else Candidate(c.id, None, None) for c in texts_only]
    s2 = Sample(
        "q", full.query, [c for c in texts_only if c.text] + [Candidate("x", "last", None)], meta=sample.meta
    )
    conv = build_conversation(s2, str(tmp_path / "up"))
    up = "".join(p.get("text", "<image>") for p in conv.messages[1]["content"])
    assert up == regenerate_window(user, hit_texts(s2.candidates), [])
    assert "(20) \n\nGuidelines:" in up  # 20 slots whatever the window holds

    with pytest.raises(ProfileError, match="no 'Candidates: ... Guidelines:' block"):
        parquet_window_prompt("Query: no block", window)
    bad = Sample(
        "q", Query(text="x"), window, meta=sample.meta
    )  # the prompt has a query image, the sample not
    with pytest.raises(ProfileError, match="query part has 1 <image>"):
        build_conversation(bad, "official")
    # our own profile ignores the parquet prompt, and so do the release's other prompt variants (the
    # parquet holds the default pair)
    ours = build_conversation(sample, "v-retrver")
    assert ours.messages[0]["content"] != RELEASE_SYSTEM
    variant = build_conversation(sample, "official-original-01")
    assert variant.messages[0]["content"] == system_prompt(load_profile("official-original-01"))
    assert variant.messages[1]["content"][-1]["text"].endswith("<answer>1</answer>).\n")


# ---------------------------------------------------------------------------------- RL parquet rows


def test_rl_rows_hold_the_release_prompt(small_photos):
    from vretrver.integrations.verl.dataset import RLDataConfig, sample_to_row, validate_rl_row

    rng = random.Random(11)
    for i in range(30):
        sample = random_sample(rng, i, small_photos)
        sample.positives = [sample.candidates[0].id]
        row = sample_to_row(sample, i, RLDataConfig(profile="official", image_mode="path"))
        user, images = release_user_text(lamra_message(sample))
        assert row["prompt"] == [
            {"role": "system", "content": RELEASE_SYSTEM},
            {"role": "user", "content": user},
        ]
        assert [im["image"] for im in row["images"]] == [str(Path(p).resolve()) for p in images]
        # tool index -> prompt image: 0 the query image, k the k-th candidate image
        image_map = row["extra_info"]["vretrver"]["image_map"]
        n_cand_images = sum(1 for c in sample.candidates if c.image)
        q = 0 if sample.query.images else -1
        assert image_map == [q] + [len(sample.query.images) + j for j in range(n_cand_images)]
        validate_rl_row(row, f"row {i}")


def test_rl_data_build_command_takes_the_official_profile(tmp_path, small_photos, capsys):
    from vretrver.cli import main
    from vretrver.integrations.verl.dataset import read_rl_rows
    from vretrver.samples import write_samples

    rng = random.Random(5)
    samples = [random_sample(rng, i, small_photos) for i in range(4)]
    for s in samples:
        s.positives = [s.candidates[-1].id]
    write_samples(tmp_path / "s.jsonl", samples)
    out = tmp_path / "rl.parquet"
    assert (
        main(["rl", "data", "build", str(tmp_path / "s.jsonl"), "--out", str(out), "--profile", "official"])
        == 0
    )
    rows = read_rl_rows(out)
    assert [r["prompt"][0]["content"] for r in rows] == [RELEASE_SYSTEM] * 4
    assert [r["prompt"][1]["content"] for r in rows] == [
        release_user_text(lamra_message(s))[0] for s in samples
    ]
    assert main(["rl", "data", "validate", str(out)]) == 0


# ---------------------------------------------------------------------------------- tool dialect details


def _episode_obs(sample: Sample, *turns: str) -> list[str]:
    ep = Episode(sample, "official")
    for t in turns:
        ep.step(t)
    return [t.text for t in ep.turns if t.role == "tool"]


def _call(name: str, args) -> str:
    return tool_text("t", json.dumps({"name": name, "arguments": args}))


def test_official_tool_semantics_follow_the_server():
    sample = Sample(
        "s", Query(text="q", images=[ROCKET]), [Candidate("a", image=CHELSEA), Candidate("b", "text")]
    )
    # any number of images, repeats kept (the schema says exactly one; the server executes what it gets)
    obs = _episode_obs(sample, _call("select_images", {"target_images": [1, 1, 0, 1, 1, 0]}))
    assert obs[0].endswith("Numbered 1 to 6):" + "<image>" * 6)
    # index 0 is the query image (the schema says 1 is "the original image"); int("1") is accepted
    obs = _episode_obs(sample, _call("crop_image", {"bbox_2d": [0, 0, 0.5, 0.5], "target_image": "0"}))
    assert obs[0].startswith("Here is the cropped image. (Image Size: ")
    # compact numbering: candidate b has no image, so there is one candidate image
    obs = _episode_obs(sample, _call("crop_image", {"bbox_2d": [0, 0, 1, 1], "target_image": 2}))
    assert obs == [INVALID_PREFIX + out_of_range(1)]
    # a failed crop keeps the server's prefix; the reason is ours
    obs = _episode_obs(sample, _call("crop_image", {"bbox_2d": [0.5, 0.5, 0.1, 0.1], "target_image": 0}))
    assert obs[0].startswith(INVALID_PREFIX + "Error processing image: ")
    # no query image and no candidate image at all
    text_only = Sample("t", Query(text="q"), [Candidate("a", "x")])
    assert _episode_obs(text_only, _call("select_images", {"target_images": [0]})) == [
        INVALID_PREFIX + NO_IMAGES
    ]
    # the closing-tag rule: an answer holding no </tool_call> ends the episode; a call without it too
    ep = Episode(sample, "official")
    assert (
        ep.step(
            '<think>t</think><tool_call>{"name": "select_images", "arguments": {"target_images": [1]}}'
        ).kind
        == "ended"
    )
    assert ep.answer is None and ep.end_reason.startswith("malformed turn")

    # our own profile keeps its own texts, candidate numbering and cap of four distinct images
    ep = Episode(sample, "v-retrver")
    ep.step(_call("select_images", {"target_images": [0, 1, 1, 0, 2]}))
    assert ep.turns[-1].text == "<tool_response>\nError: candidate 2 has no image\n</tool_response>"
    ep.step(_call("select_images", {"target_images": [0, 1, 2, 3, 4]}))
    assert (
        ep.turns[-1].text
        == "<tool_response>\nError: at most 4 images can be selected, got 5\n</tool_response>"
    )


def _release_crop_box(box, w, h):
    """The release server's crop() box arithmetic, restated: padding as a fraction of the file's size
    (10 %, at most 600 px), pixel boxes divided by the file's size unless all four values are <= 1,
    each side clamped to [0, 1], then truncated to pixels."""
    pad = (min(0.1, 600.0 / w), min(0.1, 600.0 / h))
    if box[0] <= 1 and box[1] <= 1 and box[2] <= 1 and box[3] <= 1:
        n = (box[0] - pad[0], box[1] - pad[1], box[2] + pad[0], box[3] + pad[1])
    else:
        n = (box[0] / w - pad[0], box[1] / h - pad[1], box[2] / w + pad[0], box[3] / h + pad[1])
    n = [min(max(0, v), 1) for v in n]
    return (int(n[0] * w), int(n[1] * h), int(n[2] * w), int(n[3] * h))


def test_official_crop_geometry_is_the_servers():
    from PIL import Image

    from vretrver.tools import official_crop_region

    rng = random.Random(5)
    for _ in range(2000):
        w, h = rng.choice([(256, 341), (640, 480), (7000, 300), (37, 4000)])
        kind = rng.random()
        if kind < 0.3:  # normalised
            box = sorted(rng.uniform(0, 1) for _ in range(2))
            boy = sorted(rng.uniform(0, 1) for _ in range(2))
            box = [box[0], boy[0], box[1], boy[1]]
        else:  # pixels, sometimes past the edge or negative (clamped by the server, not rejected)
            box = [rng.uniform(-50, w * 1.3), rng.uniform(-50, h * 1.3)]
            box += [box[0] + rng.uniform(-20, w), box[1] + rng.uniform(-20, h)]
        want = _release_crop_box(box, w, h)
        got = official_crop_region(box, w, h)
        if want[2] <= want[0] or want[3] <= want[1]:
            assert isinstance(got, str), (box, w, h)
        else:
            assert got == want, (box, w, h)
    # Through the official tool: the region is cut from the image file as stored (not the resized view).
    img = Image.new("RGB", (640, 480), "white")
    sample_images = [img, img]
    from vretrver.protocol.parser import ToolCall
    from vretrver.tools import image_table, run_tool

    call = ToolCall("crop_image", {"bbox_2d": [600, 400, 900, 900], "target_image": 0}, "")
    res = run_tool(call, image_table(sample_images), ToolConfig(dialect="official"))
    assert res.valid and res.box == _release_crop_box([600, 400, 900, 900], 640, 480) == (536, 352, 640, 480)
    # ours rejects a box that far outside the image
    assert not run_tool(call, image_table(sample_images), ToolConfig()).valid


# ---------------------------------------------------------------------------------- SFT export


def test_llamafactory_export_renders_the_release_conversation(tmp_path, tiny_qwen25vl, proc25):
    from vretrver.integrations.llamafactory import ExportConfig, export_llamafactory, render_with_llamafactory
    from vretrver.sft import ScriptedEngine, SynthesisConfig, read_records, script_from_table, synthesize

    cfg = ToolConfig.from_processor(proc25)
    sample = Sample(
        "rocketq",
        Query(text="a rocket on the pad", images=[ROCKET], instruction="retrieve the matching image"),
        [Candidate("c1", "a cat", CHELSEA), Candidate("c2", "words only"), Candidate("c3", image=ASTRONAUT)],
        positives=["c3"],
    )
    turns = [
        _call("select_images", {"target_images": [2, 2]}),
        _call("crop_image", {"bbox_2d": [0.2, 0.2, 0.7, 0.7], "target_image": 2}),
        "<think>3 matches.</think>\n<answer>[3, 1, 2]</answer>",
    ]
    engine = ScriptedEngine(script_from_table({"rocket on the pad": [turns]}), cfg)
    run = tmp_path / "run"
    synthesize(
        [sample],
        engine,
        run,
        SynthesisConfig(profile="official", attempts=1, temperature=0.0),
        progress=False,
    )
    record = read_records(run / "trajectories.jsonl")[0]
    assert record["kept"], record["reasons"]
    data = tmp_path / "data"
    report = export_llamafactory(
        run, data, ExportConfig(name="off", model=str(tiny_qwen25vl)), progress=False
    )
    assert report["rows"] == 1, report
    rows, tok = render_with_llamafactory(data, "off", tiny_qwen25vl, work_dir=tmp_path / "lf")

    user, _ = release_user_text(lamra_message(sample))
    expected = verl_prompt(proc25, RELEASE_SYSTEM, user)
    slots = [ROCKET, CHELSEA, ASTRONAUT]
    for t in turns[:2]:
        images = expected_images(t, slots, cfg)
        obs, valid = release_server(tool_call_body(t), True, 2, [im.size for im in images])
        assert valid
        expected += release_turn(proc25, t, obs, valid)
    expected += turns[2] + "<|im_end|>\n"
    pad = tok.convert_tokens_to_ids("<|image_pad|>")
    ids = [
        t for j, t in enumerate(rows[0]["input_ids"]) if not (t == pad and rows[0]["input_ids"][j - 1] == pad)
    ]
    assert tok.decode(ids, skip_special_tokens=False) == expected


# ---------------------------------------------------------------------------------- verl agent loop


@pytest.fixture(scope="module")
def event_loop_for_verl():
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # verl binds this loop at construction
    yield loop
    loop.close()
    asyncio.set_event_loop(None)


def test_verl_rollout_renders_the_release_conversation(
    tiny_qwen25vl, sample_photos, tmp_path, event_loop_for_verl, proc25
):
    from verl.utils.dataset.rl_dataset import RLHFDataset
    from verl_rig import Rig

    from vretrver.integrations.verl.dataset import RLDataConfig, write_rl_parquet

    rig = Rig("qwen2_5_vl", tiny_qwen25vl, sample_photos, tmp_path, event_loop_for_verl)
    rig.parquet = tmp_path / "official.parquet"
    write_rl_parquet(
        rig.parquet,
        [rig.sample],
        RLDataConfig(profile="official", coordinates=rig.coordinates),
        progress=False,
    )
    rig.dataset = RLHFDataset(str(rig.parquet), rig.tok, rig.cfg.data, processor=rig.proc)

    crop = _call("crop_image", {"bbox_2d": [0.1, 0.1, 0.6, 0.6], "target_image": 0})
    select = _call("select_images", {"target_images": [3, 1, 3]})
    bad = _call("select_images", {"target_images": [0, 4]})  # candidate c3 has no image: 3 candidate images
    unreadable = "<think>t</think>\n<tool_call>\n{oops}\n</tool_call>"
    answer = "<think>2 matches best.</think><answer>[2, 1, 4, 3]</answer><|im_end|>"
    scripts = [[crop, select, answer], [bad, unreadable, answer]]
    out, server = rig.run(scripts)

    cfg = ToolConfig.from_processor(rig.proc)
    s = rig.sample
    slots = [s.query.images[-1]] + [c.image for c in s.candidates if c.image]
    user, _ = release_user_text(lamra_message(s))
    expected_by_first = {}
    for script in scripts:
        text = verl_prompt(proc25, RELEASE_SYSTEM, user)
        for t in script[:2]:
            body = tool_call_body(t)
            shape, _ = release_server(body, True, 3, [(1, 1)])
            images = expected_images(t, slots, cfg) if _is_valid(shape) else []
            obs, valid = release_server(body, True, 3, [im.size for im in images])
            text += release_turn(proc25, t, obs, valid)
        expected_by_first[script[0]] = _collapse_pads(text + answer)
    P = out.batch["prompts"].shape[1]
    for i in range(len(scripts)):
        rec = out.non_tensor_batch["vretrver_rollout"][i]
        valid_tokens = out.batch["attention_mask"][i].bool()
        decoded = _collapse_pads(rig.tok.decode(out.batch["input_ids"][i][valid_tokens].tolist()))
        assert decoded == expected_by_first[rec["turns"][0]]
        assert rec["end_reason"] == "answer" and P > 0
    counts = sorted(
        (r["n_valid_calls"], r["n_invalid_calls"]) for r in out.non_tensor_batch["vretrver_rollout"]
    )
    assert counts == [(0, 2), (2, 0)]


def _collapse_pads(text: str) -> str:
    return re.sub(r"(<\|image_pad\|>)+", "<|image_pad|>", text)


# ---------------------------------------------------------------------------------- which profile for which checkpoint


def test_released_checkpoints_are_recognised(tmp_path):
    assert is_release_checkpoint("V-Retrver/V-Retrver-7B")
    assert is_release_checkpoint("/ckpts/v-retrver-rft-7b/")
    assert is_release_checkpoint("V_Retrver_SFT")
    assert not is_release_checkpoint("Qwen/Qwen2.5-VL-7B-Instruct")
    assert not is_release_checkpoint("tiny") and not is_release_checkpoint(None)
    folder = tmp_path / "step_500"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_name_or_path": "V-Retrver/V-Retrver-RFT-7B"}))
    assert is_release_checkpoint(str(folder))
    (folder / "config.json").write_text(json.dumps({"_name_or_path": "Qwen/Qwen2.5-VL-7B-Instruct"}))
    assert not is_release_checkpoint(str(folder))

    warning = profile_mismatch_warning("V-Retrver/V-Retrver-7B", "v-retrver")
    assert warning and "\n" not in warning and "--profile official" in warning
    for ok in ("official", "official-original-01", "official-original-02"):
        assert profile_mismatch_warning("V-Retrver/V-Retrver-7B", ok) is None
    assert profile_mismatch_warning("Qwen/Qwen2.5-VL-7B-Instruct", "v-retrver") is None


def test_eval_warns_and_demo_picks_the_official_profile(monkeypatch, capsys):
    import vretrver.evaluate as evaluate_mod
    from vretrver.cli import main
    from vretrver.protocol.profile import checkpoint_profile

    class Stop(Exception):
        pass

    def fake_evaluate(cfg, out, progress=True):
        raise Stop(cfg.profile)

    monkeypatch.setattr(evaluate_mod, "evaluate", fake_evaluate)
    base = ["eval", "--benchmark", "tuxpaint", "--reranker", "V-Retrver/V-Retrver-7B", "--out", "x"]
    # No --profile: the profile the checkpoint was trained on, and so no warning.
    for profile, warned in (("v-retrver", True), ("official", False), (None, False)):
        with pytest.raises(Stop, match=profile or "official"):
            main(base + (["--profile", profile] if profile else []))
        err = capsys.readouterr().err
        assert ("released V-Retrver checkpoint" in err) == warned
        assert len([ln for ln in err.splitlines() if "V-Retrver" in ln]) == int(warned)
    assert checkpoint_profile("V-Retrver/V-Retrver-7B") == "official"
    assert checkpoint_profile("tiny") == "v-retrver"
    assert checkpoint_profile("V-Retrver/V-Retrver-7B", "v-retrver") == "v-retrver"


# ---------------------------------------------------------------------------------- profile loading


def test_profile_extends_and_settings_are_checked(tmp_path):
    child = tmp_path / "child"
    child.mkdir()
    (child / "profile.json").write_text(json.dumps({"extends": "official"}))
    (child / "guideline.jinja").write_text("Guidelines: be brief.\n")
    prof = load_profile(str(child))
    assert prof.name == "child" and prof.settings["tool_dialect"] == "official"  # a name is not inherited
    conv = build_conversation(Sample("s", Query(text="x"), [Candidate("a", "y")]), prof)
    assert conv.messages[1]["content"][-1]["text"].endswith("\n\nGuidelines: be brief.")
    assert system_prompt(prof) == RELEASE_SYSTEM

    (child / "profile.json").write_text(json.dumps({"extends": "official", "tool_dialect": "theirs"}))
    with pytest.raises(ProfileError, match="field 'tool_dialect': expected one of"):
        _fresh(child)
    loop = tmp_path / "loop"
    loop.mkdir()
    (loop / "profile.json").write_text(json.dumps({"extends": "."}))
    with pytest.raises(ProfileError, match="chain longer"):
        _fresh(loop)


def _fresh(folder: Path):
    from vretrver.protocol.profile import clear_profile_cache

    clear_profile_cache()  # profiles are cached by folder; these tests rewrite one
    return load_profile(str(folder))
