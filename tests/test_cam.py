import copy
import gc
import threading
import tracemalloc

import pytest
import torch
from torch.testing import assert_close

from topgap import METHODS, baseline_cam, create_baseline, topgap_cam
from topgap.cam import _hooks_of, cam_size, postprocess
from topgap.model import minmax_scale
from topgap.modes import eval_mode


@pytest.fixture
def baseline():
    torch.manual_seed(0)
    return create_baseline("resnet18", 3)


def hooks(model):
    return sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_topgap_cam_is_the_target_class_map_scaled(tiny_net):
    x = torch.randn(2, 3, 64, 64)
    cams, targets = topgap_cam(tiny_net, x)
    assert cams.shape == (2, 16, 16)
    tiny_net.eval()
    with torch.no_grad():
        maps = tiny_net.class_maps(x)
    assert_close(targets, tiny_net(x).argmax(1))
    assert_close(cams, minmax_scale(maps[torch.arange(2), targets].clamp_min(0)))
    cams2, t2 = topgap_cam(tiny_net, x, targets=[2, 0], size=(64, 64))
    assert cams2.shape == (2, 64, 64) and t2.tolist() == [2, 0]
    assert_close(cams2.amax((1, 2)), torch.ones(2))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_baseline_method_gives_scaled_maps_at_the_topgap_size(baseline, method):
    x = torch.randn(2, 3, 64, 64)
    cams, targets = baseline_cam(baseline, x, targets=1, method=method, size=(16, 16))
    assert cams.shape == (2, 16, 16) and targets.tolist() == [1, 1]
    assert torch.isfinite(cams).all() and cams.min() >= 0 and cams.max() <= 1
    assert hooks(baseline) == 0


def test_gradcam_matches_pytorch_grad_cam_on_the_final_feature_map(baseline):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x = torch.randn(1, 3, 64, 64)
    ours, _ = baseline_cam(baseline, x, targets=2, size=(64, 64))
    with GradCAM(baseline.eval(), target_layers=[baseline.layer4]) as cam:
        ref = torch.from_numpy(cam(x, targets=[ClassifierOutputTarget(2)]))
    assert_close(ours, minmax_scale(ref), atol=1e-4, rtol=0)


def test_gradcam_hirescam_and_xgradcam_agree_at_the_layer_that_feeds_global_average_pooling(baseline):
    """The explorer says so beside its method switch (app.METHOD_INFO): the gradient of a GAP-fed layer is the same
    at every cell, so HiResCAM's elementwise product and XGradCAM's weights reduce to GradCAM's map."""
    x = torch.randn(2, 3, 64, 64)
    grad, _ = baseline_cam(baseline, x, targets=1, method="gradcam")
    for method in ("hirescam", "xgradcam"):
        assert_close(baseline_cam(baseline, x, targets=1, method=method)[0], grad, atol=1e-5, rtol=0)
    assert not torch.allclose(baseline_cam(baseline, x, targets=1, method="gradcam++")[0], grad, atol=1e-3)


def test_scorecam_leaves_no_progress_bar_in_the_log(baseline, capfd):
    baseline_cam(baseline, torch.randn(1, 3, 32, 32), targets=0, method="scorecam")
    assert "it/s" not in capfd.readouterr().err


def test_scorecam_batch_by_batch_matches_pytorch_grad_cam(baseline):
    """topgap.cam._scorecam_weights builds one batch of masked inputs at a time (the library builds them all at
    once): the maps are the library's, for two images with their own targets."""
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x = torch.randn(2, 3, 64, 64)
    ours, _ = baseline_cam(baseline, x, targets=[2, 0], method="scorecam", size=(64, 64))
    with ScoreCAM(baseline.eval(), target_layers=[baseline.layer4]) as cam:
        ref = torch.from_numpy(cam(x, targets=[ClassifierOutputTarget(2), ClassifierOutputTarget(0)]))
    assert_close(ours, minmax_scale(ref), atol=1e-4, rtol=0)


def test_a_cam_waits_only_for_cams_on_the_same_model(baseline):
    """pytorch-grad-cam hooks the model it explains: calls on one model take turns, and a call on another model (the
    app's slow queue explains a copy) does not wait for them (an ordering check)."""
    other, x = copy.deepcopy(baseline), torch.randn(1, 3, 32, 32)
    with _hooks_of(other):  # as a ScoreCAM running on the copy holds it
        free = threading.Thread(target=baseline_cam, args=(baseline, x))
        free.start()
        free.join(60)
        assert not free.is_alive()  # answered while the copy is busy
        same = threading.Thread(target=baseline_cam, args=(other, x))
        same.start()
        same.join(0.5)
        assert same.is_alive()  # waits for the copy
    same.join(60)
    assert not same.is_alive()


def test_gradcam_on_a_topgap_model(tiny_net):
    cams, _ = baseline_cam(tiny_net, torch.randn(1, 3, 64, 64), targets=0)
    assert cams.shape == (1, 16, 16)  # the fused FPN map, at the class-map resolution
    assert hooks(tiny_net) == 0


def test_hooks_released_and_mode_restored_when_the_call_fails(baseline, tiny_net):
    baseline.train()
    with pytest.raises(ValueError, match="targets"):
        baseline_cam(baseline, torch.randn(2, 3, 64, 64), targets=[0, 1, 2])
    with pytest.raises(RuntimeError):
        baseline_cam(baseline, torch.randn(1, 5, 64, 64))  # wrong channel count fails inside the forward
    assert hooks(baseline) == 0 and baseline.training
    with pytest.raises(ValueError, match="unknown CAM method"):
        baseline_cam(baseline, torch.randn(1, 3, 64, 64), method="gradkam")
    with pytest.raises(ValueError, match="0..2"):
        topgap_cam(tiny_net, torch.randn(1, 3, 64, 64), targets=7)


def test_repeated_calls_do_not_grow_memory(baseline):
    x = torch.randn(1, 3, 64, 64)
    for _ in range(3):
        baseline_cam(baseline, x)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for _ in range(20):
        baseline_cam(baseline, x)
    gc.collect()
    growth = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    tracemalloc.stop()
    assert growth < 1_000_000, f"{growth} bytes retained after 20 calls"
    assert all(p.grad is None for p in baseline.parameters())  # the caller had none: none left


def test_baseline_cam_runs_one_forward_pass_and_returns_its_logits(baseline):
    x = torch.randn(2, 3, 64, 64)
    calls = []
    handle = baseline.conv1.register_forward_hook(lambda *_: calls.append(1))  # the stem runs once per pass
    try:
        cams, targets, logits = baseline_cam(baseline, x, with_logits=True)
    finally:
        handle.remove()
    assert len(calls) == 1
    with torch.no_grad():
        expected = baseline.eval()(x)
    assert_close(logits, expected)
    assert_close(targets, expected.argmax(1))


def test_postprocess_by_hand():
    m = torch.tensor([[[-2.0, 0.0], [1.0, 3.0]]])
    assert_close(postprocess(m), torch.tensor([[[0.0, 0.0], [1 / 3, 1.0]]]))
    assert_close(postprocess(m, mode="minmax"), torch.tensor([[[0.0, 0.4], [0.6, 1.0]]]))
    assert_close(postprocess(-m.abs() - 1), torch.zeros(1, 2, 2))  # all negative: nothing left after the ReLU
    up = postprocess(m, size=(4, 4))
    assert up.shape == (1, 4, 4) and up.max() == 1 and up.min() == 0
    with pytest.raises(ValueError, match="relu-minmax"):
        postprocess(m, mode="relu")


def test_gradcam_at_the_class_map_layer_equals_the_own_cam(tiny_net):
    """GradCAM at X: weights (1/(h w), 0, ...), so its map is X_c / (h w): after post-processing, the own CAM."""
    torch.manual_seed(1)
    x = torch.randn(3, 3, 64, 64)
    own, t = topgap_cam(tiny_net, x)
    gc, t2 = baseline_cam(tiny_net, x, layer=tiny_net.head.classifier)
    assert_close(t, t2)
    assert_close(gc, own, atol=1e-5, rtol=0)
    raw_own, _ = topgap_cam(tiny_net, x, postprocessing=None)
    raw_gc, _ = baseline_cam(tiny_net, x, layer=tiny_net.head.classifier, postprocessing=None)
    assert_close(raw_gc, raw_own / (16 * 16), atol=1e-6, rtol=1e-4)  # before any ReLU: negatives included
    assert (raw_own < 0).any()


def test_both_sides_share_one_switch(baseline, tiny_net):
    x = torch.randn(2, 3, 64, 64)
    raw, _ = baseline_cam(baseline, x, targets=0, postprocessing=None)
    assert raw.shape == (2, 2, 2) and (raw < 0).any()  # pytorch-grad-cam's own ReLU not applied
    for mode in ("relu-minmax", "minmax"):
        cams, _ = baseline_cam(baseline, x, targets=0, size=(16, 16), postprocessing=mode)
        assert_close(cams, postprocess(raw, (16, 16), mode))
        own, _ = topgap_cam(tiny_net, x, targets=0, postprocessing=mode)
        assert_close(own, postprocess(topgap_cam(tiny_net, x, targets=0, postprocessing=None)[0], None, mode))


def test_cam_size_from_the_model(tiny_net, baseline):
    assert cam_size(tiny_net, (64, 64)) == (16, 16)
    assert cam_size(baseline, (64, 96)) == (2, 3)


def test_eval_mode_restores_each_flag_and_keeps_the_callers_gradients(baseline):
    baseline.train()
    baseline.bn1.eval()  # a frozen batch norm, as in fine-tuning
    baseline(torch.randn(2, 3, 32, 32)).sum().backward()
    before = {n: p.grad.clone() for n, p in baseline.named_parameters()}
    with eval_mode(baseline):
        assert not any(m.training for m in baseline.modules())
        baseline(torch.randn(2, 3, 32, 32)).sum().backward()
    assert baseline.training and not baseline.bn1.training and baseline.layer1.training
    for n, p in baseline.named_parameters():
        assert_close(p.grad, before[n])
    baseline_cam(baseline, torch.randn(1, 3, 32, 32))
    for n, p in baseline.named_parameters():
        assert_close(p.grad, before[n])
    assert not baseline.bn1.training
