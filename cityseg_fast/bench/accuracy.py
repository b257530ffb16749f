"""What an accuracy run leaves besides its mIoU: its curves, its size, and example predictions.

    events = read_events(out_dir)               # the run's metrics.jsonl (engine/train.py writes it)
    curves(events)                              # {"train": {iter, loss, wall_s[, loss_scale]}, "eval": {...}}
    scaler_summary(events)                      # fp16: {loss_scale, skipped_steps} at the last log line
    save_predictions(cfg, checkpoint, out_dir)  # [{stem, input, label, pred}]: PNGs under out_dir/predictions

The curves are read from metrics.jsonl, never from the training loop, and thinned to at most
`MAX_POINTS` per curve so a row stays a few kB. Prediction PNGs are palette images (the Cityscapes
colours, ignore = black) at most `EXAMPLE_WIDTH` pixels wide, named relative to the run directory so a
study folder can be moved and still be reported.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cityseg_fast.config import Config, data_root, replace
from cityseg_fast.data.cityscapes import find_samples, read_pair
from cityseg_fast.engine import checkpoint as ckpt_io
from cityseg_fast.engine.evaluate import predict_image
from cityseg_fast.hardware import resolve_device
from cityseg_fast.labels import train_palette
from cityseg_fast.models import model_from_config
from cityseg_fast.results.scenarios import LOSS_SCALE, SKIPPED_STEPS

MAX_POINTS = 100
EXAMPLES = (
    3  # val frames a run predicts for the study's figure: the first ones by name, the same in every run
)
EXAMPLE_WIDTH = 512


def read_events(out_dir: Path) -> list[dict[str, Any]]:
    """The events of out_dir/metrics.jsonl ([] when it is missing); unreadable lines are skipped."""
    try:
        lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return []
    events = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return [e for e in events if isinstance(e, dict)]


def train_images_per_s(events: list[dict[str, Any]]) -> float | None:
    """Median training throughput over the log intervals ('train' events)."""
    ips = [e["images_per_s"] for e in events if e.get("event") == "train" and e.get("images_per_s")]
    return statistics.median(ips) if ips else None


def _thin(points: list[tuple], limit: int = MAX_POINTS) -> list[tuple]:
    """At most `limit` evenly spaced points, the last one always kept."""
    if len(points) <= limit:
        return points
    step = -(-len(points) // limit)
    return points[::step][: limit - 1] + [points[-1]]


def curves(events: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """Loss and val mIoU against iteration and wall time since training started. Wall time counts
    evaluation too; a resumed run's segments are laid end to end (the time it was down is not counted)."""
    train, evals = [], []
    offset = last = 0.0
    t0 = None
    for e in events:
        kind = e.get("event")
        stamp = e.get("timestamp", e.get("time"))  # the log's clock ("time" before the stall fields came)
        if kind in ("start", "resume"):
            offset, t0 = last, stamp
        elif kind == "train" and e.get("wall_s") is not None:
            last = offset + e["wall_s"]
            train.append((e["iter"], e.get("loss"), round(last, 2), e.get(LOSS_SCALE)))
        elif kind == "eval" and t0 is not None and stamp is not None:
            last = offset + stamp - t0
            evals.append((e["iter"], e.get("miou"), round(last, 2)))
    scaled = any(p[3] is not None for p in train)  # fp16: the loss-scale trace beside the loss
    return {
        "train": _columns(("iter", "loss", "wall_s", LOSS_SCALE)[: 4 if scaled else 3], train),
        "eval": _columns(("iter", "miou", "wall_s"), evals),
    }


def scaler_summary(events: list[dict[str, Any]]) -> dict[str, float | int]:
    """fp16: the loss scale and the steps skipped so far at the last 'train' line ({} for other precisions)."""
    last = next((e for e in reversed(events) if e.get("event") == "train" and LOSS_SCALE in e), None)
    return {} if last is None else {LOSS_SCALE: last[LOSS_SCALE], SKIPPED_STEPS: last.get(SKIPPED_STEPS)}


def _columns(names: tuple[str, ...], points: list[tuple]) -> dict[str, list[Any]]:
    """[(a, b), ...] -> {name_a: [a, ...], name_b: [b, ...]}, thinned."""
    thinned = _thin(points)
    return {name: [p[i] for p in thinned] for i, name in enumerate(names)}


def data_counts(events: list[dict[str, Any]]) -> dict[str, int | None]:
    """Training images per epoch and val images evaluated, as the run logged them."""
    start = next((e for e in events if e.get("event") == "start"), {})
    last_eval = next((e for e in reversed(events) if e.get("event") == "eval"), {})
    return {"train_images": start.get("images_per_epoch"), "val_images": last_eval.get("images")}


def _palette_png(ids: Any, size: tuple[int, int], path: Path) -> None:
    img = Image.fromarray(np.asarray(ids, dtype=np.uint8), "P")
    img.putpalette(train_palette().ravel().tolist())
    img.resize(size, Image.NEAREST).save(path, optimize=True)


def save_predictions(
    cfg: Config, checkpoint: str | None, out_dir: Path, n: int = EXAMPLES
) -> list[dict[str, str]]:
    """Predict the first `n` val frames with the weights of `checkpoint`; write input, ground truth and
    prediction PNGs under out_dir/predictions; return their names relative to out_dir and the frame's size
    [H, W] ([] without a checkpoint)."""
    if not checkpoint:
        return []

    device = resolve_device()
    model = model_from_config(cfg)
    ckpt_io.load_model_state(model, ckpt_io.load_checkpoint(checkpoint)["model"], checkpoint)
    model = model.to(device).eval()
    cfg = replace(cfg, precision={"compile": "off"})
    folder = out_dir / "predictions"
    folder.mkdir(parents=True, exist_ok=True)
    examples = []
    for sample in find_samples(data_root(cfg), cfg.data.val_split)[:n]:
        rgb, label = read_pair(sample)
        pred = predict_image(model, rgb, cfg, device).cpu().numpy()  # host copy to write the PNG
        h, w = label.shape
        size = (min(w, EXAMPLE_WIDTH), max(1, round(h * min(w, EXAMPLE_WIDTH) / w)))  # PIL sizes are (W, H)
        names = {k: f"predictions/{sample.stem}_{k}.png" for k in ("input", "label", "pred")}
        Image.fromarray(rgb).resize(size, Image.BILINEAR).save(out_dir / names["input"])
        _palette_png(label, size, out_dir / names["label"])
        _palette_png(pred, size, out_dir / names["pred"])
        examples.append({"stem": sample.stem, "size": [h, w], **names})
    return examples
