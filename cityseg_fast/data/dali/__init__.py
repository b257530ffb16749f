"""NVIDIA DALI: the ONLY package that imports `nvidia.dali`.

    graphs.py   pipeline bodies as free functions of DataNodes and explicit arguments
    loader.py   the `dali` loader backend: its mode table (ROUTES), plan feeding, iteration, hand-off
    inputs.py   what the host feeds each graph, and the Feed that reads it ahead on reader threads
    probe.py    what DALI can do here (doctor): the version, one batch of the real graphs
    nvjpeg.py   what a mixed decode ran on: the nvJPEG DALI loaded, the hardware JPEG decoder (ctypes, /proc)
    memory.py   release DALI's unused pool memory (memory baselines between points)

Importing this package does not import DALI (only graphs.py and loader.py do, and the factory and the
probe import the loader only once DALI is known to be there), so the package runs where DALI is
missing, and a DALI upgrade touches this folder only.
"""

from __future__ import annotations

from cityseg_fast.data.dali.probe import dali_available, dali_version, probe

__all__ = ["dali_available", "dali_version", "probe"]
