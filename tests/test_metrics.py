import numpy as np
import pytest
import torch

from topgap.metrics import best_iou, l1_sparsity, mass_in_mask


def test_l1_sparsity_is_the_mean():
    cam = np.array([[0.0, 1.0], [0.5, 0.5]])
    assert l1_sparsity(cam) == pytest.approx(0.5)
    batch = torch.tensor([[[0.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]]])
    np.testing.assert_allclose(l1_sparsity(batch), [0.25, 1.0])


def test_l1_rejects_unscaled_maps():
    with pytest.raises(ValueError, match=r"\[0, 1\].*min-max"):
        l1_sparsity(np.array([[0.0, 2.0]]))
    with pytest.raises(ValueError, match="NaN"):
        l1_sparsity(np.array([[0.0, np.nan]]))


def test_best_iou_hand_computed():
    cam = np.array([[0.9, 0.8], [0.3, 0.1]])
    mask = np.array([[1, 0], [1, 0]])
    # t=0.9: {a} -> 1/2; t=0.8: {a,b} -> 1/3; t=0.3: {a,b,c} -> 2/3; t=0.1: all -> 2/4
    iou, t = best_iou(cam, mask)
    assert iou == pytest.approx(2 / 3) and t == pytest.approx(0.3)


def test_best_iou_perfect_and_ties():
    cam = np.array([[1.0, 1.0, 0.2, 0.2]])
    iou, t = best_iou(cam, np.array([[1, 1, 0, 0]]))
    assert (iou, t) == (1.0, 1.0)
    # tied values are thresholded together: the two 1.0 pixels cannot be split
    iou, _ = best_iou(cam, np.array([[1, 0, 0, 0]]))
    assert iou == pytest.approx(0.5)


def test_best_iou_resizes_cam_to_mask():
    cam = np.zeros((4, 4), np.float32)
    cam[:2, :2] = 1.0  # top-left quarter
    mask = np.zeros((64, 64), np.uint8)
    mask[:32, :32] = 255
    iou, _ = best_iou(cam, mask)
    assert iou > 0.85


def test_ignore_pixels_leave_intersection_and_union():
    cam = np.array([[1.0, 1.0, 0.0]])
    mask = np.array([[1, 0, 0]])
    assert best_iou(cam, mask)[0] == pytest.approx(0.5)
    assert best_iou(cam, mask, ignore=np.array([[0, 1, 0]]))[0] == pytest.approx(1.0)


def test_empty_mask_is_explained():
    with pytest.raises(ValueError, match="empty mask"):
        best_iou(np.ones((2, 2)), np.zeros((2, 2)))


def test_mass_in_mask():
    cam = np.array([[0.6, 0.2], [0.2, 0.0]])
    assert mass_in_mask(cam, np.array([[1, 0], [0, 1]])) == pytest.approx(0.6)
    assert np.isnan(mass_in_mask(np.zeros((2, 2)), np.ones((2, 2))))
    assert mass_in_mask(cam, np.array([[1, 0], [0, 0]]), ignore=np.array([[0, 1], [0, 0]])) == pytest.approx(0.75)


def test_pxap_pools_every_pixel_of_the_split_like_average_precision():
    from sklearn.metrics import average_precision_score

    from topgap.metrics import PxAP

    rng = np.random.default_rng(0)
    m, scores, labels = PxAP(), [], []
    for _ in range(4):
        mask = np.zeros((12, 12), bool)
        mask[3:8, 2:9] = True
        cam = np.clip(mask * 0.4 + rng.random((12, 12)) * 0.6, 0, 0.999)
        cam = (np.floor(cam * 1000) + 0.5) / 1000  # one value per histogram bin: the binned AP is exact
        m.update(cam, mask)
        scores.append(cam.ravel())
        labels.append(mask.ravel())
    assert m.summary() == pytest.approx(average_precision_score(np.concatenate(labels), np.concatenate(scores)))
    perfect = PxAP()
    perfect.update(np.where(mask, 0.9, 0.1), mask)
    assert perfect.summary() == pytest.approx(1.0)
    ignored = PxAP()
    ignored.update(np.where(mask, 0.9, 0.1), mask, ignore=~mask)  # only object pixels left: precision 1
    assert ignored.summary() == pytest.approx(1.0)
    assert PxAP().summary() is None


def test_maxboxacc_v2_by_hand():
    from topgap.metrics import box_hits, maxboxacc_v2, tight_box

    mask = np.zeros((20, 20), np.uint8)
    mask[5:15, 5:15] = 1
    assert tight_box(mask) == (5, 5, 14, 14) and tight_box(np.zeros((3, 3))) is None
    exact = np.where(mask, 1.0, 0.0)
    hits = box_hits(exact, mask)
    # every tau, tau 0 included, keeps u > int(tau 255) >= 0: the object only; box (5, 5, 15, 15), IoU 100/121
    assert hits.shape == (100, 3) and hits.all()
    shifted = np.zeros((20, 20))
    shifted[10:20, 10:20] = 1.0  # box (10, 10, 19, 19) (clipped): IoU 25 / 175 < 0.3
    assert not box_hits(shifted, mask).any()
    assert maxboxacc_v2(np.stack([hits, box_hits(shifted, mask)])) == pytest.approx(0.5)
    assert maxboxacc_v2(np.zeros((0, 100, 3))) is None
    with pytest.raises(ValueError, match="no object"):
        box_hits(exact, np.zeros((20, 20)))


def _square(shape, y0, y1, x0, x1, value=1.0):
    out = np.zeros(shape)
    out[y0:y1, x0:x1] = value
    return out


def test_box_is_x_plus_w_one_past_the_contour():
    from topgap.metrics import box_hits

    mask = _square((12, 12), 4, 7, 4, 7) > 0  # gt (4, 4, 6, 6): 9 pixels
    # contour rect x=4, w=3 -> box (4, 4, 7, 7), 16 pixels: IoU 9/16 = 0.5625 at every tau (x + w - 1 would give 1)
    assert (box_hits(mask * 1.0, mask) == [True, True, False]).all()


def _core_and_halo():
    cam = _square((20, 20), 3, 17, 3, 17, 0.5)  # halo: uint8(0.5 * 255) = 127 = int(0.50 * 255)
    cam[5:15, 5:15] = 1.0
    return cam


def test_box_threshold_is_strictly_greater_on_the_8bit_map():
    from topgap.metrics import box_hits

    cam, core = _core_and_halo(), _square((20, 20), 5, 15, 5, 15) > 0  # gt (5, 5, 14, 14): 100 pixels
    # tau >= 0.50: 127 > 127 fails, the core alone: box (5, 5, 15, 15), IoU 100/121 = 0.826 -> all three levels;
    # tau <= 0.49: u > int(0.49 * 255) = 124 keeps the halo: box (3, 3, 17, 17), IoU 100/225 = 0.444 -> 0.3 only
    expected = np.array([[True, False, False]] * 50 + [[True] * 3] * 50)
    assert (box_hits(cam, core) == expected).all()
    # thresholds are relative to the 8-bit maximum: core 153, halo uint8(0.3 * 255) = 76 = int(0.50 * 153)
    assert (box_hits(cam * 0.6, core) == expected).all()


def test_box_of_a_hole_counts_with_retr_tree():
    from topgap.metrics import box_hits

    ring = _square((20, 20), 2, 17, 2, 17)
    ring[5:14, 5:14] = 0.0
    hole = _square((20, 20), 5, 14, 5, 14) > 0  # gt (5, 5, 13, 13): 81 pixels
    # outer contour: box (2, 2, 17, 17), IoU 81/256 = 0.316; the hole's contour runs on the ring pixels 4..14:
    # box (4, 4, 15, 15), IoU 81/144 = 0.5625 -> 0.3 and 0.5 (outer contours only would give 0.3 only)
    assert (box_hits(ring, hole) == [True, True, False]).all()


def test_best_of_two_blobs_counts_and_one_tau_serves_the_split():
    from topgap.metrics import box_hits, maxboxacc_v2

    cam = _square((20, 20), 0, 8, 0, 12) + _square((20, 20), 12, 16, 12, 16)  # big blob and the object
    obj = _square((20, 20), 12, 16, 12, 16) > 0  # gt (12, 12, 15, 15): 16 pixels
    # big blob: IoU 0 (the largest contour alone would miss); object's box (12, 12, 16, 16): IoU 16/25 = 0.64
    two = box_hits(cam, obj)
    assert (two == [True, True, False]).all()
    # whole core-and-halo object, gt (3, 3, 16, 16), 196 pixels: tau <= 0.49 box (3, 3, 17, 17) IoU 196/225 = 0.871,
    # tau >= 0.50 box (5, 5, 15, 15) IoU 121/196 = 0.617; the core gt of the test above hits 0.7 only at tau >= 0.50
    big = box_hits(_core_and_halo(), _core_and_halo() > 0)
    assert (big == np.array([[True] * 3] * 50 + [[True, True, False]] * 50)).all()
    small = box_hits(_core_and_halo(), _square((20, 20), 5, 15, 5, 15) > 0)
    # delta 0.3: 1, 0.5: 1, 0.7: max over tau of 1/2 (never both) -> (1 + 1 + 0.5) / 3; plus `two`: (1 + 1 + 1/3) / 3
    assert maxboxacc_v2(np.stack([big, small])) == pytest.approx(2.5 / 3)
    assert maxboxacc_v2(np.stack([big, small, two])) == pytest.approx((2 + 1 / 3) / 3)


def test_box_is_clipped_to_the_last_pixel():
    from topgap.metrics import box_hits

    corner = _square((16, 16), 12, 16, 12, 16) > 0  # gt (12, 12, 15, 15)
    # x + w = 16 is clipped to W - 1 = 15: the box is the gt, IoU 1 (unclipped (12, 12, 16, 16) would give 0.64)
    assert box_hits(corner * 1.0, corner).all()
    top_left = _square((16, 16), 0, 4, 0, 4) > 0  # nothing to clip: box (0, 0, 4, 4), IoU 16/25 = 0.64
    assert (box_hits(top_left * 1.0, top_left) == [True, True, False]).all()


def test_no_contour_proposes_the_box_0_0_0_0():
    from topgap.metrics import box_hits

    pixel, square = _square((5, 5), 0, 1, 0, 1) > 0, _square((5, 5), 0, 2, 0, 2) > 0
    for cam in (np.zeros((5, 5)), np.full((5, 5), 0.003)):  # uint8(0.003 * 255) = 0: nothing is > 0
        assert box_hits(cam, pixel).all()  # box (0, 0, 0, 0) is the gt: IoU 1
        assert not box_hits(cam, square).any()  # IoU 1/4


def test_pxap_by_hand_with_the_binning():
    from sklearn.metrics import average_precision_score

    from topgap.metrics import PXAP_BINS, PxAP, pxap_from_histograms

    cam = np.array([[0.9008, 0.9004, 0.3, 0.2995]])  # bins [0.900, 0.901) twice, [0.300, 0.301), [0.299, 0.300)
    mask = np.array([[1, 0, 1, 0]])
    # t = 0.900: TP 1, FP 1, P 1/2, R 1/2; t = 0.300 (0.3 >= 0.3): TP 2, FP 1, P 2/3, R 1; lower t: R stays 1
    # PxAP = 1/2 * 1/2 + 2/3 * 1/2 = 7/12 (unbinned AP: 1 * 1/2 + 2/3 * 1/2 = 5/6; 0.3 counted as > 0.3 only: 1/2)
    m = PxAP()
    m.update(cam, mask)
    assert m.summary() == pytest.approx(7 / 12)
    assert average_precision_score(mask.ravel(), cam.ravel()) == pytest.approx(5 / 6)
    pos, neg = np.zeros(len(PXAP_BINS) - 1), np.zeros(len(PXAP_BINS) - 1)
    pos[[900, 300]], neg[[900, 299]] = 1, 1
    assert pxap_from_histograms(pos, neg) == pytest.approx(7 / 12)
    ignored = PxAP()
    ignored.update(cam, mask, ignore=np.array([[0, 1, 0, 0]]))  # without 0.9004: P 1 at R 1/2 and 1 -> 1
    assert ignored.summary() == pytest.approx(1.0)


def test_pxap_on_smooth_maps_is_average_precision_of_the_bin_indices():
    from sklearn.metrics import average_precision_score

    from topgap.metrics import PXAP_BINS, PxAP

    rng, m, scores, labels = np.random.default_rng(1), PxAP(), [], []
    yy, xx = np.mgrid[:64, :64]
    for _ in range(5):
        cx, cy, a, b = *rng.uniform(20, 44, 2), *rng.uniform(6, 18, 2)
        r = np.hypot((xx - cx) / a, (yy - cy) / b)
        mask, ignore = r <= 1, (r > 1) & (r < 1.15)
        cam = np.exp(-r ** 2 / rng.uniform(1, 4)) * 0.7 + rng.random((64, 64)) * 0.3
        cam = ((cam - cam.min()) / np.ptp(cam)).astype(np.float32)
        m.update(cam, mask, ignore)
        scores.append(np.searchsorted(PXAP_BINS, cam[~ignore], side="right"))  # a bin's pixels tie
        labels.append(mask[~ignore])
    assert m.summary() == pytest.approx(average_precision_score(np.concatenate(labels), np.concatenate(scores)))
