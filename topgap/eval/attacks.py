"""Adversarial attacks for the robustness experiments (paper section 4.2, Tables 3 and 4).

Thin wrappers over torchattacks. Every function takes a model on **[0, 1] images**: put
:class:`topgap.model.Normalize` in front, ``nn.Sequential(Normalize(cfg.mean, cfg.std), model)``
(see :func:`wrap01`), so that eps is measured in pixel units (eps = 1/255 is one grey level).

- FGSM (Goodfellow et al.): x' = clip_[0,1](x + eps * sign(grad_x CE(f(x), y))), one step.
- PGD (Madry et al., Linf, random start): x_0 = x + U(-eps, eps);
  x_{t+1} = clip_[0,1](Proj_{|x'-x|_inf <= eps}(x_t + alpha * sign(grad))). Step rules
  (:data:`PGD_RULES`): "foolbox" (default, the paper's library: Foolbox LinfPGD's rel_stepsize
  0.01/0.3, i.e. alpha = eps/30 whatever the step count, 40 steps, random start) or "2.5eps/steps"
  (Madry et al.'s rule of thumb, alpha = 2.5 * eps / steps).
- AutoAttack (Croce & Hein, 2020), torchattacks' standard version: APGD-CE, APGD-T, FAB-T, Square,
  each run on the images the previous ones did not break (APGD-T left out below 4 classes: its loss needs them).
- Square (Andriushchenko et al.): black-box random search on the margin loss, no gradients; it
  only attacks images the model classifies as `y` (torchattacks), others come back unchanged.
- Transfer: PGD examples crafted on an independently trained surrogate (e.g. a second-seed
  baseline), never on the model itself, and fed to every model.

Two definitions of "robust" are counted (:func:`robustness`): the paper's (the prediction of the
perturbed image equals the prediction of the clean image) and the usual one (the perturbed image
is still classified correctly). A white-box robust accuracy far above the black-box one means the
gradients are masked, not that the model is robust (:func:`gradient_masking_flag`).
"""
from __future__ import annotations

import torch
import torchattacks
from torch import nn

from ..model import Normalize
from ..modes import eval_mode

__all__ = ["KINDS", "PGD_RULES", "CURVE_RULE", "CURVE_STEPS", "pgd_step_size", "reaches_boundary", "wrap01",
           "run_attack", "predict", "outcomes", "robustness", "with_rates", "transfer_examples", "transfer_robustness",
           "gradient_masking_flag", "eps_curve"]

KINDS = ("fgsm", "pgd", "square", "autoattack")
PGD_RULES = {"foolbox": lambda eps, steps: eps * 0.01 / 0.3, "2.5eps/steps": lambda eps, steps: 2.5 * eps / steps}
CURVE_RULE = "2.5eps/steps"  # the eps curve's few steps must cross the ball: Foolbox's eps/30 covers steps/30 of eps
CURVE_STEPS = 10  # PGD steps per budget of the eps curve


def pgd_step_size(rule: str, eps: float, steps: int) -> float:
    """PGD's step size alpha under a named rule of :data:`PGD_RULES`.

    - "foolbox": alpha = eps * 0.01 / 0.3 = eps / 30, whatever `steps` (Foolbox LinfPGD, rel_stepsize=0.01/0.3).
    - "2.5eps/steps": alpha = 2.5 * eps / steps (Madry et al., 2018, "Towards deep learning models resistant to
      adversarial attacks": a step budget of 2.5 eps, enough to reach the ball's boundary from any start).
    """
    if rule not in PGD_RULES:
        raise ValueError(f"unknown PGD step rule {rule!r}; choose one of {', '.join(PGD_RULES)}")
    return PGD_RULES[rule](eps, steps)


def reaches_boundary(alpha: float, eps: float, steps: int) -> bool:
    """Whether `steps` steps of size `alpha` can travel from the clean image to the eps ball's boundary:
    steps * alpha >= eps (up to rounding). Foolbox's eps/30 needs 30 steps for it."""
    return steps * alpha >= eps * (1 - 1e-9)


def wrap01(model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> nn.Module:
    """``Normalize(mean, std)`` followed by `model`: a model that takes [0, 1] images."""
    param = next(model.parameters(), None)
    norm = Normalize(mean, std).to(param.device if param is not None else "cpu")
    return nn.Sequential(norm, model)


def _check_images(x01: torch.Tensor, y: torch.Tensor) -> None:
    if x01.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) batch of images, got shape {tuple(x01.shape)}")
    if x01.numel() and (x01.min() < 0 or x01.max() > 1):
        raise ValueError(f"attacks take images in [0, 1] (got {x01.min():.3g}..{x01.max():.3g}); do not normalise "
                         "them: put topgap.model.Normalize in front of the model instead (see wrap01)")
    if y.shape != (x01.shape[0],):
        raise ValueError(f"need one label per image: {x01.shape[0]} images, labels of shape {tuple(y.shape)}")


def run_attack(model01: nn.Module, x01: torch.Tensor, y: torch.Tensor, kind: str, eps: float,
               steps: int | None = None, alpha: float | None = None, seed: int = 0, rule: str = "foolbox",
               **kw) -> torch.Tensor:
    """Adversarial images within the Linf ball |x' - x|_inf <= eps, clipped to [0, 1].

    Args:
        model01: a classifier on [0, 1] images (see :func:`wrap01`).
        x01: (B, 3, H, W) images in [0, 1].
        y: (B,) labels the attack moves away from (the true labels, as Foolbox does).
        kind: "fgsm" (one step of size eps), "pgd", "square" or "autoattack".
        eps: Linf budget in [0, 1] units, e.g. 1/255 (paper, Table 3) or 8/255 (CIFAR-10, Table 4).
        steps: PGD iterations (default 40, the paper's); ignored by the others.
        alpha: PGD step size; default from `rule`.
        seed: seeds the random starts and searches; the global RNG is left as it was.
        rule: PGD step rule, a key of :data:`PGD_RULES` ("foolbox": eps/30; "2.5eps/steps").
        **kw: passed to torchattacks, e.g. ``n_queries`` for Square (default 5000), ``random_start``
            for PGD (default True), ``n_classes`` for AutoAttack (default: the model's output size).

    The model is put in eval mode for the attack (each submodule's flag restored afterwards); the
    parameter gradients the attack produces are discarded.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown attack {kind!r}; choose one of {', '.join(KINDS)}")
    if not 0 <= eps <= 1:
        raise ValueError(f"eps is a Linf budget on [0, 1] images and must lie in [0, 1] (got {eps}); e.g. 1/255")
    if rule not in PGD_RULES:
        raise ValueError(f"unknown PGD step rule {rule!r}; choose one of {', '.join(PGD_RULES)}")
    _check_images(x01, y)
    if kind == "pgd":
        steps = 40 if steps is None else steps
        if steps < 1:
            raise ValueError(f"PGD needs steps >= 1 (got {steps})")
        alpha = pgd_step_size(rule, eps, steps) if alpha is None else alpha
    with eval_mode(model01), torch.random.fork_rng(devices=[x01.device] if x01.device.type == "cuda" else []):
        torch.manual_seed(seed)
        if kind == "fgsm":
            attack = torchattacks.FGSM(model01, eps=eps, **kw)
        elif kind == "pgd":
            attack = torchattacks.PGD(model01, eps=eps, alpha=alpha, steps=steps, **kw)
        elif kind == "square":
            attack = torchattacks.Square(model01, eps=eps, seed=seed, **{"n_queries": 5000, **kw})
        else:
            with torch.no_grad():
                n_classes = kw.pop("n_classes", None) or model01(x01[:1]).shape[1]
            attack = _autoattack(model01, eps, n_classes, seed)
        attack.set_model_training_mode(model_training=False)
        with torch.enable_grad():
            adv = attack(x01, y)
    return adv.detach()


def _autoattack(model01: nn.Module, eps: float, n_classes: int, seed: int) -> torchattacks.attack.Attack:
    """torchattacks' standard AutoAttack; with fewer than 4 classes without APGD-T, whose targeted DLR loss
    reads the 4th-largest logit (Croce & Hein use APGD-CE, FAB-T and Square alone there too)."""
    if n_classes >= 4:
        return torchattacks.AutoAttack(model01, norm="Linf", eps=eps, version="standard", n_classes=n_classes,
                                       seed=seed)
    return torchattacks.MultiAttack([
        torchattacks.APGD(model01, norm="Linf", eps=eps, seed=seed, loss="ce", n_restarts=1),
        torchattacks.FAB(model01, norm="Linf", eps=eps, seed=seed, multi_targeted=True, n_classes=n_classes,
                         n_restarts=1),
        torchattacks.Square(model01, norm="Linf", eps=eps, seed=seed, n_queries=5000, n_restarts=1)])


def eps_curve(model01: nn.Module, x01: torch.Tensor, y: torch.Tensor, eps_values: list[float],
              steps: int = CURVE_STEPS, seed: int = 0) -> list[dict]:
    """Robust accuracy against the budget, ``[{"eps", "n", "robust_correct", "accuracy"}]`` in increasing eps.

    The one definition: image i is robust at eps when it is classified correctly clean and under PGD at every
    budget e <= eps of the curve, robust_correct(eps) = #{i : pred(x_i) = y_i and pred(PGD_e(x_i)) = y_i for all
    e <= eps}. A larger ball contains the smaller ones, so an image broken at a smaller budget stays broken and
    only the images still standing are attacked at the next one: the curve never rises. PGD with `steps` steps
    of :data:`CURVE_RULE` (alpha = 2.5 eps / steps): Foolbox's eps/30 would travel only steps/30 of eps.

    An attack whose budget covers the whole image range must reach 0%; a curve that stays above 0 at
    its largest eps is the classic sign of masked gradients (Carlini et al., 2019, "On evaluating
    adversarial robustness"), flagged by the evaluation as ``eps_curve_reaches_zero: false``.
    """
    alive = predict(model01, x01) == y.to(x01.device)
    out = []
    for eps in sorted(eps_values):
        idx = alive.nonzero().flatten()
        if len(idx):
            adv = run_attack(model01, x01[idx], y[idx], "pgd", eps, steps=steps, seed=seed, rule=CURVE_RULE)
            alive[idx] = predict(model01, adv) == y[idx].to(adv.device)
        n, still = len(y), int(alive.sum())
        out.append({"eps": float(eps), "n": n, "robust_correct": still, "accuracy": still / n if n else None})
    return out


@torch.no_grad()
def predict(model01: nn.Module, x01: torch.Tensor) -> torch.Tensor:
    """argmax of the logits, in eval mode: the one prediction of the evaluation."""
    with eval_mode(model01):
        return model01(x01).argmax(1)


def outcomes(model01: nn.Module, x01: torch.Tensor, y: torch.Tensor, adv: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per image, as bool tensors: "clean" (pred(x) = y), "unchanged" (pred(x') = pred(x), the paper's "robust",
    section 4.2) and "correct" (pred(x') = y, correct under attack)."""
    if adv.shape != x01.shape:
        raise ValueError(f"adversarial batch {tuple(adv.shape)} and clean batch {tuple(x01.shape)} differ in shape")
    clean, attacked = predict(model01, x01), predict(model01, adv)
    y = y.to(clean.device)
    return {"clean": clean == y, "unchanged": attacked == clean, "correct": attacked == y}


def robustness(model01: nn.Module, x01: torch.Tensor, y: torch.Tensor, adv: torch.Tensor) -> dict:
    """Counts and rates of both robustness definitions on one batch.

    Returns a JSON-ready dict: ``n``; ``clean_correct`` (pred(x) == y); ``robust_paper``
    (pred(x') == pred(x), the paper's definition, section 4.2); ``robust_correct`` (pred(x') == y,
    correct under attack); and the rates ``clean_accuracy``, ``robust_paper_rate``,
    ``robust_correct_rate`` (count / n; None for an empty batch).
    """
    o = outcomes(model01, x01, y, adv)
    return with_rates({"n": len(y), "clean_correct": int(o["clean"].sum()), "robust_paper": int(o["unchanged"].sum()),
                       "robust_correct": int(o["correct"].sum())})


def with_rates(counts: dict) -> dict:
    """Add ``clean_accuracy``, ``robust_paper_rate``, ``robust_correct_rate`` (count / n) to a count dict."""
    n = counts["n"]
    rate = (lambda c: c / n) if n else (lambda c: None)
    return {**counts, "clean_accuracy": rate(counts["clean_correct"]),
            "robust_paper_rate": rate(counts["robust_paper"]), "robust_correct_rate": rate(counts["robust_correct"])}


def transfer_examples(source01: nn.Module, x01: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 40,
                      alpha: float | None = None, seed: int = 0, rule: str = "foolbox") -> torch.Tensor:
    """The transfer attack's images: PGD (`steps`, step `alpha` or `rule`) crafted on the surrogate `source01`."""
    return run_attack(source01, x01, y, "pgd", eps, steps=steps, alpha=alpha, seed=seed, rule=rule)


def transfer_robustness(source01: nn.Module, target01: nn.Module, x01: torch.Tensor, y: torch.Tensor, eps: float,
                        steps: int = 40, alpha: float | None = None, seed: int = 0, rule: str = "foolbox") -> dict:
    """Transfer attack: PGD examples crafted on `source01`, an independently trained surrogate, scored on `target01`.

    The surrogate must not be the target itself (that would be a white-box attack): use a baseline
    trained with another seed.

    A model whose own white-box robustness is far above this transfer robustness has gradients
    that do not point towards its adversarial examples (see :func:`gradient_masking_flag`).
    Returns :func:`robustness` of `target01` on :func:`transfer_examples`.
    """
    return robustness(target01, x01, y, transfer_examples(source01, x01, y, eps, steps, alpha, seed, rule))


def gradient_masking_flag(white_box_rate: float, black_box_rate: float, margin: float = 0.1) -> bool:
    """True when white-box robust accuracy exceeds black-box (Square) or transfer robust accuracy by > margin.

    A white-box attack sees the gradients and should find at least the adversarial examples that a
    black-box search or a transferred example finds, so for an honest model
    white_box_rate <= black_box_rate (up to noise). White-box robustness far *above* black-box
    robustness means the gradients are useless to the attack (masked, shattered or vanishing),
    not that the model is robust (Athalye et al., 2018). Both rates should be measured on the same
    images with the same definition (robust_correct_rate), taking the worst case over the
    white-box attacks and over the black-box/transfer attacks respectively.
    """
    if not (0 <= white_box_rate <= 1 and 0 <= black_box_rate <= 1):
        raise ValueError(f"rates must lie in [0, 1] (got white-box {white_box_rate}, black-box {black_box_rate})")
    if margin < 0:
        raise ValueError(f"margin must be >= 0 (got {margin})")
    return white_box_rate - black_box_rate > margin
