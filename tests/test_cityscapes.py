"""Dataset discovery and validation: every bad input is a one-line UserError naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cityseg_fast import labels as L
from cityseg_fast.data.cityscapes import (
    Sample,
    find_samples,
    read_image_rgb,
    read_label,
    validate_samples,
)
from cityseg_fast.errors import UserError

H, W = 16, 32


def _ids(seed: int = 0) -> np.ndarray:
    """A label image using every valid labelId."""
    ids = np.array(sorted(L.VALID_LABEL_IDS), np.uint8)
    return np.random.default_rng(seed).choice(ids, size=(H, W))


def _write_pair(root: Path, split: str, city: str, n: int, kind: str = "labelIds") -> tuple[Path, Path]:
    stem = f"{city}_{n:06d}_000019"
    img = root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
    suffix = "_gtFine_labelIds.png" if kind == "labelIds" else "_gtFine_labelTrainIds.png"
    lab = root / "gtFine" / split / city / f"{stem}{suffix}"
    img.parent.mkdir(parents=True, exist_ok=True)
    lab.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(n).integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(rgb, "RGB").save(img)
    ids = _ids(n)
    Image.fromarray(ids if kind == "labelIds" else L.ID_TO_TRAINID[ids], "L").save(lab)
    return img, lab


@pytest.fixture
def root(tmp_path) -> Path:
    for i in range(3):
        _write_pair(tmp_path, "train", "aachen", i)
    _write_pair(tmp_path, "val", "lindau", 0)
    return tmp_path


def _one_line_error(fn, *args, must_name: Path, **kw) -> str:
    with pytest.raises(UserError) as e:
        fn(*args, **kw)
    msg = str(e.value)
    assert "\n" not in msg
    assert str(must_name) in msg, msg
    return msg


# ---- discovery ---------------------------------------------------------------------------------


def test_find_samples_pairs_and_sorts(root):
    s = find_samples(root, "train")
    assert [x.stem for x in s] == [f"aachen_{i:06d}_000019" for i in range(3)]
    assert all(x.label_kind == "labelIds" and x.label.name.endswith("_gtFine_labelIds.png") for x in s)
    validate_samples(s)


def test_label_train_ids_are_accepted(tmp_path):
    _write_pair(tmp_path, "train", "ulm", 0, kind="trainIds")
    (s,) = find_samples(tmp_path, "train")
    assert s.label_kind == "trainIds"
    validate_samples([s])
    np.testing.assert_array_equal(read_label(s.label, "trainIds"), L.ID_TO_TRAINID[_ids(0)])


def test_missing_directory_and_empty_split(tmp_path, root):
    _one_line_error(find_samples, root, "test", must_name=root / "leftImg8bit" / "test")
    (root / "leftImg8bit" / "empty").mkdir()
    (root / "gtFine" / "empty").mkdir()
    _one_line_error(find_samples, root, "empty", must_name=root)
    _one_line_error(find_samples, tmp_path / "nowhere", "train", must_name=tmp_path / "nowhere")


def test_image_without_label_and_label_without_image(root):
    lab = next((root / "gtFine" / "train").rglob("*_labelIds.png"))
    img = root / "leftImg8bit" / "train" / "aachen" / lab.name.replace("_gtFine_labelIds", "_leftImg8bit")
    lab.rename(lab.with_suffix(".bak"))
    msg = _one_line_error(find_samples, root, "train", must_name=img)
    assert "no label" in msg
    lab.with_suffix(".bak").rename(lab)
    img.unlink()
    msg = _one_line_error(find_samples, root, "train", must_name=lab)
    assert "no image" in msg


# ---- pixel-level checks ------------------------------------------------------------------------


def test_different_sizes(root):
    s = find_samples(root, "train")[1]
    Image.fromarray(_ids()[: H // 2], "L").save(s.label)
    msg = _one_line_error(validate_samples, [s], must_name=s.label)
    assert f"{H // 2}x{W}" in msg and f"{H}x{W}" in msg
    _one_line_error(validate_samples, [s], check_values=False, must_name=s.label)


@pytest.mark.parametrize("which", ["image", "label"])
def test_truncated_file(root, which):
    s = find_samples(root, "train")[0]
    path = getattr(s, which)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    msg = _one_line_error(validate_samples, [s], must_name=path)
    assert "truncated" in msg or "unreadable" in msg


def test_not_an_image(root):
    s = find_samples(root, "train")[0]
    s.image.write_bytes(b"this is not a PNG")
    _one_line_error(validate_samples, [s], must_name=s.image)


def test_invalid_label_ids(root):
    s = find_samples(root, "train")[0]
    bad = _ids()
    bad[0, :3] = [34, 200, 255]  # 255 is not a labelId (only a trainId)
    Image.fromarray(bad, "L").save(s.label)
    msg = _one_line_error(validate_samples, [s], must_name=s.label)
    assert "34" in msg and "200" in msg and "255" in msg
    validate_samples([s], check_values=False)  # values are the only problem


def test_invalid_train_ids(tmp_path):
    _, lab = _write_pair(tmp_path, "train", "ulm", 0, kind="trainIds")
    t = L.ID_TO_TRAINID[_ids()].copy()
    t[0, 0] = 19
    Image.fromarray(t, "L").save(lab)
    msg = _one_line_error(validate_samples, find_samples(tmp_path, "train"), must_name=lab)
    assert "19" in msg


def test_16_bit_label(root):
    s = find_samples(root, "train")[0]
    Image.fromarray(_ids().astype(np.uint16)).save(s.label)
    assert Image.open(s.label).mode.startswith("I")
    msg = _one_line_error(validate_samples, [s], must_name=s.label)
    assert "16-bit" in msg
    _one_line_error(read_label, s.label, "labelIds", check_values=False, must_name=s.label)


def test_rgb_label_is_rejected(root):
    s = find_samples(root, "train")[0]
    Image.fromarray(np.zeros((H, W, 3), np.uint8), "RGB").save(s.label)
    _one_line_error(validate_samples, [s], must_name=s.label)


# ---- conversions -------------------------------------------------------------------------------


def test_label_ids_map_to_train_ids_with_the_official_table(root):
    s = find_samples(root, "train")[2]
    out = read_label(s.label, "labelIds")
    assert out.dtype == np.uint8 and out.flags.writeable  # torch.from_numpy warns on read-only arrays
    assert read_image_rgb(s.image).flags.writeable
    np.testing.assert_array_equal(out, L.ID_TO_TRAINID[_ids(2)])


def test_palette_label_uses_its_indices(tmp_path):
    p = tmp_path / "lab.png"
    im = Image.frombytes("P", (W, H), _ids().tobytes())
    im.putpalette(L.label_id_palette().ravel().tolist())
    im.save(p)
    assert Image.open(p).mode == "P"
    np.testing.assert_array_equal(read_label(p, "labelIds"), L.ID_TO_TRAINID[_ids()])


@pytest.mark.parametrize("mode", ["P", "L", "RGBA", "LA", "I;16"])
def test_images_are_converted_to_rgb(tmp_path, mode):
    rgb = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    src = Image.fromarray(rgb, "RGB")
    if mode == "I;16":
        grey = np.asarray(src.convert("L")).astype(np.uint16) * 257
        im = Image.fromarray(grey)
        expected = np.repeat(np.asarray(src.convert("L"))[:, :, None], 3, axis=2)
    else:
        im = src.convert(mode)
        expected = np.asarray(im.convert("RGB"))
    p = tmp_path / f"img_{mode.replace(';', '')}.png"
    im.save(p)
    out = read_image_rgb(p)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


def test_sample_is_hashable_and_frozen():
    s = Sample(Path("a.png"), Path("b.png"), "x_000000_000019", "labelIds")
    assert {s: 1}[s] == 1
