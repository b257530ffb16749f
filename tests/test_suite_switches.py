"""The switches that make a suite run prove something (tests/conftest.py): CITYSEG_REQUIRE_GPU turns skips
of gpu tests into failures, CITYSEG_TEST_TIMEOUT_S bounds each test, CITYSEG_TEST_LOG survives a kill,
CITYSEG_TEST_DEADLINE stops before a test that could not finish; and a CLI child's whole process group
dies with its test (tests/engine_fixtures.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from engine_fixtures import PY, REPO, _run, env

TESTS = REPO / "tests"


def pytest_run(tmp: Path, body: str, *args: str, fake_cuda: bool = False, **switches: str) -> subprocess.CompletedProcess:
    """pytest on one generated test module with this suite's conftest as a plugin and `switches` in the
    environment; fake_cuda: torch.cuda.is_available() says True (to reach what a GPU machine reaches)."""
    (tmp / "test_generated.py").write_text(textwrap.dedent(body))
    plugins = ["-p", "conftest"]
    if fake_cuda:
        (tmp / "fake_cuda.py").write_text("import torch\ntorch.cuda.is_available = lambda: True\n")
        plugins = ["-p", "fake_cuda", *plugins]
    e = {**env(), **switches}
    e["PYTHONPATH"] = os.pathsep.join([str(tmp), str(TESTS), e["PYTHONPATH"]])
    cmd = [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(REPO / "pyproject.toml"),
           "--rootdir", str(tmp), *plugins, str(tmp / "test_generated.py"), *args]  # fmt: skip
    return subprocess.run(cmd, cwd=tmp, env=e, capture_output=True, text=True, timeout=180)


@pytest.mark.skipif(torch.cuda.is_available(), reason="shows only where there is no CUDA")
def test_require_gpu_fails_the_gpu_suite_without_cuda():
    e = {**env(), "CITYSEG_REQUIRE_GPU": "1"}
    cmd = [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "tests/gpu"]
    p = subprocess.run(cmd, cwd=REPO, env=e, capture_output=True, text=True, timeout=300)
    assert p.returncode != 0, p.stdout[-2000:]
    assert "CITYSEG_REQUIRE_GPU=1" in p.stdout and " passed" not in p.stdout.splitlines()[-1]
    plain = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0 and "skipped" in plain.stdout  # without the switch: skipped, "passed"


GPU_SKIPS = """
    import pytest

    @pytest.mark.gpu
    def test_skips_itself():
        pytest.skip("not here")

    @pytest.mark.gpu
    @pytest.mark.skipif(True, reason="needs 2 GPUs")
    def test_skipped_by_marker():
        pass

    def test_cpu_test_may_skip():
        pytest.skip("fine")
"""


def test_require_gpu_turns_a_gpu_tests_skip_into_a_failure(tmp_path):
    p = pytest_run(tmp_path, GPU_SKIPS, fake_cuda=True, CITYSEG_REQUIRE_GPU="1")
    assert p.returncode == 1, p.stdout
    # the marker's skip happens in setup: pytest counts a failed setup as an error
    assert "1 failed, 1 skipped, 1 error" in p.stdout and "may not skip (Skipped: not here)" in p.stdout
    relaxed = pytest_run(tmp_path, GPU_SKIPS, fake_cuda=True)
    assert relaxed.returncode == 0 and "3 skipped" in relaxed.stdout


SLOW = """
    import time

    def test_a_hang():
        time.sleep(60)

    def test_after_it():
        pass
"""


def test_a_test_over_its_time_limit_fails_and_the_log_records_each_outcome(tmp_path):
    log = tmp_path / "log.jsonl"
    p = pytest_run(tmp_path, SLOW, "--junitxml", str(tmp_path / "junit.xml"), CITYSEG_TEST_TIMEOUT_S="2",
                   CITYSEG_TEST_LOG=str(log))  # fmt: skip
    assert p.returncode == 1 and "TimeLimitExceeded" in p.stdout
    records = [json.loads(ln) for ln in log.read_text().splitlines()]
    assert records[0]["event"] == "collected" and len(records[0]["nodeids"]) == 2
    calls = {r["nodeid"].split("::")[1]: r["outcome"] for r in records if r.get("when") == "call"}
    assert calls == {"test_a_hang": "failed", "test_after_it": "passed"}
    assert 'failures="1"' in (tmp_path / "junit.xml").read_text()


def test_no_test_starts_near_the_deadline_and_none_runs_past_it(tmp_path):
    log = tmp_path / "log.jsonl"
    p = pytest_run(tmp_path, SLOW, CITYSEG_TEST_TIMEOUT_S="30", CITYSEG_TEST_DEADLINE=str(time.time() + 10),
                   CITYSEG_TEST_LOG=str(log))  # fmt: skip
    assert p.returncode == 2, p.stdout  # interrupted: nothing ran, nothing failed
    events = [json.loads(ln)["event"] for ln in log.read_text().splitlines()]
    assert events == ["collected", "deadline"]
    log.unlink()
    # a time limit longer than the hang: only the deadline can cut it
    p = pytest_run(tmp_path, SLOW, CITYSEG_TEST_TIMEOUT_S="100", CITYSEG_TEST_DEADLINE=str(time.time() + 12),
                   CITYSEG_TEST_MIN_S="2", CITYSEG_TEST_LOG=str(log))  # fmt: skip
    records = [json.loads(ln) for ln in log.read_text().splitlines()]
    assert p.returncode == 2 and "TimeLimitExceeded" in p.stdout, p.stdout
    assert [r["outcome"] for r in records if r.get("when") == "call"] == ["failed"]  # the hang, cut at the deadline
    assert records[-1]["event"] == "deadline" and records[-1]["nodeid"].endswith("test_after_it")


def test_a_timed_out_cli_child_dies_with_its_whole_process_group(tmp_path):
    """A child that started a grandchild (a DataLoader worker, a torchrun rank) and hangs: the timeout
    kills both, not only the child."""
    pid_file = tmp_path / "grandchild.pid"
    script = (
        "import subprocess, sys, time\n"
        f"g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(g.pid))\n"
        "time.sleep(120)\n"
    )
    with pytest.raises(AssertionError, match="timed out"):
        _run([sys.executable, "-c", script], timeout=5, check=True)
    grandchild = int(pid_file.read_text())
    for _ in range(50):  # reaped by init once killed; give it a moment
        if not Path(f"/proc/{grandchild}").exists() or "Z" in _state(grandchild):
            break
        time.sleep(0.1)
    assert not Path(f"/proc/{grandchild}").exists() or "Z" in _state(grandchild)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"
