"""Decoding of unusual uploads, masks, and the compute-once / switch-only logic of topgap.explorer.explain."""
import dataclasses
import io
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from appfamily import KS, make_family
from topgap.explorer.explain import Family, explain_all
from topgap.data.imageio import BACKGROUND, InputError, decode_image, decode_mask, drawn_mask, fit_mask


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    return Family(make_family(tmp_path_factory.mktemp("models")))


def png(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


# ---- images ----

def test_16bit_grayscale_rescaled_by_bit_depth():
    a = np.array([[0, 32768, 65535]], np.uint16)
    rgb, notes = decode_image(png(Image.fromarray(a, "I;16")))
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 3, 3)
    assert rgb[0, :, 0].tolist() == [0, 128, 255] and "16-bit" in notes[0]


def test_float_image_not_blacked_out():
    a = np.array([[0.0, 0.5, 1.0]], np.float32)
    rgb, _ = decode_image(Image.fromarray(a, "F"))
    assert rgb[0, :, 0].tolist() == [0, 128, 255]
    wide = np.array([[-10.0, 0.0, 10.0]], np.float32)
    assert decode_image(Image.fromarray(wide, "F"))[0][0, :, 0].tolist() == [0, 128, 255]


def test_rgba_composited_on_white():
    a = np.zeros((2, 2, 4), np.uint8)
    a[0, 0] = (255, 0, 0, 255)  # opaque red stays red, transparent becomes white
    rgb, notes = decode_image(png(Image.fromarray(a, "RGBA")))
    assert rgb[0, 0].tolist() == [255, 0, 0] and rgb[1, 1].tolist() == list(BACKGROUND)
    assert any("white" in n for n in notes)


def test_la_and_palette_with_transparency():
    la = Image.fromarray(np.array([[[10, 255], [10, 0]]], np.uint8), "LA")
    assert decode_image(png(la))[0][0].tolist() == [[10, 10, 10], list(BACKGROUND)]
    p = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    p.putpalette([0, 0, 255, 0, 255, 0] + [0] * 762)
    p.info["transparency"] = 0
    assert decode_image(png(p, transparency=0))[0][0].tolist() == [list(BACKGROUND), [0, 255, 0]]


def test_cmyk_and_grayscale():
    cmyk = Image.new("CMYK", (2, 2), (0, 255, 255, 0))  # pure red in CMYK
    rgb, _ = decode_image(png(cmyk, "JPEG", quality=100))
    assert rgb[0, 0, 0] > 200 and rgb[0, 0, 1] < 60
    gray, _ = decode_image(png(Image.new("L", (3, 2), 77)))
    assert gray.shape == (2, 3, 3) and (gray == 77).all()


def test_exif_orientation_applied():
    a = np.zeros((2, 4, 3), np.uint8)
    a[0, 0] = 255
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    rgb, notes = decode_image(png(img, "JPEG", exif=exif, quality=100))
    assert rgb.shape == (4, 2, 3) and any("EXIF" in n for n in notes)


def test_bomb_and_broken_files_give_clear_errors():
    bomb = png(Image.new("1", (8000, 6000)))  # 48 MP in a few KB
    with pytest.raises(InputError, match="MP"):
        decode_image(bomb)
    with pytest.raises(InputError, match="not an image"):
        decode_image(b"hello, not an image")
    with pytest.raises(InputError, match="broken or truncated"):
        decode_image(png(Image.new("RGB", (64, 64), 9))[:-30] + b"")
    with pytest.raises(InputError, match="broken or truncated|not an image"):
        decode_image(png(Image.new("RGB", (64, 64)), "JPEG")[:200])


def test_tiny_and_panoramic_images(fam):
    for shape in ((1, 1, 3), (15, 40, 3)):  # under 16 px on a side: refused (a 1x1 image was "explained", issue 26)
        with pytest.raises(InputError, match=rf"^the image is {shape[1]}x{shape[0]} px, too small to explain; send "
                           "one of at least 16 px on each side"):
            explain_all(fam, np.full(shape, 200, np.uint8))
    tiny = explain_all(fam, np.full((16, 20, 3), 200, np.uint8))  # enlarged for display, noted
    assert tiny.picture_size == (16, 20) and max(tiny.image.shape[:2]) >= max(fam.input_size)
    assert any("tiny image (20x16)" in n for n in tiny.notes)
    pano = explain_all(fam, (np.random.default_rng(0).random((50, 400, 3)) * 255).astype(np.uint8))
    assert pano.image.shape[:2] == (50, 400) and any("letterboxed" in n for n in pano.notes)
    y0, y1, x0, x1 = pano.box
    assert (x0, x1) == (0, 64) and 0 < y0 < y1 < 64
    assert pano.topgap[0].cam.shape == (50, 400) and pano.topgap[0].cam.max() == pytest.approx(1)


# ---- masks ----

@pytest.mark.parametrize("encode", ["255", "01", "palette", "trimap", "rgba"])
def test_mask_encodings(encode):
    obj = np.zeros((8, 8), bool)
    obj[2:6, 2:6] = True
    if encode == "255":
        img = Image.fromarray(obj.astype(np.uint8) * 255)
    elif encode == "01":
        img = Image.fromarray(obj.astype(np.uint8))
    elif encode == "palette":
        img = Image.fromarray(obj.astype(np.uint8), "P")
        img.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    elif encode == "trimap":
        img = Image.fromarray(np.where(obj, 1, 2).astype(np.uint8))
    else:
        a = np.zeros((8, 8, 4), np.uint8)
        a[obj] = (255, 0, 0, 255)
        img = Image.fromarray(a, "RGBA")
    got, ignore, _ = decode_mask(png(img))
    assert (got == obj).all() and not ignore.any()


def test_mask_resized_and_empty_and_full_masks_explained(fam):
    img = (np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8)
    result = explain_all(fam, img)
    small = np.zeros((16, 16), np.uint8)
    small[4:12, 4:12] = 255
    with_small = result.with_mask(Image.fromarray(small))
    assert with_small.has_mask and any("resized" in n for n in with_small.mask_notes)
    assert all(0 <= m.iou <= 1 and m.threshold is not None for m in with_small.topgap + [with_small.baseline])
    other_aspect = fit_mask(np.ones((10, 30), bool), np.zeros((10, 30), bool), (64, 64))[2]
    assert "aspect" in other_aspect[0]
    empty = result.with_mask(Image.fromarray(np.zeros((64, 64), np.uint8)))
    assert not empty.has_mask and empty.topgap[0].iou is None and "no object" in empty.mask_notes[-1]
    full = result.with_mask(np.ones((64, 64), bool))
    assert not full.has_mask and "every pixel" in full.mask_notes[-1]
    with pytest.raises(InputError):
        result.with_mask(b"garbage")


def test_a_mask_is_compared_with_the_upload_and_a_drawing_with_the_shown_image(fam):
    """The notes name the upload's own size, not the display size; a drawing (made on the shown image) is used as
    drawn, not resized down to the upload's size and back."""
    img = (np.random.default_rng(1).random((48, 64, 3)) * 255).astype(np.uint8)
    result = explain_all(fam, img)
    shown = result.image.shape[:2]
    assert result.picture_size == (48, 64) and shown != (48, 64)  # a small picture is shown enlarged
    own = np.zeros((48, 64), np.uint8)
    own[10:30, 20:50] = 255
    assert not any("resized" in n for n in result.with_mask(Image.fromarray(own)).mask_notes)
    half = result.with_mask(Image.fromarray(own[::2, ::2]))
    assert any("mask resized from 32x24 to 64x48" in n for n in half.mask_notes)
    drawn = np.zeros(shown, bool)
    drawn[5:7, 11:13] = True  # a stroke finer than one upload pixel
    used = result.with_mask(drawn)
    assert not used.mask_notes and (used.mask[0] == drawn).all()


def test_drawn_mask_from_editor_layers():
    layer = np.zeros((800, 800, 4), np.uint8)
    assert drawn_mask({"background": None, "layers": [layer], "composite": None}) is None
    layer[100:200, 100:300, 3] = 255
    drawn = drawn_mask({"background": None, "layers": [layer], "composite": None})
    assert drawn.sum() == 100 * 200
    assert drawn_mask(None) is None


# ---- compute once, switch only ----

def test_one_call_computes_every_k_and_baseline(fam, monkeypatch):
    import topgap.explorer.explain as ex

    calls = {"own": 0, "baseline": 0}
    own, base = ex.topgap_cam, ex.baseline_cam

    def count(name, fn):
        def wrapped(*a, **kw):
            calls[name] += 1
            return fn(*a, **kw)
        return wrapped
    monkeypatch.setattr(ex, "topgap_cam", count("own", own))
    monkeypatch.setattr(ex, "baseline_cam", count("baseline", base))
    result = explain_all(fam, np.zeros((40, 40, 3), np.uint8))
    assert calls == {"own": len(KS), "baseline": 1}
    assert [m.k for m in result.topgap] == list(KS) and result.baseline.kind == "baseline"
    report = result.report(1)
    assert report["k"] == KS[1] and set(report["models"]) == {f"k{KS[1]}", "baseline"}
    # switching k reads the stored maps only
    for i in range(len(KS)):
        t = time.perf_counter()
        chosen, b = result.view(i)
        assert time.perf_counter() - t < 0.01 and chosen.k == KS[i] and b is result.baseline
    assert calls == {"own": len(KS), "baseline": 1}
    with pytest.raises(InputError, match="not trained"):
        result.index_of(5)


def test_unknown_method_rejected(fam):
    with pytest.raises(InputError, match="gradcam"):
        explain_all(fam, np.zeros((8, 8, 3), np.uint8), method="nope")


def test_attack_view_fgsm_and_pgd(fam):
    from topgap.explorer.explain import attack_view

    result = explain_all(fam, (np.random.default_rng(2).random((64, 64, 3)) * 255).astype(np.uint8))
    for kind in ("fgsm", "pgd"):
        adv, setup = attack_view(fam, result, 1, kind, 8 / 255)
        assert set(adv) == {f"k{KS[1]}", "baseline"} and setup.kind == kind
        for m in adv.values():
            assert m.overlay.shape == result.image.shape and m.label in fam.class_names
    with pytest.raises(InputError, match="eps"):
        attack_view(fam, result, 0, "fgsm", 0.0)
    with pytest.raises(InputError, match="2.5eps/steps, foolbox"):
        attack_view(fam, result, 0, "pgd", 8 / 255, "madry")


def test_attack_view_passes_the_rule_and_steps_to_the_evaluations_pgd(fam, monkeypatch):
    import topgap.eval.attacks as attacks
    from topgap.explorer.explain import PGD_RULE, PGD_RULE_NAMES, PGD_STEPS, AttackSetup, attack_view

    assert PGD_RULE == "2.5eps/steps" and set(PGD_RULE_NAMES) == set(attacks.PGD_RULES)
    calls, run = [], attacks.run_attack
    monkeypatch.setattr(attacks, "run_attack", lambda *a, **kw: calls.append((a[3:], kw)) or run(*a, **kw))
    result = explain_all(fam, (np.random.default_rng(2).random((64, 64, 3)) * 255).astype(np.uint8))
    _, setup = attack_view(fam, result, 1, "pgd", 8 / 255, "foolbox", steps=3)
    assert setup == AttackSetup("pgd", 8 / 255, 3, pytest.approx(8 / 255 / 30), "foolbox")
    assert not setup.reaches_boundary
    assert calls == [(("pgd", 8 / 255), {"steps": 3, "rule": "foolbox"})] * 2  # the Top-GAP model and the baseline
    _, setup = attack_view(fam, result, 1, "pgd", 8 / 255)
    assert setup == AttackSetup("pgd", 8 / 255, PGD_STEPS, pytest.approx(2.5 * (8 / 255) / PGD_STEPS), PGD_RULE)
    assert calls[2:] == [(("pgd", 8 / 255), {"steps": PGD_STEPS, "rule": PGD_RULE})] * 2 and setup.reaches_boundary


def test_attack_setup_text_names_rule_steps_step_size_and_reach():
    from topgap.explorer.explain import attack_setup

    assert attack_setup("pgd", 8 / 255, steps=20).text() == (
        "White-box PGD (random start) on each model's own prediction:\n\n"
        "- step rule: Madry et al.: 2.5 eps / steps\n"
        "- 20 steps of 1/255 = 0.00392, 20/255 in all\n"
        "- eps: 8/255 = 0.0314\n"
        "- reaches the eps boundary: yes")
    weak = attack_setup("pgd", 8 / 255, "foolbox", steps=20).text()
    assert "- 20 steps of 0.267/255 = 0.00105, 5.33/255 in all\n" in weak and "boundary: no" in weak
    assert weak.endswith("These steps cannot reach the edge of the eps range: the attack is weaker than its eps says.")
    fgsm = attack_setup("fgsm", 2 / 255, "foolbox").text()
    assert "- step rule: one step of eps\n- 1 step of 2/255 = 0.00784, 2/255 in all\n" in fgsm and "yes" in fgsm


def test_app_pgd_default_rule_crosses_the_ball_where_eps_over_30_does_not():
    """A linear 2-class model: the loss gradient's sign is the same everywhere, so every PGD step pushes each pixel
    the same way. From the random start U(-eps, eps), the default rule's 2.5 eps of travel brings every pixel to the
    boundary (|x' - x| = eps); Foolbox's eps/30 with the same steps travels 2/3 eps and leaves most pixels inside."""
    import torch

    from topgap.explorer.explain import PGD_RULE, PGD_STEPS, attack_setup, perturb

    assert PGD_STEPS < 30  # with 30 or more, eps/30 per step reaches the boundary from the clean image too
    torch.manual_seed(1)  # not the attack's seed 0: its random start would repeat the draws behind w
    n, eps = 3 * 8 * 8, 8 / 255
    w = torch.sign(torch.randn(n)) / 100
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(n, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([w, -w]))
    x, y = torch.full((1, 3, 8, 8), 0.5), torch.zeros(1, dtype=torch.long)  # mid-grey: no clipping at 0 or 1
    strong = (perturb(model, x, y, attack_setup("pgd", eps)) - x).abs()
    weak = (perturb(model, x, y, attack_setup("pgd", eps, "foolbox")) - x).abs()
    assert attack_setup("pgd", eps).rule == PGD_RULE and torch.allclose(strong, torch.full_like(strong, eps))
    assert weak.max() <= eps + 1e-6 and (weak < eps - 1e-4).float().mean() > 0.5 and weak.mean() < strong.mean()


# ---- what the explorer tells a user (issue 12) ----

def test_animated_gif_says_first_frame_is_used(fam, tmp_path):
    frames = [Image.new("RGB", (64, 64), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    result = explain_all(fam, str(tmp_path / "a.gif"))
    assert any("3 frames: only the first frame" in n for n in result.notes)
    assert result.image[0, 0].tolist() == [255, 0, 0]
    assert not any("frames" in n for n in explain_all(fam, frames[0]).notes)


def test_nearest_k_on_a_log_scale():
    from topgap.explorer.explain import nearest_k

    assert nearest_k([16, 64, 128, 256, 512], 4) == 16 and nearest_k([4, 8, 16], 64) == 16
    assert nearest_k([8, 32], 16) == 8  # a tie (16/8 = 32/16) goes to the smaller k
    assert nearest_k([4, 16, 64], None) == 16 and nearest_k([4, 16, 64], "64") == 64
    assert nearest_k([4, 16, 64], None, 4) == 4 and nearest_k([4, 16, 64], 64, 4) == 64  # a given k wins
    assert nearest_k([4, 16, 64], None, 8) == 16  # a default that was not trained: the middle one


def test_a_family_opens_at_the_k_its_card_chose(tmp_path):
    from topgap.explorer.card_view import chosen_k
    from topgap.explorer.explain import FamilyStore

    folder = make_family(tmp_path, "fam")
    store = FamilyStore(tmp_path)
    assert chosen_k(folder) is None and store.default_k("fam") == KS[1]  # no card: the middle k
    models = {"evaluation": {"models": {"baseline": {"kind": "baseline", "k": None},
                                        **{f"k{k}": {"kind": "topgap", "k": k} for k in KS}}}}
    card = lambda verdicts: json.dumps({**models, "verdicts": verdicts})  # noqa: E731
    rows = [{"model": "baseline", "chosen": True}, {"model": f"k{KS[0]}", "metric": "l1", "chosen": True},
            {"model": f"k{KS[2]}", "metric": "l1", "chosen": False}]
    (folder / "card.json").write_text(card(rows))
    assert chosen_k(folder) == KS[0] and store.default_k("fam") == KS[0]
    assert Family(folder).nearest_k(None) == KS[0] and Family(folder).nearest_k(KS[2]) == KS[2]
    two = [{"model": f"k{KS[2]}", "chosen": True}, {"model": f"k{KS[1]}", "chosen": True}]  # seeds that differ
    (folder / "card.json").write_text(card(two))
    assert chosen_k(folder) == KS[1]
    (folder / "card.json").write_text(card(rows[:1]))  # only the baseline chosen
    assert chosen_k(folder) is None and store.default_k("fam") == KS[1]
    (folder / "card.json").write_text("{not json")
    assert chosen_k(folder) is None and store.default_k("fam") == KS[1]


def test_trimap_drawn_visibly():
    from topgap.explorer.explain import mask_overlay

    image = np.full((4, 4, 3), 10, np.uint8)  # a dark photo: trimap values 1-3 would be invisible as grey
    obj, ign = np.zeros((4, 4), bool), np.zeros((4, 4), bool)
    obj[0, 0], ign[1, 1] = True, True
    out = mask_overlay(image, obj, ign)
    assert out[0, 0].tolist() == [4, 114, 4]  # 0.45 * 10 + 0.55 * (0, 200, 0), truncated
    assert out[1, 1].tolist() == [144, 125, 4] and out[3, 3].tolist() == [3, 3, 3]


def test_family_hint_says_what_the_family_knows(fam):
    from topgap.explorer.explain import LOW_PROBABILITY, family_hint

    result = explain_all(fam, np.zeros((64, 64, 3), np.uint8))
    text = family_hint(result, 0, fam.class_names, "shapes")
    assert f"knows only 4 classes ({', '.join(fam.class_names)}), from shapes" in text
    sure = dataclasses.replace(result, topgap=[dataclasses.replace(m, probability=0.99, label="star")
                                               for m in result.topgap],
                               baseline=dataclasses.replace(result.baseline, label="star"))
    assert not family_hint(sure, 0, fam.class_names).startswith("⚠️")
    unsure = dataclasses.replace(sure, topgap=[dataclasses.replace(m, probability=LOW_PROBABILITY - 0.01)
                                               for m in sure.topgap])
    assert "top probability is only 59%" in family_hint(unsure, 0, fam.class_names)
    split = dataclasses.replace(sure, baseline=dataclasses.replace(sure.baseline, label="circle"))
    assert "disagree (circle, star)" in family_hint(split, 0, fam.class_names)


def test_card_rendered_from_its_schema(tmp_path):
    """A card as topgap card writes it (tests/test_card.py builds one the same way) renders verdicts and tables."""
    import json

    from topgap.explorer.card_view import CardError, render_card

    fam = tmp_path / "fam"
    (fam / "plots").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(fam / "plots" / "iou.png")
    model = {"kind": "topgap", "k": 4, "converged": True, "clean": {"accuracy": 0.9}, "iou": 0.472, "pxap": 0.61,
             "mass_in_mask": 0.5, "l1": 0.1, "road": 0.02, "white_box_rate": None, "black_box_rate": None,
             "shifts": {"test_shifted": {"accuracy": 0.8}}}
    card = {"title": "Tiny zoo", "data": "Made up.", "commands": ["topgap train ..."], "hardware": "cpu",
            "training": {"k4": {"kind": "topgap", "k": 4, "backbone": "regnetx_002", "input_size": [96, 96],
                                "epochs": 10, "val_accuracy": 1.0, "train_seconds": 206.0}},
            "verdicts": [{"model": "k4", "reference": "baseline", "metric": "iou", "diff": 0.2, "low": 0.1,
                          "high": 0.3, "verdict": "better"}],
            "evaluation": {"dataset": "d", "split": "test", "n_images": 10, "eps": 1 / 255, "postprocessing":
                           "relu-minmax", "shifts": {"test_shifted": {}},
                           "selection": {"split": "val", "by": {"iou": {"model": "k4", "value": 0.5}}},
                           "models": {"k4": {**model, "comparisons": {"baseline": {"iou": {
                               "diff": 0.2, "low": 0.1, "high": 0.3, "verdict": "better"}}}},
                                      "k8": {**model, "k": 8, "converged": False},
                                      "baseline": {**model, "kind": "baseline", "k": None}}},
            "plots": ["plots/iou.png", "plots/missing.png", "../outside.png"]}
    (fam / "card.json").write_text(json.dumps(card))
    text, plots = render_card(fam)
    assert text.startswith("## Tiny zoo") and "maps post-processed relu-minmax" in text
    assert "| model | k | accuracy | test_shifted acc. | IOU | PxAP |" in text
    assert "| k4 | 4 | 0.900 | 0.800 | 0.472 | 0.610 |" in text and "| k8 ⚠ not converged | 8 |" in text
    assert "| k4 | topgap | 4 | regnetx_002 | 96x96 | 10 | 1.000 | 206 |" in text  # training.k4
    assert "Chosen on validation data: k4." in text  # the claims, rendered by topgap.eval.claims
    assert "| IOU ↑ | – | +0.200 [+0.100, +0.300] **better** | – |" in text
    assert [c for _, c in plots] == ["iou"] and all(p.is_file() for p, _ in plots)  # missing and outside: left out
    del card["evaluation"]["dataset"]
    (fam / "card.json").write_text(json.dumps(card))
    with pytest.raises(CardError, match="evaluation figures without their fields"):
        render_card(fam)
    (fam / "card.json").write_text("[1, 2]")
    with pytest.raises(CardError, match="holds a list, not a card"):
        render_card(fam)
    assert render_card(tmp_path / "none")[0].startswith("No model card yet for **none**")


def test_app_and_evaluate_give_the_same_l1_and_iou(fam):
    """One image at the family's input size with its mask: the app's numbers (maps for the predicted class) are
    `topgap evaluate`'s with --cam-target predicted under both protocols: the own CAM ReLU-ed (the default) or
    min-max of its raw map (the paper's CAM mode); the baseline's are the same under both (issue 26 item 3)."""
    import torch

    from topgap.eval.evaluate import evaluate_family

    rng = np.random.default_rng(0)
    img = (rng.random((64, 64, 3)) * 120).astype(np.uint8)
    img[20:44, 16:40] = 230
    mask = np.zeros((64, 64), np.uint8)
    mask[20:44, 16:40] = 255
    result = explain_all(fam, png(Image.fromarray(img)), mask=png(Image.fromarray(mask)))

    class One(torch.utils.data.Dataset):
        class_names = fam.class_names

        def __len__(self):
            return 1

        def __getitem__(self, i):
            return {"image": torch.from_numpy(img).permute(2, 0, 1).float() / 255, "label": 0,
                    "mask": torch.from_numpy((mask > 0).astype(np.uint8)), "has_mask": True}

    models = {n: (m, c) for n, m, c in fam.topgap + [fam.baseline]}
    ev = evaluate_family(models, One(), attacks=(), eps_curve=(), faithfulness_images=0, sanity_images=0,
                         cam_target="predicted", progress=False, bootstrap_samples=10)
    paper = explain_all(fam, png(Image.fromarray(img)), mask=png(Image.fromarray(mask)), protocol="paper")
    switched = result.with_protocol("paper").with_mask(png(Image.fromarray(mask)))  # no model runs
    assert result.protocol == "relu" and paper.protocol == switched.protocol == "paper"
    for protocol, r in (("relu", result), ("paper", paper), ("paper", switched)):
        for m in r.topgap + [r.baseline]:
            e = ev["models"][m.name]
            assert m.l1 == pytest.approx(e[f"l1_{protocol}"], abs=1e-6), (protocol, m.name)
            assert m.iou == pytest.approx(e[f"iou_{protocol}"], abs=1e-6), (protocol, m.name)
            assert m.mass == pytest.approx(e[f"mass_in_mask_{protocol}"], abs=1e-6), (protocol, m.name)
    for a, b in zip(paper.topgap, switched.topgap):
        np.testing.assert_allclose(a.cam, b.cam, atol=1e-6)
    assert (result.baseline.overlay == paper.baseline.overlay).all()
    assert any(not np.allclose(a.cam_map, b.cam_map) for a, b in zip(result.topgap, paper.topgap))  # it differs
    back = paper.with_protocol("relu").with_mask(png(Image.fromarray(mask)))
    assert [m.l1 for m in back.topgap] == pytest.approx([m.l1 for m in result.topgap], abs=1e-6)
    with pytest.raises(InputError, match="unknown CAM protocol 'x'; choose one of paper, relu"):
        result.with_protocol("x")


def test_card_view_shows_the_seeds_of_a_carded_family(tmp_path):
    """The bundled pets card carries `topgap seeds`' tables; the app's Card tab shows them as seeds.md has them."""
    from topgap.explorer.card_view import render_card

    root = Path(__file__).resolve().parents[1]
    text, _ = render_card(root / "models" / "oxford-pet-lite0")
    seeds_md = (root / "reports" / "oxford-pet-lite0" / "seeds" / "seeds.md").read_text()
    table = [line for line in seeds_md.splitlines() if line.startswith("| k1024 | 3 |")]
    assert "### Across seeds (mean ± std)" in text and table and table[0] in text
    assert text.index("### Across seeds") < text.index("### Top-GAP against the baseline")
    assert "Dataset **bg60** (split original), 3 seeds" in text  # the backgrounds benchmark's seeds follow
    # cards written before --seeds-report took several folders hold one dict: shown like a list of that one
    folder = tmp_path / "card"
    shutil.copytree(root / "models" / "oxford-pet-lite0", folder, ignore=shutil.ignore_patterns("*.safetensors"))
    card = json.loads((folder / "card.json").read_text())
    shown = []
    for seeds in ([card["seeds"][0]], card["seeds"][0]):
        (folder / "card.json").write_text(json.dumps(card | {"seeds": seeds}))
        shown.append(render_card(folder)[0])
    assert shown[0] == shown[1] and table[0] in shown[1] and "Dataset **bg60**" not in shown[1]


def test_a_slow_method_is_left_pending_and_completed_on_a_copy_of_the_baseline(fam):
    """Issue 26 item 5: the page computes ScoreCAM after the Top-GAP maps, in its own queue, on a
    copy of the baseline model (pytorch-grad-cam hooks the modules it explains); the map is the same as in one go."""
    from topgap.cam import METHODS
    from topgap.explorer.explain import SLOW_METHODS, baseline_map

    image = (np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8)
    assert SLOW_METHODS == ("scorecam",) and set(SLOW_METHODS) <= set(METHODS)  # only methods the page offers
    pending = explain_all(fam, image, method="scorecam", slow_baseline=False)
    assert pending.pending == "scorecam" and pending.baseline is None and len(pending.topgap) == len(KS)
    whole = explain_all(fam, image, method="scorecam")
    assert whole.pending is None and whole.baseline is not None
    copy = fam.slow_baseline()
    assert copy is not fam.baseline[1] and copy is fam.slow_baseline()
    done = pending.with_baseline(baseline_map(fam, pending, copy))
    assert done.pending is None and done.baseline.label == whole.baseline.label
    np.testing.assert_allclose(done.baseline.cam, whole.baseline.cam, atol=1e-5)
    assert explain_all(fam, image, method="gradcam", slow_baseline=False).pending is None  # fast: computed at once
