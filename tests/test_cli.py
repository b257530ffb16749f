"""The CLI surface: every command has --help; user errors are one line, exit 2, no traceback."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from cityseg_fast.cli import COMMANDS, main


def cityseg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cityseg_fast", *args], capture_output=True, text=True)


def test_help_lists_every_command():
    out = cityseg("--help")
    assert out.returncode == 0
    for name in [
        "doctor",
        "synth",
        "prepare",
        "train",
        "eval",
        "predict",
        "bench",
        "sweep",
        "report",
        "demo",
    ]:
        assert name in out.stdout


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    assert "usage: cityseg" in capsys.readouterr().out


def test_doctor_json_without_gpu():
    out = cityseg("doctor", "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    for key in [
        "python",
        "torch",
        "torchvision",
        "dali",
        "cuda_runtime",
        "cpu",
        "cpu_cores",
        "gpus",
        "dali_probe",
        "compile",
        "distributed",
        "git_commit",
        "bf16",
        "bf16_why",
    ]:
        assert key in info
    assert info["bf16"]["cpu"] in ("native", "emulated") and info["bf16_why"]["cpu"]
    assert info["cpu_cores"] >= 1
    assert info["distributed"]["gloo"] is True
    assert isinstance(info["compile"]["possible"], bool)
    import torch

    if not torch.cuda.is_available():
        assert info["gpus"] == [] and info["dali_probe"]["gpu_decode"] is False
        # what a mixed decode would run on: nothing, and the reason is the missing GPU
        probe = info["dali_probe"]
        assert probe["nvjpeg_version"] is None and probe["hw_decoder"] is False
        assert probe["gpu_decode_note"] == "no GPU"
    if info["dali"] is not None:
        assert info["dali_probe"]["cpu_pipeline"] is True, info["dali_probe"]


def test_doctor_table_is_readable():
    out = cityseg("doctor")
    assert out.returncode == 0, out.stderr
    assert "DALI CPU pipeline" in out.stdout and "torch.compile" in out.stdout
    import torch

    if not torch.cuda.is_available():
        assert re.search(r"DALI's nvJPEG .*none \(no GPU\)", out.stdout)
    assert re.search(r"bf16 .*CPU (native|emulated) \(", out.stdout)


def test_user_error_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    from cityseg_fast.commands import doctor
    from cityseg_fast.errors import UserError

    def boom(args):
        raise UserError(f"{tmp_path}/x.png: truncated file")

    monkeypatch.setattr(doctor, "run", boom)
    assert main(["doctor"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "x.png: truncated file" in err and "Traceback" not in err


def test_rows_name_the_commit_of_the_checkout_the_package_runs_from():
    from pathlib import Path

    from cityseg_fast import environment

    root = Path(environment.__file__).resolve().parents[1]
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    environment.git_commit.cache_clear()
    commit = environment.git_commit()
    assert commit is not None and head.stdout.strip().startswith(commit.removesuffix("-dirty"))


def test_bench_flags_offer_exactly_the_words_of_their_config_keys():
    """`cityseg bench --loader/--device/--roi` take the words of the keys they set, read from CHOICES."""
    from cityseg_fast.cli import build_parser
    from cityseg_fast.commands.bench import SHORTCUTS
    from cityseg_fast.config import CHOICES

    bench = next(a for a in build_parser("bench")._subparsers._group_actions if a.dest == "command").choices["bench"]
    scenarios = next(a for a in bench._subparsers._group_actions if a.dest == "scenario").choices
    worded = {flag: key for flag, (key, _) in SHORTCUTS.items() if key in CHOICES}
    assert set(worded.values()) >= {"loader.backend", "loader.device", "loader.roi"}
    for parser in scenarios.values():
        actions = {a.dest: a for a in parser._actions}
        for flag, key in worded.items():
            assert tuple(actions[flag].choices) == CHOICES[key], (flag, key)
