"""Shared pytest fixtures. Tests never touch the network: the hub and datasets clients run offline."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# ---------------------------------------------------------------------------------------------------
# Tiny random Qwen-VL checkpoints (real tokenizer and processors, random weights)
# ---------------------------------------------------------------------------------------------------


def _tiny_model(family: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vretrver.testing.tiny_models import build_tiny_model, tiny_model_path

    # With VRETRVER_CACHE set, reuse (or fill) that cache across runs; else build fresh for this session.
    if os.environ.get("VRETRVER_CACHE"):
        return tiny_model_path(family)
    return build_tiny_model(tmp_path_factory.mktemp(f"tiny-{family}"), family=family)


@pytest.fixture(scope="session")
def tiny_qwen25vl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a tiny random Qwen2.5-VL checkpoint (model, processor, tokenizer)."""
    return _tiny_model("qwen2_5_vl", tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_qwen3vl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a tiny random Qwen3-VL checkpoint (model, processor, tokenizer)."""
    return _tiny_model("qwen3_vl", tmp_path_factory)


# ---------------------------------------------------------------------------------------------------
# Real photos shipped inside the scikit-image wheel (no download)
# ---------------------------------------------------------------------------------------------------

# name -> file in skimage/data: RGB photos of different sizes and aspect ratios, plus one greyscale.
_SAMPLE_PHOTOS = {
    "astronaut": "astronaut.png",  # 512 x 512 RGB
    "coffee": "coffee.png",  # 600 x 400 RGB
    "chelsea": "chelsea.png",  # 451 x 300 RGB (a cat)
    "rocket": "rocket.jpg",  # 640 x 427 RGB
    "motorcycle": "motorcycle_left.png",  # 741 x 500 RGB
    "camera": "camera.png",  # 512 x 512 greyscale (mode "L")
}


@pytest.fixture(scope="session")
def sample_photos() -> dict[str, Path]:
    """A few real photos as file paths, keyed by a short name (see _SAMPLE_PHOTOS)."""
    from photos import DATA as data_dir

    photos = {name: data_dir / filename for name, filename in _SAMPLE_PHOTOS.items()}
    missing = [str(p) for p in photos.values() if not p.is_file()]
    if missing:
        pytest.fail(f"scikit-image is installed but its wheel lacks sample photos: {missing}")
    return photos


# ---------------------------------------------------------------------------------------------------
# The README's long runs (tests marked `chain`): started when the session's first test runs, read last
# ---------------------------------------------------------------------------------------------------


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The tests that read the README's long runs go last, so the rest of the suite runs beside them."""
    items[:] = [i for i in items if not i.get_closest_marker("chain")] + [
        i for i in items if i.get_closest_marker("chain")
    ]


@pytest.fixture(scope="session", autouse=True)
def readme_long_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """:class:`readme_runs.LongRuns`, started in the background when a selected test reads them; else None."""
    if not any(item.get_closest_marker("chain") for item in request.session.items):
        yield None
        return
    from readme_runs import LongRuns

    runs = LongRuns(tmp_path_factory.mktemp)
    runs.start()
    yield runs
    runs.stop()
