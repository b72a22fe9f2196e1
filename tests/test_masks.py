import numpy as np
import pytest
from PIL import Image

from topgap.data.masks import binary_mask

OBJ = np.array([[1, 1, 0], [0, 1, 0]], bool)


@pytest.mark.parametrize("encoded", [OBJ.astype(np.uint8), OBJ.astype(np.uint8) * 255, OBJ])
def test_binary_encodings(encoded):
    obj, ignore = binary_mask(encoded)
    np.testing.assert_array_equal(obj, OBJ)
    assert not ignore.any()


def test_palette_indices_not_colours():
    img = Image.fromarray(OBJ.astype(np.uint8) * 3, mode="L").convert("P")
    img.putpalette([0, 0, 0] + [200, 10, 10] * 255)
    obj, _ = binary_mask(img)
    np.testing.assert_array_equal(obj, OBJ)


@pytest.mark.parametrize("boundary,obj_expected,ignore_expected", [
    ("ignore", [[1, 0, 0]], [[0, 0, 1]]),
    ("object", [[1, 0, 1]], [[0, 0, 0]]),
    ("background", [[1, 0, 0]], [[0, 0, 0]]),
])
def test_oxford_trimap(boundary, obj_expected, ignore_expected):
    trimap = Image.fromarray(np.array([[1, 2, 3]], np.uint8), mode="L")
    obj, ignore = binary_mask(trimap, boundary=boundary)
    np.testing.assert_array_equal(obj, np.array(obj_expected, bool))
    np.testing.assert_array_equal(ignore, np.array(ignore_expected, bool))


def test_rgba_drawing_uses_alpha():
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., :3] = 90  # colour everywhere, only strokes are opaque
    rgba[..., 3] = OBJ * 255
    obj, _ = binary_mask(Image.fromarray(rgba, mode="RGBA"))
    np.testing.assert_array_equal(obj, OBJ)


def test_opaque_rgb_strokes_on_black():
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[OBJ] = (0, 255, 0)
    np.testing.assert_array_equal(binary_mask(rgb)[0], OBJ)
    rgba = np.concatenate([rgb, np.full((2, 3, 1), 255, np.uint8)], -1)
    np.testing.assert_array_equal(binary_mask(rgba)[0], OBJ)


def test_antialiased_grey_mask_is_cut_at_half():
    ramp = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (2, 1))
    obj, _ = binary_mask(ramp)
    np.testing.assert_array_equal(obj, ramp >= 128)


def test_sixteen_bit_mask():
    obj, _ = binary_mask(Image.fromarray((OBJ * 65535).astype(np.uint16)))
    np.testing.assert_array_equal(obj, OBJ)


def test_bad_arguments():
    with pytest.raises(ValueError, match="boundary"):
        binary_mask(OBJ, boundary="maybe")
    with pytest.raises(ValueError, match="trimap holds only"):
        binary_mask(np.array([[1, 2, 7]]), encoding="trimap")
    with pytest.raises(ValueError, match="shape"):
        binary_mask(np.zeros((2, 2, 2, 2)))
