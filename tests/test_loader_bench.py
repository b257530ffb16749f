"""bench/loader_bench.py's baselines when several points run in one process: the host peak is the point's own
(VmHWM reset), and DALI's kept pools are released (where DALI ran) before a point."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from engine_fixtures import REPO, env
from loader_fixtures import loader_cfg, write_prepared

from cityseg_fast.bench.loader_bench import measure_loader
from cityseg_fast.memstats import host_rss_mib, reset_host_peak


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return write_prepared(tmp_path_factory.mktemp("prep"), {"train": 4}, pattern="texture")


def test_a_points_host_peak_is_not_an_earlier_one(prepared):
    """An earlier point (here: 400 MiB touched and freed) must not set the next point's peak RSS."""
    if not reset_host_peak():
        pytest.skip("this kernel does not let a process reset its VmHWM (/proc/self/clear_refs)")
    big = np.ones(400 * 2**20 // 8)
    del big
    cfg = loader_cfg(prepared, "torch", "loader.num_workers=0")
    m = measure_loader(cfg, iters=2, warmup=1)
    own_peak = m["mem_host_peak_rss_mib"] - m["mem_host_workers_peak_rss_mib"]
    assert own_peak < host_rss_mib() + 200, (own_peak, host_rss_mib())


def test_dali_pools_are_released_only_where_dali_runs():
    pytest.importorskip("nvidia.dali")
    code = (
        "from cityseg_fast.data.dali.memory import release_unused_memory as r\n"
        "import sys\n"
        "before = r()\n"
        "import nvidia.dali\n"
        "print(before, r(), 'nvidia.dali' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "True", "True"], out.stderr[-2000:]  # never imports DALI itself
