"""The embedded mini-benchmark, on the installed Debian package (and on a small tree of the same shape)."""

from pathlib import Path

import pytest
from PIL import Image

from vretrver.benchmarks import MissingDataError, load_benchmark
from vretrver.benchmarks.tuxpaint import DEFAULT_ROOT, INSTALL_COMMAND, caption_id, load_tuxpaint

installed = pytest.mark.skipif(
    not DEFAULT_ROOT.is_dir(), reason=f"tuxpaint-stamps-default is not installed; run: {INSTALL_COMMAND}"
)


@installed
def test_real_package_counts_and_consistency():
    t2i, i2t = load_tuxpaint(split="full")
    n_pairs, n_captions = t2i.meta["n_pairs"], t2i.meta["n_captions"]
    # about 540 captioned PNGs outside symbols/, a few captions shared by several drawings
    assert 450 <= n_pairs <= 700 and n_captions < n_pairs
    assert len(t2i.queries) == len(i2t.pool) == n_captions
    assert len(i2t.queries) == len(t2i.pool) == n_pairs
    assert sum(len(q.positives) for q in t2i.queries) == n_pairs
    assert not any(k.startswith("symbols/") for k in t2i.pool)
    assert len({c.text for c in i2t.pool.values()}) == n_captions
    for q in t2i.queries:
        assert all(p in t2i.pool for p in q.positives)
        assert q.meta["candidate_modality"] == "image" and q.query.images == []
    for q in i2t.queries:
        (pos,) = q.positives
        assert pos in i2t.pool and q.meta["candidate_modality"] == "text"
        # the caption is the first line of <name>.txt beside the drawing
        txt = Path(q.query.images[0]).with_suffix(".txt")
        assert i2t.pool[pos].text == txt.read_text(encoding="utf-8", errors="replace").splitlines()[0].strip()
    for c in list(t2i.pool.values())[:20]:
        assert c.image.endswith(".png") and Path(c.image).is_absolute()
        with Image.open(c.image) as im:
            im.load()


@installed
def test_real_package_split_is_deterministic():
    a = load_benchmark("tuxpaint")
    b = load_tuxpaint(split="test")
    assert [[q.id for q in t.queries] for t in a] == [[q.id for q in t.queries] for t in b]
    full = {t.name: {q.id for q in t.queries} for t in load_tuxpaint(split="full")}
    for t in a:
        assert len(t.queries) == 100
        assert {q.id for q in t.queries} <= full[t.name]
        assert len(t.pool) == len(load_tuxpaint(split="full", tasks=[t.name])[0].pool)
    (small,) = load_tuxpaint(tasks=["tuxpaint_i2t"], limit=7)
    assert [q.id for q in small.queries] == [q.id for q in a[1].queries][:7]
    (demo,) = load_tuxpaint(tasks=["tuxpaint_t2i"], test_size=20)
    assert [q.id for q in demo.queries] == [q.id for q in a[0].queries][:20]


def stamp(root: Path, rel: str, caption: str | None, ext: str = ".png") -> None:
    path = root / (rel + ext)
    path.parent.mkdir(parents=True, exist_ok=True)
    if ext == ".png":
        Image.new("RGBA", (8, 8), (0, 128, 0, 255)).save(path)
    else:
        path.write_text("<svg/>")
    if caption is not None:
        (root / (rel + ".txt")).write_text(f"{caption}\nfr.utf8=Traduction.\n", encoding="utf-8")


def test_tree_rules_dedup_symbols_svg_and_missing_captions(tmp_path):
    stamp(tmp_path, "animals/cats/kitten", "A white kitten.")
    stamp(tmp_path, "animals/cats/kitten-2", "A white kitten.")
    stamp(tmp_path, "animals/cats/kitten_mirror", None)
    stamp(tmp_path, "food/apple", "A red apple.")
    stamp(tmp_path, "food/pear", "A pear.", ext=".svg")
    stamp(tmp_path, "symbols/money/penny", "A penny.")
    t2i, i2t = load_tuxpaint(tmp_path, split="full")
    assert sorted(t2i.pool) == ["animals/cats/kitten", "animals/cats/kitten-2", "food/apple"]
    assert {q.query.text: q.positives for q in t2i.queries} == {
        "A white kitten.": ["animals/cats/kitten", "animals/cats/kitten-2"],
        "A red apple.": ["food/apple"],
    }
    assert [q.positives for q in i2t.queries] == [[caption_id("A white kitten.")]] * 2 + [
        [caption_id("A red apple.")]
    ]
    assert sorted(c.text for c in i2t.pool.values()) == ["A red apple.", "A white kitten."]
    assert t2i.meta["skipped_svg"] == 1 and t2i.meta["skipped_no_caption"] == 1
    assert len(load_tuxpaint(tmp_path, test_size=1)[0].queries) == 1


def test_missing_package_says_how_to_install(tmp_path):
    with pytest.raises(MissingDataError) as e:
        load_tuxpaint(tmp_path / "nowhere")
    assert "sudo apt-get install -y --no-install-recommends tuxpaint-stamps-default" in str(e.value)
    with pytest.raises(MissingDataError, match="tuxpaint-stamps-default"):
        load_tuxpaint(tmp_path)  # exists but holds no stamps
    with pytest.raises(ValueError, match="tuxpaint splits"):
        load_tuxpaint(tmp_path, split="val")
