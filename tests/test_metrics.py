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
