"""Config layering, overrides, type checks with closest-key hints, the words a key takes (CHOICES), and the
dump/reload round trip."""

from __future__ import annotations

import dataclasses

import pytest

from cityseg_fast.config import (
    CHOICES,
    Config,
    LoaderConfig,
    PrecisionConfig,
    dump_config,
    load_config,
    parse_hw,
)
from cityseg_fast.config_ranges import OR_PATH
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


# -- the words a key takes (CHOICES): one table, checked when the config is built -------------------------


def _text(word) -> str:
    """A word as the error message shows it."""
    return "null" if word is None else (word or "''")


def _override(key: str, word) -> str:
    """key=word as typed on a command line (unquoted: `off` is read as YAML's false, and taken back)."""
    return f"{key}=null" if word is None else f"{key}={word}"


@pytest.mark.parametrize("key", list(CHOICES))
def test_every_choice_word_loads_and_a_bad_one_is_one_line_naming_them_all(key):
    for word in CHOICES[key]:
        assert _value(load_config((), [_override(key, word)]), key) == word
    with pytest.raises(UserError) as e:
        load_config((), [f"{key}=bogus"])
    msg = str(e.value)
    assert "\n" not in msg and f"'{key}'" in msg and "'bogus'" in msg
    for word in CHOICES[key]:
        assert _text(word) in msg, (word, msg)


def _value(cfg: Config, dotted: str):
    section, name = dotted.split(".")
    return getattr(getattr(cfg, section), name)


@pytest.mark.parametrize("key", sorted(OR_PATH))
def test_a_path_key_takes_a_path_but_not_a_mistyped_word(key):
    for path in ("runs/x/ckpt_00000100.pt", "weights.pth", "/abs/file"):
        assert _value(load_config((), [f"{key}={path}"]), key) == path
    with pytest.raises(UserError, match=rf"'{key}'.*file path.*'nevr'"):
        load_config((), [f"{key}=nevr"])


def test_a_bad_word_in_a_file_names_the_file(tmp_path):
    f = write(tmp_path, "bad.yaml", "loader:\n  backend: torch\n  roi: slcie\n")
    with pytest.raises(UserError, match=r"bad\.yaml: config key 'loader.roi': expected one of slice, resize, got 'slcie'"):
        load_config([f])


def test_a_section_built_by_hand_is_held_to_the_words_too():
    with pytest.raises(UserError, match="precision.compile"):
        PrecisionConfig(compile="fast")
    with pytest.raises(UserError, match="loader.backend"):
        dataclasses.replace(LoaderConfig(), backend="nope")


def test_the_readers_of_the_words_agree_with_the_table():
    """Code that maps each word to what it does covers every word (and no other), so a word added to the
    table without its meaning fails here, not in the middle of a run."""
    from cityseg_fast.bench.flops import PEAK_TFLOPS
    from cityseg_fast.engine.precision import _AUTOCAST_DTYPE
    from cityseg_fast.engine.step import OPTIMIZERS
    from cityseg_fast.models.unet import UPSAMPLE_MODES

    assert tuple(OPTIMIZERS) == CHOICES["train.optimizer"]
    assert UPSAMPLE_MODES + (None,) == CHOICES["model.upsample"]
    assert all(set(peaks) == set(CHOICES["precision.dtype"]) for peaks in PEAK_TFLOPS.values())
    assert set(_AUTOCAST_DTYPE) < set(CHOICES["precision.dtype"])


def test_a_word_yaml_reads_as_a_boolean_is_taken_back(tmp_path):
    assert load_config((), ["precision.compile=off"]).precision.compile == "off"
    assert load_config([write(tmp_path, "c.yaml", "precision:\n  compile: off\n")]).precision.compile == "off"
    # a key none of whose words YAML reads as a boolean, and values that are no string: refused, naming the words
    for text, shown in (("off", "False"), ("3", "3"), ("[dali]", r"\['dali'\]"), ("null", "None")):
        with pytest.raises(UserError, match=rf"'loader.backend': expected one of dali, torch, synthetic, got {shown}$"):
            load_config((), [f"loader.backend={text}"])
