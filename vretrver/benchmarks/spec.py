"""What the rest of the project knows about a benchmark: one :class:`BenchmarkSpec`, kept beside its reader.

The CLI's ``--benchmark`` choices and reader flags, the evaluation driver (default top-N and window, the
ks it scores, how deep the first stage goes, a submission file), the paper metric of each task and the
README's table of files read all come from the specs; nothing else names a benchmark.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from vretrver.samples import TaskData

# Reader parameters the spec fills itself from load_benchmark's own arguments.
COMMON_PARAMETERS = ("data_root", "tasks", "split", "limit")

Reader = Callable[..., list[TaskData]]
# write_submission(path, rankings, query_ids): a file in the benchmark server's format.
SubmissionWriter = Callable[[str | os.PathLike, Mapping[str, Sequence[str]], Sequence[str]], None]


@dataclass(frozen=True)
class BenchmarkSpec:
    """A benchmark: its reader and everything the evaluation, the CLI and the README need to know of it.

    ``reader`` takes the data root first and any of ``tasks``, ``split``, ``limit`` as keywords; its
    other keyword parameters are the benchmark's reader arguments (``--reader-args``), and those named
    in ``reader_options`` also get a flag of their own (``image_dir`` -> ``--image-dir``).
    """

    name: str
    description: str  # one line: the CLI's help and the registry's listing
    reader: Reader
    files: tuple[str, ...]  # paths under the data root the reader reads ({split}, {task} placeholders)
    paper_metric: str = "R@5"  # the number the paper reports for the benchmark's tasks
    task_metrics: Mapping[str, str] = field(default_factory=dict)  # tasks that report another metric
    tasks: tuple[str, ...] = ()  # every task, in the papers' order (default: one task named like the spec)
    splits: tuple[str, ...] = ("test",)  # the first is the default, the split the paper reports
    top_n: int = 50  # first-stage candidates reranked by default
    window: int = 20  # default reranking window
    zero_shot: bool = False  # one of the paper's zero-shot sets
    pool_options: bool = False  # takes --pool and --instruction (M-BEIR's candidate pools)
    reader_options: Mapping[str, str] = field(default_factory=dict)  # reader argument -> its flag's help
    needs_data_root: bool = True
    ks: tuple[int, ...] = (1, 5, 10)  # Recall@k reported
    map_ks: tuple[int, ...] = ()  # mAP@k reported
    min_depth: int = 0  # first-stage candidates kept at least (scoring or a submission look deeper)
    write_submission: SubmissionWriter | None = None  # for a split whose labels are private

    def __post_init__(self) -> None:
        object.__setattr__(self, "task_metrics", MappingProxyType(dict(self.task_metrics)))
        object.__setattr__(self, "reader_options", MappingProxyType(dict(self.reader_options)))
        unknown = set(self.reader_options) - set(self.reader_arguments())
        if unknown:
            raise ValueError(f"{self.name}: reader_options {sorted(unknown)} are not arguments of its reader")

    @property
    def task_names(self) -> tuple[str, ...]:
        return self.tasks or (self.name,)

    def has_task(self, task: str) -> bool:
        return task in self.task_names or task.startswith(f"{self.name}_")

    def metric_for(self, task: str) -> str:
        """The metric the paper reports for one of the benchmark's tasks."""
        return self.task_metrics.get(task, self.paper_metric)

    def _parameters(self) -> list[str]:
        return list(inspect.signature(self.reader).parameters)

    def reader_arguments(self) -> list[str]:
        """The keyword arguments the reader takes beyond data root, tasks, split and limit."""
        return [p for p in self._parameters()[1:] if p not in COMMON_PARAMETERS]

    def check_reader_args(self, kw: Mapping[str, Any]) -> None:
        """Reject arguments the reader does not take, naming the reader and what it does take."""
        accepted = self.reader_arguments()
        unknown = sorted(set(kw) - set(accepted))
        if unknown:
            reader = self.reader
            raise ValueError(
                f"{self.name}: reader {reader.__module__}.{reader.__name__} takes no argument"
                f" {', '.join(map(repr, unknown))}; it accepts: {', '.join(accepted) or 'none'}"
            )

    def load(
        self,
        data_root: str | os.PathLike | None = None,
        tasks: Sequence[str] | None = None,
        split: str | None = None,
        limit: int | None = None,
        **kw: Any,
    ) -> list[TaskData]:
        """The benchmark's tasks: arguments checked against the spec, then passed to the reader."""
        self.check_reader_args(kw)
        if data_root is None and self.needs_data_root:
            wanted = "\n".join(f"  {p}" for p in self.files)
            raise ValueError(f"{self.name}: pass data_root, the folder that holds:\n{wanted}")
        params = self._parameters()
        call: dict[str, Any] = {}
        if "split" in params:
            call["split"] = split or self.splits[0]  # the reader checks the name itself
        elif split is not None and split not in self.splits:
            raise ValueError(f"{self.name} has only the split(s) {self.splits}, got {split!r}")
        if "tasks" in params:
            call["tasks"] = list(tasks or self.task_names)
        elif tasks and list(tasks) != [self.name]:
            raise ValueError(f"{self.name} has one task, {self.name!r}; got tasks={tasks!r}")
        if "limit" in params:
            call["limit"] = limit
        return self.reader(data_root, **call, **kw)
