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
    assert hits.shape == (100, 3) and hits[50].all() and not hits[0, 2]  # tau 0 keeps the whole image: IoU 0.25
    shifted = np.zeros((20, 20))
    shifted[10:20, 10:20] = 1.0  # overlaps a quarter of the object: IoU 25 / 175 < 0.3
    assert not box_hits(shifted, mask)[1:].any()
    assert maxboxacc_v2(np.stack([hits, box_hits(shifted, mask)])) == pytest.approx(0.5)
    two = exact.copy()
    two[0:2, 18:20] = 1.0  # a second blob: multi-contour boxes still find the object's box
    assert box_hits(two, mask)[50].all()
    with pytest.raises(ValueError, match="no object"):
        box_hits(exact, np.zeros((20, 20)))
