"""The background swap (topgap.explorer.swap): pixel-exact variants, clear mask errors, every model on each variant."""
import numpy as np
import pytest

from appfamily import KS, make_family
from topgap.data.backgrounds import paste
from topgap.explorer.explain import Family, InputError, explain_all
from topgap.explorer.swap import GREY, NO_MASK, fit_background, gallery, summary, swap_all, swap_images, table

RNG = np.random.default_rng(0)
IMAGE = RNG.integers(0, 256, (6, 8, 3), dtype=np.uint8)
OBJ = np.zeros((6, 8), bool)
OBJ[1:4, 2:5] = True
BAND = np.zeros((6, 8), bool)
BAND[4, 2:5] = True  # an ignore band (a trimap's boundary): it moves with the object


def test_paste_keeps_the_object_and_takes_the_background_elsewhere():
    bg = np.full((6, 8, 3), 7, np.uint8)
    out = paste(IMAGE, OBJ, bg)
    np.testing.assert_array_equal(out[OBJ], IMAGE[OBJ])
    assert (out[~OBJ] == 7).all()
    np.testing.assert_array_equal(paste(IMAGE, ~OBJ, 0)[OBJ], 0)  # no_fg: the object blacked out
    with pytest.raises(ValueError, match="the mask is 4x3 but the image is 8x6"):
        paste(IMAGE, np.zeros((3, 4), bool), 0)


def test_fit_background_covers_and_centre_crops_by_hand():
    wide = np.repeat(np.arange(8, dtype=np.uint8)[None, :, None], 4, axis=0).repeat(3, axis=2)  # (4, 8): column x = x
    np.testing.assert_array_equal(fit_background(wide, (4, 4))[..., 0], [[2, 3, 4, 5]] * 4)  # scale 1, centre cols
    flat = np.full((2, 2, 3), 9, np.uint8)
    out = fit_background(flat, (5, 7))  # scaled up 3.5x to 7x7, then rows 1-5
    assert out.shape == (5, 7, 3) and (out == 9).all()


def test_swap_images_every_variant_pixel_exact():
    tex = {"flat": np.full((3, 3, 3), 50, np.uint8)}
    photo = np.full((12, 16, 3), 200, np.uint8)
    out = {name: image for name, _, image in swap_images(IMAGE, OBJ, BAND, tex, photo)}
    assert list(out) == ["original", "on flat", "on your photo", "on grey", "no_fg", "only_bg_t"]
    fg = OBJ | BAND
    for name, bg in (("on flat", 50), ("on your photo", 200), ("on grey", GREY)):
        np.testing.assert_array_equal(out[name][fg], IMAGE[fg], err_msg=name)  # the object keeps its pixels
        assert (out[name][~fg] == bg).all(), name  # the background outside
    np.testing.assert_array_equal(out["original"], IMAGE)
    assert (out["no_fg"][fg] == 0).all() and (out["no_fg"][~fg] == IMAGE[~fg]).all()
    np.testing.assert_array_equal(out["only_bg_t"][~fg], IMAGE[~fg])  # the background stays, the object is filled
    rows, cols = np.nonzero(fg)
    assert not (out["only_bg_t"][rows, cols] == IMAGE[rows, cols]).all(axis=1).all()


@pytest.mark.parametrize("obj, ignore, message", [
    (np.zeros((3, 4), bool), np.zeros((3, 4), bool), "the mask is 4x3 but the image is 8x6; give the mask of this"),
    (np.zeros((6, 8), bool), np.zeros((6, 8), bool), "the mask marks no object pixel"),
    (np.ones((6, 8), bool), np.zeros((6, 8), bool), "the mask covers the whole image"),
])
def test_swap_images_says_what_is_wrong_with_the_mask(obj, ignore, message):
    with pytest.raises(InputError, match=message):
        swap_images(IMAGE, obj, ignore, {})


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return Family(make_family(tmp_path_factory.mktemp("models"), "fam"))


def test_swap_all_runs_every_model_on_every_variant(family):
    image = RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[16:48, 20:44] = True
    result = explain_all(family, image)
    with pytest.raises(InputError, match="upload or draw a mask of the object in the Explain tab"):
        swap_all(family, result, {})
    assert NO_MASK.startswith("this image has no mask")
    result = result.with_mask(mask)
    tex = {"a": np.full((8, 8, 3), 30, np.uint8), "b": np.full((8, 8, 3), 220, np.uint8)}
    variants = swap_all(family, result, tex)
    assert [v.name for v in variants] == ["original", "on a", "on b", "on grey", "no_fg", "only_bg_t"]
    assert variants[0].result.topgap[0].label == result.topgap[0].label  # the original is not run again
    for v in variants:
        assert [m.name for m in v.maps()] == [f"k{k}" for k in KS] + ["baseline"]
        assert v.result.has_mask and all(0 <= m.mass <= 1 for m in v.maps())
    on_b = explain_all(family, variants[2].image)  # the same answer as explaining the swapped image by hand
    assert variants[2].result.topgap[1].probability == pytest.approx(on_b.topgap[1].probability)
    items = gallery(variants)
    assert len(items) == len(variants) * (1 + len(KS) + 1)
    m = variants[2].maps()[-1]
    assert items[2 * 5 + 4][1] == f"on b · baseline (gradcam): {m.label} {m.probability:.0%}"
    headers, rows = table(variants)
    assert headers == ["variant"] + [f"k{k}" for k in KS] + ["baseline (gradcam)"] and len(rows) == len(variants)
    assert rows[1][1] == f"{variants[1].maps()[0].label} ({variants[1].maps()[0].probability:.0%})"
    text = summary(variants)
    assert text.count("\n| ") == len(KS) + 1  # one row per model
    kept = sum(v.maps()[0].label == variants[0].maps()[0].label for v in variants[1:4])
    assert f"| k{KS[0]} | " in text and f"| {kept}/3 |" in text
