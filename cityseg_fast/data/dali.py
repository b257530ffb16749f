"""NVIDIA DALI pipelines: the ONLY module that imports `nvidia.dali`.

Everything else asks this module (e.g. `dali_available()`, `probe()`), so the package imports and
runs where DALI is missing, and a DALI upgrade touches one file.
"""

from __future__ import annotations

import io
from typing import Any


def dali_version() -> str | None:
    try:
        import nvidia.dali as dali
    except Exception:  # ImportError, or a broken install raising at import
        return None
    return getattr(dali, "__version__", "unknown")


def dali_available() -> bool:
    return dali_version() is not None


def _tiny_jpeg() -> bytes:
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((16, 24, 3), 128, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _run_decode(device: str, device_id: int | None) -> tuple[int, ...]:
    import numpy as np
    from nvidia.dali import fn, pipeline_def

    data = np.frombuffer(_tiny_jpeg(), dtype=np.uint8)

    @pipeline_def(batch_size=1, num_threads=1, device_id=device_id, exec_dynamic=True)
    def pipe():
        raw = fn.external_source(source=lambda: [data], batch=True)
        return fn.decoders.image(raw, device=device)

    p = pipe()
    p.build()
    (out,) = p.run()
    if device == "mixed":
        out = out.as_cpu()
    return tuple(out.at(0).shape)


def probe() -> dict[str, Any]:
    """What DALI can do here: {'version', 'cpu_pipeline': bool, 'gpu_decode': bool, 'error': str|None}.

    Never raises: a missing DALI or a failing pipeline is reported, not crashed on.
    """
    info: dict[str, Any] = {"version": dali_version(), "cpu_pipeline": False, "gpu_decode": False, "error": None}
    if info["version"] is None:
        info["error"] = "nvidia.dali is not installed"
        return info
    try:
        info["cpu_pipeline"] = _run_decode("cpu", None) == (16, 24, 3)
    except Exception as e:  # report, never crash `doctor`
        info["error"] = f"CPU pipeline: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu_decode"] = _run_decode("mixed", torch.cuda.current_device()) == (16, 24, 3)
    except Exception as e:
        info["error"] = f"mixed decode: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return info
