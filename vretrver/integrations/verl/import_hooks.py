"""Run a function right after a named module has been imported, whenever (and in whichever process) that is.

The CPU fixes for verl and vLLM patch functions of modules that verl and vLLM import at different points of
each process's start (the trainer, Ray workers, vLLM's engine and worker processes). Importing those modules
early to patch them would pull vLLM into processes that never use it and could trip import cycles inside
verl, so the patch waits for the module's own import instead.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import threading
from collections.abc import Callable
from types import ModuleType

_pending: dict[str, list[Callable[[ModuleType], None]]] = {}
_lock = threading.Lock()


class _AfterImportFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for a watched name it asks the other finders, then wraps the loader."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in _pending:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_then_run(module: ModuleType) -> None:
            exec_module(module)
            with _lock:
                callbacks = _pending.pop(fullname, [])
            for callback in callbacks:
                callback(module)

        # each find_spec call builds a fresh loader object, so this wraps this one import only
        loader.exec_module = exec_then_run
        return spec


_FINDER = _AfterImportFinder()


def after_import(name: str, callback: Callable[[ModuleType], None]) -> None:
    """Call ``callback(module)`` once module ``name`` is imported: now if it already is, else just after."""
    module = sys.modules.get(name)
    if module is not None:
        callback(module)
        return
    with _lock:
        _pending.setdefault(name, []).append(callback)
        if _FINDER not in sys.meta_path:
            sys.meta_path.insert(0, _FINDER)
