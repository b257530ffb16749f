"""Cityscapes label definitions: the 19 train classes, labelId <-> trainId tables, the colour palette.

Everything here is derived from cityscapesscripts' own label table (the one the official
evaluation uses), never retyped, so a change upstream cannot silently diverge from us.
"""

from __future__ import annotations

import numpy as np
from cityscapesscripts.helpers.labels import labels as _CS_LABELS

IGNORE_INDEX = 255
NUM_CLASSES = 19

# Train classes ordered by trainId 0..18.
_TRAIN = sorted((lb for lb in _CS_LABELS if 0 <= lb.trainId < IGNORE_INDEX), key=lambda lb: lb.trainId)
assert [lb.trainId for lb in _TRAIN] == list(range(NUM_CLASSES)), "unexpected cityscapesscripts label table"

CLASS_NAMES: tuple[str, ...] = tuple(lb.name for lb in _TRAIN)
CLASS_COLORS: tuple[tuple[int, int, int], ...] = tuple(tuple(lb.color) for lb in _TRAIN)

# Every labelId that appears in Cityscapes gtFine *_labelIds.png files (0..33; -1 is only the
# license plate in instance files and never appears in labelIds PNGs).
VALID_LABEL_IDS: frozenset[int] = frozenset(lb.id for lb in _CS_LABELS if lb.id >= 0)
# labelId -> colour for the *_gtFine_color.png files.
LABEL_ID_COLORS: dict[int, tuple[int, int, int]] = {lb.id: tuple(lb.color) for lb in _CS_LABELS if lb.id >= 0}
LABEL_ID_NAMES: dict[int, str] = {lb.id: lb.name for lb in _CS_LABELS if lb.id >= 0}
NAME_TO_LABEL_ID: dict[str, int] = {lb.name: lb.id for lb in _CS_LABELS if lb.id >= 0}


def _id_to_train_lut() -> np.ndarray:
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for lb in _CS_LABELS:
        if 0 <= lb.id < 256 and 0 <= lb.trainId < IGNORE_INDEX:
            lut[lb.id] = lb.trainId
    lut.flags.writeable = False
    return lut


def _train_to_id_lut() -> np.ndarray:
    # 255 (ignore) exports as 0 ("unlabeled"), which the official evaluation ignores.
    lut = np.zeros(256, dtype=np.uint8)
    for lb in _TRAIN:
        lut[lb.trainId] = lb.id
    lut.flags.writeable = False
    return lut


ID_TO_TRAINID: np.ndarray = _id_to_train_lut()
"""uint8[256]: labelId -> trainId, 255 for every id that is not evaluated (and every unknown id)."""

TRAINID_TO_ID: np.ndarray = _train_to_id_lut()
"""uint8[256]: trainId -> labelId, for exporting predictions in the official evaluation's format."""


def train_palette() -> np.ndarray:
    """uint8[256, 3] palette: trainId -> colour, black for ignore; usable with PIL 'P' images."""
    pal = np.zeros((256, 3), dtype=np.uint8)
    pal[:NUM_CLASSES] = np.asarray(CLASS_COLORS, dtype=np.uint8)
    return pal


def label_id_palette() -> np.ndarray:
    """uint8[256, 3] palette: labelId -> colour, as in the *_gtFine_color.png files."""
    pal = np.zeros((256, 3), dtype=np.uint8)
    for i, c in LABEL_ID_COLORS.items():
        pal[i] = c
    return pal
