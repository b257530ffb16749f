"""The torch tail of the training transform (resample.py): filters, normalization, buffer reuse."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cityseg_fast.config import IMAGENET_MEAN, IMAGENET_STD
from cityseg_fast.data.resample import BufferPool, Normalizer, resize_image, resize_label


def texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), (3 * xx + 5 * yy) % 256], -1)
    return np.clip(base + rng.integers(-30, 31, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("src,out", [((41, 83), (64, 128)), ((128, 256), (48, 96)), ((64, 128), (64, 128))])
def test_resize_image_is_pils_bilinear(src, out):
    """The same antialiased triangle filter as PIL's BILINEAR (and DALI's INTERP_LINEAR)."""
    a = texture(*src)
    got = resize_image(torch.from_numpy(a), out)
    assert got.dtype == torch.uint8 and tuple(got.shape) == (*out, 3) and got.is_contiguous()
    ref = np.asarray(Image.fromarray(a).resize((out[1], out[0]), Image.BILINEAR)).astype(int)
    diff = np.abs(got.numpy().astype(int) - ref)
    assert diff.mean() < 0.6 and diff.max() <= 2  # rounding only


def test_resize_label_nearest_keeps_values_and_centres():
    rng = np.random.default_rng(1)
    lab = torch.from_numpy(rng.choice(np.array([0, 7, 18, 255], np.uint8), (37, 53)))
    for out in ((64, 128), (20, 30), (37, 53)):
        got = resize_label(lab, out)
        assert got.dtype == torch.uint8 and tuple(got.shape) == out
        assert set(got.unique().tolist()) <= {0, 7, 18, 255}
        # pixel centres: output (i, j) reads source (floor((i + .5) * H / h), floor((j + .5) * W / w))
        yi = np.minimum(((np.arange(out[0]) + 0.5) * 37 / out[0]).astype(int), 36)
        xi = np.minimum(((np.arange(out[1]) + 0.5) * 53 / out[1]).astype(int), 52)
        assert np.array_equal(got.numpy(), lab.numpy()[yi][:, xi])


def test_normalizer_into_a_corner_and_batch():
    norm = Normalizer(IMAGENET_MEAN, IMAGENET_STD)
    mean, std = np.array(IMAGENET_MEAN) * 255, np.array(IMAGENET_STD) * 255
    src = torch.from_numpy(texture(20, 30))
    dst = torch.full((2, 32, 40, 3), 7.0)
    norm.into(dst[1], src)
    ref = (src.numpy().astype(np.float64) - mean) / std
    np.testing.assert_allclose(dst[1, :20, :30].numpy(), ref, atol=1e-5)
    assert bool((dst[1, 20:] == 7).all() and (dst[1, :, 30:] == 7).all() and (dst[0] == 7).all())
    batch = torch.from_numpy(np.stack([texture(8, 16, s) for s in range(3)]))
    np.testing.assert_allclose(norm.batch(batch).numpy(), (batch.numpy() - mean) / std, atol=1e-5)


def test_buffer_pool_never_hands_out_a_buffer_in_use():
    pool = BufferPool(size=2)
    a = pool.get((4, 5))
    b = pool.get((4, 5))
    assert a.data_ptr() != b.data_ptr()  # a is still held
    a_ptr = a.data_ptr()
    view = a[1:].t()  # a view keeps the storage in use even when `a` itself is gone
    del a
    c = pool.get((4, 5))
    assert c.data_ptr() not in (a_ptr, b.data_ptr())  # pool full: a fresh, unpooled tensor
    del view, c
    assert pool.get((4, 5)).data_ptr() == a_ptr  # released: reused
    assert pool.get((4, 5), torch.int64).dtype == torch.int64  # shapes/dtypes never mix


def test_buffer_pool_replaces_stale_shapes_and_drops_shared_buffers():
    pool = BufferPool(size=1)
    a = pool.get((2, 3))
    del a
    b = pool.get((4, 4))  # the only slot is free but of another shape: replaced, not kept forever
    assert [tuple(t.shape) for t, _ in pool.buffers] == [(4, 4)]
    b.share_memory_()  # as a torch.multiprocessing queue does: another process may read it
    b_ptr = b.data_ptr()
    del b
    c = pool.get((4, 4))
    assert c.data_ptr() != b_ptr and not c.is_shared()
