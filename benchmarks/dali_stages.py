"""Where the CPU time of the training transform goes: each operator of the DALI CPU graph, and the torch tail.

    PYTHONPATH=$PWD python benchmarks/dali_stages.py --data PREPARED [--npy PREPARED_NPY]   # prints a table
    costs = stage_costs(images, labels, geometry, iters=4, batch_size=8)   # {stage: CPU ms per image}

The DALI rows time growing prefixes of the loader's own graph, built from the same functions the
loader runs (cityseg_fast.data.dali.graphs), in a one-thread pipeline (process CPU time); the torch rows
time each step of the torch tail (resample.py) alone on DALI's decoded windows (thread CPU time, torch
on one thread), over the crop windows the training plan draws for the first frames of a prepared dataset
(PNG labels; `--npy`: the same frames prepared with .npy labels adds the npy label row). The loader
itself, end to end, is measured by configs/sweeps/loaders_cpu.yaml; results in reports/cpu-loaders/.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from cityseg_fast.config import IMAGENET_MEAN, IMAGENET_STD, parse_hw
from cityseg_fast.data.cityscapes import image_size
from cityseg_fast.data.dali import graphs
from cityseg_fast.data.dali.inputs import label_array
from cityseg_fast.data.plan import crop_geometry, train_batches
from cityseg_fast.data.resample import BufferPool, Normalizer, resize_image, resize_label

STAGES = {
    "full decode": "DALI: decode the whole JPEG frame (what loader.decode_only does)",
    "slice decode": "DALI: decode only the crop window (image_slice)",
    "+ DALI resize": "DALI: fn.resize of the window to the crop size (bilinear, antialiased)",
    "+ DALI normalize/flip": "DALI: crop_mirror_normalize to float HWC",
    "label slice decode": "DALI: decode the label PNG, keep the window",
    "+ DALI label NN/flip": "DALI: nearest resize, flip (uint8)",
    "torch resize/flip": "torch: resize_image of the decoded window (uint8, antialiased bilinear), flip",
    "torch normalize": "torch: Normalizer.into a reused float batch buffer",
    "torch label NN/flip/int64": "torch: resize_label, flip, write into a reused int64 buffer",
    "npy label window": "host: the crop window's rows from a memory-mapped .npy label (--label-format npy)",
}
CPU = graphs.Decoder("cpu")
OUT = graphs.Output(IMAGENET_MEAN, IMAGENET_STD)


def _stage(stage: str, enc, anchor, shape, size, flip):
    """The prefix of the training graph that ends at `stage`."""
    if stage == "full decode":
        return graphs.decode(enc, CPU)
    if "label" in stage:
        labels = graphs.label_input(enc, arrays=False, window=(anchor, shape))
        return labels if stage == "label slice decode" else graphs.label_geometry(labels, size, flip)
    out = graphs.decode_window(enc, anchor, shape, CPU)
    if stage != "slice decode":
        out = graphs.resize_to(out, size)
    if stage == "+ DALI normalize/flip":
        out = graphs.finish_images(out, OUT, mirror=flip)
    return out


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _source(data: list, feeds: tuple, batches: list) -> Callable[[], tuple]:
    """The next batch's encoded inputs and window feeds, round the batches; no arguments (DALI reads a
    source's positional parameters as batch-info requests, so the state lives in this closure)."""
    counter = iter(range(1 << 62))

    def src() -> tuple:
        sel = batches[next(counter) % len(batches)]
        return [data[j] for j in sel], *([f[j] for j in sel] for f in feeds)

    return src


def _dali_costs(img_b, lab_b, feeds, batches, iters, batch_size) -> tuple[dict[str, float], dict[str, list]]:
    costs: dict[str, float] = {}
    decoded: dict[str, list] = {}
    for stage in list(STAGES)[:6]:
        src = _source(lab_b if "label" in stage else img_b, feeds, batches)

        def body(stage=stage, src=src):
            return _stage(stage, *graphs.external_inputs(src, num_outputs=5))

        pipe = graphs.pipeline_def(body, batch_size=batch_size, num_threads=1, device_id=None, exec_dynamic=True,
                            prefetch_queue_depth=1)()  # fmt: skip
        pipe.build()
        for _ in batches:  # warm-up (allocations); keeps the decoded windows for the torch rows
            (out,) = pipe.run()
            if stage in ("slice decode", "label slice decode"):
                decoded.setdefault(stage, []).extend(np.array(out[k]) for k in range(len(out)))
        c0 = _cpu_s()
        for _ in range(iters * len(batches)):
            pipe.run()
        costs[stage] = 1e3 * (_cpu_s() - c0) / (iters * len(batches) * batch_size)
        del pipe
    return costs, decoded


def _torch_costs(decoded: dict[str, list], geometry: list, iters: int) -> dict[str, float]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        wins = [torch.from_numpy(a) for a in decoded["slice decode"]]
        labs = [torch.from_numpy(a)[:, :, 0] for a in decoded["label slice decode"]]
        geo = geometry[: len(wins)]
        hw = (max(g.out_h for g in geo), max(g.out_w for g in geo))
        norm, pool = Normalizer(IMAGENET_MEAN, IMAGENET_STD), BufferPool(2)
        t = {"torch resize/flip": 0.0, "torch normalize": 0.0, "torch label NN/flip/int64": 0.0}
        for _ in range(iters):
            for k, g in enumerate(geo):
                c = time.thread_time()
                img = resize_image(wins[k], (g.out_h, g.out_w))
                if g.flip:
                    img = img.flip(1)
                t["torch resize/flip"] += time.thread_time() - c
                buf = pool.get((*hw, 3))
                c = time.thread_time()
                norm.into(buf, img)
                t["torch normalize"] += time.thread_time() - c
                del buf
                lbuf = pool.get(hw, torch.int64)
                c = time.thread_time()
                lab = resize_label(labs[k], (g.out_h, g.out_w))
                lbuf[: g.out_h, : g.out_w] = lab.flip(1) if g.flip else lab
                t["torch label NN/flip/int64"] += time.thread_time() - c
                del lbuf
        return {k: 1e3 * v / (iters * len(geo)) for k, v in t.items()}
    finally:
        torch.set_num_threads(threads)


def stage_costs(
    images: list, labels: list, geometry: list, iters: int = 4, batch_size: int = 8, npy_labels: list | None = None
) -> dict[str, float]:
    """CPU milliseconds per image of each operator in STAGES, on one thread, over the crop windows
    `geometry` (plan.Geometry, one per image, e.g. drawn by the training plan)."""
    n = len(images)
    img_b = [np.fromfile(p, np.uint8) for p in images]
    lab_b = [np.fromfile(p, np.uint8) for p in labels]
    feeds = (
        [np.array([g.y, g.x], np.int32) for g in geometry],
        [np.array([g.h, g.w], np.int32) for g in geometry],
        [np.array([g.out_h, g.out_w], np.float32) for g in geometry],
        [np.array(int(g.flip), np.int32) for g in geometry],
    )
    batches = [list(range(k, min(n, k + batch_size))) for k in range(0, n - batch_size + 1, batch_size)]
    if not batches:
        raise ValueError(f"stage_costs needs at least batch_size={batch_size} images, got {n}")
    costs, decoded = _dali_costs(img_b, lab_b, feeds, batches, iters, batch_size)
    costs.update(_torch_costs(decoded, geometry, iters))
    if npy_labels:
        hws = [image_size(p) for p in images]
        c = time.thread_time()
        for _ in range(iters):
            for path, g, img, hw in zip(npy_labels, geometry, images, hws, strict=False):
                label_array(path, g, img, hw)
        costs["npy label window"] = 1e3 * (time.thread_time() - c) / (iters * min(len(npy_labels), len(geometry)))
    return costs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a prepared dataset (JPEG images, PNG labels): `cityseg prepare`")
    ap.add_argument("--npy", help="the same frames prepared with --label-format npy (adds the npy label row)")
    ap.add_argument("--frames", type=int, default=16, help="the first N train frames (default 16)")
    ap.add_argument("--crop", default="512x1024", metavar="HxW", help="the training crop (default 512x1024)")
    ap.add_argument("--iters", type=int, default=4, help="passes over the frames (default 4)")
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args(argv)
    images = sorted((Path(args.data) / "train" / "images").glob("*.jpg"))[: args.frames]
    labels = [Path(args.data) / "train" / "labels" / (p.stem + ".png") for p in images]
    if not images or not all(p.is_file() for p in labels):
        sys.exit(f"{args.data}: needs train/images/*.jpg with train/labels/*.png (cityseg prepare --label-format png)")
    plan = [it for b in train_batches(len(images), 0, 1, 0, 0, 1, (0.5, 2.0), 0.5) for it in b]
    crop = parse_hw(args.crop, "--crop")
    geometry = [crop_geometry(image_size(p), crop, it.aug) for p, it in zip(images, plan, strict=False)]
    npy = [Path(args.npy) / "train" / "labels" / (p.stem + ".npy") for p in images] if args.npy else None
    costs = stage_costs(images, labels, geometry, args.iters, min(args.batch_size, len(images)), npy)
    print("| stage | CPU ms / image | what |\n|---|---|---|")
    print("\n".join(f"| {k} | {v:.1f} | {STAGES[k]} |" for k, v in costs.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
