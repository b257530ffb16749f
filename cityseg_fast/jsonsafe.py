"""Strict JSON: the one cleaner for every row, log line and summary the package writes.

    clean({"loss": float("inf"), "iou": (0.5, float("nan"))})   # {"loss": None, "iou": [0.5, None]}
    line = dumps(row, sort_keys=True)                            # json.dumps(clean(row)), nothing non-finite

Python's json writes NaN and ±inf as the bare words NaN / Infinity, which strict parsers (JSON.parse, jq,
serde, Go's encoding/json) reject; a diverged run's loss or an undefined IoU must not make its file
unreadable there. Nothing here imports torch or numpy: values are recognised by shape, not by type.
"""

from __future__ import annotations

import json
import math
from typing import Any


def clean(value: Any) -> Any:
    """Strict-JSON values: NaN / inf -> None, tuples -> lists, numpy and 0-d torch scalars -> Python."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if callable(getattr(value, "item", None)) and not getattr(value, "shape", (1,)):
        value = value.item()  # a numpy scalar or a 0-d array / tensor (shape () is empty)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """`json.dumps` of `clean(value)`; allow_nan=False makes a non-finite number that escaped it an error,
    not an unreadable line."""
    return json.dumps(clean(value), allow_nan=False, **kwargs)
