"""The `synthetic` loader backend: fixed random batches already on the device — the I/O-free upper bound.

Every iteration yields the same tensors (made once), so a model benchmark with this loader measures
the model alone. Shapes follow the config exactly as the real loaders would deliver them.
"""

from __future__ import annotations

import torch

from cityseg_fast.data.batch import Batch, to_layout


class SyntheticLoader:
    def __init__(
        self,
        samples: list,
        *,
        train: bool,
        batch_size: int,
        image_hw: tuple[int, int],
        target_hw: tuple[int, int],
        num_classes: int,
        num_batches: int,
        rank: int,
        world_size: int,
        seed: int,
        device: torch.device,
        channels_last: bool = True,
    ) -> None:
        self.samples, self.train, self.batch_size = list(samples), train, batch_size
        self.rank, self.world_size, self.seed, self.epoch = rank, world_size, seed, 0
        self.device, self._len = device, max(1, num_batches)
        g = torch.Generator().manual_seed(seed + rank)
        h, w = image_hw
        image = torch.randn((batch_size, 3, h, w), generator=g)
        target = torch.randint(0, num_classes, (batch_size, *target_hw), generator=g)
        self._image = to_layout(image.to(device), channels_last)
        self._target = target.to(device)
        self.description = "synthetic"

    def __len__(self) -> int:
        return self._len

    @property
    def num_samples(self) -> int:
        return self._len * self.batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def close(self) -> None:
        pass

    def __iter__(self):
        for k in range(self._len):
            index = None
            if not self.train:  # eval loaders always set index; synthetic samples have no files
                start = (k * self.world_size + self.rank) * self.batch_size
                index = torch.arange(start, start + self.batch_size, dtype=torch.int64)
            yield Batch(self._image, self._target, index)
