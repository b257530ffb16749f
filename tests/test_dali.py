"""The DALI backend on the CPU (real pipelines): agreement with the torch baseline, errors, decode-only."""

from __future__ import annotations

import pytest
import torch
from engine_fixtures import deadline
from loader_fixtures import loader_cfg, write_prepared, write_raw

from cityseg_fast.data import dali
from cityseg_fast.data.batch import check_batch
from cityseg_fast.data.factory import build_loader
from cityseg_fast.errors import UserError

pytestmark = pytest.mark.skipif(not dali.dali_available(), reason="nvidia.dali not installed")
CPU = torch.device("cpu")


def make_cfg(root, backend: str, *extra: str):
    return loader_cfg(root, backend, "loader.num_workers=0", *extra)


def all_batches(root, backend, split, *extra):
    loader = build_loader(make_cfg(root, backend, *extra), split, device=CPU)
    try:
        return list(loader)
    finally:
        loader.close()


@pytest.mark.parametrize("layout", ["prepared", "raw"])
def test_eval_dali_matches_torch(tmp_path, layout):
    """Eval mode: identical labels; images equal up to JPEG decoder rounding (PNG: exactly)."""
    write = write_prepared if layout == "prepared" else write_raw
    root = write(tmp_path, {"val": 3}, pattern="texture")
    d = all_batches(root, "dali", "val")
    t = all_batches(root, "torch", "val")
    assert len(d) == len(t) == 3
    for bd, bt in zip(d, t, strict=True):
        assert torch.equal(bd.index, bt.index)
        assert torch.equal(bd.target, bt.target)
        diff = (bd.image - bt.image).abs()
        one_level = 1 / (255 * 0.229)  # one 8-bit level after normalization (smallest std)
        if layout == "raw":
            assert float(diff.max()) < 1e-4
        else:
            assert float(diff.mean()) < 0.5 * one_level and float(diff.max()) < 8 * one_level


def test_train_dali_matches_torch(tmp_path):
    """Same plan, same geometry: the two backends produce nearly the same training crops."""
    root = write_raw(tmp_path, {"train": 4}, pattern="texture")
    extra = ("data.scale_range=[0.75,1.5]",)
    d = all_batches(root, "dali", "train", *extra)
    t = all_batches(root, "torch", "train", *extra)
    for bd, bt in zip(d, t, strict=True):
        agree = float((bd.target == bt.target).float().mean())
        assert agree > 0.97, f"labels agree on only {agree:.3f} of pixels"  # NN rounding at edges
        # bilinear filters differ slightly between PIL and DALI; the content must not
        assert float((bd.image - bt.image).abs().mean()) < 0.15


@pytest.mark.parametrize("resampler", ["torch", "dali"])
def test_roi_resize_variant_matches_slice(tmp_path, resampler):
    root = write_prepared(tmp_path, {"train": 4}, pattern="texture")
    a = all_batches(root, "dali", "train", f"loader.resampler={resampler}", "loader.roi=slice")
    b = all_batches(root, "dali", "train", f"loader.resampler={resampler}", "loader.roi=resize")
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.target, y.target)
        assert float((x.image - y.image).abs().mean()) < 0.1


@pytest.mark.parametrize("layout", ["prepared", "raw"])
def test_resamplers_agree(tmp_path, layout):
    """DALI's own resize/flip/normalize (the GPU graph) and the torch tail used on the CPU do the
    same geometry: same plan, same windows, same padding, filters that differ only in rounding."""
    from cityseg_fast.data.plan import crop_geometry

    write = write_prepared if layout == "prepared" else write_raw
    root = write(tmp_path, {"train": 4}, pattern="texture")
    extra = ("data.scale_range=[0.4,1.2]", "data.crop=[48,96]")  # frames 64x128: scales < 0.75 pad
    out = {}
    for resampler in ("dali", "torch"):
        cfg = make_cfg(root, "dali", f"loader.resampler={resampler}", *extra)
        loader = build_loader(cfg, "train", device=CPU)
        try:
            geo = [[crop_geometry((64, 128), (48, 96), it.aug) for it in b] for b in loader._plan()]
            out[resampler] = list(loader)
        finally:
            loader.close()
    assert any(g.out_h < 48 for b in geo for g in b), "no padded crop drawn: change the seed"
    for bd, bt, gs in zip(out["dali"], out["torch"], geo, strict=True):
        check_batch(bd, "cpu")
        check_batch(bt, "cpu")
        assert torch.equal(bd.index, bt.index)
        agree = float((bd.target == bt.target).float().mean())
        assert agree > 0.97, f"labels agree on only {agree:.3f} of pixels"  # NN rounding at edges
        assert float((bd.image - bt.image).abs().mean()) < 0.1
        for k, g in enumerate(gs):  # padding: image exactly 0 (after normalization), labels ignore
            for b in (bd, bt):
                assert bool(
                    (b.image[k, :, g.out_h :] == 0).all() and (b.image[k, :, :, g.out_w :] == 0).all()
                )
                assert bool(
                    (b.target[k, g.out_h :] == 255).all() and (b.target[k, :, g.out_w :] == 255).all()
                )


@pytest.mark.parametrize(
    "backend,extra",
    [("dali", ()), ("dali", ("loader.resampler=dali",)), ("torch", ())],
)
@pytest.mark.parametrize("split", ["train", "val"])
def test_npy_labels_give_the_same_batches_as_png(tmp_path, backend, extra, split):
    """`prepare --label-format npy` changes how labels are stored, never what a loader yields."""
    common = dict(pattern="texture")
    png = write_prepared(tmp_path / "png", {split: 4}, **common)
    npy = write_prepared(tmp_path / "npy", {split: 4}, label_format="npy", **common)
    assert next((npy / split / "labels").iterdir()).suffix == ".npy"
    opts = ("data.scale_range=[0.4,1.6]", "data.crop=[48,96]", *extra)
    a = all_batches(png, backend, split, *opts)
    b = all_batches(npy, backend, split, *opts)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        check_batch(y, "cpu")
        assert torch.equal(x.index, y.index)
        assert torch.equal(x.target, y.target)
        assert torch.equal(x.image, y.image)


@pytest.mark.parametrize("backend", ["dali", "torch"])
@pytest.mark.parametrize("split", ["train", "val"])
def test_corrupt_npy_label_mid_epoch_names_it(tmp_path, backend, split):
    root = write_prepared(tmp_path, {split: 8}, label_format="npy")
    bad = sorted((root / split / "labels").iterdir())[5]
    bad.write_bytes(b"\x93NUMPY not really an array" * 4)
    loader = build_loader(make_cfg(root, backend, "loader.num_workers=1"), split, device=CPU)
    with deadline(60), pytest.raises(UserError) as err:
        for _ in loader:
            pass
    loader.close()
    assert str(bad) in str(err.value)


@pytest.mark.parametrize("backend", ["dali", "torch"])
@pytest.mark.parametrize("label_format", ["png", "npy"])
@pytest.mark.parametrize("split", ["train", "val"])
def test_label_of_another_size_than_its_image_names_it(tmp_path, backend, label_format, split):
    """Never stretched or padded into plausible-looking targets: a one-line error naming the file."""
    import numpy as np
    from PIL import Image

    root = write_prepared(tmp_path, {split: 4}, label_format=label_format)
    bad = sorted((root / split / "labels").iterdir())[2]
    small = np.zeros((32, 64), np.uint8)
    np.save(bad, small) if label_format == "npy" else Image.fromarray(small).save(bad)
    loader = build_loader(make_cfg(root, backend), split, device=CPU)
    try:
        with deadline(60), pytest.raises(UserError) as err:
            for _ in loader:
                pass
    finally:
        loader.close()
    msg = str(err.value)
    assert msg.startswith(str(bad)) and "label is 32x64 but its image" in msg and "is 64x128" in msg
    assert "\n" not in msg


def test_resampler_config_errors(tmp_path):
    root = write_prepared(tmp_path, {"train": 4})
    with pytest.raises(UserError, match="loader.resampler"):
        all_batches(root, "dali", "train", "loader.resampler=cubic")


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_decode_only_gives_full_frames(tmp_path, backend):
    root = write_prepared(tmp_path, {"train": 4})
    batches = all_batches(root, backend, "train", "loader.decode_only=true")
    assert len(batches) == 2
    for b in batches:
        assert b.image.dtype == torch.uint8 and tuple(b.image.shape) == (2, 3, 64, 128)
        assert b.image.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("backend", ["dali", "torch"])
@pytest.mark.parametrize("split,what", [("val", "image"), ("train", "image"), ("val", "label")])
def test_corrupt_file_mid_epoch_names_it(tmp_path, backend, split, what):
    root = write_prepared(tmp_path, {split: 8})
    stem = sorted(p.stem for p in (root / split / "images").iterdir())[5]
    bad = (
        root
        / split
        / ("images" if what == "image" else "labels")
        / f"{stem}.{'jpg' if what == 'image' else 'png'}"
    )
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not an image " * 20)
    loader = build_loader(make_cfg(root, backend, "loader.num_workers=1"), split, device=CPU)
    with deadline(60), pytest.raises(UserError) as err:
        for _ in range(3):  # every epoch reads every file
            for _ in loader:
                pass
    msg = str(err.value)
    assert str(bad) in msg and "\n" not in msg
    loader.close()


def test_probe_reports_cpu_pipeline():
    info = dali.probe()
    assert info["cpu_pipeline"] is True and info["version"]


@pytest.mark.parametrize("label_resize", [False, True])
def test_eval_size(tmp_path, label_resize):
    """data.eval_size resizes eval images; labels stay full-res unless eval_label_resize (nearest)."""
    root = write_raw(tmp_path, {"val": 2}, pattern="texture")
    extra = ("data.eval_size=[32,48]", f"data.eval_label_resize={str(label_resize).lower()}")
    d = all_batches(root, "dali", "val", *extra)
    t = all_batches(root, "torch", "val", *extra)
    for bd, bt in zip(d, t, strict=True):
        assert tuple(bd.image.shape) == tuple(bt.image.shape) == (1, 3, 32, 48)
        hw = (32, 48) if label_resize else (64, 128)
        assert tuple(bd.target.shape) == tuple(bt.target.shape) == (1, *hw)
        agree = float((bd.target == bt.target).float().mean())
        assert agree > (0.95 if label_resize else 0.999999), agree
        assert float((bd.image - bt.image).abs().mean()) < 0.1


def test_palette_labels_are_indices_or_a_clear_error(tmp_path):
    """A palette ("P") label PNG stores the ids as indices (read_label and prepare read it so). The torch
    backend must read the indices, not the palette's grey levels; DALI expands palettes to colours, so
    it must refuse with an error naming the file rather than train on garbage."""
    import numpy as np
    from PIL import Image

    from cityseg_fast.data.cityscapes import find_samples, read_label
    from cityseg_fast.labels import label_id_palette

    root = write_raw(tmp_path, {"val": 2})
    samples = find_samples(root, "val")
    for s in samples:
        im = Image.fromarray(np.asarray(Image.open(s.label)), "P")
        im.putpalette(label_id_palette().flatten().tolist())
        im.save(s.label)
    for b in all_batches(root, "torch", "val", "loader.eval_batch_size=1"):
        expected = read_label(samples[int(b.index[0])].label, "labelIds")
        assert torch.equal(b.target[0], torch.from_numpy(expected).long())
    with pytest.raises(UserError) as err:
        all_batches(root, "dali", "val", "loader.eval_batch_size=1")
    msg = str(err.value)
    assert str(samples[0].label) in msg and "palette" in msg and "\n" not in msg


@pytest.mark.parametrize("resampler", ["torch", "dali"])
@pytest.mark.parametrize("split", ["train", "val"])
def test_uint8_hand_off_gives_the_same_batches(tmp_path, monkeypatch, resampler, split):
    """DALI on the CPU feeding a GPU ships uint8 crops (pinned) with their valid sizes and lets
    handoff.finish normalize and zero the padding on the device. Here on the CPU, with the two CUDA
    pieces (pinned buffers, the side-stream prefetcher) stood in for: the batches must equal the
    float path's, padding included."""
    from cityseg_fast.data.dali import loader as dali_loader
    from cityseg_fast.data.dali import to_torch

    root = write_raw(tmp_path, {split: 4}, pattern="texture")
    extra = (f"loader.resampler={resampler}", "data.scale_range=[0.4,1.2]", "data.crop=[48,96]")
    float_path = all_batches(root, "dali", split, *extra)
    monkeypatch.setattr(dali_loader, "_ships_uint8", lambda on_gpu, device: True)
    monkeypatch.setattr(to_torch, "pinned", lambda shape, dtype=torch.uint8: torch.empty(shape, dtype=dtype))
    monkeypatch.setattr(dali_loader, "_prefetcher", lambda items, fin, device: map(fin, items))
    uint8_path = all_batches(root, "dali", split, *extra)
    assert len(float_path) == len(uint8_path) > 0
    for a, b in zip(float_path, uint8_path, strict=True):
        check_batch(b, "cpu")
        assert torch.equal(a.index, b.index) and torch.equal(a.target, b.target)
        assert float((a.image - b.image).abs().max()) < 1e-4  # the same normalization, other order


def test_the_per_operator_profiler_times_every_stage_of_the_training_graph(tmp_path, monkeypatch):
    """benchmarks/dali_stages.py builds its pipelines from data/dali/graphs.py; it must keep running."""
    import sys
    from pathlib import Path

    from cityseg_fast.data.plan import crop_geometry, train_batches

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    sys.modules.pop("dali_stages", None)
    from dali_stages import STAGES, stage_costs

    root = write_prepared(tmp_path / "p", {"train": 8}, hw=(64, 128), pattern="noise")
    images = sorted((root / "train" / "images").glob("*.jpg"))
    labels = [root / "train" / "labels" / (p.stem + ".png") for p in images]
    plan = [it for b in train_batches(len(images), 0, 1, 0, 0, 1, (0.5, 2.0), 0.5) for it in b]
    geometry = [crop_geometry((64, 128), (32, 64), it.aug) for it in plan]
    npy = write_prepared(tmp_path / "n", {"train": 8}, hw=(64, 128), pattern="noise", label_format="npy")
    npy_labels = [npy / "train" / "labels" / (p.stem + ".npy") for p in images]
    costs = stage_costs(images, labels, geometry, iters=1, batch_size=8, npy_labels=npy_labels)
    assert set(costs) == set(STAGES) and all(v > 0 for v in costs.values()), costs


# -- the mode table (data/dali/loader.py ROUTES) ---------------------------------------------------

# name: (dataset, split, options, the pipeline it must pick); each runs with both CPU hand-offs
CPU_MODES = {
    "decode-only": ("png", "train", ("loader.decode_only=true",), "decode"),
    "eval png": ("png", "val", (), "eval"),
    "eval npy": ("npy", "val", (), "eval"),
    "eval raw labelIds": ("raw", "val", (), "eval"),
    "train dali slice png": ("png", "train", ("loader.resampler=dali", "loader.roi=slice"), "train"),
    "train dali resize npy": ("npy", "train", ("loader.resampler=dali", "loader.roi=resize"), "train"),
    "train dali raw labelIds": ("raw", "train", ("loader.resampler=dali",), "train"),
    "torch tail slice png": ("png", "train", ("loader.resampler=torch", "loader.roi=slice"), "window"),
    "torch tail resize png": ("png", "train", ("loader.resampler=torch", "loader.roi=resize"), "window"),
    "torch tail slice npy": ("npy", "train", ("loader.resampler=torch", "loader.roi=slice"), "window"),
    "torch tail resize npy": ("npy", "train", ("loader.resampler=torch", "loader.roi=resize"), "frame"),
    "torch tail raw labelIds": ("raw", "train", ("loader.resampler=auto",), "window"),
}


def _stand_in_for_cuda(monkeypatch) -> None:
    """DALI on the CPU feeding a GPU, on the CPU: the uint8 hand-off with pinned buffers and the
    side-stream prefetcher replaced by plain ones (as in test_uint8_hand_off_gives_the_same_batches)."""
    from cityseg_fast.data.dali import loader as dali_loader
    from cityseg_fast.data.dali import to_torch

    monkeypatch.setattr(dali_loader, "_ships_uint8", lambda on_gpu, device: True)
    monkeypatch.setattr(to_torch, "pinned", lambda shape, dtype=torch.uint8: torch.empty(shape, dtype=dtype))
    monkeypatch.setattr(dali_loader, "_prefetcher", lambda items, fin, device: map(fin, items))


def test_the_cpu_modes_cover_every_cpu_row_of_the_table():
    from cityseg_fast.data.dali.loader import ROUTES

    covered = {(pipeline, handoff) for *_, pipeline in CPU_MODES.values() for handoff in ("cpu", "pinned")}
    assert covered == {route for route in ROUTES if route[1] != "gpu"}


@pytest.mark.parametrize("handoff", ["cpu", "pinned"])
@pytest.mark.parametrize("name", list(CPU_MODES))
def test_every_cpu_mode_runs_one_batch_through_its_row(tmp_path, monkeypatch, name, handoff):
    """Each CPU row of the table builds a real pipeline from its feed and graph and hands over a batch
    that meets the contract: crops in training, frames in evaluation, uint8 frames in decode-only."""
    data, split, extra, pipeline = CPU_MODES[name]
    if data == "raw":
        root = write_raw(tmp_path, {split: 4}, pattern="texture")
    else:
        root = write_prepared(tmp_path, {split: 4}, pattern="texture", label_format=data)
    if handoff == "pinned":
        _stand_in_for_cuda(monkeypatch)
    cfg = make_cfg(root, "dali", "data.scale_range=[0.4,1.6]", "data.crop=[48,96]", *extra)
    loader = build_loader(cfg, split, device=CPU)
    try:
        assert loader.mode.route == (pipeline, handoff)
        assert loader.mode.raw_label_ids == (data == "raw") and loader.mode.label_arrays == (data == "npy")
        assert ("torch resize" in loader.description) == (pipeline in ("window", "frame"))
        with deadline(60):
            batch = next(iter(loader))
    finally:
        loader.close()
    if pipeline == "decode":
        assert batch.image.dtype == torch.uint8 and tuple(batch.image.shape) == (2, 3, 64, 128)
        assert batch.target.numel() == 0
        return
    check_batch(batch, "cpu")
    hw = (48, 96) if split == "train" else (64, 128)
    assert tuple(batch.image.shape[2:]) == tuple(batch.target.shape[1:]) == hw
    assert int(batch.target[batch.target != 255].max()) <= 18  # trainIds, raw labelIds mapped


def _mode_inputs():
    """Every combination of what decides a loader's mode (no file is read to compute it)."""
    from pathlib import Path

    from cityseg_fast.data.cityscapes import Sample

    labels = {
        "png": [Sample(Path("a.jpg"), Path("a.png"), "a", "trainIds")],
        "npy": [Sample(Path("a.jpg"), Path("a.npy"), "a", "trainIds")],
        "raw": [Sample(Path("a.png"), Path("a_labelIds.png"), "a", "labelIds")],
    }
    stages = {"train": (True, False), "eval": (False, False), "decode": (True, True)}
    for stage, (train, decode_only) in stages.items():
        for device in ("cpu", "cuda"):  # where the model runs
            for dali_device in ("cpu", "gpu"):
                for resampler in ("auto", "dali", "torch"):
                    for roi in ("slice", "resize"):
                        for kind, samples in labels.items():
                            yield (stage, train, decode_only, device, dali_device, resampler, roi, kind, samples)


def _spec(train: bool, decode_only: bool, device: str):
    from cityseg_fast.config import IMAGENET_MEAN, IMAGENET_STD
    from cityseg_fast.data.plan import LoaderSpec

    return LoaderSpec(
        train=train, batch_size=2, crop=(32, 64), scale_range=(0.5, 1.5), flip_prob=0.5,
        mean=IMAGENET_MEAN, std=IMAGENET_STD, eval_size=None, eval_label_resize=False,
        rank=0, world_size=1, seed=0, device=torch.device(device), decode_only=decode_only,
    )  # fmt: skip


def test_every_mode_has_a_row_and_every_row_is_a_mode():
    """The GPU rows cannot run here: every mode (GPU ones included) must find its row, and every row
    must be reachable, so a new mode cannot fall through to a wrong graph or hand-off."""
    from cityseg_fast.data.dali.loader import ROUTES, Mode

    reached = set()
    for stage, train, decode_only, device, dali_device, resampler, roi, kind, samples in _mode_inputs():
        spec = _spec(train, decode_only, device)
        if resampler == "torch" and dali_device == "gpu":
            continue  # refused (test_torch_resampler_with_dali_on_the_gpu_is_refused)
        mode = Mode.of(spec, samples, dali_device=dali_device, roi=roi, resampler=resampler, hw_decoder_load=0.5)
        assert mode.route in ROUTES, (stage, device, dali_device, resampler, roi, kind)
        reached.add(mode.route)
        assert (mode.pipeline == "decode") == decode_only and (mode.pipeline == "eval") == (not train)
        assert mode.handoff == ("gpu" if dali_device == "gpu" else ("pinned" if device == "cuda" else "cpu"))
        tail = train and not decode_only and (resampler == "torch" or (resampler == "auto" and dali_device == "cpu"))
        assert mode.torch_tail == tail
        assert mode.decoder.on_gpu == (dali_device == "gpu")
        assert mode.raw_label_ids == (kind == "raw") and mode.label_arrays == (kind == "npy")
    assert reached == set(ROUTES)


def test_every_row_feeds_its_graph_exactly_its_inputs():
    """Checked without running a pipeline, so the GPU rows are covered here too: the fields the host
    feeds are the graph's DataNode parameters, in order, and its settings exist."""
    import dataclasses

    from cityseg_fast.data.dali import graphs
    from cityseg_fast.data.dali.loader import ROUTES

    settings = {f.name for f in dataclasses.fields(graphs.Settings)}
    for route, row in ROUTES.items():
        assert row.feeds._fields == graphs.graph_inputs(row.graph), route
        assert set(graphs.graph_settings(row.graph)) <= settings, route
        assert callable(row.feeds.read) and callable(row.handoff)
    assert ROUTES[("decode", "gpu")].feeds._fields == ("images",)
    assert ROUTES[("train", "gpu")].feeds._fields == ("images", "labels", "anchor", "shape", "size", "flip")


def test_a_row_whose_feed_is_not_its_graphs_inputs_cannot_be_built():
    from cityseg_fast.data.dali import graphs
    from cityseg_fast.data.dali.loader import Labelled, Row, Windowed

    with pytest.raises(TypeError, match="window_graph"):
        Row(Labelled, graphs.window_graph, lambda *a: None)
    with pytest.raises(TypeError, match="frame_graph"):
        Row(Windowed, graphs.frame_graph, lambda *a: None)


def test_torch_resampler_with_dali_on_the_gpu_is_refused():
    """A relation, not a word: it depends on where loader.device=auto resolved, so the loader checks
    it where the mode is computed, before any pipeline is built."""
    from cityseg_fast.data.dali.loader import Mode

    spec = _spec(True, False, "cuda")
    samples = next(s for *_, s in _mode_inputs())
    with pytest.raises(UserError) as err:
        Mode.of(spec, samples, dali_device="gpu", roi="slice", resampler="torch", hw_decoder_load=0.5)
    msg = str(err.value)
    assert msg.startswith("loader.resampler=torch") and "CPU" in msg and "\n" not in msg
    auto = Mode.of(spec, samples, dali_device="gpu", roi="slice", resampler="auto", hw_decoder_load=0.5)
    assert auto.route == ("train", "gpu")
    assert auto.describe(4) == "dali (gpu mixed decode, hw_decoder_load=0.5, 4 threads, train)"
