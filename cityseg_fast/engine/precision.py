"""Numerics and compilation: precision (fp32|tf32|bf16|fp16), autocast, the AMP scaler step, channels_last,
`torch.compile`, and the dynamo counters benchmarks read.

    setup_precision("bf16", cudnn_benchmark=True)            # once per process, before building the model
    model = prepare_model(model, cfg.precision, device)      # to(device), channels_last, torch.compile
    trained, evaluated = prepare_for_training(net, cfg.precision, device, wrap)  # training: DDP, then compile
    scaler = ScalerStep.for_dtype("bf16", device.type)       # a no-op scaler unless fp16
    with autocast("bf16", device.type):
        loss = criterion(model(to_channels_last(x)), y)
    scaler(loss, optimizer, clip=1.0)                        # backward, unscale, clip, step, update
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from cityseg_fast.config_ranges import check_choice

if TYPE_CHECKING:
    from cityseg_fast.config import PrecisionConfig

_AUTOCAST_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16}
# The fp16 scaler's fields of a 'train' log line (metrics.jsonl); an accuracy row records them by the same names.
LOSS_SCALE, SKIPPED_STEPS = "loss_scale", "skipped_steps"


def check_dtype(dtype: str) -> str:
    """`dtype`, if precision.dtype takes it (CHOICES): the functions here take the bare word, not a config."""
    return check_choice("precision.dtype", dtype)


def setup_precision(dtype: str, cudnn_benchmark: bool | None = None) -> None:
    """Set the process-wide fp32 math mode for matmuls and cuDNN convolutions, and cuDNN autotuning.

    fp32 -> IEEE fp32 everywhere. Note PyTorch's own default runs cuDNN convolutions in TF32, so a
    'fp32' number measured without this call is partly TF32. tf32 -> TF32 matmuls and convolutions.
    bf16 / fp16 -> TF32 too, for the ops autocast leaves in fp32 (as nanoGPT and torchvision's
    references do).

    Only the legacy API (`set_float32_matmul_precision`, `cudnn.allow_tf32`) is set: it keeps every
    getter of both APIs readable, whereas setting the newer `fp32_precision` attributes makes the
    legacy getters raise "mix of legacy and new TF32 APIs" (pytorch#166387), and inductor reads those
    getters when it compiles (so `compile=max-autotune` crashed). tests/test_precision.py reads them all.

    cudnn_benchmark (precision.cudnn_benchmark; None leaves it as it is): let cuDNN time its algorithms
    for each new input shape and keep the fastest. Training crops and benchmark points have one fixed
    shape, so the autotuning happens once, in the warm-up (FCN-D8's dilated convolutions otherwise run
    on cuDNN's heuristic choice).
    """
    tf32 = check_dtype(dtype) != "fp32"
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    torch.backends.cudnn.allow_tf32 = tf32
    if cudnn_benchmark is not None:
        torch.backends.cudnn.benchmark = bool(cudnn_benchmark)


def autocast(dtype: str, device_type: str) -> contextlib.AbstractContextManager[Any]:
    """Autocast to bf16/fp16 on "cuda" or "cpu"; a null context for fp32 and tf32."""
    if check_dtype(dtype) not in _AUTOCAST_DTYPE:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=_AUTOCAST_DTYPE[dtype])


class ScalerStep:
    """One optimizer step with loss scaling: scale, backward, unscale, optional clip, step, update.

    Wraps `torch.amp.GradScaler` (as MAE's `NativeScalerWithGradNormCount` does). When disabled the
    scaler passes through, so the same call serves every precision. Nothing here reads a value back to
    the host; `GradScaler.step` itself does (one `found_inf` read per step, fp16 only) unless the
    optimizer implements AMP scaling natively (e.g. `fused=True` SGD/Adam on CUDA).
    """

    def __init__(self, enabled: bool, device_type: str = "cuda") -> None:
        self.enabled = enabled
        self.scaler = torch.amp.GradScaler(device_type, enabled=enabled)
        self.skipped: torch.Tensor | None = None  # steps skipped for inf/NaN gradients, on the device (fp16)

    @classmethod
    def for_dtype(cls, dtype: str, device_type: str) -> ScalerStep:
        """Enabled only for fp16: bf16 has fp32's exponent range and needs no loss scaling."""
        return cls(check_dtype(dtype) == "fp16", device_type)

    def __call__(
        self,
        loss: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        parameters: Iterable[torch.Tensor] | None = None,
        clip: float = 0.0,
    ) -> None:
        self.scaler.scale(loss).backward()
        if clip > 0:
            self.scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            if parameters is None:
                parameters = [p for g in optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(parameters, clip)
        self.scaler.step(optimizer)  # skips optimizer.step() when a gradient is inf/nan (fp16)
        if not self.enabled:
            return
        # GradScaler backs its scale off exactly when it skipped the step: count that on the device (no sync).
        # Its scale tensor has no public accessor that does not read it back, hence `_scale`.
        before = self.scaler._scale.clone()
        self.scaler.update()
        if self.skipped is None:
            self.skipped = torch.zeros((), dtype=torch.float32, device=before.device)
        self.skipped += self.scaler._scale < before

    def trace(self) -> torch.Tensor | None:
        """[loss scale, steps skipped so far] on the device (None unless fp16, or before the first step): the
        training loop reads it with its loss, in the log interval's one transfer (`trace_fields` names them)."""
        if not self.enabled or self.skipped is None:
            return None
        return torch.stack([self.scaler._scale.float().reshape(()), self.skipped])

    @staticmethod
    def trace_fields(values: list[float]) -> dict[str, float | int]:
        """A 'train' log line's scaler fields from the values `trace` held ({} for none)."""
        if not values:
            return {}
        return {LOSS_SCALE: values[0], SKIPPED_STEPS: int(values[1])}

    def get_scale(self) -> float:
        """Current loss scale (1.0 when disabled). Reads a device value: call outside timed regions."""
        return float(self.scaler.get_scale()) if self.enabled else 1.0

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.scaler.load_state_dict(state)


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """A 4-D tensor in channels_last memory format (no copy if it already is)."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def place_model(model: nn.Module, precision_cfg: PrecisionConfig, device: torch.device | str) -> nn.Module:
    """Move to `device` and convert to channels_last if asked (what comes before any wrapper)."""
    model = model.to(device)
    if precision_cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def compile_model(model: nn.Module, precision_cfg: PrecisionConfig) -> nn.Module:
    """`torch.compile` unless compile == "off", with dynamic=False: training crops have a fixed shape, and
    a shape change should show up as a recompile in `compile_counters()` rather than silently produce a
    slower dynamic graph. The compiled module is returned; the original stays reachable as `_orig_mod`.
    Compilation happens at the first call, once per mode (train / eval) the module is called in."""
    mode = precision_cfg.compile  # a CHOICES word: PrecisionConfig checked it when it was made
    return model if mode == "off" else torch.compile(model, mode=mode, dynamic=False)


def prepare_model(model: nn.Module, precision_cfg: PrecisionConfig, device: torch.device | str) -> nn.Module:
    """Move to `device`, convert to channels_last if asked, and `torch.compile` unless compile == "off":
    a model that is not trained under DDP (evaluation, inference). Training: `prepare_for_training`."""
    return compile_model(place_model(model, precision_cfg, device), precision_cfg)


def prepare_for_training(
    model: nn.Module,
    precision_cfg: PrecisionConfig,
    device: torch.device | str,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
) -> tuple[nn.Module, nn.Module]:
    """(what the train step calls, what evaluation calls): the model placed, wrapped (`wrap`: DDP under
    torchrun, dist.wrap_ddp), then compiled.

    DDP first, then torch.compile, as PyTorch's DDP + Dynamo notes ask: compiling the DDP module lets
    Dynamo's DDPOptimizer split the graph at DDP's bucket boundaries, so each bucket's all-reduce overlaps
    the rest of the backward (a compiled module wrapped in DDP afterwards runs one graph whose gradients
    are all-reduced only when its whole backward is done). Evaluation runs the module without DDP (no
    collective per forward), compiled on its own: its eval-mode graph compiles at the first evaluation and
    the train graph is not compiled again. Without a wrapper, one compiled module serves both.
    """
    placed = place_model(model, precision_cfg, device)
    wrapped = wrap(placed) if wrap is not None else placed
    trained = compile_model(wrapped, precision_cfg)
    if wrapped is placed:
        return trained, trained
    return trained, compile_model(placed, precision_cfg)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under torch.compile and DDP wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def reset_compile_counters() -> None:
    """Zero dynamo's counters and per-compile records (call before the compile you want to measure)."""

    import torch._dynamo.utils as dynamo_utils  # heavy (~1 s): only where compile counters are read

    dynamo_utils.counters.clear()
    dynamo_utils.clear_compilation_metrics()


def compile_counters() -> dict[str, Any]:
    """What dynamo compiled since the last reset.

    recompiles: frames compiled again after a guard failure, i.e. the records of
    `torch._dynamo.utils.get_compilation_metrics()` that carry a `recompile_reason` (torch 2.14 keeps no
    `counters["recompiles"]`); unique_graphs: FX graphs produced (`counters["stats"]`); frames /
    frames_ok: frames dynamo tried / converted; graph_breaks: total graph breaks; compile_s: the sum of
    `entire_frame_compile_time_s` over those records: dynamo tracing plus Inductor codegen of the
    forward graphs. AOTAutograd compiles the backward lazily at the first backward, which this does NOT
    include: for a training step's full compile cost, time the first step with `timed_first_call`.
    """
    import torch._dynamo.utils as dynamo_utils

    c = dynamo_utils.counters
    records = dynamo_utils.get_compilation_metrics()
    return {
        "recompiles": sum(1 for r in records if r.recompile_reason),
        "unique_graphs": int(c["stats"]["unique_graphs"]),
        "frames": int(c["frames"]["total"]),
        "frames_ok": int(c["frames"]["ok"]),
        "graph_breaks": int(sum(c["graph_break"].values())),
        "compile_s": float(sum(r.entire_frame_compile_time_s or 0.0 for r in records)),
        "recompile_reasons": [r.recompile_reason for r in records if r.recompile_reason],
    }


@contextlib.contextmanager
def timed_first_call(sync: bool = True) -> Iterator[dict[str, float]]:
    """Wall time of a block (e.g. the first, compiling, step): `with timed_first_call() as t: ...; t["s"]`."""
    out: dict[str, float] = {}
    if sync and torch.cuda.is_available():
        torch.cuda.synchronize()  # why: exclude earlier queued GPU work from the measured block
    t0 = time.perf_counter()
    yield out
    if sync and torch.cuda.is_available():
        torch.cuda.synchronize()  # why: the block's kernels must finish inside the measurement
    out["s"] = time.perf_counter() - t0
