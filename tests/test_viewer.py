"""The HTML report: built from a small result folder with real images and hand-written trajectories that
run through the real Episode (so the tool images are the ones the tools return), then rendered in
headless Chromium to check what a person would see."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from vretrver.episode import Episode
from vretrver.metrics import score_task
from vretrver.report.tables import summarize, task_entry, write_summary
from vretrver.report.viewer import load_views, write_report
from vretrver.samples import Candidate, Query, Sample, write_jsonl, write_samples

CHROMIUM = os.environ.get("VRETRVER_CHROMIUM", "/usr/bin/chromium")
TUXPAINT = Path("/usr/share/tuxpaint/stamps")


def _tool(name: str, **arguments) -> str:
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


# Per query: the assistant turns, fed one by one to a real Episode.
SCRIPTS: dict[str, list[str]] = {
    # A select of two close candidates, then a crop of the one that wins; the ground truth moves 3 -> 1.
    "t2i-select-crop": [
        "<think>Candidate 3 may match; compare it with candidate 2 at full resolution.</think>"
        + _tool("select_images", target_images=[2, 3]),
        "<think>Image 3 looks right; zoom into its upper left part to check the details.</think>"
        + _tool("crop_image", bbox_2d=[0.05, 0.05, 0.6, 0.6], target_image=3),
        "<think>The crop confirms it.</think><answer>[3, 2, 1, 4, 5]</answer>",
    ],
    # An invalid call (degenerate box), then an answer that pushes the ground truth from 1 to 2.
    "t2i-invalid": [
        "<think>Zoom into candidate 2.</think>"
        + _tool("crop_image", bbox_2d=[40, 40, 10, 10], target_image=2),
        "<think>The box was wrong; answer from the overview.</think><answer>[2, 1, 3, 4, 5]</answer>",
    ],
    # No tools; the ground truth stays first.
    "t2i-plain": ["<think>Candidate 1 matches the description.</think><answer>[1, 2, 3, 4, 5]</answer>"],
    # Second task: image query, text candidates; a crop of the query image (index 0), then a wrong answer.
    "i2t-crop-query": [
        "<think>Look at the middle of the query drawing.</think>"
        + _tool("crop_image", bbox_2d=[0.25, 0.25, 0.75, 0.75], target_image=0),
        "<think>It reads like the second caption.</think><answer>[2, 1, 3]</answer>",
    ],
}


# Real photos from the scikit-image wheel, with captions written for them.
PHOTOS = {
    "astronaut.png": "An astronaut in a white suit in front of a flag.",
    "coffee.png": "A cup of coffee on a saucer.",
    "chelsea.png": "A tabby cat looking to the side.",
    "rocket.jpg": "A rocket on its launch pad.",
    "motorcycle_left.png": "A red motorcycle seen from the left.",
    "camera.png": "A man with a camera on a tripod, in black and white.",
    "hubble_deep_field.jpg": "Galaxies in a deep field photograph of the sky.",
    "ihc.png": "A stained tissue sample under a microscope.",
}


def _pick_images(n: int, source: str = "tuxpaint") -> list[tuple[str, str]]:
    """n (image path, caption) pairs: Tux Paint drawings with distinct captions, or skimage photos."""
    pairs: list[tuple[str, str]] = []
    if source == "tuxpaint" and TUXPAINT.is_dir():
        from vretrver.benchmarks.tuxpaint import read_pairs

        seen = set()
        for p in read_pairs(TUXPAINT)[0]:
            if p.caption not in seen:
                seen.add(p.caption)
                pairs.append((p.image, p.caption))
        # Spread over categories so the page shows different kinds of drawings.
        pairs = pairs[:: max(1, len(pairs) // (3 * n))][:n]
    if len(pairs) < n:
        import importlib.util

        data = Path(next(iter(importlib.util.find_spec("skimage").submodule_search_locations))) / "data"
        pairs = [(str(data / f), caption) for f, caption in PHOTOS.items() if (data / f).is_file()]
        pairs = (pairs * (n // len(pairs) + 1))[:n]
    return pairs


def build_result_folder(out: Path, source: str = "tuxpaint") -> Path:
    """A result folder in evaluate.py's layout: two tasks, four queries, hand-written trajectories.

    ``source``: "tuxpaint" (the installed stamps; skimage photos if missing) or "photos" (skimage).
    """
    imgs = _pick_images(8, source)
    t2i: list[tuple[Sample, list[str]]] = []
    # Each t2i query ranks 5 drawings; the ground truth sits at first-stage position 3, 1 and 1.
    for qid, gt_pos, offset in (("t2i-select-crop", 3, 0), ("t2i-invalid", 1, 1), ("t2i-plain", 1, 2)):
        window = [imgs[(offset + k) % len(imgs)] for k in range(5)]
        gt_img, gt_caption = window[0]
        window[0], window[gt_pos - 1] = window[gt_pos - 1], window[0]
        cands = [Candidate(id=Path(p).stem, image=p) for p, _ in window]
        gt_id = cands[gt_pos - 1].id
        s = Sample(
            id=qid,
            query=Query(text=gt_caption, instruction="Find the image that matches this description."),
            candidates=cands,
            positives=[gt_id],
            task="demo_t2i",
        )
        t2i.append((s, SCRIPTS[qid]))
    qimg, qcap = imgs[5]
    caps = [qcap, imgs[6][1], imgs[7][1]]
    i2t_sample = Sample(
        id="i2t-crop-query",
        query=Query(images=[qimg], instruction="Find the caption that describes this image."),
        candidates=[Candidate(id=f"cap{k}", text=c) for k, c in enumerate(caps)],
        positives=["cap0"],
        task="demo_i2t",
    )
    tasks = {"demo_t2i": t2i, "demo_i2t": [(i2t_sample, SCRIPTS["i2t-crop-query"])]}
    entries = {}
    for task, items in tasks.items():
        fs_rows, res_rows, traj_rows = [], [], []
        for s, script in items:
            ep = Episode(s)
            for text in script:
                ep.step(text)
            assert ep.done, f"{s.id}: the script must end the episode"
            rec = ep.to_record(out / "trajectories" / "img")
            rec.update(qid=s.id, window=0, window_start=0, candidate_ids=[c.id for c in s.candidates])
            traj_rows.append(rec)
            fs = [c.id for c in s.candidates]
            fs_rows.append(
                {"qid": s.id, "ranked": fs, "scores": [float(len(fs) - i) for i in range(len(fs))]}
            )
            res_rows.append(
                {
                    "qid": s.id,
                    "first_stage": fs,
                    "reranked": ep.ranked_ids(),
                    "n_valid_calls": [ep.n_valid_calls],
                    "n_invalid_calls": [ep.n_invalid_calls],
                    "answered": [ep.answered],
                    "failed": [],
                }
            )
        write_samples(out / "samples" / f"{task}.jsonl", [s for s, _ in items])
        write_jsonl(out / "first_stage" / f"{task}.jsonl", fs_rows)
        write_jsonl(out / "results" / f"{task}.jsonl", res_rows)
        write_jsonl(out / "trajectories" / f"{task}.jsonl", traj_rows)
        positives = {s.id: s.positives for s, _ in items}
        fs_score = score_task({r["qid"]: r["ranked"] for r in fs_rows}, positives)
        rr_score = score_task({r["qid"]: r["reranked"] for r in res_rows}, positives)
        entries[task] = task_entry(fs_score.n_scored, fs_score.metrics, rr_score.metrics, "R@1")
    cfg = {"benchmark": "demo", "retriever": "offline", "reranker": "hand-written", "top_n": 5}
    write_summary(out, summarize(entries, cfg), "hand-written trajectories")
    return out


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    results = build_result_folder(tmp_path_factory.mktemp("results"))
    return write_report(results, page_size=2, progress=False)


# ------------------------------------------------------------------ the files, without a browser


def test_report_files_and_layout(report: Path):
    out = report.parent
    pages = sorted(p.name for p in out.glob("*.html"))
    # demo_t2i has 3 queries at 2 per page: two pages; demo_i2t one page.
    assert pages == ["demo_i2t-001.html", "demo_t2i-001.html", "demo_t2i-002.html", "index.html"]
    for png in ("rank_change.png", "tool_calls.png", "recall_by_tools.png"):
        assert (out / png).stat().st_size > 2000, png
    index = report.read_text()
    assert "<table class='summary'>" in index and "demo_t2i" in index and "demo_i2t" in index
    # Every image the pages use is a file under report/ (no hot links, no paths outside the report).
    for page in out.glob("*.html"):
        for src in re.findall(r"<img src=\"([^\"]+)\"|<img src='([^']+)'", page.read_text()):
            src = src[0] or src[1]
            assert not src.startswith(("http", "/", "file:")), src
            assert (out / src).is_file(), (page.name, src)
        # Tool images link to larger copies, also files of the report.
        for href in re.findall(r"<a href='(img/[^']+)'", page.read_text()):
            assert (out / href).is_file(), (page.name, href)


def test_load_views_reads_folder(tmp_path: Path):
    results = build_result_folder(tmp_path / "r")
    views = load_views(results)
    flags = {v.sample.id: (v.failure, v.used_tools) for vs in views.values() for v in vs}
    assert flags == {
        "t2i-select-crop": (False, True),
        "t2i-invalid": (True, True),
        "t2i-plain": (False, False),
        "i2t-crop-query": (True, True),
    }


def test_a_damaged_line_hides_only_its_own_episode(tmp_path: Path, capsys: pytest.CaptureFixture):
    results = build_result_folder(tmp_path / "r")
    files = sorted((results / "trajectories").glob("*.jsonl"))
    total = sum(len(f.read_text(encoding="utf-8").splitlines()) for f in files)
    traj = max(files, key=lambda f: len(f.read_text(encoding="utf-8").splitlines()))
    lines = traj.read_text(encoding="utf-8").splitlines(keepends=True)
    assert len(lines) >= 2
    lines[0] = '{"qid": "damaged\n'  # a broken line first: the lines after it must still be read
    traj.write_text("".join(lines), encoding="utf-8")
    views = load_views(results)
    shown = sum(len(v.episodes) for vs in views.values() for v in vs)
    assert shown == total - 1
    assert f"{traj}:1" in capsys.readouterr().err


def test_missing_image_does_not_break_the_report(tmp_path: Path):
    results = build_result_folder(tmp_path / "r")
    f = results / "samples" / "demo_t2i.jsonl"
    rows = [json.loads(line) for line in f.read_text().splitlines()]
    rows[0]["candidates"][4]["image"] = str(tmp_path / "gone.png")
    write_jsonl(f, rows)
    index = write_report(results, progress=False)
    assert "(image missing)" in (index.parent / "demo_t2i-001.html").read_text()


def test_view_command_one_task_first_queries(tmp_path: Path, capsys: pytest.CaptureFixture):
    from vretrver.cli import main

    results = build_result_folder(tmp_path / "r")
    assert main(["view", str(results), "--task", "demo_t2i", "--max-queries", "2", "--page-size", "1"]) == 0
    assert "report/index.html" in capsys.readouterr().out
    out = results / "report"
    assert sorted(p.name for p in out.glob("*.html")) == [
        "demo_t2i-001.html",
        "demo_t2i-002.html",
        "index.html",
    ]
    assert "pages (for the first 2)" in (out / "index.html").read_text()
    assert main(["view", str(results), "--task", "nope"]) == 2
    assert "no task nope" in capsys.readouterr().err


def test_empty_page_size_rejected(tmp_path: Path):
    results = build_result_folder(tmp_path / "r")
    with pytest.raises(ValueError, match="page_size"):
        write_report(results, page_size=0, progress=False)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_an_oversized_image_is_skipped_with_a_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    from PIL import Image

    from vretrver.cli import main

    results = build_result_folder(tmp_path / "r", source="photos")
    # A decompression bomb: PIL refuses a file whose header claims more than twice MAX_IMAGE_PIXELS. A
    # 1-bit 2000 x 2000 PNG is 16 kB; with the limit at 1.5 M px it is one (4 M > 3 M), the photos are not.
    bomb = tmp_path / "bomb.png"
    Image.new("1", (2000, 2000), 1).save(bomb)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_500_000)
    f = results / "samples" / "demo_t2i.jsonl"
    rows = _rows(f)
    rows[0]["candidates"][4]["image"] = str(bomb)
    write_jsonl(f, rows)
    assert main(["view", str(results)]) == 0
    out = results / "report"
    assert sorted(p.name for p in out.glob("*.html")) == [
        "demo_i2t-001.html",
        "demo_t2i-001.html",
        "index.html",
    ]
    page = (out / "demo_t2i-001.html").read_text()
    assert "image not shown: bomb.png: too large" in page
    assert page.count("<img ") > 20  # everything else is there
    index = (out / "index.html").read_text()
    assert "1 image files could not be shown" in index and str(bomb) in index
    assert "bomb.png" in capsys.readouterr().err


def test_report_reads_no_file_outside_the_results_and_the_samples(tmp_path: Path):
    from PIL import Image

    results = build_result_folder(tmp_path / "r", source="photos")
    # A picture outside the result folder that no sample lists: a trajectory naming it (absolute, or
    # climbing out with ..) must not get it copied into the report.
    secret = tmp_path / "secret.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(secret)
    f = results / "trajectories" / "demo_t2i.jsonl"
    rows = _rows(f)
    tool_turn = next(t for t in rows[0]["turns"] if t.get("images"))
    kept = tool_turn["images"][0]
    tool_turn["images"] = [str(secret), "../../../secret.png", kept]  # from trajectories/img
    write_jsonl(f, rows)
    index = write_report(results, progress=False)
    page = (index.parent / "demo_t2i-001.html").read_text()
    assert page.count("outside the result folder and not a benchmark image") == 2
    for thumb in (index.parent / "img").iterdir():
        with Image.open(thumb) as im:
            assert im.convert("RGB").getpixel((0, 0)) != (1, 2, 3)
    # The tool image inside the folder and the benchmark's own images (outside it) are still shown.
    assert page.count('class="toolimg"') == 2  # the kept one of this call + the crop of the next
    assert "(image missing)" not in page


# ------------------------------------------------------------------ in a browser


class _Dom(HTMLParser):
    """The query blocks, turns and images of a dumped DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.queries: dict[str, dict[str, str]] = {}
        self.imgs: list[dict[str, str]] = []
        self.turns: list[str] = []
        self.links: list[dict[str, str]] = []
        self.ids: dict[str, str] = {}
        self._in_shown = False

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        cls = a.get("class", "")
        if tag == "div" and "q" in cls.split():
            self.queries[a["data-qid"]] = a
        if tag == "img":
            self.imgs.append(a)
        if tag == "div" and "turn" in cls.split():
            self.turns.append(cls)
        if tag == "a" and "data-page" in a:
            self.links.append(a)
        if a.get("id") == "shown":
            self._in_shown = True

    def handle_data(self, data):
        if self._in_shown:
            self.ids["shown"] = data
            self._in_shown = False


def _chromium(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp / 'chromium-profile'}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


def _dom(url: str, tmp: Path) -> tuple[_Dom, str]:
    text = _chromium(["--dump-dom", url], tmp).stdout
    d = _Dom()
    d.feed(text)
    return d, text


needs_chromium = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None and not os.path.isfile(CHROMIUM),
    reason=f"headless Chromium not found at {CHROMIUM} (install chromium or set VRETRVER_CHROMIUM)",
)


@pytest.mark.browser
@needs_chromium
def test_page_in_browser_shows_queries_images_and_turns(report: Path, tmp_path: Path):
    page = report.parent / "demo_t2i-001.html"
    d, text = _dom(page.as_uri(), tmp_path)
    assert list(d.queries) == ["t2i-select-crop", "t2i-invalid"]
    assert all(q["data-task"] == "demo_t2i" for q in d.queries.values())
    # Every <img> points at a file that exists.
    assert len(d.imgs) > 10
    for img in d.imgs:
        assert (page.parent / img["src"]).is_file(), img["src"]
    # Turns in order: select + crop + answer for the first query; invalid call + answer for the second.
    assert d.turns == [
        "turn assistant",
        "turn tool",
        "turn assistant",
        "turn tool",
        "turn assistant",
        "turn assistant",
        "turn tool invalid",
        "turn assistant",
    ]
    assert len([i for i in d.imgs if i.get("class") == "toolimg"]) == 3  # 2 selected images + 1 crop
    assert len([i for i in d.imgs if i.get("class") == "boxed"]) == 1  # the box drawn on the source
    assert "bbox_2d must be [x1, y1, x2, y2]" in text  # the invalid call's error
    assert "compare it with candidate 2 at full resolution" in text
    # The ground truth is marked on the candidate thumbnails of both queries.
    assert text.count("<b>ground truth</b>") == 2


@pytest.mark.browser
@needs_chromium
def test_filters_in_browser(report: Path, tmp_path: Path):
    page = report.parent / "demo_t2i-001.html"

    def hidden(d: _Dom) -> dict[str, bool]:
        return {q: "hidden" in a["class"].split() for q, a in d.queries.items()}

    d, _ = _dom(page.as_uri(), tmp_path)
    assert hidden(d) == {"t2i-select-crop": False, "t2i-invalid": False}
    d, _ = _dom(page.as_uri() + "?only=failures", tmp_path)
    assert hidden(d) == {"t2i-select-crop": True, "t2i-invalid": False}
    assert d.ids["shown"] == "1"
    # Page links carry the filter and count what passes it: page 2 (t2i-plain) has no failure.
    hrefs = {a["data-page"]: a for a in d.links}
    assert hrefs["demo_t2i-002.html"]["href"] == "demo_t2i-002.html?only=failures"
    assert "empty" in hrefs["demo_t2i-002.html"].get("class", "")
    d, _ = _dom(page.as_uri() + "?only=tools", tmp_path)
    assert hidden(d) == {"t2i-select-crop": False, "t2i-invalid": False}
    d, _ = _dom((report.parent / "demo_t2i-002.html").as_uri() + "?only=tools", tmp_path)
    assert hidden(d) == {"t2i-plain": True}
    assert d.ids["shown"] == "0"
    # One task: the i2t page holds only that task's query, with its crop of the query image.
    d, text = _dom((report.parent / "demo_i2t-001.html").as_uri() + "?only=failures,tools", tmp_path)
    assert hidden(d) == {"i2t-crop-query": False}
    assert "image 0 (the query)" in text


@pytest.mark.browser
@needs_chromium
def test_screenshot_is_not_blank(report: Path, tmp_path: Path):
    import numpy as np
    from PIL import Image

    png = tmp_path / "page.png"
    _chromium(
        [f"--screenshot={png}", "--window-size=1280,2000", (report.parent / "demo_t2i-001.html").as_uri()],
        tmp_path,
    )
    px = np.asarray(Image.open(png).convert("L"), dtype=np.float32)
    assert px.shape == (2000, 1280)
    assert px.std() > 20, "the page rendered (almost) uniformly"
    # Images rendered: some rows far from the page's grey-white background carry picture content.
    assert (px < 200).mean() > 0.02
