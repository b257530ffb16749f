"""Inside a step: `bench.profile=true` on one CPU point writes a Chrome trace beside the results it was
appended to, the row holds the top ops, and the report lists them with the forward / backward / optimizer split."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from torch.autograd import DeviceType

from cityseg_fast.bench.profile import top_ops
from cityseg_fast.cli import main
from cityseg_fast.report.build import build_report
from cityseg_fast.results import read_rows

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ["model.name=unet_s16", "model.base_width=4", "data.crop=[32,64]", "loader.batch_size=2",
        "bench.iters=2", "bench.warmup=1"]  # fmt: skip


def test_profiling_a_cpu_point_gives_a_trace_and_a_top_ten_table(tmp_path, capsys):
    results = tmp_path / "run" / "results.jsonl"
    argv = ["bench", "model", *TINY, "bench.profile=true", "bench.profile_steps=2", "bench.split_phases=true"]
    assert main([*argv, "--json", "--append", str(results)]) == 0
    capsys.readouterr()
    (row,) = read_rows(results)
    m = row.metrics
    trace = tmp_path / "run" / "traces" / f"model-{row.point_id}.pt.trace.json"
    assert m["profile_trace"] == str(trace.resolve()) and json.loads(trace.read_text())["traceEvents"]
    ops = m["profile_top_ops"]
    assert 1 <= len(ops) <= 10 and m["profile_sort"] == "self_cpu_time" and m["profile_steps"] == 2
    assert ops == sorted(ops, key=lambda o: -o["self_ms_per_step"]) and all(0 < o["share"] <= 1 for o in ops)
    assert any("conv" in o["op"] for o in ops)
    md = build_report([results.parent], tmp_path / "report").read_text()
    section = md.split("## Inside a step")[1]
    assert "| point | forward (ms) | backward (ms) | optimizer (ms) |" in section
    assert f"trace: `traces/{trace.name}`" in section and f"Top {len(ops)} ops by self CPU time" in section
    assert f"| 1 | `{ops[0]['op']}` |" in section


def test_top_ops_rank_host_ops_by_their_own_device_time():
    """On a GPU, Kineto gives kernels events of their own: they make the total, the ops are ranked by the
    device time of the kernels each launched itself."""
    cpu, cuda = DeviceType.CPU, DeviceType.CUDA

    def ev(key: str, device_type, self_dev: float, self_cpu: float = 1.0, count: int = 4):
        return SimpleNamespace(key=key, count=count, device_type=device_type, self_device_time_total=self_dev,
                               self_cpu_time_total=self_cpu, is_user_annotation=False)  # fmt: skip

    events = [ev("aten::mm", cpu, 600.0), ev("aten::add", cpu, 200.0), ev("aten::view", cpu, 0.0),
              ev("sm90_gemm", cuda, 600.0), ev("add_kernel", cuda, 200.0)]  # fmt: skip
    ops = top_ops(events, steps=2, on_device=True)
    assert [o["op"] for o in ops] == ["aten::mm", "aten::add"]  # kernels and zero-time ops left out
    assert ops[0] == {"op": "aten::mm", "calls_per_step": 2.0, "self_ms_per_step": 0.3, "share": 0.75}
