"""The `synthetic` loader backend: fixed random batches already on the device, the I/O-free upper bound.

Every iteration yields the same tensors (made once), so a model benchmark with this loader measures
the model alone. It follows the same spec and epoch plan as the real loaders: with a dataset, the same
number of batches per epoch, its frame size for evaluation and its padding indices; without one, 100
batches of Cityscapes-sized frames.
"""

from __future__ import annotations

import torch

from cityseg_fast.data.batch import Batch, to_layout
from cityseg_fast.data.cityscapes import image_size
from cityseg_fast.data.plan import LoaderSpec, PlannedLoader

DEFAULT_BATCHES = 100  # batches per epoch without a dataset
CITYSCAPES_HW = (1024, 2048)


class SyntheticLoader(PlannedLoader):
    def __init__(self, samples: list, spec: LoaderSpec, num_classes: int) -> None:
        super().__init__(samples, spec)
        s = spec
        if s.train:
            hw = target_hw = tuple(s.crop)
        else:  # eval frames keep their size (that of a `prepare --size/--scale` output when prepared)

            frame_hw = image_size(self.samples[0].image) if self.samples else CITYSCAPES_HW
            hw = tuple(s.eval_size or frame_hw)
            target_hw = hw if (s.eval_size is None or s.eval_label_resize) else frame_hw
        g = torch.Generator().manual_seed(s.seed + s.rank)
        image = torch.randn((s.batch_size, 3, *hw), generator=g)
        target = torch.randint(0, num_classes, (s.batch_size, *target_hw), generator=g)
        self._image = to_layout(image.to(s.device), s.channels_last)
        self._target = target.to(s.device)
        self.description = "synthetic"

    def __len__(self) -> int:
        return super().__len__() if self.samples else DEFAULT_BATCHES

    @property
    def num_samples(self) -> int:
        return super().num_samples if self.samples else len(self) * self.spec.batch_size

    def __iter__(self):
        if not self.samples:  # no files: every sample is real, index = position
            for k in range(len(self)):
                start = (k * self.spec.world_size + self.spec.rank) * self.spec.batch_size
                index = None if self.spec.train else torch.arange(start, start + self.spec.batch_size)
                yield Batch(self._image, self._target, index)
            return
        for items in self._plan():  # the real loaders' plan: same length, same padding (-1) indices
            index = None if self.spec.train else torch.tensor([it.index for it in items], dtype=torch.int64)
            yield Batch(self._image, self._target, index)
