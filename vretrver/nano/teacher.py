"""A rule-based teacher for samples that say where their detail is (``meta["detail"]``, see :mod:`.data`).

It behaves like a reader who zooms into the candidates' details one after the other and judges each
crop against the query as it comes: every turn's reasoning is justified by what the crops so far have
shown, never by the answer key.

* turn j (j = 1 .. n, n = min(K, tool budget)): crop candidate j at the detail's box; the reasoning says
  what the query asks for ("Looking for red.") and, from the second turn on, names the previous crop and
  gives the verdict ("Candidate 1: orange. No."), then the first match so far ("Found 2."), if any;
* the final turn does the same for the last crop and answers: the match found, then the candidates after
  it, then those before it; with no match seen ("No match seen."), the candidates not seen come first.

Every step is local: the verdict compares the colour just named with the one restated a few tokens
before, "Found j" is copied from the verdict or from the turn before, the answer opens with it. By
default the teacher does not stop at the match: if every trajectory did, the turn at which a match is
seen would tell its position, and a small model learns that prior (stop at candidate 4) instead of the
comparison. ``stop_share`` of the samples (drawn from the sample's id) answer right after "Found j."
instead: SFT then leaves both endings possible after a match, and RL can prefer the shorter one, which
the EAPO reward's tool term pays for (0.1 less per valid call beyond the first). A teacher that lists
every mark and looks the match up in that list at the end asks for an induction-style look-up that the
nano model did not learn in our runs (see the README).

With a budget of at least K tool calls the positive always comes first. A sample without
``meta["detail"]`` gets the generic oracle's trajectory (:class:`~vretrver.engines.oracle.OracleEngine`),
whose matching, labelling and seeding this class inherits.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from PIL import Image

from vretrver.engines.oracle import OracleEngine
from vretrver.samples import Sample
from vretrver.tools import ToolConfig, smart_resize

# How a turn after a crop opens: the query restated, the crop named, the verdict (what plan_turns writes);
# the crop warm-up (vretrver.nano.warmup) trains on this opening alone.
OPENING = re.compile(r"^(<think>(?:Looking for [^.]+\. )?Candidate \d+: [^.]+\.(?: No\.| Match\.)?)")


def box_in_model_units(box: list[int], size: tuple[int, int], cfg: ToolConfig) -> list[int]:
    """``box`` (pixels of an image file of ``size`` = (w, h)) in the units crop_image reads under ``cfg``."""
    w, h = size
    if cfg.coordinates == "qwen3-vl":
        sx, sy = 1000 / w, 1000 / h
    elif cfg.dialect == "official":  # the release's server reads boxes in pixels of the file
        sx = sy = 1.0
    else:
        rh, rw = smart_resize(h, w, cfg.factor, cfg.min_pixels, cfg.max_pixels)
        sx, sy = rw / w, rh / h
    x1, y1, x2, y2 = box
    return [round(x1 * sx), round(y1 * sy), round(x2 * sx), round(y2 * sy)]


def _call(think: str, arguments: dict[str, Any]) -> str:
    call = json.dumps({"name": "crop_image", "arguments": arguments})
    return f"<think>{think}</think>\n<tool_call>\n{call}\n</tool_call>"


def _size(image: Any) -> tuple[int, int]:
    if isinstance(image, Image.Image):
        return image.size
    with Image.open(image) as im:
        return im.size


def plan_turns(
    sample: Sample,
    cfg: ToolConfig,
    budget: int,
    slots: list[Any] | None = None,
    stop_at_match: bool = False,
) -> list[str]:
    """The assistant turns for ``sample`` (which must carry ``meta["detail"]``), ``budget`` tool calls.

    ``slots``: the image of each tool index (default: the sample's own, candidate k at index k).
    ``stop_at_match``: answer in the turn that first says "Found j." instead of cropping the rest.
    """
    detail = sample.meta["detail"]
    labels, target = detail["labels"], detail["target"]
    slots = sample.image_paths() if slots is None else slots
    k = len(sample.candidates)
    budget = max(0, min(k, budget))
    if budget == 0:
        return [
            "<think>The marks are too small to read without zooming.</think>\n<answer>"
            f"{json.dumps(list(range(1, k + 1)))}</answer>"
        ]
    seen = [labels[c.id] for c in sample.candidates]
    # Every turn restates what the query asks for: a small model copies it from the turn before more
    # easily than from the user turn hundreds of tokens back.
    asks = f"Looking for {target}."
    turns, found = [], None
    for j in range(1, budget + 2):
        think = asks
        if j > 1:  # the verdict on the previous crop, and the match found so far
            verdict = "Match" if seen[j - 2] == target else "No"
            found = found or (j - 1 if verdict == "Match" else None)
            think += f" Candidate {j - 1}: {seen[j - 2]}. {verdict}."
            if found:
                think += f" Found {found}."
                if stop_at_match:
                    break
        if j <= budget:
            box = box_in_model_units(detail["box"], _size(slots[j]), cfg)
            turns.append(
                _call(f"{think} Zoom into the mark of candidate {j}.", {"bbox_2d": box, "target_image": j})
            )
    if found:
        ranking = [found, *range(found + 1, k + 1), *range(1, found)]
    else:
        think += " No match seen."
        ranking = [*range(budget + 1, k + 1), *range(1, budget + 1)]
    turns.append(f"<think>{think}</think>\n<answer>{json.dumps(ranking)}</answer>")
    return turns


def stops_at_match(sample: Sample, share: float) -> bool:
    """Whether ``sample`` is one of the ``share`` whose trajectory answers at the match: a fixed draw from
    the sample's task and id, so a rerun, another process or another machine picks the same samples."""
    digest = hashlib.sha256(f"{sample.task}|{sample.id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


class NanoTeacher(OracleEngine):
    """``OracleEngine`` whose trajectories zoom into the detail of every candidate, or of the candidates
    up to the match in ``stop_share`` of the samples (see the module)."""

    def __init__(self, *args: Any, stop_share: float = 0.0, **kwargs: Any):
        if not 0.0 <= stop_share <= 1.0:
            raise ValueError(f"stop_share must be between 0 and 1, not {stop_share}")
        super().__init__(*args, **kwargs)
        self.stop_share = stop_share

    def plan(self, sample: Sample, attempt_seed: int | None = None) -> list[str]:
        if "detail" not in sample.meta:
            return super().plan(sample, attempt_seed)
        slots = list(self.profile.tool_images(sample.image_paths()))
        cfg = self.tool_config.for_profile(self.profile)
        stop = stops_at_match(sample, self.stop_share)
        return plan_turns(sample, cfg, self.max_tool_calls, slots, stop_at_match=stop)
