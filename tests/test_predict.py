"""`cityseg predict`: palette / RGBA / greyscale / JPEG inputs of any size -> overlay + labelId PNGs."""

from __future__ import annotations

import numpy as np
import pytest
from engine_fixtures import render, trained_run
from PIL import Image

from cityseg_fast.cli import main
from cityseg_fast.engine.checkpoint import list_checkpoints
from cityseg_fast.labels import ID_TO_TRAINID

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    _, out = trained_run(tmp_path_factory.getbasetemp())
    return str(list_checkpoints(out)[-1])


def test_predict_palette_png_matches_the_scene(ckpt, tmp_path):
    img, lab = render(np.random.default_rng(123), 66, 130)  # not a multiple of 32: padded and cropped back
    pal = tmp_path / "scene.png"
    Image.fromarray(img).quantize(colors=64).save(pal)
    assert Image.open(pal).mode == "P"
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", ckpt, str(pal), "--out", str(out)]) == 0
    ids = np.asarray(Image.open(out / "scene_labelIds.png"))
    overlay = Image.open(out / "scene_overlay.png")
    assert ids.shape == (66, 130) and overlay.size == (130, 66) and overlay.mode == "RGB"
    valid = ID_TO_TRAINID[lab] != 255
    agree = (ID_TO_TRAINID[ids] == ID_TO_TRAINID[lab])[valid].mean()
    assert agree > 0.7, agree  # the trained model segments the palette image, not just writes files


def test_predict_other_modes_and_bad_input(ckpt, tmp_path, capsys):
    img, _ = render(np.random.default_rng(7), 40, 90)
    paths = []
    for mode, ext in (("RGBA", "png"), ("L", "png"), ("RGB", "jpg")):
        p = tmp_path / f"in_{mode}.{ext}"
        Image.fromarray(img).convert(mode).save(p)
        paths.append(str(p))
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", ckpt, *paths, "--out", str(out)]) == 0
    for mode in ("RGBA", "L", "RGB"):
        ids = np.asarray(Image.open(out / f"in_{mode}_labelIds.png"))
        assert ids.shape == (40, 90) and (ID_TO_TRAINID[ids] != 255).all()
    capsys.readouterr()
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert main(["predict", "--checkpoint", ckpt, str(bad), "--out", str(out)]) == 2
    assert "bad.png: not a readable image" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", ckpt, str(tmp_path / "gone.png"), "--out", str(out)]) == 2
    assert "gone.png: image not found" in capsys.readouterr().err
