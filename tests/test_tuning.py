"""The loader-tuning sweeps: each varies its loader's own knobs, includes the default setting (so the report
can say how far it is from the best), and folds settings that change nothing (prefetch with 0 workers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cityseg_fast.bench.sweep_spec import load_spec
from cityseg_fast.results.scenarios import tuning_of

SPECS = Path(__file__).resolve().parents[1] / "configs" / "sweeps"


@pytest.mark.parametrize("name,loaders", [
    ("loader_tuning_cpu", {("dali", "cpu"), ("torch", None)}),
    ("loader_tuning_gpu", {("dali", "gpu"), ("dali", "cpu"), ("torch", None)}),
])  # fmt: skip
def test_tuning_sweeps_vary_each_loaders_knobs_and_measure_its_default(name, loaders, tmp_path, monkeypatch):
    monkeypatch.setenv("CITYSEG_TUNING_DATA", str(tmp_path))
    spec = load_spec(SPECS / f"{name}.yaml")
    assert {p.scenario for p in spec.points} == {"loader"}
    groups: dict[tuple, list[dict]] = {}
    for p in spec.points:
        setting, _ = tuning_of(p.point)
        groups.setdefault((p.point["loader"], p.point["loader_device"]), []).append(setting)
    assert set(groups) == loaders
    for (backend, device), settings in groups.items():
        keys = {"dali": {"num_threads", "prefetch_queue_depth"}, "torch": {"num_workers"}}[backend]
        assert all(keys <= set(s) for s in settings), (backend, settings)
        named = set().union(*settings)
        assert ("hw_decoder_load" in named) == (device == "gpu")
        default = {"dali": {"num_threads": 0, "prefetch_queue_depth": 2, "hw_decoder_load": 0.65},
                   "torch": {"num_workers": 2, "prefetch_factor": 2}}[backend]  # fmt: skip
        assert {k: v for k, v in default.items() if k in named} in settings, (backend, device)
        assert len(settings) == len({tuple(sorted(s.items())) for s in settings})  # no setting twice
    if name == "loader_tuning_cpu":
        assert len(spec.points) <= 24  # a few minutes on 2 cores
