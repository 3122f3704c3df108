"""One entry point for every benchmark: ``load_benchmark(name, ...) -> list[TaskData]``."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from typing import Any

from vretrver.benchmarks import mbeir, tuxpaint, zeroshot
from vretrver.metrics import MBEIR_TASKS
from vretrver.samples import TaskData

# Named groups of M-BEIR tasks. "heldout": the paper's held-out-task setting (tasks left out of
# training); "ablation": the four tasks the training-stage ablation averages over.
TASK_GROUPS: dict[str, tuple[str, ...]] = {
    "mbeir": MBEIR_TASKS,
    "heldout": ("nights_task4", "oven_task6", "oven_task8", "infoseek_task6", "infoseek_task8"),
    "ablation": ("mscoco_task0", "fashion200k_task3", "cirr_task7", "oven_task6"),
}

BENCHMARKS: dict[str, str] = {
    "tuxpaint": "embedded mini-benchmark from the Tux Paint stamps (text->image, image->text; offline)",
    "mbeir": "M-BEIR, the 16 evaluated pairs (local, global or lamra-global pool)",
    "heldout": "M-BEIR held-out tasks: NIGHTS task4, OVEN task6/8, InfoSeek task6/8",
    "circo": "CIRCO composed image retrieval (val scored locally; test -> submission file)",
    "genecis": "GeneCIS, four subtasks, each query ranks its own gallery",
    "visdial": "Visual Dialog v1.0 val, dialog -> image",
    "vist": "Visual Storytelling (SIS) val, story -> last image",
    "mtfiq": "multi-turn FashionIQ val, several (image, feedback) rounds -> image",
}

REQUIRED_FILES: dict[str, list[str]] = {
    **mbeir.REQUIRED_FILES,
    **zeroshot.REQUIRED_FILES,
    **tuxpaint.REQUIRED_FILES,
}


READERS: dict[str, Callable[..., list[TaskData]]] = {
    "tuxpaint": tuxpaint.load_tuxpaint,
    "mbeir": mbeir.load_mbeir,
    "heldout": mbeir.load_mbeir,
    "circo": zeroshot.load_circo,
    "genecis": zeroshot.load_genecis,
    "visdial": zeroshot.load_visdial,
    "vist": zeroshot.load_vist,
    "mtfiq": zeroshot.load_mtfiq,
}
# Reader parameters that load_benchmark fills itself from its own arguments.
_COMMON = ("data_root", "tasks", "split", "limit")


def reader_arguments(name: str) -> list[str]:
    """The keyword arguments a benchmark's reader takes beyond data root, tasks, split and limit."""
    if name not in READERS:
        raise ValueError(f"unknown benchmark {name!r}; choose from {sorted(BENCHMARKS)}")
    return [p for p in inspect.signature(READERS[name]).parameters if p not in _COMMON]


def check_reader_args(name: str, kw: Mapping[str, Any]) -> None:
    """Reject reader arguments the benchmark's reader does not take, naming the reader and what it takes."""
    accepted = reader_arguments(name)
    unknown = sorted(set(kw) - set(accepted))
    if unknown:
        reader = READERS[name]
        raise ValueError(
            f"{name}: reader {reader.__module__}.{reader.__name__} takes no argument {', '.join(map(repr, unknown))};"
            f" it accepts: {', '.join(accepted) or 'none'}"
        )


def load_benchmark(
    name: str,
    data_root: str | os.PathLike | None = None,
    tasks: list[str] | tuple[str, ...] | None = None,
    split: str | None = None,
    limit: int | None = None,
    **kw: Any,
) -> list[TaskData]:
    """Load a benchmark's tasks. ``split`` defaults to the split the paper reports (CIRCO: val, whose
    labels are public); ``limit`` keeps the first N queries per task; ``kw`` goes to the reader
    (e.g. ``pool="global"`` for M-BEIR, ``rounds=`` for visdial, ``category=`` for mtfiq; see
    :func:`reader_arguments`); an argument the reader does not take is an error that lists those it does."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose from {sorted(BENCHMARKS)}")
    check_reader_args(name, kw)
    if name == "tuxpaint":
        return tuxpaint.load_tuxpaint(data_root, tasks, split or "test", limit, **kw)
    if data_root is None:
        wanted = "\n".join(f"  {p}" for p in REQUIRED_FILES["mbeir" if name == "heldout" else name])
        raise ValueError(f"{name}: pass data_root, the folder that holds:\n{wanted}")
    if name in ("mbeir", "heldout"):
        return mbeir.load_mbeir(data_root, tasks or TASK_GROUPS[name], split or "test", limit=limit, **kw)
    if name == "genecis":
        _no_split(name, split, ("val",))
        return zeroshot.load_genecis(data_root, tasks, limit, **kw)
    _no_tasks(name, tasks)
    if name == "circo":
        return zeroshot.load_circo(data_root, split or "val", limit, **kw)
    if name == "visdial":
        _no_split(name, split, ("val",))
        return zeroshot.load_visdial(data_root, limit=limit, **kw)
    if name == "vist":
        return zeroshot.load_vist(data_root, split or "val", limit, **kw)
    return zeroshot.load_mtfiq(data_root, split or "val", limit=limit, **kw)


def _no_split(name: str, split: str | None, allowed: tuple[str, ...]) -> None:
    if split is not None and split not in allowed:
        raise ValueError(f"{name} has only the split(s) {allowed}, got {split!r}")


def _no_tasks(name: str, tasks: Any) -> None:
    if tasks and list(tasks) != [name]:
        raise ValueError(f"{name} has one task, {name!r}; got tasks={tasks!r}")
