"""Contact sheets: layout, tiles, labels, accepted frame types, PNG writing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from emoedit.pipeline.contact_sheet import BACKGROUND, GAP_PX, as_hwc_uint8, contact_sheet, save_contact_sheet


def _frame(value: int, height: int = 32, width: int = 48) -> np.ndarray:
    frame = np.full((height, width, 3), value, np.uint8)
    frame[0, 0] = (255, 0, 0)  # a marker in the top-left corner
    return frame


def test_layout_places_every_frame_exactly():
    rows = [("happy", [_frame(10), _frame(20), _frame(30)]), ("sad", [_frame(40), _frame(50), _frame(60)])]
    sheet = contact_sheet(rows, label_width=100, tile=32)
    assert sheet.dtype == np.uint8 and sheet.shape == (2 * (32 + GAP_PX) + GAP_PX, 100 + 3 * (48 + GAP_PX) + GAP_PX, 3)
    for r, (_, frames) in enumerate(rows):
        for c, frame in enumerate(frames):
            top, left = GAP_PX + r * (32 + GAP_PX), 100 + GAP_PX + c * (48 + GAP_PX)
            assert np.array_equal(sheet[top : top + 32, left : left + 48], frame), (r, c)
    labels = sheet[:, :100]
    assert (labels != np.array(BACKGROUND, np.uint8)).any(axis=-1).sum() > 20  # text was drawn
    assert (sheet[GAP_PX + 32, 100:] == np.array(BACKGROUND, np.uint8)).all()  # the gap between the rows


def test_frames_of_every_kind_are_scaled_to_the_tile_height():
    float_chw = torch.full((3, 64, 64), 0.5)
    uint8_hwc = torch.full((64, 32, 3), 200, dtype=torch.uint8)
    sheet = contact_sheet([("mixed", [float_chw, uint8_hwc, _frame(90, 16, 16)])], label_width=0, tile=32,
                          column_labels=["1/6", "3/6", "6/6"])
    header = 16
    assert sheet.shape == (header + 32 + 2 * GAP_PX, GAP_PX + (32 + GAP_PX) + (16 + GAP_PX) + (32 + GAP_PX), 3)
    assert abs(int(sheet[header + GAP_PX + 16, GAP_PX + 16, 0]) - 128) <= 1  # 0.5 → 128, resized 64 → 32
    assert int(sheet[header + GAP_PX + 16, 2 * GAP_PX + 32 + 8, 0]) == 200  # 64×32 frame → 32×16 tile
    assert (sheet[:header] != np.array(BACKGROUND, np.uint8)).any()  # the column labels


def test_short_rows_are_padded_with_the_background():
    sheet = contact_sheet([("a", [_frame(10), _frame(20)]), ("b", [_frame(30)])], label_width=10, tile=32)
    top, left = GAP_PX + 32 + GAP_PX, 10 + GAP_PX + 48 + GAP_PX
    assert (sheet[top : top + 32, left : left + 48] == np.array(BACKGROUND, np.uint8)).all()


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="no rows"):
        contact_sheet([])
    with pytest.raises(ValueError, match="has no frames"):
        contact_sheet([("empty", [])])
    with pytest.raises(TypeError, match="uint8"):
        contact_sheet([("float", [np.zeros((8, 8, 3), np.float32)])])
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        as_hwc_uint8(np.zeros((8, 8, 4), np.uint8))


def test_save_writes_a_png_atomically(tmp_path):
    rows = [("neutral", [_frame(10)]), ("happy", [_frame(200)])]
    path = save_contact_sheet(tmp_path / "sheets" / "fig2.png", rows, tile=32)
    assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), contact_sheet(rows, tile=32))
    assert [p.name for p in path.parent.iterdir()] == ["fig2.png"]
