"""Config layering, overrides, type checks with closest-key hints, and the dump/reload round trip."""

from __future__ import annotations

import pytest

from cityseg_fast.config import Config, dump_config, load_config, parse_hw
from cityseg_fast.errors import UserError


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults():
    cfg = load_config()
    assert cfg == Config()
    assert cfg.data.crop == (512, 1024)


def test_later_file_wins_then_overrides(tmp_path):
    a = write(tmp_path, "a.yaml", "train:\n  lr: 0.1\n  iters: 5\nloader:\n  batch_size: 4\n")
    b = write(tmp_path, "b.yaml", "train:\n  lr: 0.2\n")
    cfg = load_config([a, b], ["train.iters=7", "data.crop=[256, 512]", "precision.dtype=bf16"])
    assert cfg.train.lr == 0.2 and cfg.train.iters == 7 and cfg.loader.batch_size == 4
    assert cfg.data.crop == (256, 512) and cfg.precision.dtype == "bf16"


def test_int_accepted_for_float_and_hw_string_for_size():
    cfg = load_config((), ["train.lr=1", "data.crop=256x512", "data.eval_size=null"])
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.data.crop == (256, 512) and cfg.data.eval_size is None


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.lrr=0.1", ["train.lrr", "train.lr"]),
        ("trian.lr=0.1", ["trian", "train"]),
        ("loader.batch_size=eight", ["loader.batch_size", "integer"]),
        ("precision.channels_last=maybe", ["precision.channels_last", "true or false"]),
        ("data.crop=[1,2,3]", ["data.crop", "2 values"]),
        ("train.lr", ["section.key=value"]),
    ],
)
def test_bad_override_is_one_line(override, words):
    with pytest.raises(UserError) as e:
        load_config((), [override])
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


def test_unknown_key_in_file_names_file_and_closest(tmp_path):
    f = write(tmp_path, "bad.yaml", "loader:\n  batchsize: 4\n")
    with pytest.raises(UserError) as e:
        load_config([f])
    assert "bad.yaml" in str(e.value) and "loader.batch_size" in str(e.value)


def test_wrong_type_in_file(tmp_path):
    f = write(tmp_path, "bad.yaml", "train:\n  iters: [1, 2]\n")
    with pytest.raises(UserError, match="train.iters"):
        load_config([f])


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="not valid YAML"):
        load_config([write(tmp_path, "x.yaml", "train: [\n")])
    with pytest.raises(UserError, match="not found"):
        load_config([tmp_path / "nope.yaml"])


def test_dump_reload_round_trip(tmp_path):
    cfg = load_config(
        (), ["data.eval_size=[512,1024]", "model.base_width=16", "train.lr=0.05", "precision.compile=default"]
    )
    path = tmp_path / "resolved.yaml"
    dump_config(cfg, path)
    assert load_config([path]) == cfg
    assert "[512, 1024]" in path.read_text()


def test_parse_hw():
    assert parse_hw("512x1024") == (512, 1024)
    with pytest.raises(UserError):
        parse_hw("512")
