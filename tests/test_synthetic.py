"""Synthetic Cityscapes: exact layout and names, determinism, class coverage, and colour alone is not enough."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cityseg_fast import labels as L
from cityseg_fast.data.cityscapes import find_samples
from cityseg_fast.data.synthetic import (
    CITIES,
    colour_baseline_miou,
    frame_seed,
    render_frame,
    write_synthetic,
)

SMALL = (64, 128)
NAME = re.compile(
    r"^(?P<dir>leftImg8bit|gtFine)/(?P<split>train|val|test)/(?P<city>[a-z]+)/"
    r"(?P=city)_(?P<seq>\d{6})_(?P<frame>\d{6})_(?P<kind>leftImg8bit|gtFine_labelIds|gtFine_color|gtFine_instanceIds)\.png$"
)


@pytest.fixture(scope="module")
def small_ds(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    write_synthetic(out, train=5, val=3, test=2, size=SMALL, seed=7, workers=1, progress=False)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_names_follow_the_cityscapes_pattern(small_ds):
    files = sorted(str(p.relative_to(small_ds)) for p in small_ds.rglob("*.png"))
    assert len(files) == (5 + 3 + 2) * 4  # image, labelIds, color, instanceIds per frame
    for f in files:
        m = NAME.match(f)
        assert m, f
        assert m["city"] in CITIES[m["split"]]
        assert (m["dir"] == "leftImg8bit") == (m["kind"] == "leftImg8bit")
    # Each image has its three gtFine files next to each other.
    for img in small_ds.glob("leftImg8bit/*/*/*_leftImg8bit.png"):
        split, city = img.parts[-3], img.parts[-2]
        stem = img.name[: -len("_leftImg8bit.png")]
        for kind in ("labelIds", "color", "instanceIds"):
            assert (small_ds / "gtFine" / split / city / f"{stem}_gtFine_{kind}.png").is_file()
    assert [s.stem for s in find_samples(small_ds, "val")] == [
        "frankfurt_000000_000019",
        "lindau_000000_000019",
        "munster_000000_000019",
    ]


def test_file_formats_match_the_real_dataset(small_ds):
    s = find_samples(small_ds, "train")[0]
    img, lab = Image.open(s.image), Image.open(s.label)
    assert (img.mode, img.size) == ("RGB", (SMALL[1], SMALL[0]))
    assert (lab.mode, lab.size) == ("L", (SMALL[1], SMALL[0]))
    assert s.label_kind == "labelIds"
    colour = Image.open(str(s.label).replace("_labelIds.png", "_color.png"))
    assert colour.mode == "RGBA"
    ids = np.asarray(lab)
    assert set(np.unique(ids)) <= L.VALID_LABEL_IDS
    np.testing.assert_array_equal(np.asarray(colour)[..., :3], L.label_id_palette()[ids])


def test_render_is_deterministic_and_seed_dependent():
    a = render_frame(123, SMALL)
    b = render_frame(123, SMALL)
    c = render_frame(124, SMALL)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert a[0].dtype == np.uint8 and a[1].dtype == np.uint8
    assert a[0].shape == (*SMALL, 3) and a[1].shape == SMALL
    assert not np.array_equal(a[1], c[1])
    assert frame_seed(0, "train", 1) != frame_seed(0, "val", 1) != frame_seed(1, "val", 1)


def test_dataset_bytes_do_not_depend_on_workers(tmp_path, small_ds):
    write_synthetic(tmp_path, train=5, val=3, test=2, size=SMALL, seed=7, workers=2, progress=False)
    assert _files(tmp_path) == _files(small_ds)


def test_too_small_frames_are_rejected():
    with pytest.raises(ValueError):
        render_frame(0, (8, 8))


def _frames(split: str, n: int, size=(128, 256), seed=0):
    return [render_frame(frame_seed(seed, split, i), size) for i in range(n)]


@pytest.fixture(scope="module")
def train20():
    return _frames("train", 20)


def test_all_19_classes_and_non_evaluated_ids_appear_in_20_frames(train20):
    present = np.zeros(256, bool)
    for _, lab in train20:
        present[np.unique(lab)] = True
    ids = set(np.flatnonzero(present).tolist())
    assert ids <= L.VALID_LABEL_IDS
    train_ids = {int(L.ID_TO_TRAINID[i]) for i in ids} - {L.IGNORE_INDEX}
    assert train_ids == set(range(L.NUM_CLASSES)), [L.CLASS_NAMES[i] for i in set(range(19)) - train_ids]
    # Ids the evaluation ignores must be there too, so loaders really apply the id -> trainId table.
    for name in ("ego vehicle", "static", "dynamic", "out of roi"):
        assert L.NAME_TO_LABEL_ID[name] in ids, name


def test_a_per_pixel_colour_classifier_is_weak(train20):
    """The best classifier that sees one pixel's colour (a class histogram per RGB cell) stays far from
    solving the scenes, so a CNN that does better is using spatial context."""
    train = train20 + _frames("train", 20, seed=1)
    val = _frames("val", 10)
    res = colour_baseline_miou(train, val)
    print(f"per-pixel colour baseline: val mIoU {res['miou']:.3f}")
    assert res["miou"] < 0.3
    assert len(res["per_class_iou"]) == L.NUM_CLASSES


def test_colour_baseline_can_succeed_when_colour_decides():
    """The baseline is not weak by construction: on frames painted in the class palette it is exact."""
    frames = []
    for _, lab in _frames("val", 4, size=SMALL):
        frames.append((L.label_id_palette()[lab], lab))
    # Several labelIds share black (0, 0, 0) but all map to ignore; evaluated classes have distinct colours.
    assert colour_baseline_miou(frames, frames)["miou"] > 0.99
