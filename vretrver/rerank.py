"""Drive many reranking episodes concurrently over one engine, and the sliding window over top-N lists.

Each round sends the next turn of every live episode in ONE engine call (vLLM batches them with
continuous batching; the OpenAI-compatible engine sends concurrent requests; transformers pads a batch),
so a round costs about as much as its longest turn rather than the sum of all turns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from tqdm.auto import tqdm

from vretrver.engines.base import Engine, GenerationConfig
from vretrver.episode import Episode
from vretrver.protocol import load_profile
from vretrver.protocol.profile import Profile
from vretrver.samples import Candidate, Sample


@dataclass
class RerankConfig:
    profile: str = "v-retrver"
    max_tool_calls: int | None = None  # None: the profile's budget
    window: int = 20
    stride: int = 10
    top_n: int = 50
    # How many episodes go to the engine in one call (None: all live episodes).
    batch_size: int | None = None
    generation: GenerationConfig = field(default_factory=GenerationConfig)


def run_episodes(
    samples: Sequence[Sample],
    engine: Engine,
    profile: Profile | str = "v-retrver",
    gen: GenerationConfig | None = None,
    max_tool_calls: int | None = None,
    batch_size: int | None = None,
    progress: bool | str = False,
) -> list[Episode]:
    """Run one episode per sample to completion; all live episodes advance together, round by round."""
    profile = load_profile(profile)
    gen = gen or GenerationConfig(stop=list(profile.stop))
    episodes = [Episode(s, profile, engine.tool_config, max_tool_calls) for s in samples]
    bar = tqdm(
        total=len(episodes), desc=progress if isinstance(progress, str) else "episodes", disable=not progress
    )
    while True:
        live = [e for e in episodes if not e.done]
        if not live:
            break
        step = batch_size or len(live)
        for i in range(0, len(live), step):
            chunk = live[i : i + step]
            outs = engine.continue_conversations([e.conversation for e in chunk], gen)
            for ep, out in zip(chunk, outs, strict=True):
                if out.error is not None or out.text is None:
                    ep.fail(out.error or "no text")
                else:
                    ep.step(out.text)
                if ep.done:
                    bar.update(1)
    bar.close()
    return episodes


def window_starts(n: int, window: int = 20, stride: int = 10) -> list[int]:
    """Start positions of the windows over a list of n, back to front: 50/20/10 -> 30, 20, 10, 0."""
    if n <= window:
        return [0]
    starts = list(range(n - window, -1, -stride))
    if starts[-1] != 0:
        starts.append(0)
    return starts


@dataclass
class WindowedResult:
    sample_id: str
    ranked_ids: list[str]
    episodes: list[Episode]  # in the order the windows were visited


def rerank_windows(
    samples: Sequence[Sample],
    engine: Engine,
    config: RerankConfig | None = None,
    progress: bool = False,
    on_round: Callable[[int, int], None] | None = None,
) -> list[WindowedResult]:
    """Rerank each sample's candidate list (its first-stage top-N) in sliding windows.

    Windows are visited back to front (for 50 / 20 / 10: positions 30-49, 20-39, 10-29, 0-19, 0-based);
    each window is reordered in place by the model's answer before the next one is built, so strong
    candidates bubble up. The same window of all samples is one batch of concurrent episodes.
    """
    cfg = config or RerankConfig()
    profile = load_profile(cfg.profile)
    gen = cfg.generation
    lists: list[list[Candidate]] = [list(s.candidates[: cfg.top_n]) for s in samples]
    plans = [window_starts(len(c), cfg.window, cfg.stride) for c in lists]
    episodes: list[list[Episode]] = [[] for _ in samples]
    rounds = max((len(p) for p in plans), default=0)
    for r in range(rounds):
        batch, owners = [], []
        for i, (s, cands, plan) in enumerate(zip(samples, lists, plans, strict=True)):
            if r < len(plan) and cands:
                start = plan[r]
                window = cands[start : start + cfg.window]
                batch.append(replace(s, candidates=window, meta={**s.meta, "window_start": start}))
                owners.append((i, start))
        if on_round:
            on_round(r, len(batch))
        eps = run_episodes(
            batch,
            engine,
            profile,
            gen,
            cfg.max_tool_calls,
            cfg.batch_size,
            progress=f"window {r + 1}/{rounds}" if progress else False,
        )
        for ep, (i, start) in zip(eps, owners, strict=True):
            window = lists[i][start : start + cfg.window]
            lists[i][start : start + len(window)] = [window[n - 1] for n in ep.ranking]
            episodes[i].append(ep)
    return [
        # Candidates past the top-N keep their first-stage order behind the reranked ones.
        WindowedResult(s.id, [c.id for c in cands] + [c.id for c in s.candidates[cfg.top_n :]], eps)
        for s, cands, eps in zip(samples, lists, episodes, strict=True)
    ]
