"""Real photos shipped inside the scikit-image wheel (no download), located without importing skimage."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_SPEC = importlib.util.find_spec("skimage")
if _SPEC is None or not _SPEC.submodule_search_locations:
    pytest.fail(
        "needs scikit-image (its wheel ships the sample photos): pip install scikit-image", pytrace=False
    )
DATA = Path(next(iter(_SPEC.submodule_search_locations))) / "data"
ASTRONAUT = str(DATA / "astronaut.png")  # 512 x 512 RGB
CHELSEA = str(DATA / "chelsea.png")  # 451 x 300 RGB (width x height; a cat)
COFFEE = str(DATA / "coffee.png")  # 600 x 400 RGB
ROCKET = str(DATA / "rocket.jpg")  # 640 x 427 RGB
