"""Run verl's FSDP training engine on CPU (gloo), for tests and debugging on a machine without GPUs.

verl picks its accelerator through a platform registry (CUDA, NPU, ROCm) and falls back to CUDA when none
is found; its FSDP engine is registered for those devices only. Importing this module registers a CPU
platform (gloo collectives, zero memory statistics) under the name ``cpu`` (so ``VERL_PLATFORM=cpu`` with
``VERL_USE_EXTERNAL_MODULES`` naming this module selects it in every process); :func:`use_cpu_platform`
also registers the FSDP language-model engine for it and makes it verl's platform. Call it in a fresh
process before anything imports verl's workers or engines (some read the device name at import time),
then start a one-process gloo group. Rollouts still need a vLLM / SGLang server: this covers the actor
(log-probs, policy update), not generation.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from verl.plugin.platform.platform_base import PlatformBase
from verl.plugin.platform.platform_manager import PlatformRegistry, set_platform

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


def use_cpu_platform() -> CPUPlatform:
    """Make the CPU platform verl's platform and register the FSDP language-model engine for it."""
    platform = CPUPlatform()
    set_platform(platform)

    # imported only now: the engine module reads the platform's device name at import
    from verl.workers.engine import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

    try:
        EngineRegistry.get_engine_cls("language_model", "fsdp2")
    except ValueError:  # not registered for this platform yet
        EngineRegistry.register(model_type="language_model", backend=["fsdp", "fsdp2"], device=PLATFORM_NAME)(
            FSDPEngineWithLMHead
        )
    return platform
