"""JPEG study, end to end: what does converting the images to JPEG cost in mIoU?

One source dataset, four prepared copies (PNG = lossless reference, JPEG q95 / q90 / q75), then the
`accuracy` scenario on each with the same model, seed and iterations (configs/sweeps/jpeg_study.yaml,
with the sizes below overriding its GPU-scale defaults). Rows land in OUT/results.jsonl; each row's
point carries image_format and quality from the dataset's manifest.

    python benchmarks/run_jpeg_study.py --out runs/jpeg_study                    # synthetic CPU smoke run
    python benchmarks/run_jpeg_study.py --src $CITYSCAPES_DATASET --full --out runs/jpeg_study_real
    cityseg report runs/jpeg_study --out reports/jpeg_study
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"png": ("png", 95), "q95": ("jpeg", 95), "q90": ("jpeg", 90), "q75": ("jpeg", 75)}


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(ROOT))
    from cityseg_fast.bench.sweep import run_sweep
    from cityseg_fast.bench.sweep_spec import load_spec
    from cityseg_fast.data.prepare import prepare_dataset
    from cityseg_fast.data.synthetic import write_synthetic

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/jpeg_study")
    p.add_argument("--src", help="Cityscapes-layout source (default: write a synthetic one under OUT/src)")
    p.add_argument("--full", action="store_true", help="use jpeg_study.yaml's own settings (GPU scale)")
    p.add_argument("--iters", type=int, default=300, help="training iterations of the smoke run")
    args = p.parse_args(argv)

    out = Path(args.out)
    src = Path(args.src) if args.src else out / "src"
    if not args.src and not (src / "leftImg8bit").is_dir():
        write_synthetic(src, train=48, val=12, test=0, size=(256, 512), seed=0, progress=False)
    for name, (fmt, q) in VARIANTS.items():
        if not (out / "data" / name / "manifest.json").is_file():
            prepare_dataset(src, out / "data" / name, image_format=fmt, quality=q, progress=False)

    spec = yaml.safe_load((ROOT / "configs" / "sweeps" / "jpeg_study.yaml").read_text())
    if not args.full:  # CPU smoke scale: a small U-Net, small crops, a few hundred iterations
        spec["name"] = "jpeg_study_smoke"
        spec["overrides"].update(
            {
                "model.name": "unet_s16",
                "data.crop": [128, 256],
                "loader.batch_size": 4,
                "precision.dtype": "fp32",
                "train.iters": args.iters,
                "train.eval_interval": args.iters,
                "train.lr": 0.05,
                "loader.num_workers": 2,
            }
        )
        spec["timeout_s"] = 3600
    os.environ["JPEG_STUDY"] = str((out / "data").resolve())
    spec_path = out / "jpeg_study.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    counts = run_sweep(load_spec(spec_path, out), out)
    print(", ".join(f"{k} {v}" for k, v in counts.items()) + f"  -> {out / 'results.jsonl'}")
    return 1 if counts.get("error") else 0


if __name__ == "__main__":
    raise SystemExit(main())
