"""The labelId -> trainId table against cityscapesscripts' own label list, for every id."""

from __future__ import annotations

import numpy as np
from cityscapesscripts.helpers.labels import id2label, labels

from cityseg_fast import labels as L


def test_nineteen_train_classes_in_order():
    assert L.NUM_CLASSES == 19 and len(L.CLASS_NAMES) == 19
    assert L.CLASS_NAMES[0] == "road" and L.CLASS_NAMES[18] == "bicycle"
    assert L.CLASS_COLORS[0] == (128, 64, 128)


def test_lut_for_every_id():
    assert L.ID_TO_TRAINID.dtype == np.uint8 and L.ID_TO_TRAINID.shape == (256,)
    for i in range(256):
        lb = id2label.get(i)
        expected = lb.trainId if lb is not None and 0 <= lb.trainId < 255 else 255
        assert L.ID_TO_TRAINID[i] == expected, i
    # a few well-known ones
    assert L.ID_TO_TRAINID[7] == 0  # road
    assert L.ID_TO_TRAINID[26] == 13  # car
    assert L.ID_TO_TRAINID[1] == 255  # ego vehicle
    assert L.ID_TO_TRAINID[4] == 255  # static


def test_train_to_id_inverts():
    for t in range(19):
        assert L.ID_TO_TRAINID[L.TRAINID_TO_ID[t]] == t
    assert L.TRAINID_TO_ID[255] == 0


def test_valid_label_ids():
    assert L.VALID_LABEL_IDS == frozenset(lb.id for lb in labels if lb.id >= 0)
    assert max(L.VALID_LABEL_IDS) == 33
