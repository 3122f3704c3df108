"""Every benchmark by name: ``load_benchmark(name, ...) -> list[TaskData]`` and the specs behind it.

A benchmark is one module of this package that defines ``SPEC`` (or ``SPECS``, a tuple), a
:class:`~vretrver.benchmarks.spec.BenchmarkSpec`. The modules listed in :data:`BUILTIN` are read on first
import, in that order (the order of the CLI's choices and of the README's table); :func:`register` adds a
spec from anywhere else (a plugin, a test).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from typing import Any

from vretrver.benchmarks.mbeir import TASK_GROUPS  # noqa: F401  (kept importable from here)
from vretrver.benchmarks.spec import BenchmarkSpec
from vretrver.samples import TaskData

# The benchmark modules of this package, in the order they are listed everywhere.
BUILTIN = ("mbeir", "circo", "genecis", "visdial", "vist", "mtfiq", "tuxpaint", "nano")

_SPECS: dict[str, BenchmarkSpec] = {}
# Views kept in step with the registry: name -> one-line description, name -> files read.
BENCHMARKS: dict[str, str] = {}
REQUIRED_FILES: dict[str, list[str]] = {}
_loaded = False


def register(spec: BenchmarkSpec, replace: bool = False) -> BenchmarkSpec:
    """Add a benchmark; its name becomes a ``--benchmark`` choice. Returns the spec."""
    _load_builtin()
    if spec.name in _SPECS and not replace and _SPECS[spec.name] is not spec:
        raise ValueError(f"benchmark {spec.name!r} is registered already")
    _add(spec)
    return spec


def unregister(name: str) -> None:
    """Remove a benchmark added with :func:`register` (tests clean up with it)."""
    _SPECS.pop(name, None)
    BENCHMARKS.pop(name, None)
    REQUIRED_FILES.pop(name, None)


def _add(spec: BenchmarkSpec) -> None:
    _SPECS[spec.name] = spec
    BENCHMARKS[spec.name] = spec.description
    REQUIRED_FILES[spec.name] = list(spec.files)


def _load_builtin() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for name in BUILTIN:
        module = importlib.import_module(f"vretrver.benchmarks.{name}")
        for spec in getattr(module, "SPECS", None) or (module.SPEC,):
            _add(spec)


def specs() -> list[BenchmarkSpec]:
    """Every registered benchmark, built-in ones first, in registration order."""
    _load_builtin()
    return list(_SPECS.values())


def names() -> list[str]:
    return [s.name for s in specs()]


def get_spec(name: str) -> BenchmarkSpec:
    _load_builtin()
    if name not in _SPECS:
        raise ValueError(f"unknown benchmark {name!r}; choose from {sorted(_SPECS)}")
    return _SPECS[name]


def find_spec(name: str | None) -> BenchmarkSpec | None:
    """The spec of a registered benchmark, or None (in-memory tasks, e.g. the single-query command)."""
    _load_builtin()
    return _SPECS.get(name) if name else None


def spec_of_task(task: str, benchmark: str | None = None) -> BenchmarkSpec | None:
    """The spec a task belongs to: ``benchmark``'s own if it has the task, else the first that has it."""
    own = find_spec(benchmark)
    if own is not None and own.has_task(task):
        return own
    return next((s for s in specs() if s.has_task(task)), own)


def paper_metric_of(task: str) -> str:
    """The metric the paper reports for a task (R@5 for tasks no benchmark claims)."""
    spec = spec_of_task(task)
    return spec.metric_for(task) if spec is not None else "R@5"


def zero_shot() -> tuple[str, ...]:
    """The paper's zero-shot sets."""
    return tuple(s.name for s in specs() if s.zero_shot)


def pool_benchmarks() -> tuple[str, ...]:
    """The benchmarks with a choice of candidate pool and instruction (--pool, --instruction)."""
    return tuple(s.name for s in specs() if s.pool_options)


def reader_arguments(name: str) -> list[str]:
    """The keyword arguments a benchmark's reader takes beyond data root, tasks, split and limit."""
    return get_spec(name).reader_arguments()


def check_reader_args(name: str, kw: Mapping[str, Any]) -> None:
    """Reject reader arguments the benchmark's reader does not take, naming the reader and what it takes."""
    get_spec(name).check_reader_args(kw)


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
    return get_spec(name).load(data_root, tasks, split, limit, **kw)


def files_table() -> str:
    """The README's table of the files each benchmark reads (a benchmark reading another's files, as the
    held-out tasks read M-BEIR's, or none, as the generated nano benchmark, is left out)."""
    rows = ["| benchmark | files read |", "|---|---|"]
    seen: list[tuple[str, ...]] = []
    for s in specs():
        if not s.files or s.files in seen:
            continue
        seen.append(s.files)
        cells = "<br>".join(f"`{f.replace('|', chr(92) + '|')}`" for f in s.files)
        rows.append(f"| {s.name} | {cells} |")
    return "\n".join(rows)


# Benchmark modules import the spec class, never this module, so they can be read here at once.
_load_builtin()
