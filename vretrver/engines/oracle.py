"""A rule-based teacher that reads the answer off the ground truth: synthetic trajectories, not model output.

``--engine oracle`` stands in for a teacher model where none is available: dry runs of the SFT data
pipeline before a teacher server is up, and the whole training chain on a CPU with tiny models. For each
conversation it finds the sample it belongs to (by the images and texts of the first user turn), then
writes, turn by turn and through the real tools and protocol:

1. a reasoning text naming the candidates it looks at, then a ``select_images`` call on real images
   (the positive's and a negative's where candidates have images, else the query image);
2. when the budget allows, a reasoning text naming the image it zooms into, then a ``crop_image`` call
   with a valid box in the engine's coordinate convention;
3. a reasoning text and the ranking: the positive first, the other candidates in a seeded order.

The turns know the answer; they are well formed and valid by construction, so they teach the format of
the protocol, never how to retrieve. Every record it produces is labelled with :data:`SOURCE` (the engine
name), and synthesis statistics and the export carry that label. Seeded: the same samples, seed and
``gen.seed`` (the attempt) give the same turns.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from vretrver.engines.base import Completion, GenerationConfig
from vretrver.protocol import Conversation, load_profile
from vretrver.samples import Sample, read_samples
from vretrver.sft.records import escape_sample
from vretrver.tools import ToolConfig, smart_resize

SOURCE = "oracle (synthetic)"


def _user_text(message: dict[str, Any]) -> str:
    c = message["content"]
    return c if isinstance(c, str) else "".join(p.get("text", "") for p in c if p.get("type") == "text")


def _n_images(message: dict[str, Any]) -> int:
    c = message["content"]
    return 0 if isinstance(c, str) else sum(1 for p in c if p.get("type") == "image")


class OracleEngine:
    """An :class:`~vretrver.engines.base.Engine` writing ground-truth trajectories for known samples.

    ``samples``: the samples it will be asked about (a list or a samples jsonl). ``model``: a checkpoint
    folder whose processor sets the crop-box convention and resize bounds (the student's, so boxes need
    no conversion), or any other string (default :class:`~vretrver.tools.ToolConfig`, or
    ``coordinates``). ``profile``: the profile the episodes run with (which image index means what).
    """

    name = SOURCE
    synthetic = True

    def __init__(
        self,
        model: str = "oracle",
        samples: Sequence[Sample] | str | os.PathLike | None = None,
        profile: str = "v-retrver",
        max_tool_calls: int | None = None,
        seed: int = 0,
        coordinates: str | None = None,
        tool_config: ToolConfig | None = None,
    ):
        if samples is None:
            raise ValueError(
                "the oracle engine needs the samples it answers for (samples=list or jsonl path)"
            )
        if isinstance(samples, (str, os.PathLike)):
            samples = read_samples(samples)
        self.profile = load_profile(profile)
        self.max_tool_calls = self.profile.max_tool_calls if max_tool_calls is None else max_tool_calls
        self.seed = seed
        if tool_config is None:
            tool_config = self._tool_config(model, coordinates)
        self.tool_config = tool_config
        self.model = model
        # The first user turn shows the query images then each candidate's image, in order: those paths
        # (as strings) find a sample's candidates; the texts tell apart samples with the same images.
        self._by_images: dict[tuple[str, ...], list[Sample]] = {}
        for s in samples:
            s = escape_sample(s)[0]  # synthesis shows the model escaped texts
            key = tuple(str(p) for p in [*s.query.images, *(c.image for c in s.candidates if c.image)])
            self._by_images.setdefault(key, []).append(s)

    @staticmethod
    def _tool_config(model: str, coordinates: str | None) -> ToolConfig:
        folder = Path(model)
        if folder.is_dir() and (folder / "preprocessor_config.json").is_file():
            from transformers import AutoProcessor

            cfg = ToolConfig.from_processor(AutoProcessor.from_pretrained(folder))
            return cfg if coordinates is None else ToolConfig(**{**cfg.__dict__, "coordinates": coordinates})
        return ToolConfig(coordinates=coordinates) if coordinates else ToolConfig()

    # ------------------------------------------------------------------ the engine interface

    def continue_conversations(
        self, conversations: list[Conversation], gen: GenerationConfig
    ) -> list[Completion]:
        out = []
        for conv in conversations:
            sample = self._find(conv)
            if sample is None:
                out.append(Completion(None, error="oracle: no known sample matches this conversation"))
                continue
            turns = self.plan(sample, gen.seed)
            n = sum(1 for m in conv.messages if m["role"] == "assistant")
            if n >= len(turns):
                out.append(Completion(None, error="oracle: the planned trajectory has no more turns"))
            else:
                out.append(Completion(turns[n], finish_reason="stop"))
        return out

    def close(self) -> None:
        pass

    # ------------------------------------------------------------------ matching and planning

    def _find(self, conv: Conversation) -> Sample | None:
        first = next((m for m in conv.messages if m["role"] == "user"), None)
        if first is None:
            return None
        key = tuple(str(p) for p in conv.images[: _n_images(first)])
        text = _user_text(first)
        for s in self._by_images.get(key, []):
            texts = [s.query.text, *(c.text for c in s.candidates)]
            if all(t in text for t in texts if t):
                return s
        return None

    def plan(self, sample: Sample, attempt_seed: int | None = None) -> list[str]:
        """The assistant turns of the oracle's trajectory for ``sample`` (deterministic)."""
        rng = random.Random(f"{self.seed}|{attempt_seed}|{sample.task}|{sample.id}")
        k = len(sample.candidates)
        pos = sample.positive_numbers()[0] if sample.positive_numbers() else 1
        rest = [i for i in range(1, k + 1) if i != pos]
        rng.shuffle(rest)
        slots = self.profile.tool_images(sample.image_paths())
        with_image = [i for i in range(1, len(slots)) if slots[i] is not None]
        turns: list[str] = []
        budget = self.max_tool_calls
        if budget >= 1 and (with_image or slots[0] is not None):
            if pos in with_image:
                others = [i for i in rest if i in with_image][: rng.randint(1, 2)]
                picks = sorted([pos, *others])
                if len(picks) == 1:
                    think = f"Candidate {pos} looks closest; I look at it again at high resolution."
                else:
                    names = ", ".join(str(i) for i in picks[:-1]) + f" and {picks[-1]}"
                    think = f"Candidates {names} look closest; I compare them at high resolution."
                if slots[0] is not None and len(picks) < self.tool_config.max_select:
                    picks = [0, *picks]
                    think = think[:-1] + ", next to the query image."
            else:
                picks = [0]
                think = "I look at the query image again at high resolution."
            turns.append(self._call(think, "select_images", {"target_images": picks}))
            target = pos if pos in with_image else 0
            if budget >= 2 and rng.random() < 0.75:
                box = self._box(slots[target], rng)
                name = "the query image" if target == 0 else f"candidate {target}"
                think = f"I zoom into {name} to check its details."
                turns.append(self._call(think, "crop_image", {"bbox_2d": box, "target_image": target}))
        think = f"Candidate {pos} matches the query best."
        turns.append(f"<think>{think}</think>\n<answer>{json.dumps([pos, *rest])}</answer>")
        return turns

    @staticmethod
    def _call(think: str, name: str, arguments: dict[str, Any]) -> str:
        call = json.dumps({"name": name, "arguments": arguments})
        return f"<think>{think}</think>\n<tool_call>\n{call}\n</tool_call>"

    def _box(self, image: Any, rng: random.Random) -> list[int]:
        """A box covering 40-80 % of each side, inside the image, in the engine's coordinates."""
        if isinstance(image, Image.Image):
            w, h = image.size
        else:
            with Image.open(image) as im:
                w, h = im.size
        if self.tool_config.coordinates == "qwen3-vl":
            lim_w = lim_h = 1000
        else:
            c = self.tool_config
            lim_h, lim_w = smart_resize(h, w, c.factor, c.min_pixels, c.max_pixels)
        box = []
        for lim in (lim_w, lim_h):
            size = max(2, round(lim * rng.uniform(0.4, 0.8)))
            start = rng.randint(0, lim - size)
            box.append((start, start + size))
        (x1, x2), (y1, y2) = box
        return [x1, y1, x2, y2]
