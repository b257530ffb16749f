"""Evaluation: confusion matrix vs a reference, exactly-once counting (also over 2 ranks), and agreement
with the official cityscapesscripts evaluation on exported predictions."""

from __future__ import annotations

import glob
import json
import math

import numpy as np
import pytest
import torch
from engine_fixtures import run_cli, torchrun, trained_run

from cityseg_fast.engine.evaluate import ConfusionMatrix

pytestmark = pytest.mark.usefixtures("one_thread")


def test_confusion_matrix_matches_numpy_reference():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 19, (3, 40, 50), generator=g)
    target[target == 5] = 255  # class 5 never in the ground truth
    target[0, :10] = 255
    pred = torch.randint(0, 19, (3, 40, 50), generator=g)
    pred[pred == 7] = 8  # class 7 never predicted
    target[target == 7] = 8  # ... nor in the ground truth: IoU undefined (NaN), left out of the mean
    cm = ConfusionMatrix(19)
    cm.update(pred[:2], target[:2])
    cm.update(pred[2:], target[2:])
    res = cm.compute()
    t, p = target.numpy().ravel(), pred.numpy().ravel()
    keep = t != 255
    ref = np.zeros((19, 19), np.int64)
    np.add.at(ref, (t[keep], p[keep]), 1)
    assert np.array_equal(cm.mat.numpy(), ref)
    tp = np.diag(ref).astype(float)
    fp, fn = ref.sum(0) - tp, ref.sum(1) - tp
    iou = [tp[c] / (tp[c] + fp[c] + fn[c]) if tp[c] + fp[c] + fn[c] else math.nan for c in range(19)]
    assert math.isnan(res["per_class_iou"][7]) and not math.isnan(
        res["per_class_iou"][5]
    )  # 5 is predicted, so it is a defined 0-ish IoU
    assert res["per_class_iou"][5] == 0.0
    assert math.isclose(res["miou"], np.nanmean(iou), rel_tol=1e-12)
    assert res["pixels"] == int(keep.sum())


def test_padding_samples_are_masked_by_evaluate():
    """A padding sample (index -1) repeats a real file with real labels: evaluate alone masks it, so the
    result equals evaluating the real samples only."""
    from cityseg_fast.config import load_config
    from cityseg_fast.data.batch import Batch
    from cityseg_fast.engine.evaluate import evaluate

    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 19, 1)
    cfg = load_config([], [])
    image = torch.randn(3, 3, 8, 16)
    target = torch.randint(0, 19, (3, 8, 16))
    rep = [2, 0]  # sample 2, then a padding repeat of sample 0
    padded = [Batch(image[:2], target[:2], torch.tensor([0, 1])), Batch(image[rep], target[rep], torch.tensor([2, -1]))]
    real = [Batch(image, target, torch.tensor([0, 1, 2]))]
    a, b = evaluate(model, padded, cfg, "cpu"), evaluate(model, real, cfg, "cpu")
    assert a["images"] == b["images"] == 3 and a["pixels"] == b["pixels"] == 3 * 8 * 16
    assert np.allclose(a["per_class_iou"], b["per_class_iou"], equal_nan=True) and a["miou"] == pytest.approx(b["miou"])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_run(tmp_path_factory.getbasetemp())


def _eval_json(out: str) -> dict:
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    assert len(lines) == 1, out
    return json.loads(lines[0])


def test_two_process_eval_equals_one_process(run):
    data, out = run
    ckpt = str(sorted(out.glob("ckpt_*.pt"))[-1])
    # eval batch 3 on 4 images: padding on one rank, so exactly-once counting is what is tested
    args = ["eval", "--checkpoint", ckpt, "--data", str(data), "--json", "loader.eval_batch_size=3"]
    one = _eval_json(run_cli(*args).stdout)
    two = _eval_json(torchrun(2, *args).stdout)
    assert one["images"] == two["images"] == 4
    assert one["pixels"] == two["pixels"]
    assert one["miou"] == two["miou"] and one["per_class_iou"] == two["per_class_iou"]
    assert 0 < one["miou"] <= 1


def test_official_evaluation_agrees(run, tmp_path, monkeypatch):
    from cityseg_fast.cli import main

    data, out = run
    ckpt = str(sorted(out.glob("ckpt_*.pt"))[-1])
    export = tmp_path / "results"
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        assert (
            main(["eval", "--checkpoint", ckpt, "--data", str(data), "--export-dir", str(export), "--json"])
            == 0
        )
    ours = _eval_json(buf.getvalue())
    assert len(list(export.glob("*/*_leftImg8bit.png"))) == 4

    monkeypatch.setenv("CITYSCAPES_DATASET", str(data))
    monkeypatch.setenv("CITYSCAPES_RESULTS", str(export))
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official

    args = official.args
    monkeypatch.setattr(args, "predictionPath", None)
    monkeypatch.setattr(args, "predictionWalk", None)
    monkeypatch.setattr(args, "evalInstLevelScore", False)  # our tiny set has no instanceIds files
    monkeypatch.setattr(args, "JSONOutput", False)
    monkeypatch.setattr(args, "quiet", True)
    gts = sorted(glob.glob(str(data / "gtFine" / "val" / "*" / "*_gtFine_labelIds.png")))
    assert len(gts) == 4
    preds = [official.getPrediction(args, gt) for gt in gts]
    res = official.evaluateImgLists(preds, gts, args)
    assert round(res["averageScoreClasses"], 4) == round(ours["miou"], 4)
    from cityseg_fast.labels import CLASS_NAMES

    for name, v in zip(CLASS_NAMES, ours["per_class_iou"], strict=True):
        theirs = res["classScores"][name]
        if v is None:
            assert math.isnan(theirs), name
        else:
            assert round(theirs, 4) == round(v, 4), name
