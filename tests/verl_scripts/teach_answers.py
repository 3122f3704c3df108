"""Teach the tiny random model to answer the rig's sample in the protocol's format, two ways at random.

A random model writes random tokens, which our reward scores 0 every time: GRPO then has no advantage to
follow and a training step changes nothing. After a short supervised pass on the exact first-turn prompt
the agent loop builds (captured from verl's AgentLoopWorker with the rig's stand-in server), the model
answers `[2]` (the positive first: reward 1.0) or `[1]` (the positive unranked: 0.2), each about half the
time at temperature 1, so the rollouts of one prompt earn different rewards. The two answers differ in one
token only, which a two-layer model samples reliably in vLLM as well.

Run: python teach_answers.py MODEL OUT_DIR WORKDIR
"""

from __future__ import annotations

import asyncio
import math
import shutil
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/: the rig and the sample photos

import verl_rig  # noqa: E402
from photos import ASTRONAUT, CHELSEA, COFFEE, ROCKET  # noqa: E402

ANSWERS = [f"<think>Compare the candidates.</think><answer>[{i}]</answer><|im_end|>" for i in (2, 1)]
STEPS = 300
MAX_LOSS = 0.01  # mean per-token loss on the answers (log 2 on the token where they part excluded)


def first_prompt(model: Path, workdir: Path) -> tuple[list[int], list]:
    """Prompt ids and images of the first turn, as the agent loop sends them to the LLM server."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    photos = {"astronaut": ASTRONAUT, "coffee": COFFEE, "chelsea": CHELSEA, "rocket": ROCKET}
    rig = verl_rig.Rig("qwen2_5_vl", model, photos, workdir, loop)
    seen: dict = {}

    class Recorder(verl_rig.StandInServer):
        async def generate(self, request_id, *, prompt_ids, sampling_params, image_data=None, **kwargs):
            seen.setdefault("prompt", (list(prompt_ids), list(image_data or [])))
            return await super().generate(
                request_id, prompt_ids=prompt_ids, sampling_params=sampling_params, image_data=image_data
            )

    real = verl_rig.StandInServer
    verl_rig.StandInServer = Recorder
    try:
        rig.run([[verl_rig.ANSWER_GT_FIRST]])
    finally:
        verl_rig.StandInServer = real
    return seen["prompt"]


def main(model_dir: Path, out_dir: Path, workdir: Path) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    prompt_ids, images = first_prompt(model_dir, workdir)
    proc = AutoProcessor.from_pretrained(model_dir)
    vision = proc.image_processor(images=images, return_tensors="pt")
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    model.train()
    optim = torch.optim.Adam(model.parameters(), lr=3e-3)
    seqs = []
    for text in ANSWERS:
        answer = proc.tokenizer(text, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt_ids + answer])
        labels = ids.clone()
        labels[0, : len(prompt_ids)] = -100
        # marks the image tokens: without it transformers gives the sequence text-only positions instead
        # of the M-RoPE positions that vLLM and verl's actor use
        kinds = torch.tensor(proc.create_mm_token_type_ids(ids.tolist()))
        seqs.append((ids, labels, kinds, len(answer)))
    torch.manual_seed(0)
    for step in range(STEPS):
        optim.zero_grad()
        total, tokens = 0.0, 0
        for ids, labels, kinds, n in seqs:
            out = model(
                input_ids=ids,
                labels=labels,
                mm_token_type_ids=kinds,
                pixel_values=vision["pixel_values"],
                image_grid_thw=vision["image_grid_thw"],
            )
            out.loss.backward()
            total, tokens = total + out.loss.item() * n, tokens + n
        optim.step()
        # the two answers share all but one token, whose best loss is log 2
        excess = total / tokens - math.log(2) * 2 / tokens
        if step % 20 == 0:
            print(f"step {step}: loss {total / tokens:.4f}", flush=True)
        if excess < MAX_LOSS:
            break
    print(f"final loss {total / tokens:.4f} after {step + 1} steps", flush=True)
    if excess >= MAX_LOSS:
        raise SystemExit(f"the model did not learn the answers (loss {total / tokens:.4f})")
    out_dir.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(out_dir)
    for f in model_dir.iterdir():  # processor, tokenizer, chat template, generation config
        if f.is_file() and not f.name.endswith(".safetensors") and f.name != "config.json":
            shutil.copy(f, out_dir / f.name)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
