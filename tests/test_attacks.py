import pytest
import torch
from torch import nn

from topgap import TopGapNet
from topgap.eval.attacks import (gradient_masking_flag, robustness, run_attack, transfer_robustness, with_rates,
                            wrap01)

pytestmark = pytest.mark.usefixtures("one_thread")


class NoGrad(torch.autograd.Function):
    """Identity forward, zero gradient backward: a model behind it masks its gradients completely."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.zeros_like(grad)


class Masked(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(NoGrad.apply(x))


def linear_model(seed: int = 0, classes: int = 3, side: int = 8) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * side * side, classes))


@pytest.fixture
def net01():
    torch.manual_seed(0)
    return wrap01(TopGapNet("resnet18", 3, k=8, fpn_channels=16), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


@pytest.mark.parametrize("kind, kw", [("fgsm", {}), ("pgd", {"steps": 3}), ("square", {"n_queries": 10})])
def test_eps_ball_and_range(net01, kind, kw):
    torch.manual_seed(1)
    x = torch.rand(4, 3, 32, 32)
    x[0, :, :4] = 0.0
    x[1, :, :4] = 1.0  # pixels at the range limits must stay clipped
    y = torch.tensor([0, 1, 2, 0])
    eps = 8 / 255
    adv = run_attack(net01, x, y, kind, eps, **kw)
    assert adv.shape == x.shape
    assert (adv - x).abs().max() <= eps + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1


def test_fgsm_moves_by_the_gradient_sign_exactly():
    model = linear_model()
    x = torch.full((2, 3, 8, 8), 0.5)  # away from the [0, 1] limits: no clipping
    y = torch.tensor([0, 2])
    eps = 1 / 255
    xg = x.clone().requires_grad_(True)
    nn.functional.cross_entropy(model(xg), y).backward()
    adv = run_attack(model, x, y, "fgsm", eps)
    assert torch.allclose(adv, x + eps * xg.grad.sign(), atol=1e-7)


def test_model_mode_and_grads_restored(net01):
    net01.train()
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([0, 1])
    run_attack(net01, x, y, "pgd", 1 / 255, steps=2)
    assert net01.training and all(m.training for m in net01.modules())
    assert all(p.grad is None for p in net01.parameters())


def test_pgd_is_seeded_and_leaves_global_rng_alone(net01):
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([0, 1])
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a = run_attack(net01, x, y, "pgd", 4 / 255, steps=2, seed=5)
    assert torch.equal(torch.rand(1), expected)
    assert torch.equal(a, run_attack(net01, x, y, "pgd", 4 / 255, steps=2, seed=5))


def test_bad_inputs():
    model = linear_model()
    x, y = torch.rand(2, 3, 8, 8), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="unknown attack"):
        run_attack(model, x, y, "cw", 1 / 255)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        run_attack(model, x * 3 - 1, y, "fgsm", 1 / 255)
    with pytest.raises(ValueError, match="eps"):
        run_attack(model, x, y, "fgsm", 8)
    with pytest.raises(ValueError, match="one label per image"):
        run_attack(model, x, y[:1], "fgsm", 1 / 255)


class Fixed(nn.Module):
    """Returns logits chosen per image: clean and adversarial predictions are set by hand."""

    def __init__(self, preds: dict[float, int]):
        super().__init__()
        self.preds = preds
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        keys = x.flatten(1)[:, 0].tolist()
        return torch.nn.functional.one_hot(torch.tensor([self.preds[round(k, 2)] for k in keys]), 3).float()


def test_two_robustness_definitions_differ():
    # image 0: correct, stays correct; 1: correct, flipped; 2: wrong, stays the same wrong class;
    # 3: wrong, attacked into the true class
    x = torch.tensor([0.1, 0.2, 0.3, 0.4]).view(4, 1, 1, 1).expand(4, 3, 2, 2).clone()
    adv = x + 0.5
    y = torch.tensor([0, 0, 0, 0])
    model = Fixed({0.1: 0, 0.2: 0, 0.3: 1, 0.4: 2, 0.6: 0, 0.7: 1, 0.8: 1, 0.9: 0})
    r = robustness(model, x, y, adv)
    assert r == {"n": 4, "clean_correct": 2, "robust_paper": 2, "robust_correct": 2, "clean_accuracy": 0.5,
                 "robust_paper_rate": 0.5, "robust_correct_rate": 0.5}
    # the paper's count holds image 2 (wrong, unchanged); the usual count holds image 3 (now correct)
    model.preds[0.9] = 2
    r = robustness(model, x, y, adv)
    assert (r["robust_paper"], r["robust_correct"]) == (3, 1)


def test_with_rates_on_empty_batch():
    assert with_rates({"n": 0, "clean_correct": 0, "robust_paper": 0, "robust_correct": 0})["clean_accuracy"] is None


def test_masking_flag_logic():
    assert gradient_masking_flag(0.9, 0.2)
    assert not gradient_masking_flag(0.3, 0.25)
    assert not gradient_masking_flag(0.2, 0.6)  # black-box weaker than white-box: normal
    assert not gradient_masking_flag(0.5, 0.4, margin=0.1)  # exactly at the margin is not flagged
    assert gradient_masking_flag(0.5, 0.45, margin=0.0)
    with pytest.raises(ValueError, match="rates"):
        gradient_masking_flag(1.5, 0.1)


def test_masked_gradients_are_flagged():
    honest = linear_model(seed=3)
    masked = Masked(honest)
    torch.manual_seed(0)
    x = torch.rand(16, 3, 8, 8)
    with torch.no_grad():
        y = honest(x).argmax(1)  # clean accuracy 1 by construction
    eps = 16 / 255
    white = robustness(masked, x, y, run_attack(masked, x, y, "fgsm", eps))
    square = robustness(masked, x, y, run_attack(masked, x, y, "square", eps, n_queries=50))
    transfer = transfer_robustness(honest, masked, x, y, eps, steps=40)
    assert white["robust_correct_rate"] == 1.0  # zero gradients: FGSM cannot move
    assert square["robust_correct_rate"] < 0.8 and transfer["robust_correct_rate"] < 0.5
    assert gradient_masking_flag(white["robust_correct_rate"], square["robust_correct_rate"])
    assert gradient_masking_flag(white["robust_correct_rate"], transfer["robust_correct_rate"])
    # the honest model's white-box attack is at least as strong as the black-box ones: not flagged
    honest_white = robustness(honest, x, y, run_attack(honest, x, y, "pgd", eps, steps=40))
    assert not gradient_masking_flag(honest_white["robust_correct_rate"], square["robust_correct_rate"])


@pytest.mark.parametrize("rule, alpha", [("foolbox", lambda eps, steps: eps / 30),
                                         ("2.5eps/steps", lambda eps, steps: min(eps, 2.5 * eps / steps))])
def test_pgd_step_rules(rule, alpha):
    """One PGD step without random start moves every pixel by exactly alpha (Foolbox: eps/30; Madry: 2.5 eps/steps,
    projected back onto the eps ball)."""
    model = linear_model(seed=1)
    x, y = torch.full((2, 3, 8, 8), 0.5), torch.tensor([0, 1])
    eps = 8 / 255
    adv = run_attack(model, x, y, "pgd", eps, steps=1, rule=rule, random_start=False)
    moved = (adv - x).abs()
    assert torch.allclose(moved[moved > 0], torch.full_like(moved[moved > 0], alpha(eps, 1)), atol=1e-6)
    with pytest.raises(ValueError, match="foolbox"):
        run_attack(model, x, y, "pgd", eps, rule="madry")


def test_eps_curve_falls_to_zero_and_autoattack_stays_in_the_ball():
    from topgap.eval.attacks import eps_curve

    model = linear_model(seed=3)
    torch.manual_seed(0)
    x = torch.rand(8, 3, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    curve = eps_curve(model, x, y, [1 / 255, 8 / 255, 1.0], steps=10)
    acc = [c["accuracy"] for c in curve]
    assert acc[0] == 1.0 or acc == sorted(acc, reverse=True)
    assert acc[-1] == 0.0  # the whole image range: every prediction can be changed
    for m in (model, linear_model(seed=3, classes=4)):  # 3 classes: without APGD-T; 4: the standard version
        with torch.no_grad():
            y = m(x).argmax(1)
        adv = run_attack(m, x, y, "autoattack", 4 / 255)
        assert (adv - x).abs().max() <= 4 / 255 + 1e-6 and adv.min() >= 0 and adv.max() <= 1


def test_eps_curve_steps_cross_the_ball():
    """A linear 2-class model whose margin needs 0.9 eps against every pixel: the curve's 10 steps of 2.5 eps / 10
    flip it; Foolbox's rule (eps/30 per step: 1/3 eps beyond the random start) does not, and would overstate it."""
    from topgap.eval.attacks import eps_curve, run_attack

    torch.manual_seed(0)
    eps, n = 8 / 255, 3 * 8 * 8
    w = torch.sign(torch.randn(n))
    model = nn.Sequential(nn.Flatten(), nn.Linear(n, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([w, -w]) / 2)  # logit gap (class 0 minus class 1) = w . x
    t = (0.9 * eps * n - 0.5 * w.sum()) / n  # x = 0.5 + t w has gap 0.9 eps n: moving every pixel eps flips it
    x, y = (0.5 + t * w).reshape(1, 3, 8, 8), torch.zeros(1, dtype=torch.long)
    assert model(x).argmax(1).item() == 0 and 0 < x.min() and x.max() < 1
    weak = run_attack(model, x, y, "pgd", eps, steps=10, rule="foolbox")
    assert model(weak).argmax(1).item() == 0  # 10 Foolbox steps cannot cross the ball
    assert eps_curve(model, x, y, [eps], steps=10)[0]["accuracy"] == 0.0


def test_pgd_step_size_by_hand():
    from topgap.eval.attacks import pgd_step_size, reaches_boundary

    eps = 8 / 255
    assert pgd_step_size("foolbox", eps, 10) == pytest.approx(0.0010457516)  # 8/255 / 30, whatever the steps
    assert pgd_step_size("foolbox", eps, 40) == pytest.approx(0.0010457516)
    assert pgd_step_size("2.5eps/steps", eps, 10) == pytest.approx(2 / 255)  # 2.5 * 8/255 / 10
    assert pgd_step_size("2.5eps/steps", eps, 20) == pytest.approx(1 / 255)
    assert pgd_step_size("2.5eps/steps", 1 / 255, 40) == pytest.approx(0.0002450980)  # 2.5/255 / 40
    with pytest.raises(ValueError, match="foolbox"):
        pgd_step_size("madry", eps, 10)
    assert reaches_boundary(pgd_step_size("foolbox", eps, 30), eps, 30)  # 30 x eps/30 = eps, rounding aside
    assert not reaches_boundary(pgd_step_size("foolbox", eps, 29), eps, 29)
    assert reaches_boundary(pgd_step_size("2.5eps/steps", eps, 1), eps, 1)


def test_run_attack_takes_alpha_from_pgd_step_size(monkeypatch):
    """The one place a rule becomes a step size: one PGD step without random start moves every pixel by it."""
    import topgap.eval.attacks as attacks

    monkeypatch.setattr(attacks, "pgd_step_size", lambda rule, eps, steps: eps / 7)
    model, eps = linear_model(seed=1), 8 / 255
    x, y = torch.full((2, 3, 8, 8), 0.5), torch.tensor([0, 1])
    moved = (run_attack(model, x, y, "pgd", eps, steps=1, random_start=False) - x).abs()
    assert torch.allclose(moved[moved > 0], torch.full_like(moved[moved > 0], eps / 7), atol=1e-6)


class Window(nn.Module):
    """One-pixel images: class 0 unless x lies within (0.55, 0.65), the only place an attack from 0.5 breaks it."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        v = x.flatten(1)[:, 0]
        return torch.stack([((v <= 0.55) | (v >= 0.65)).float(), ((v > 0.55) & (v < 0.65)).float()], 1)


def test_eps_curve_counts_an_image_broken_at_a_smaller_budget_as_broken(monkeypatch):
    """The one definition: robust at eps = correct clean and under every budget up to eps. A fake PGD that moves
    the pixel by exactly +eps breaks the image at 0.1 only; an attack at 0.3 alone would find it correct again."""
    import topgap.eval.attacks as attacks

    calls = []

    def shift(model01, x01, y, kind, eps, **kw):
        calls.append((eps, len(x01)))
        return (x01 + eps).clamp(0, 1)

    monkeypatch.setattr(attacks, "run_attack", shift)
    x, y = torch.full((2, 1, 1, 1), 0.5), torch.zeros(2, dtype=torch.long)
    x[1] = 0.9  # moved to 1.0 and 1.2 -> 1.0: never broken
    curve = attacks.eps_curve(Window(), x, y, [0.3, 0.1])
    assert [(c["eps"], c["robust_correct"], c["n"]) for c in curve] == [(0.1, 1, 2), (0.3, 1, 2)]
    assert calls == [(0.1, 2), (0.3, 1)]  # the larger budget attacks the survivors only
    assert attacks.robustness(Window(), x[:1], y[:1], shift(None, x[:1], y[:1], "pgd", 0.3))["robust_correct"] == 1
