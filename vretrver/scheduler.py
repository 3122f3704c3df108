"""Continuous scheduling: every query goes through its windows, and every episode through its turns, on its
own, with up to ``max_inflight`` episodes in the engine at once.

The round-synchronous driver (:func:`vretrver.rerank.rerank_windows`) sends one engine call per round of a
group of queries; the call lasts as long as its slowest turn and the next window of a query waits for the
whole group. Here a turn goes to the engine as soon as it is ready, the next window of a query starts as
soon as its previous window is answered, and a new query enters as soon as one finishes, so the engine
stays full. The windows of one query are still visited in order (each reorders the list the next one
shows), through the same :class:`vretrver.rerank.QueryRun`, so greedy rankings and trajectories equal the
round-synchronous ones (the queries merely finish in a different order).

How each engine takes turns (:func:`turn_stream`):

* vLLM offline: requests are added to its engine as they are ready and its scheduler steps them with
  continuous batching; each step hands back the requests that finished;
* an OpenAI-compatible server: one concurrent request per ready turn (up to the engine's concurrency),
  each handed back as its answer arrives;
* engines with only a batch call (transformers, scripted engines): one call with every turn that is ready,
  without waiting for a round of a group of queries; the call still lasts as long as its longest turn.

Queries are read from an iterator only as places free up, and each query's result is handed to
``on_done`` as it finishes, so memory holds the in-flight queries only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from vretrver.engines.base import Completion, Engine, GenerationConfig
from vretrver.episode import Episode
from vretrver.protocol import Conversation, load_profile
from vretrver.rerank import QueryRun, RerankConfig, WindowedResult, check_rerank_config, feed
from vretrver.samples import Sample


class TurnStream(Protocol):
    """Turns go in one by one; answers come back as they are ready, in any order."""

    def submit(self, key: int, conv: Conversation, gen: GenerationConfig) -> None: ...

    def wait(self) -> list[tuple[int, Completion]]:
        """Answers that are ready: at least one while any turn is pending (blocks until then)."""
        ...

    def close(self) -> None: ...


class BatchTurns:
    """A :class:`TurnStream` over an engine that only has a batch call: ``wait`` sends every pending turn
    in one ``continue_conversations`` call (split by ``batch_size`` if given) and hands all answers back."""

    def __init__(self, engine: Engine, batch_size: int | None = None):
        self.engine = engine
        self.batch_size = batch_size
        self.pending: list[tuple[int, Conversation, GenerationConfig]] = []
        self.calls = 0

    def submit(self, key: int, conv: Conversation, gen: GenerationConfig) -> None:
        self.pending.append((key, conv, gen))

    def wait(self) -> list[tuple[int, Completion]]:
        pending, self.pending = self.pending, []
        out: list[tuple[int, Completion]] = []
        # One call per generation setting (a driver uses one; a mix must not share sampling settings).
        groups: dict[int, list[tuple[int, Conversation, GenerationConfig]]] = {}
        for item in pending:
            groups.setdefault(id(item[2]), []).append(item)
        for group in groups.values():
            step = self.batch_size or len(group)
            for i in range(0, len(group), step):
                part = group[i : i + step]
                self.calls += 1
                answers = self.engine.continue_conversations([c for _, c, _ in part], part[0][2])
                out.extend((k, a) for (k, _, _), a in zip(part, answers, strict=True))
        return out

    def close(self) -> None:
        self.pending = []


def turn_stream(engine: Engine, max_inflight: int, batch_size: int | None = None) -> TurnStream:
    """The engine's own stream of turns (``engine.turn_stream(max_inflight)``) or :class:`BatchTurns`."""
    own = getattr(engine, "turn_stream", None)
    if callable(own):
        return own(max_inflight)
    return BatchTurns(engine, batch_size)


@dataclass
class SchedulerStats:
    queries: int = 0
    episodes: int = 0
    turns: int = 0
    waits: int = 0
    peak_inflight: int = 0


def rerank_continuous(
    samples: Iterable[Sample],
    engine: Engine,
    config: RerankConfig | None = None,
    on_done: Callable[[list[tuple[Sample, WindowedResult]]], None] | None = None,
    stream: TurnStream | None = None,
) -> SchedulerStats:
    """Rerank every sample in sliding windows with continuous scheduling; hand results to ``on_done``.

    ``samples`` is read lazily: a query is taken only when fewer than ``config.max_inflight`` episodes
    are in flight. ``on_done`` gets the queries that finished since its last call, each with its
    result, as soon as they finish (not in input order).
    """
    cfg = config or RerankConfig()
    check_rerank_config(cfg)
    profile = load_profile(cfg.profile)
    gen = cfg.generation
    own_stream = stream is None
    stream = stream or turn_stream(engine, cfg.max_inflight, cfg.batch_size)
    todo: Iterator[Sample] = iter(samples)
    live: dict[int, tuple[QueryRun, Episode]] = {}
    stats = SchedulerStats()
    keys = iter(range(1 << 62))
    more = True

    def start(q: QueryRun, ep: Episode) -> None:
        key = next(keys)
        live[key] = (q, ep)
        stats.turns += 1
        stream.submit(key, ep.conversation, gen)

    try:
        while True:
            finished: list[tuple[Sample, WindowedResult]] = []
            while more and len(live) < cfg.max_inflight:
                s = next(todo, None)
                if s is None:
                    more = False
                    break
                q = QueryRun(s, cfg, profile, engine.tool_config)
                stats.queries += 1
                ep = q.next_episode()
                if ep is None:  # nothing to rerank (an empty list, or no window applies)
                    finished.append((s, q.result()))
                else:
                    stats.episodes += 1
                    start(q, ep)
            stats.peak_inflight = max(stats.peak_inflight, len(live))
            if live:
                stats.waits += 1
                for key, out in stream.wait():
                    q, ep = live.pop(key)
                    feed(ep, out)
                    if not ep.done:
                        start(q, ep)
                        continue
                    q.finish(ep)
                    nxt = q.next_episode()
                    if nxt is not None:
                        stats.episodes += 1
                        start(q, nxt)
                    else:
                        finished.append((q.sample, q.result()))
            if finished and on_done is not None:
                on_done(finished)
            if not live and not more:
                return stats
    finally:
        if own_stream:
            stream.close()


def rerank_continuous_list(
    samples: list[Sample], engine: Engine, config: RerankConfig | None = None, **kw: Any
) -> list[WindowedResult]:
    """:func:`rerank_continuous` with the results in the order of ``samples``."""
    got: dict[int, WindowedResult] = {}
    index = {id(s): i for i, s in enumerate(samples)}

    def keep(done: list[tuple[Sample, WindowedResult]]) -> None:
        for s, r in done:
            got[index[id(s)]] = r

    rerank_continuous(samples, engine, config, keep, **kw)
    return [got[i] for i in range(len(samples))]
