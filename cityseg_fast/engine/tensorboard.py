"""TensorBoard: a second place a run's events go (train.tensorboard=true): rank 0's scalars under OUT/tb/.

    require()                                     # every rank, before any work: a UserError if not installed
    log = TensorBoardLog.open(out, start)         # an EventLog (engine/train.py) beside metrics.jsonl

Each 'train' line's numbers become scalars `train/<field>` at its iteration (loss, lr, images_per_s, time,
data_time, the data wait and stall, memory, and under DDP the per-rank figures and the straggler ratio; a
per-rank list becomes `train/<field>/rank<k>`), each 'eval' event `eval/miou`, `eval/acc` and
`eval/iou/<class>`. The values are the line's, already on the host: writing them adds no sync. A resumed run
passes its start iteration as `purge_step`, so TensorBoard hides what the interrupted run logged past it.
Needs the optional `tensorboard` package (`pip install cityseg_fast[tensorboard]`); torch's SummaryWriter
writes the event files, and tensorboard's own reader (EventAccumulator) reads them back in the tests.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from cityseg_fast.errors import UserError
from cityseg_fast.labels import CLASS_NAMES

TB_DIR = "tb"
_NOT_SCALARS = frozenset({"iter", "epoch", "timestamp"})  # the step itself, and what TensorBoard keeps anyway


def require() -> None:
    """A one-line UserError when the tensorboard package is missing (train.tensorboard=true needs it)."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise UserError(
            "config key 'train.tensorboard': true needs the tensorboard package "
            "(pip install 'cityseg_fast[tensorboard]'), or set train.tensorboard=false"
        ) from None


def scalars(event: str, fields: dict[str, Any]) -> dict[str, float]:
    """{tag: value} of an event's numbers (see the module docstring); None is left out, NaN kept."""
    out: dict[str, float] = {}
    if event == "eval":
        ious = fields.get("per_class_iou") or []
        names = CLASS_NAMES if len(ious) == len(CLASS_NAMES) else [f"class{i}" for i in range(len(ious))]
        out.update({f"eval/iou/{n}": v for n, v in zip(names, ious, strict=True) if _number(v)})
        out.update({f"eval/{k}": fields[k] for k in ("miou", "acc") if _number(fields.get(k))})
        return out
    if event != "train":
        return out
    for key, value in fields.items():
        if key in _NOT_SCALARS:
            continue
        if _number(value):
            out[f"train/{key}"] = value
        elif isinstance(value, list):
            out.update({f"train/{key}/rank{k}": v for k, v in enumerate(value) if _number(v)})
    return out


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class TensorBoardLog:
    """The EventLog of OUT/tb: 'train' and 'eval' events as scalars at their iteration, flushed at once."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    @classmethod
    def open(cls, out: Path, start: int) -> TensorBoardLog:
        """A writer under out/tb; `start` > 0 (a resume) purges the steps an interrupted run logged past it."""
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when asked for

        return cls(SummaryWriter(log_dir=str(out / TB_DIR), purge_step=start or None))

    def write(self, event: str, **fields: Any) -> None:
        step = fields.get("iter")
        values = scalars(event, fields)
        if step is None or not values:
            return
        for tag, value in values.items():
            self.writer.add_scalar(tag, float(value) if math.isfinite(value) else float("nan"), int(step))
        self.writer.flush()  # once per log interval: a killed run keeps what it logged, as metrics.jsonl does

    def close(self) -> None:
        self.writer.close()
