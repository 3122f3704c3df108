"""Zero-shot readers on small files in each set's public format."""

import json
from pathlib import Path

import pytest
from PIL import Image

from vretrver.benchmarks import MissingDataError, load_benchmark
from vretrver.benchmarks.registry import reader_arguments
from vretrver.benchmarks.zeroshot import (
    load_circo,
    load_genecis,
    load_mtfiq,
    load_visdial,
    load_vist,
    write_circo_submission,
)
from vretrver.samples import SampleError


def dump(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def jpeg(path: Path, size=(40, 30), color=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


# --------------------------------------------------------------------------- CIRCO


@pytest.fixture
def circo(tmp_path):
    r = tmp_path / "CIRCO"
    ids = [9761, 489535, 57541, 85932, 12, 13]
    dump(
        r / "COCO2017_unlabeled/annotations/image_info_unlabeled2017.json",
        {
            "info": {"description": "COCO 2017 Dataset"},
            "images": [{"file_name": f"{i:012d}.jpg", "id": i, "height": 480, "width": 640} for i in ids],
        },
    )
    (r / "COCO2017_unlabeled/unlabeled2017").mkdir(parents=True)
    dump(
        r / "annotations/val.json",
        [
            {
                "reference_img_id": 85932,
                "target_img_id": 9761,
                "relative_caption": "is held by a little girl on a chair",
                "shared_concept": "a teddy bear",
                "gt_img_ids": [9761, 489535, 57541],
                "id": 0,
                "semantic_aspects": ["direct_addressing"],
            }
        ],
    )
    dump(
        r / "annotations/test.json",
        [
            {
                "reference_img_id": 12,
                "relative_caption": "has two of them",
                "shared_concept": "a cup",
                "id": 0,
            },
            {
                "reference_img_id": 13,
                "relative_caption": "is at night",
                "shared_concept": "a street",
                "id": 1,
            },
        ],
    )
    return r


def test_circo_val(circo):
    (t,) = load_circo(circo, "val")
    assert t.name == "circo" and t.metric == "mAP@5"
    assert len(t.pool) == 6
    assert t.pool["9761"].image == str(circo.resolve() / "COCO2017_unlabeled/unlabeled2017/000000009761.jpg")
    (q,) = t.queries
    assert q.id == "0"
    assert q.query.text == "is held by a little girl on a chair"
    assert q.query.images == [t.pool["85932"].image]
    assert q.positives == ["9761", "489535", "57541"]
    assert q.meta["shared_concept"] == "a teddy bear" and q.meta["candidate_modality"] == "image"
    # CIRCO's Recall@k counts only this image, its mAP@k all of gt_img_ids
    assert q.meta["target_img_id"] == "9761"


def test_circo_test_has_no_labels_and_writes_a_submission(circo, tmp_path):
    (t,) = load_circo(circo, "test")
    assert [q.positives for q in t.queries] == [[], []]
    assert t.meta["submission_only"] is True
    assert load_circo(circo, "val")[0].meta["submission_only"] is False
    ranked = [str(i) for i in range(1000, 1060)]
    out = tmp_path / "sub/submission_test.json"
    write_circo_submission(out, {"0": ranked, "1": ranked[::-1]}, query_ids=[q.id for q in t.queries])
    sub = json.loads(out.read_text())
    assert list(sub) == ["0", "1"]
    assert sub["0"] == list(range(1000, 1050)) and len(sub["1"]) == 50 and sub["1"][0] == 1059
    with pytest.raises(ValueError, match="query 0 has 10 distinct ids, needs 50"):
        write_circo_submission(out, {"0": ranked[:10]})
    with pytest.raises(ValueError, match="1 queries have no ranking"):
        write_circo_submission(out, {"0": ranked}, query_ids=["0", "1"])


def test_circo_errors(circo):
    val = circo / "annotations/val.json"
    ann = json.loads(val.read_text())
    ann[0]["reference_img_id"] = 4242
    dump(val, ann)
    with pytest.raises(SampleError, match=r"val\.json \[item 0\]: field 'reference_img_id'"):
        load_circo(circo, "val")
    ann[0]["reference_img_id"] = 85932
    ann[0]["target_img_id"] = 12
    dump(val, ann)
    with pytest.raises(
        SampleError, match=r"\[item 0\]: field 'target_img_id': expected one of gt_img_ids, got 12"
    ):
        load_circo(circo, "val")
    del ann[0]["target_img_id"]
    dump(val, ann)
    with pytest.raises(SampleError, match="field 'target_img_id': expected present"):
        load_circo(circo, "val")
    del ann[0]["gt_img_ids"]
    dump(val, ann)
    with pytest.raises(SampleError, match="field 'gt_img_ids': expected present"):
        load_circo(circo, "val")
    (circo / "COCO2017_unlabeled/annotations/image_info_unlabeled2017.json").unlink()
    with pytest.raises(MissingDataError, match="image_info_unlabeled2017.json"):
        load_benchmark("circo", circo)


# --------------------------------------------------------------------------- GeneCIS


@pytest.fixture
def genecis(tmp_path):
    r = tmp_path / "genecis"
    dump(
        r / "annotations/change_object.json",
        [
            {
                "reference": {"val_image_id": 139},
                "target": {"val_image_id": 285},
                "condition": "dog",
                "gallery": [{"val_image_id": 632}, {"val_image_id": 724}],
            },
            {
                "reference": {"val_image_id": 724},
                "target": {"val_image_id": 139},
                "condition": "bus",
                "gallery": [{"val_image_id": 285}],
            },
        ],
    )
    (r / "val2017").mkdir()
    vg = {"image_id": 2380245, "instance_bbox": [10, 20, 20, 10], "object_name": "shirt"}
    dump(
        r / "genecis/focus_attribute.json",  # the official repository's location
        [
            {
                "reference": vg,
                "target": {**vg, "image_id": 7, "instance_bbox": [0, 0, 8, 8]},
                "condition": "color",
                "gallery": [{**vg, "image_id": 8}, {**vg, "image_id": 9}],
            }
        ],
    )
    for i, size in ((2380245, (100, 80)), (7, (16, 16)), (8, (50, 50)), (9, (60, 40))):
        jpeg(r / ("VG_100K" if i != 9 else "VG_100K_2") / f"{i}.jpg", size)
    return r


def test_genecis_coco_task(genecis):
    (t,) = load_genecis(genecis, ["change_object"])
    assert t.name == "genecis_change_object" and t.metric == "R@1"
    q0, q1 = t.queries
    assert q0.query.text == "dog"
    assert q0.query.images == [str(genecis.resolve() / "val2017/000000000139.jpg")]
    assert q0.positives == ["285"]
    assert q0.meta["gallery"] == ["285", "632", "724"]
    assert q1.meta["gallery"] == ["139", "285"]
    assert sorted(t.pool) == ["139", "285", "632", "724"]


def test_genecis_gallery_repeating_its_target_keeps_the_upstream_copies(genecis):
    """The GeneCIS / LamRA scorers rank [target, *gallery] as listed. One change_object query of the
    released annotations lists its target again in the gallery: that image takes two ranks there."""
    path = genecis / "annotations/change_object.json"
    ann = json.loads(path.read_text())
    ann[0]["gallery"].append({"val_image_id": 285})  # the target again
    ann[0]["gallery"].append({"val_image_id": 632})  # and a gallery image twice
    dump(path, ann)
    (t,) = load_genecis(genecis, ["change_object"])
    q0, q1 = t.queries
    assert q0.meta["gallery"] == ["285", "632", "724"]  # each image once in the first stage
    assert q0.meta["copies"] == {"285": 2, "632": 2}
    assert "copies" not in q1.meta
    (t,) = load_genecis(genecis, ["change_object"], duplicates="drop")
    assert "copies" not in t.queries[0].meta
    with pytest.raises(ValueError, match="duplicates must be one of"):
        load_genecis(genecis, ["change_object"], duplicates="twice")


def test_genecis_visual_genome_crops_are_cut_once(genecis):
    (t,) = load_benchmark("genecis", genecis, tasks=["genecis_focus_attribute"])
    (q,) = t.queries
    crops = genecis.resolve() / "vg/focus_attribute"
    assert q.query.images == [str(crops / "2380245_0_0.jpg")]
    assert q.positives == ["7_0_1"]
    assert q.meta["gallery"] == ["7_0_1", "8_0_2", "9_0_3"]
    # box [10, 20, 20, 10] in 100x80, widened by 70 %: (0, 13) - (34, 30), i.e. 34x17, padded to 34x34
    with Image.open(crops / "2380245_0_0.jpg") as im:
        assert im.size == (34, 34)
    with Image.open(crops / "9_0_3.jpg") as im:  # found in VG_100K_2
        assert im.size[0] == im.size[1]
    before = (crops / "8_0_2.jpg").stat().st_mtime_ns
    load_genecis(genecis, ["focus_attribute"])
    assert (crops / "8_0_2.jpg").stat().st_mtime_ns == before


def test_genecis_missing_sources_and_annotations(genecis):
    (genecis / "VG_100K/8.jpg").unlink()
    with pytest.raises(MissingDataError, match="1 Visual Genome crops are missing"):
        load_genecis(genecis, ["focus_attribute"])
    with pytest.raises(MissingDataError, match="focus_object.json"):
        load_genecis(genecis, ["focus_object"])
    with pytest.raises(ValueError, match="GeneCIS tasks"):
        load_genecis(genecis, ["colour"])


# --------------------------------------------------------------------------- Visual Dialog


@pytest.fixture
def visdial(tmp_path):
    r = tmp_path / "visdial"
    (r / "VisualDialog_val2018").mkdir(parents=True)
    dialog = [
        {"question": i % 3, "answer": i % 2, "answer_options": [0, 1], "gt_index": 0} for i in range(10)
    ]
    dump(
        r / "visdial_1.0_val.json",
        {
            "version": "1.0",
            "split": "val2018",
            "data": {
                "questions": ["is it sunny", "how many people are there", "what color is the bus?"],
                "answers": ["yes", "2"],
                "dialogs": [
                    {"image_id": 185565, "caption": "a bus parked on a street", "dialog": dialog},
                    {"image_id": 284024, "caption": "a man on a horse", "dialog": dialog[:2]},
                ],
            },
        },
    )
    return r


def test_visdial_dialog_to_image(visdial):
    (t,) = load_visdial(visdial, rounds=3)
    assert t.name == "visdial" and t.metric == "R@1"
    assert sorted(t.pool) == ["185565", "284024"]
    assert t.pool["185565"].image.endswith("VisualDialog_val2018/VisualDialog_val2018_000000185565.jpg")
    q = t.queries[0]
    assert q.id == "185565" and q.positives == ["185565"]
    assert q.query.text.splitlines() == [
        "a bus parked on a street.",
        "Q: is it sunny? A: yes.",
        "Q: how many people are there? A: 2.",
        "Q: what color is the bus? A: yes.",
    ]
    assert len(load_visdial(visdial)[0].queries[0].query.text.splitlines()) == 11
    no_caption = load_visdial(visdial, rounds=1, with_caption=False)[0].queries[1]
    assert no_caption.query.text == "Q: is it sunny? A: yes."
    limited = load_benchmark("visdial", visdial, limit=1)[0]
    assert len(limited.queries) == 1 and len(limited.pool) == 2


def test_visdial_bad_index(visdial):
    path = visdial / "visdial_1.0_val.json"
    d = json.loads(path.read_text())
    d["data"]["dialogs"][1]["dialog"][1]["answer"] = 7
    dump(path, d)
    with pytest.raises(
        SampleError, match=r"\[dialogs 1\] round 1: field 'answer': expected an index below 2"
    ):
        load_visdial(visdial)


# --------------------------------------------------------------------------- Visual Storytelling


def sis(story, order, photo, text):
    return [
        {
            "original_text": text,
            "album_id": "72157",
            "photo_flickr_id": photo,
            "setting": "first-2-pick-and-tell",
            "worker_id": "W1",
            "story_id": story,
            "tier": "story-in-sequence",
            "worker_arranged_photo_order": order,
            "text": text,
            "storylet_id": f"{story}{order}",
        }
    ]


@pytest.fixture
def vist(tmp_path):
    r = tmp_path / "vist"
    anns = [sis("45530", k, f"10{k}", f"sentence {k} .") for k in (0, 1, 3, 2, 4)]  # one out of order
    anns += [sis("45531", k, f"20{k}", f"other {k} .") for k in range(5)]
    dump(r / "sis/val.story-in-sequence.json", {"images": [], "albums": [], "annotations": anns})
    for k in range(5):
        jpeg(r / "images/val" / f"10{k}.jpg")
        if k != 2:
            jpeg(r / "images/val" / f"20{k}.jpg")
    (r / "images/val/104.jpg").unlink()
    Image.new("RGB", (4, 4)).save(r / "images/val/104.png")  # some VIST photos are PNG or GIF
    jpeg(r / "images/val/103.jpg")
    Image.new("RGB", (4, 4)).save(r / "images/val/103.png")  # both present: the JPEG is used
    (r / "images/val/notes.txt").write_text("not an image")
    return r


def test_vist_story_to_last_image(vist):
    (t,) = load_vist(vist)
    assert t.name == "vist" and t.metric == "R@1"
    assert t.issues == {"stories_missing_images": 1}
    assert sorted(t.pool) == ["100", "101", "102", "103", "104", "200", "201", "203", "204"]
    (q,) = t.queries
    assert q.id == "45530"
    assert q.positives == ["104"]
    assert t.pool["104"].image.endswith("images/val/104.png")
    assert t.pool["103"].image.endswith("images/val/103.jpg")
    assert q.query.images == [t.pool[p].image for p in ("100", "101", "102", "103")]
    assert q.query.text.splitlines()[0] == "sentence 0 . (image 1)"
    assert q.query.text.splitlines()[-1] == "sentence 4 ."
    assert q.meta["exclude"] == ["100", "101", "102", "103"]
    assert [turn["text"] for turn in q.meta["turns"]] == [f"sentence {k} ." for k in range(5)]
    assert q.meta["turns"][-1]["image"] is None


# --------------------------------------------------------------------------- multi-turn FashionIQ


@pytest.fixture
def mtfiq(tmp_path):
    r = tmp_path / "multiturnfashion"
    url = "http://ecx.images-amazon.com/images/I/x.jpg"
    dump(
        r / "data/all.val.json",
        [
            {
                "target": [url, "B008VPNQCK"],
                "reference": [
                    [url, ["has long sleeves", " has same length and has longer sleeves"], "B0090KHN7E"],
                    [url, ["is belted and is navy blue", ""], "B009OCO9XO"],
                ],
            },
            {"target": [url, "B00NOTINPOOL"], "reference": [[url, ["is red"], "B0090KHN7E"]]},
        ],
    )
    dump(r / "image_splits/split.all.val.json", ["B008VPNQCK", "B0090KHN7E", "B009OCO9XO"])
    (r / "images").mkdir()
    return r


def test_mtfiq_rounds(mtfiq, tmp_path):
    (t,) = load_mtfiq(mtfiq)
    assert t.name == "mtfiq" and t.metric == "R@5"
    assert sorted(t.pool) == ["B008VPNQCK", "B0090KHN7E", "B009OCO9XO"]
    q = t.queries[0]
    assert q.positives == ["B008VPNQCK"]
    img = mtfiq.resolve() / "images"
    assert q.query.images == [str(img / "B0090KHN7E.jpg"), str(img / "B009OCO9XO.jpg")]
    assert q.query.text.splitlines() == [
        "Image 1: has long sleeves and has same length and has longer sleeves",
        "Image 2: is belted and is navy blue",
    ]
    assert t.issues == {"positives_not_in_pool": 1}
    other = tmp_path / "M-BEIR/mbeir_images/fashioniq_images"
    other.mkdir(parents=True)
    (t,) = load_benchmark("mtfiq", mtfiq, image_dir=other, limit=1)
    assert len(t.queries) == 1 and t.pool["B008VPNQCK"].image == str(other / "B008VPNQCK.jpg")


def test_mtfiq_pool_listing_an_image_twice(mtfiq):
    """split.all.val.json names 17 of its 6,274 images twice; LamRA embeds the list as is, so each copy
    takes a rank. The pool keeps one candidate per image and records the copies for scoring."""
    dump(
        mtfiq / "image_splits/split.all.val.json",
        ["B008VPNQCK", "B0090KHN7E", "B009OCO9XO", "B0090KHN7E", "B0090KHN7E"],
    )
    (t,) = load_mtfiq(mtfiq)
    assert sorted(t.pool) == ["B008VPNQCK", "B0090KHN7E", "B009OCO9XO"]
    assert t.meta["copies"] == {"B0090KHN7E": 3}
    assert t.issues == {"positives_not_in_pool": 1, "repeated_dids": 2}
    (t,) = load_mtfiq(mtfiq, duplicates="drop")
    assert "copies" not in t.meta and t.issues["duplicate_dids"] == 2


def test_reader_arguments_are_checked_against_the_reader(mtfiq, genecis, circo):
    with pytest.raises(ValueError) as e:
        load_benchmark("mtfiq", mtfiq, image_folder="x")
    msg = str(e.value)
    assert "load_mtfiq takes no argument 'image_folder'" in msg
    assert "it accepts: category, image_dir, duplicates" in msg
    with pytest.raises(ValueError, match="load_circo takes no argument 'vg_dir'; it accepts: none"):
        load_benchmark("circo", circo, vg_dir="x")
    assert reader_arguments("genecis") == ["vg_dir", "duplicates"]
    assert reader_arguments("mbeir") == ["pool", "check_images", "progress", "instruction"]
    (t,) = load_benchmark("mtfiq", mtfiq, category="all", duplicates="drop")
    assert t.meta["category"] == "all"


def test_mtfiq_bad_reference(mtfiq):
    path = mtfiq / "data/all.val.json"
    d = json.loads(path.read_text())
    d[1]["reference"][0] = ["url", "not a list", "B1"]
    dump(path, d)
    with pytest.raises(SampleError, match=r"all\.val\.json \[item 1\] reference\[0\]: field 'reference'"):
        load_mtfiq(mtfiq)


def test_registry_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark"):
        load_benchmark("cirr")
    with pytest.raises(ValueError, match="sis/"):
        load_benchmark("vist")
    with pytest.raises(ValueError, match="only the split"):
        load_benchmark("visdial", tmp_path, split="test")
    with pytest.raises(MissingDataError, match="visdial_1.0_val.json"):
        load_benchmark("visdial", tmp_path)
