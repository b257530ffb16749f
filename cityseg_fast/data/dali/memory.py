"""DALI's memory pools: give back what no pipeline uses (so the next point's memory baseline is its own).

DALI allocates device and pinned host memory from process-wide pools that it keeps after a pipeline is
gone (NVIDIA/DALI#5275): a second loader in the same process would count the first one's blocks.
`nvidia.dali.backend.ReleaseUnusedMemory()` (DALI >= 1.x, in 2.4) frees every completely free block of
the device pools and of the pinned host pool, and is safe while pipelines run.
"""

from __future__ import annotations

import sys


def release_unused_memory() -> bool:
    """Free DALI's unused pool blocks; False where DALI was never imported in this process (no pools to
    release: DALI is not imported for nothing), is missing, or has no such call. Never raises."""
    if "nvidia.dali" not in sys.modules:
        return False
    try:
        from nvidia.dali import backend
    except Exception:  # not installed, or a broken install raising at import
        return False
    release = getattr(backend, "ReleaseUnusedMemory", None)
    if release is None:
        return False
    try:
        release()
    except Exception:  # memory bookkeeping must never fail a measurement
        return False
    return True
