"""Cascading model-parameter randomisation (Adebayo et al. 2018): topgap.eval.sanity."""
import copy
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from topgap import TopGapNet
from topgap.cam import GRADCAM_POSTPROCESSING, PROTOCOLS, baseline_cam, topgap_cam
from topgap.config import ModelConfig
from topgap.eval.sanity import THRESHOLD, cascading_randomisation, randomisation_stages, spearman, ssim
from topgap.model import create_baseline

PROTOCOL = "paper"  # a name of topgap.cam.PROTOCOLS
C1, C2 = 0.01 ** 2, 0.03 ** 2


def _cfg(backbone="resnet18", kind="topgap"):
    return ModelConfig(backbone, ["a", "b", "c"], kind=kind, mean=(0.5,) * 3, std=(0.5,) * 3)


def _images(n, size, device):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, size, size, generator=g).to(device), torch.arange(n, device=device) % 3


class MeanMap(nn.Module):
    """A timm-like classifier whose features are the input's mean intensity: its GradCAM ignores the weights."""

    feature_info = ({"module": "stem", "num_chs": 1, "reduction": 1},)

    def __init__(self, num_classes=3):
        super().__init__()
        self.num_classes, self.stem, self.fc = num_classes, nn.Conv2d(3, 1, 1), nn.Linear(1, num_classes)

    def forward_features(self, x):
        return x.mean(1, keepdim=True) + 0 * self.stem(x)

    def forward_head(self, f):
        return self.fc(f.mean((2, 3)))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def get_classifier(self):
        return self.fc


class MeanMapNet(TopGapNet):
    """A TopGapNet whose class maps are the input's mean intensity (pooled to the map size), whatever the weights."""

    def class_maps(self, x):
        maps = super().class_maps(x)
        return F.avg_pool2d(x.mean(1, keepdim=True), self.reduction).expand_as(maps) + 0 * maps


@pytest.fixture(scope="module")
def net_run():
    """(caller's net, a copy of its state before, the result) for a seeded resnet18 TopGapNet at 64 px."""
    device = torch.device(os.environ.get("TORCH_DEVICE", "cpu"))  # as conftest's `device` (function-scoped)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = TopGapNet("resnet18", num_classes=3, k=8, fpn_channels=32).to(device)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, t = _images(2, 64, device)
    rng = torch.get_rng_state()
    result = cascading_randomisation(net, _cfg(), x, t, protocol=PROTOCOL)
    assert torch.equal(rng, torch.get_rng_state()), "the global RNG must be left as it was"
    yield net, before, result
    torch.set_num_threads(threads)


def test_spearman_hand_computed():
    assert spearman([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(1 - 6 * 2 / (4 * 15))
    assert spearman([-3, 1, 2], [3, 1, 2]) == pytest.approx(-0.5)  # ranks (1,2,3) vs (3,1,2): 1 - 6*6/(3*8)
    assert spearman(np.abs([-3, 1, 2]), np.abs([3, 1, 2])) == pytest.approx(1.0)
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(1.5 / math.sqrt(3))  # ties take the mean rank
    assert math.isnan(spearman([2, 2, 2], [1, 2, 3]))


def _window():
    g = np.exp(-0.5 * (np.arange(-5, 6) / 1.5) ** 2)
    return np.outer(g, g) / np.outer(g, g).sum()  # Wang et al.'s 11x11 Gaussian, sigma 1.5


def test_ssim_hand_computed():
    a = torch.rand(2, 20, 24, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(ssim(a, a), [1.0, 1.0], rtol=1e-12)
    p, q = 0.2, 0.7  # constant maps: no variance, SSIM = luminance term
    got = ssim(torch.full((16, 16), p), torch.full((16, 16), q))
    assert float(got) == pytest.approx((2 * p * q + C1) / (p * p + q * q + C1))
    w, x = _window(), np.random.default_rng(0).random((11, 11)) * 0.5  # one window: hand formula on its moments
    mu, var = (w * x).sum(), (w * (x - (w * x).sum()) ** 2).sum()
    shift = float(ssim(torch.from_numpy(x), torch.from_numpy(x + 0.25)))  # same variance: structure term 1
    assert shift == pytest.approx((2 * mu * (mu + 0.25) + C1) / (mu ** 2 + (mu + 0.25) ** 2 + C1), rel=1e-12)
    neg = float(ssim(torch.from_numpy(x), torch.from_numpy(1 - x)))  # covariance -var
    expect = (2 * mu * (1 - mu) + C1) * (-2 * var + C2) / ((mu ** 2 + (1 - mu) ** 2 + C1) * (2 * var + C2))
    assert neg == pytest.approx(expect, rel=1e-12)
    with pytest.raises(ValueError, match="11 px"):
        ssim(torch.rand(8, 8), torch.rand(8, 8))


def test_ssim_matches_skimage():
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(1)
    a = rng.random((30, 40))
    b = np.clip(a + 0.2 * rng.standard_normal(a.shape), 0, 1)
    ref = metrics.structural_similarity(a, b, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False)
    assert float(ssim(torch.from_numpy(a), torch.from_numpy(b))) == pytest.approx(ref, abs=1e-12)


def test_caller_model_unchanged(net_run):
    net, before, _ = net_run
    after = net.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert net.training and all(p.grad is None for p in net.parameters())


def test_stages_head_first_and_cover_every_parameter(net_run, device):
    _, _, result = net_run
    assert result["stages"] == ["head", "stage4", "stage3", "stage2", "stage1", "stage0"]
    assert list(result["own"]) == list(result["gradcam"]) == result["stages"]
    for model in (net_run[0], create_baseline("tf_efficientnet_lite0", 3, last_stage=3)):
        stages = randomisation_stages(model)
        ids = [id(p) for _, mods in stages for m in mods for p in m.parameters(recurse=False)]
        assert sorted(ids) == sorted(id(p) for p in model.parameters())  # each parameter in exactly one stage
    lite = TopGapNet("tf_efficientnet_lite0", num_classes=3, k=8, fpn_channels=16, last_stage=3)
    assert [n for n, _ in randomisation_stages(lite)] == ["head", "stage3", "stage2", "stage1", "stage0"]


def test_real_maps_change_after_head(net_run):
    _, _, result = net_run
    for kind in ("own", "gradcam"):
        head = result[kind]["head"]
        assert head["spearman"] < 0.9 and head["spearman_abs"] < 0.9 and head["ssim"] < 0.9
        assert result["flagged"][kind] is False
    assert result["n"] == 2 and result["threshold"]["value"] == THRESHOLD
    json.dumps(result, allow_nan=False)


def test_cascade_maps_equal_topgap_cam(net_run, device):
    """The cascade's CAMs (a deep copy, one image per call) equal topgap.cam's own calls."""
    from topgap.eval.sanity import _raw_maps

    x, t = _images(2, 64, device)
    xn = (x - 0.5) / 0.5
    for model in (net_run[0], create_baseline("tf_efficientnet_lite0", 3, last_stage=3).to(device)):
        got = _raw_maps(copy.deepcopy(model), xn, t, "gradcam", batch_size=1)
        torch.testing.assert_close(got["gradcam"], baseline_cam(model, xn, t, postprocessing=None)[0])
        if isinstance(model, TopGapNet):
            torch.testing.assert_close(got["own"], topgap_cam(model, xn, t, postprocessing=None)[0])


def test_weight_independent_maps_are_flagged(net_run, device, one_thread):
    x, t = _images(2, 32, device)
    result = cascading_randomisation(MeanMap().to(device), _cfg(kind="baseline"), x, t, protocol=PROTOCOL)
    assert result["stages"] == ["head", "stage0"] and result["own"] is None
    assert result["gradcam"]["head"]["spearman_abs"] == pytest.approx(1.0)
    assert result["flagged"] == {"own": None, "gradcam": True}

    net = copy.deepcopy(net_run[0])
    net.__class__ = MeanMapNet
    result = cascading_randomisation(net, _cfg(), x, t, protocol=PROTOCOL)
    assert result["own"]["head"]["spearman"] == pytest.approx(1.0)
    assert result["flagged"]["own"] is True
    assert result["flagged"]["gradcam"] is None  # GradCAM of a map that ignores the head is 0: undefined
    assert result["postprocessing"] == {"own": PROTOCOLS[PROTOCOL], "gradcam": GRADCAM_POSTPROCESSING}
    same = cascading_randomisation(net, _cfg(), x, t, protocol=PROTOCOLS[PROTOCOL])  # the mode itself is accepted
    assert {**same, "protocol": PROTOCOL} == result


def test_baseline_and_determinism(device, one_thread):
    model = create_baseline("tf_efficientnet_lite0", 3, last_stage=3).to(device)
    x, t = _images(2, 64, device)
    cfg = _cfg("tf_efficientnet_lite0", "baseline")
    runs = [cascading_randomisation(model, cfg, x, t, protocol=p, seed=s) for p, s in ((PROTOCOL, 0), (PROTOCOL, 0),
                                                                                      (PROTOCOL, 1))]
    assert runs[0] == runs[1]
    assert runs[0]["per_image"]["gradcam"] != runs[2]["per_image"]["gradcam"]
    assert runs[0]["own"] is None and runs[0]["flagged"]["own"] is None
    assert runs[0]["stages"] == ["head", "stage3", "stage2", "stage1", "stage0"]
    assert runs[0]["gradcam"]["head"]["spearman"] < 1


def test_bad_arguments(device):
    model, x = MeanMap(), torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match="protocol"):
        cascading_randomisation(model, _cfg(), x, torch.zeros(2, dtype=torch.long), protocol="nope")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        cascading_randomisation(model, _cfg(), x * 3, torch.zeros(2, dtype=torch.long), protocol=PROTOCOL)
    with pytest.raises(ValueError, match="one target"):
        cascading_randomisation(model, _cfg(), x, torch.zeros(3, dtype=torch.long), protocol=PROTOCOL)


def test_one_cascade_for_both_protocols_equals_one_run_each(device, one_thread):
    from topgap.cam import PROTOCOLS
    from topgap.eval.sanity import randomisation_by_protocol

    torch.manual_seed(0)
    net = TopGapNet("resnet18", num_classes=3, k=8, fpn_channels=16).to(device)
    x, t = _images(2, 64, device)
    both = randomisation_by_protocol(net, _cfg(), x, t, protocols=tuple(PROTOCOLS))
    assert set(both) == set(PROTOCOLS)
    for p in PROTOCOLS:
        assert both[p] == cascading_randomisation(net, _cfg(), x, t, protocol=p)
    assert both["paper"]["per_image"]["own"] != both["relu"]["per_image"]["own"]  # the SSIMs differ
