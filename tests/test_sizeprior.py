"""The size-prior assistant (topgap.explorer.sizeprior) with hand-computed values."""
import dataclasses

import numpy as np
import pytest
import torch

from topgap.data.imageio import InputError
from topgap.explorer.explain import MapResult, Result
from topgap.explorer.sizeprior import advise, k_curves, mask_fraction, parse_fraction, picture_share


@pytest.mark.parametrize("value, expected", [(0.25, 0.25), ("0.5", 0.5), (None, None), ("  ", None), (1e-3, 1e-3)])
def test_parse_fraction(value, expected):
    assert parse_fraction(value) == expected


@pytest.mark.parametrize("value, message", [(0, "between 0 and 1, both excluded \\(got 0\\)"),
                                            (1, "got 1\\)"), (-0.2, "got -0.2\\)"), (25, "got 25\\)"),
                                            ("a quarter", "must be a number between 0 and 1 \\(got 'a quarter'\\)")])
def test_parse_fraction_refuses_clearly(value, message):
    with pytest.raises(InputError, match=message):
        parse_fraction(value)


def test_mask_fraction_leaves_the_ignored_pixels_out():
    obj = np.zeros((4, 5), bool)
    obj[:2, :2] = True  # 4 of 20 pixels
    assert mask_fraction(obj) == pytest.approx(4 / 20)
    ignore = np.zeros_like(obj)
    ignore[3] = True  # 5 pixels of trimap boundary: 4 of 15
    assert mask_fraction(obj, ignore) == pytest.approx(4 / 15)
    assert mask_fraction(obj, np.ones_like(obj)) == 0.0


def test_advise_area_in_cells_and_nearest_k_on_a_log_scale():
    a = advise(0.25, (24, 24), [4, 8, 16, 32, 64, 128])  # 0.25 * 576 = 144 cells: 128 (log distance 0.118)
    assert a.area == pytest.approx(144) and a.k == 128
    assert advise(10 / 256, (16, 16), [4, 16, 64]).k == 16  # 10 cells: |ln 16/10| = 0.47 < |ln 10/4| = 0.92
    assert advise(8 / 256, (16, 16), [4, 16, 64]).k == 4  # 8 cells: a tie (ln 2 each) goes to the smaller k
    letterboxed = advise(0.5, (16, 16), [4, 16, 64], share=0.5)  # half the input is picture: 0.5 * 0.5 * 256 = 64
    assert letterboxed.area == pytest.approx(64) and letterboxed.k == 64
    text = a.markdown()
    assert "**25.0%** of the image (typed size)" in text and "**144.0** of the 24x24 = 576" in text
    assert "**k = 128** (22.22% of the map)" in text


def _map(k, l1, iou=None, mass=None, kind="topgap"):
    z = np.zeros((2, 2), np.float32)
    return MapResult(f"k{k}" if k else "baseline", kind, k, {}, "a", 1.0, z, np.zeros((2, 2, 3), np.uint8), l1,
                     iou=iou, mass=mass)


def test_k_curves_and_picture_share():
    maps = [_map(4, 0.3, 0.5, 0.2), _map(16, 0.2, 0.6, 0.4)]
    result = Result("f", "gradcam", np.zeros((2, 2, 3), np.uint8), maps, _map(None, 0.5, 0.3, 0.1, "baseline"),
                    [4, 16], (8, 8), torch.zeros(1, 3, 64, 32), (16, 48, 0, 32))
    assert k_curves(result) == {"k": [4, 16], "fraction": [4 / 64, 16 / 64], "iou": [0.5, 0.6], "l1": [0.3, 0.2],
                                "mass": [0.2, 0.4], "baseline": {"iou": 0.3, "l1": 0.5, "mass": 0.1}}
    assert picture_share(result) == pytest.approx(32 * 32 / (64 * 32))
    no_mask = dataclasses.replace(result, topgap=[_map(4, 0.3)], baseline=None, ks=[4])
    assert k_curves(no_mask)["iou"] == [None] and k_curves(no_mask)["baseline"] is None
