"""A PNG of a run's TensorBoard scalars, read back from its event files with tensorboard's own reader.

    python benchmarks/tensorboard_plot.py runs/straggler --out docs/tensorboard.png

Reads RUN_DIR/tb (train.tensorboard=true writes it: engine/tensorboard.py) with EventAccumulator and draws
four panels: the loss and the val mIoU; images/s; each rank's work per step (data wait + compute) with the
median rank's and the straggler ratio; each rank's wait in the gradient all-reduce. A panel whose scalars the
run has not (one process: no per-rank figures) is left out. What TensorBoard itself would show, as a picture
for a README.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path


def scalars(tb_dir: Path) -> dict[str, tuple[list[int], list[float]]]:
    """{tag: (steps, values)} of every scalar in the event files under `tb_dir`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})  # 0: keep every point
    acc.Reload()
    return {tag: ([e.step for e in acc.Scalars(tag)], [e.value for e in acc.Scalars(tag)])
            for tag in acc.Tags()["scalars"]}  # fmt: skip


def _ranks(data: dict, figure: str) -> list[tuple[int, tuple[list[int], list[float]]]]:
    """[(rank, (steps, values))] of a per-rank figure's tags train/rank_<figure>/rank<k>."""
    pattern = re.compile(rf"train/rank_{figure}/rank(\d+)$")
    return sorted((int(m.group(1)), v) for t, v in data.items() if (m := pattern.match(t)))


def plot(data: dict, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    work = [(r, (s, [a + b for a, b in zip(v, data[f"train/rank_compute_s/rank{r}"][1], strict=True)]))
            for r, (s, v) in _ranks(data, "data_wait_s")]  # fmt: skip
    panels = [p for p in ("loss", "ips", "work", "wait") if p in ("loss", "ips") or work]
    cols = 2 if len(panels) == 4 else len(panels)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=True):
        if panel == "loss":
            ax.plot(*data["train/loss"], color="#1f77b4", label="train loss")
            ax.set_ylabel("loss")
            if "eval/miou" in data:
                twin = ax.twinx()
                steps, miou = data["eval/miou"]
                twin.plot(steps, [100 * m for m in miou], "o-", color="#d62728", label="val mIoU")
                twin.set_ylabel("val mIoU (%)")
                twin.legend(loc="upper right", fontsize=8)
            ax.legend(loc="upper left", fontsize=8)
        elif panel == "ips":
            ax.plot(*data["train/images_per_s"], color="#2ca02c")
            ax.set_ylabel("images/s (all ranks)")
            ax.set_ylim(bottom=0)
        elif panel == "work":
            for r, (s, v) in work:
                ax.plot(s, [1e3 * x for x in v], label=f"rank {r}")
            if "train/straggler_ratio" in data:
                s, v = data["train/straggler_ratio"]
                ax.set_title(f"work per step (straggler ratio {v[-1]:.2f} at the end)", fontsize=10)
            ax.set_ylabel("data wait + compute (ms / step)")
            ax.set_ylim(bottom=0)
            ax.legend(fontsize=8)
        else:
            for r, (s, v) in _ranks(data, "allreduce_wait_s"):
                ax.plot(s, [1e3 * x for x in v], label=f"rank {r}")
            ax.set_ylabel("waiting in the all-reduce (ms / step)")
            ax.set_ylim(bottom=0)
            ax.legend(fontsize=8)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, facecolor="white")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", metavar="RUN_DIR", help="a run directory trained with train.tensorboard=true")
    p.add_argument("--out", required=True, metavar="PNG")
    p.add_argument("--title", default=None)
    args = p.parse_args(argv)
    tb = Path(args.run) / "tb"
    if not tb.is_dir():
        raise SystemExit(f"{tb}: no TensorBoard events (train with train.tensorboard=true)")
    plot(scalars(tb), Path(args.out), args.title or f"TensorBoard scalars of {args.run}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
