"""Typed, layered configuration: frozen dataclasses <- YAML files (later wins) <- `section.key=value`.

    cfg = load_config(["configs/train/unet_cpu.yaml"], ["train.iters=200", "data.crop=[256,512]"])
    dump_config(cfg, "run/config.yaml")             # reloads to the same value

Every key is type-checked and, where a range is obvious, range-checked (`RANGES`, one table, in
config_ranges.py); a key that takes one of a few words is checked against `CHOICES` beside it, also when a
section is built by hand. An unknown key, a wrong type, a value out of range or a word not taken raises a
one-line `UserError` that names the key (and the YAML file it came from, if any) and what it takes (for a
key: the closest valid keys). Sizes are always (H, W).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import os
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cityseg_fast import diskio
from cityseg_fast.config_ranges import (  # noqa: F401 (CHOICES, RANGES, Range: re-exported)
    AT_MOST,
    CHOICES,
    DISTINCT,
    ORDERED,
    RANGES,
    Range,
    as_word,
    check_choice,
    check_range,
)
from cityseg_fast.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _Section:
    """A config section checks its words (`CHOICES`) when it is made: a section built by hand, such as
    PrecisionConfig(compile="fast"), is refused as a loaded one is, so no code that takes a config checks again."""

    def __post_init__(self) -> None:
        section = _SECTION_NAMES[type(self)]
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            check_choice(f"{section}.{f.name}", getattr(self, f.name))


@dataclass(frozen=True)
class DataConfig(_Section):
    root: str = ""  # dataset root: raw Cityscapes or `cityseg prepare` output; "" -> $CITYSCAPES_DATASET
    train_split: str = "train"
    val_split: str = "val"
    num_classes: int = 19
    ignore_index: int = 255
    crop: tuple[int, int] = (512, 1024)  # training crop (H, W)
    scale_range: tuple[float, float] = (0.5, 2.0)  # random scale of the source frame
    flip_prob: float = 0.5
    eval_size: tuple[int, int] | None = None  # resize eval images to (H, W); None = full resolution
    eval_label_resize: bool = False  # eval labels: False = keep full resolution, True = nearest-resize
    mean: tuple[float, float, float] = IMAGENET_MEAN  # on 0..1 pixels
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass(frozen=True)
class LoaderConfig(_Section):
    backend: str = "dali"  # which loader (data/factory.py); the words every key takes: CHOICES
    device: str = "auto"  # where decode + augmentation run; dali: auto = where the model runs; torch: auto/cpu =
    # its DataLoader on CPU workers, gpu = its nvJPEG loader (torch ops on the training GPU)
    batch_size: int = 8  # per rank
    eval_batch_size: int = 1  # per rank
    decoder: str = "torchvision"  # torch: torchvision.io (to a tensor; the faster on the CPU: data/decode.py) | pil
    num_workers: int = 2  # torch DataLoader worker processes (loader.device=gpu: file-reading threads)
    num_threads: int = 0  # DALI CPU threads; 0 = the cores available per GPU rank (hardware.cores_per_rank)
    prefetch_queue_depth: int = 2  # DALI: batches the pipeline prepares ahead
    prefetch_factor: int = 2  # torch DataLoader: batches each worker loads ahead (torch's own default)
    hw_decoder_load: float = 0.65  # DALI mixed decode: share of JPEGs sent to the hardware decoder
    resampler: str = "auto"  # DALI training resize/flip/normalize: auto (gpu: dali, cpu: torch) | dali | torch
    roi: str = "slice"  # DALI training: slice = decode only the crop's window | resize = decode frame, resize window
    decode_only: bool = False  # benchmarks: full-frame decode only, no augmentation or labels (the decoder's limit)
    pin_memory: bool = True
    seed: int = 0


@dataclass(frozen=True)
class ModelConfig(_Section):
    name: str = "unet"  # see `cityseg_fast.models.list_models()`
    pretrained: str = ""  # "" | path to a backbone state_dict | "torchvision" (downloads)
    aux_loss: bool = False  # fcn_resnet*: auxiliary head on layer3
    base_width: int | None = None  # unet, fcn*_vgg16*: width of the first stage (None = the variant's default)
    upsample: str | None = None  # unet: the decoder's upsampling (None = the variant's default)
    depth: int | None = None  # unet: down (and up) stages (None = 4, the paper's); the input pads to 2**depth


@dataclass(frozen=True)
class PrecisionConfig(_Section):
    dtype: str = "fp32"  # bf16/fp16 = autocast (fp16 adds a GradScaler); tf32 = TF32 matmuls and convolutions
    channels_last: bool = True
    compile: str = "off"  # off, or the torch.compile mode
    cudnn_benchmark: bool = True  # cuDNN autotunes each new input shape (fixed crops: once, in the warm-up)


@dataclass(frozen=True)
class TrainConfig(_Section):
    out_dir: str = "runs/default"
    iters: int = 1000  # runs are measured in iterations, as MMSegmentation does
    eval_interval: int = 500
    log_interval: int = 20
    ckpt_interval: int = 500
    keep_ckpts: int = 2
    optimizer: str = "sgd"  # engine/step.py builds it
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_iters: int = 0
    warmup_factor: float = 0.001  # lr multiplier at iteration 0 of the linear warm-up
    poly_power: float = 0.9
    min_lr: float = 1e-4
    aux_weight: float = 0.4
    grad_clip: float = 0.0  # max grad norm; 0 = off
    sync_bn: bool = False
    seed: int = 0
    resume: str = "auto"  # auto (latest readable checkpoint in out_dir) | never (start afresh) | a path
    dist_timeout_s: int = 300  # a dead rank makes the others fail within this many seconds
    max_nonfinite: int = 20  # consecutive non-finite losses before the run stops
    straggler_threshold: float = 1.2  # DDP: name the slowest rank when its work exceeds the median rank's by this
    tensorboard: bool = False  # rank 0 also writes metrics.jsonl's scalars to out_dir/tb (cityseg_fast[tensorboard])


@dataclass(frozen=True)
class BenchConfig(_Section):
    warmup: int = 10  # iterations excluded from timing
    iters: int = 50  # timed iterations
    split_phases: bool = False  # model scenario: time forward / backward / optimizer separately
    profile: bool = False  # model / e2e: torch.profiler over profile_steps steady steps, after the timed region
    profile_steps: int = 3
    trace_dir: str = ""  # where profile traces go; "" = beside `bench --append FILE` (FILE's folder/traces)
    sample_interval_s: float = 0.1  # NVML / host memory sampling period
    variance_warn: float = 0.15  # warn when IQR / median exceeds this
    memory_snapshot: bool = False  # GPU model / e2e: torch's allocator history over one step (and at an OOM)
    eval_scales: tuple[float, ...] = ()  # accuracy: also evaluate the trained model at these input scales


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)


SECTIONS: dict[str, type] = {f.name: f.type for f in dataclasses.fields(Config)}  # type: ignore[misc]
_SECTION_TYPES = typing.get_type_hints(Config)
_SECTION_NAMES: dict[type, str] = {cls: name for name, cls in _SECTION_TYPES.items()}


# ---------------------------------------------------------------------------------------------
# type checking


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return `value` converted to `tp`, or raise a UserError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except UserError:
                continue
        raise UserError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    if origin is tuple and typing.get_args(tp)[1:] == (Ellipsis,):  # tuple[float, ...]: any length
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]  # "0.5,1.0", as a command line writes it
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key '{key}': expected a list, got {value!r}")
        item = typing.get_args(tp)[0]
        return tuple(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, str) and "x" in value.lower() and all(a is int for a in args):
            value = value.lower().split("x")  # "512x1024" -> (512, 1024)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise UserError(f"config key '{key}': expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"config key '{key}': expected true or false, got {value!r}")
    if tp in (int, float):
        ok = (int,) if tp is int else (int, float)
        if isinstance(value, ok) and not isinstance(value, bool):
            return tp(value)
        if isinstance(value, str):
            try:
                return tp(value)
            except ValueError:
                pass
        raise UserError(f"config key '{key}': expected {'an integer' if tp is int else 'a number'}, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"config key '{key}': expected a string, got {value!r}")
    raise TypeError(f"unsupported config type {tp!r} for {key}")


def _closest(name: str, valid: Iterable[str]) -> str:
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
    shown = close or valid
    return ", ".join(shown[:8]) + (" ..." if not close and len(valid) > 8 else "")


@functools.cache  # get_type_hints is slow and never changes: a 300-point sweep asked it 13,000 times
def _section_fields(section: str) -> dict[str, Any]:
    cls = _SECTION_TYPES[section]
    return typing.get_type_hints(cls)


def _check_key(section: str, key: str | None, where: str) -> None:
    if section not in _SECTION_TYPES:
        raise UserError(f"{where}unknown config section '{section}'; closest valid: {_closest(section, _SECTION_TYPES)}")
    if key is not None:
        fields = _section_fields(section)
        if key not in fields:
            valid = [f"{section}.{k}" for k in fields]
            raise UserError(
                f"{where}unknown config key '{section}.{key}'; closest valid: {_closest(f'{section}.{key}', valid)}"
            )


# ---------------------------------------------------------------------------------------------
# relations between keys (the table of ranges is config_ranges.py)


def _value(cfg: Config, dotted: str) -> Any:
    section, key = dotted.split(".", 1)
    return getattr(getattr(cfg, section), key)


def _check_relations(cfg: Config, origins: Mapping[str, str]) -> None:
    for key in ORDERED:
        lo, hi = _value(cfg, key)
        if lo > hi:
            raise UserError(f"{origins.get(key, '')}config key '{key}': low {lo} exceeds high {hi}")
    for key in DISTINCT:
        values = _value(cfg, key)
        if len(set(values)) != len(values):
            raise UserError(f"{origins.get(key, '')}config key '{key}': a value is repeated in {list(values)}")
    for key, bound in AT_MOST.items():
        if _value(cfg, key) > _value(cfg, bound):
            raise UserError(
                f"{origins.get(key, '')}config key '{key}' = {_value(cfg, key)} exceeds "
                f"'{bound}' = {_value(cfg, bound)}"
            )


# ---------------------------------------------------------------------------------------------
# building


def _merge(
    base: dict[str, dict[str, Any]],
    layer: Mapping[str, Any],
    where: str,
    origins: dict[str, str] | None = None,
) -> None:
    if not isinstance(layer, Mapping):
        raise UserError(f"{where}expected a mapping of sections (data:, loader:, ...), got {type(layer).__name__}")
    for section, values in layer.items():
        _check_key(str(section), None, where)
        if values is None:
            continue
        if not isinstance(values, Mapping):
            raise UserError(f"{where}config section '{section}' must be a mapping, got {values!r}")
        for key, value in values.items():
            _check_key(section, str(key), where)
            base.setdefault(section, {})[key] = value
            if origins is not None:
                origins[f"{section}.{key}"] = where


def parse_override(text: str) -> tuple[str, str, Any]:
    """'train.lr=0.1' -> ('train', 'lr', 0.1); the value is parsed as YAML ('[512, 1024]', 'true', 'null')."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise UserError(f"override '{text}' is not of the form section.key=value (e.g. train.lr=0.01)")
    dotted, raw = text.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return section, key, value


def build_config(
    values: Mapping[str, Mapping[str, Any]] | None = None, origins: Mapping[str, str] | None = None
) -> Config:
    """Build a Config from {section: {key: value}}, type-, range- and word-checking every value.

    `origins` maps 'section.key' to the "FILE: " prefix of the layer that set it, so an error names the file.
    """
    values, origins = values or {}, origins or {}
    sections = {}
    for section, cls in _SECTION_TYPES.items():
        hints = _section_fields(section)
        kwargs = {}
        for key, value in dict(values.get(section, {})).items():
            dotted = f"{section}.{key}"
            try:
                _check_key(section, key, "")
                kwargs[key] = _coerce(as_word(dotted, value), hints[key], dotted)
                check_range(dotted, kwargs[key])
                check_choice(dotted, kwargs[key])  # here, not only in the section's __post_init__: names the file
            except UserError as e:
                raise UserError(f"{origins.get(dotted, '')}{e}") from None
        sections[section] = cls(**kwargs)
    cfg = Config(**sections)
    _check_relations(cfg, origins)
    return cfg


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark else ""
        raise UserError(f"{p}: not valid YAML{at}") from None
    return data or {}


def load_config(
    files: Iterable[str | os.PathLike] = (),
    overrides: Iterable[str] = (),
    base: Config | None = None,
) -> Config:
    """Defaults (or `base`) <- each YAML file in order <- each `section.key=value` override."""
    merged: dict[str, dict[str, Any]] = to_dict(base) if base is not None else {}
    origins: dict[str, str] = {}  # 'section.key' -> "FILE: " of the layer that set it last
    for f in files:
        _merge(merged, load_yaml(f), f"{f}: ", origins)
    for text in overrides:
        section, key, value = parse_override(text)
        _check_key(section, key, "")
        merged.setdefault(section, {})[key] = value
        origins.pop(f"{section}.{key}", None)  # an override names its key itself
    return build_config(merged, origins)


def replace(cfg: Config, **changes: Mapping[str, Any]) -> Config:
    """Return a copy with some keys changed: replace(cfg, train={"iters": 10}, loader={"batch_size": 2})."""
    d = to_dict(cfg)
    _merge(d, changes, "")
    return build_config(d)


# ---------------------------------------------------------------------------------------------
# output


def to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    """Plain dict of lists/scalars (tuples become lists), fit for YAML and JSON."""

    def plain(v: Any) -> Any:
        return list(v) if isinstance(v, tuple) else v

    return {s: {k: plain(v) for k, v in dataclasses.asdict(getattr(cfg, s)).items()} for s in _SECTION_TYPES}


def dump_config(cfg: Config, path: str | os.PathLike | None = None) -> str:
    """The resolved config as YAML (flow-style lists so sizes read as [512, 1024]); written if path given."""
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)
    if path is not None:
        with diskio.atomic_path(diskio.make_dirs(Path(path).parent) / Path(path).name) as tmp:
            tmp.write_text(text)
    return text


def config_hash(cfg: Config) -> str:
    """Short stable hash of the resolved config (identifies a benchmark point)."""
    blob = json.dumps(to_dict(cfg), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def dataset_root_or_none(cfg: Config) -> str | None:
    """The dataset root as given: data.root, else $CITYSCAPES_DATASET; None when neither is set (or empty)."""
    return cfg.data.root or os.environ.get("CITYSCAPES_DATASET") or None


def data_root(cfg: Config) -> Path:
    """The dataset root (`dataset_root_or_none`), user home expanded; a UserError if none is set."""
    root = dataset_root_or_none(cfg)
    if root is None:
        raise UserError("no dataset given: pass --data DIR, set data.root, or set CITYSCAPES_DATASET")
    return Path(root).expanduser()


def format_hw(value: Any) -> str:
    """[512, 1024] or (512, 1024) -> '512x1024' (H x W, the text parse_hw reads); any other value as str()."""
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(type(v) is int for v in value):
        return f"{value[0]}x{value[1]}"
    return str(value)


def parse_hw(text: str, option: str = "size") -> tuple[int, int]:
    """'512x1024' -> (512, 1024): sizes are (H, W) everywhere; `option` names the flag in an error."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"{option} '{text}' is not HxW (e.g. 512x1024)") from None
    if h <= 0 or w <= 0:
        raise UserError(f"{option} '{text}' must be positive")
    return h, w
