import argparse
import csv
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.stats import chi2_contingency

from topgap.data import list_splits, open_dataset
from topgap.data.synth import PALETTE, SPLITS, VARIANTS, generate, max_object_area, register, render

SMALL = dict(n_train=16, n_val=8, n_test=8, size=48)


def _files(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _rows(root: Path, split: str | None = None) -> list[dict]:
    with open(root / "metadata.csv") as f:
        return [r for r in csv.DictReader(f) if split is None or r["split"] == split]


def _read(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def test_deterministic(tmp_path):
    a = _files(Path(generate(tmp_path / "a", seed=3, **SMALL)["out"]))
    b = _files(Path(generate(tmp_path / "b", seed=3, **SMALL)["out"]))
    c = _files(Path(generate(tmp_path / "c", seed=4, **SMALL)["out"]))
    assert a == b
    assert a.keys() == c.keys() and sum(a[k] != c[k] for k in a if k.endswith(".png")) > len(a) // 2


def test_layout_counts_and_loader(tmp_path):
    summary = generate(tmp_path / "s", **SMALL)
    root = Path(summary["out"])
    meta = json.loads((root / "synth.json").read_text())
    assert meta["class_names"] == ["circle", "square", "triangle", "star"]
    assert {s: meta["splits"][s]["count"] for s in SPLITS} == {"train": 16, "val": 8, "test": 8, "test_shifted": 8,
                                                                "only_bg": 8}
    assert list_splits(root) == sorted(SPLITS)
    assert not list(tmp_path.glob("*.tmp-*"))
    ds = open_dataset(root, "test_shifted", input_size=(48, 48))
    assert len(ds) == 8 and ds.class_names == sorted(meta["class_names"]) and ds.has_masks and not ds.skipped
    assert set(ds[0]["mask"].unique().tolist()) == {0, 1}
    empty = open_dataset(root, "only_bg", input_size=(48, 48))
    assert len(empty) == 8 and empty.has_masks and all(empty[i]["mask"].max() == 0 for i in range(8))
    rows = _rows(root)
    assert len(rows) == 48
    for r in rows:  # the mask file holds exactly the pixels metadata counts
        m = _read(root / "masks" / r["file"])
        assert set(np.unique(m).tolist()) <= {0, 255} and (m > 0).sum() == int(r["object_pixels"])


def _rate(rows: list[dict]) -> float:
    return float(np.mean([int(r["aligned"]) for r in rows]))


def _within_binomial(rate: float, p: float, n: int) -> bool:
    return abs(rate - p) <= 4 * math.sqrt(p * (1 - p) / n)  # 4 binomial standard deviations


@pytest.mark.parametrize("p", [0.5, 0.9, 0.99])
def test_train_agreement_is_p(tmp_path, p):
    n = 400
    root = Path(generate(tmp_path / "s", n_train=n, n_val=0, n_test=0, size=32, bg_agreement=p)["out"])
    meta = json.loads((root / "synth.json").read_text())
    rate = _rate(_rows(root, "train"))
    assert _within_binomial(rate, p, n) and meta["splits"]["train"]["aligned_rate"] == pytest.approx(rate, abs=1e-4)
    assert meta["bg_agreement"] == p and meta["expected_aligned_rate"]["train"] == p
    if p < 0.99:  # a disagreeing background is one of the others
        assert {r["background"] for r in _rows(root, "train") if r["class"] == "circle" and r["aligned"] == "0"} == \
            {"grass", "sand", "sky"}


def test_test_has_p_and_shifted_is_independent_of_the_class(tmp_path):
    n = 400
    root = Path(generate(tmp_path / "s", n_train=0, n_val=0, n_test=n, size=32, bg_agreement=0.9)["out"])
    meta = json.loads((root / "synth.json").read_text())
    assert _within_binomial(_rate(_rows(root, "test")), 0.9, n)
    shifted = _rows(root, "test_shifted")
    assert _within_binomial(_rate(shifted), 0.25, n) and meta["expected_aligned_rate"]["test_shifted"] == 0.25
    table = np.zeros((4, 4), int)
    for r in shifted:
        table[meta["class_names"].index(r["class"]), meta["backgrounds"].index(r["background"])] += 1
    assert table.min() > 0 and chi2_contingency(table).pvalue > 1e-3  # every class meets every background


@pytest.mark.parametrize("p, aligned", [(0.0, 0), (1.0, 1)])
def test_agreement_extremes_are_exact(tmp_path, p, aligned):
    root = Path(generate(tmp_path / "s", n_train=40, n_val=0, n_test=0, size=32, bg_agreement=p)["out"])
    assert {int(r["aligned"]) for r in _rows(root, "train")} == {aligned}


def test_only_bg_is_the_background_alone(tmp_path):
    root = Path(generate(tmp_path / "s", seed=5, **SMALL)["out"])
    meta = json.loads((root / "synth.json").read_text())
    rows = _rows(root, "only_bg")
    assert {r["class"] for r in rows} == set(meta["class_names"])
    for r in rows:
        assert r["aligned"] == "1" and r["background"] == meta["home_background"][r["class"]]  # labelled by its bg
        assert r["object_pixels"] == "0" and r["object_colour"] == ""
        assert not _read(root / "masks" / r["file"]).any()
        # the image is exactly the background of the documented draw (seed, split, index), no object pixel
        i, label = int(Path(r["file"]).stem), meta["class_names"].index(r["class"])
        scene = render("shapes", label, label, 48, np.random.default_rng((5, SPLITS.index("only_bg"), i)),
                       draw_object=False)
        assert np.array_equal(_read(root / r["file"])[..., ::-1], scene["image"]) and not scene["mask"].any()
    assert meta["splits"]["only_bg"]["object_pixels_mean"] == 0


@pytest.mark.parametrize("label", range(4))
def test_mask_is_exactly_the_drawn_object(label):
    """With and without the object from the same generator state: the images differ only on the mask."""
    size, bg = 96, (label + 1) % 4
    scene = render("shapes", label, bg, size, np.random.default_rng(label))
    empty = render("shapes", label, bg, size, np.random.default_rng(label), draw_object=False)
    mask = scene["mask"]
    changed = (scene["image"] != empty["image"]).any(-1)
    assert not (changed & ~mask).any()  # nothing outside the mask was touched
    assert changed[mask].mean() > 0.98  # (a drawn pixel may round to its background's value by chance)
    assert cv2.connectedComponents(mask.astype(np.uint8))[0] == 2  # one object
    assert np.abs(scene["image"][mask].astype(float) - scene["color"]).mean() < 25  # in its colour


def test_object_area_range_is_respected(tmp_path):
    lo, hi, size = 0.01, 0.08, 64
    root = Path(generate(tmp_path / "s", n_train=200, n_val=0, n_test=40, size=size, object_area=(lo, hi))["out"])
    meta = json.loads((root / "synth.json").read_text())
    frac = np.array([int(r["object_pixels"]) for r in _rows(root) if r["split"] != "only_bg"]) / size ** 2
    assert frac.min() >= lo * 0.85 and frac.max() <= hi * 1.15  # rasterising a 41 px object moves its area < 15%
    assert frac.min() < lo + 0.15 * (hi - lo) and frac.max() > hi - 0.15 * (hi - lo)  # the whole range is used
    assert meta["object_area_range"]["star"] == [lo, hi]
    assert meta["object_area_fraction_mean"] == pytest.approx(frac.mean(), abs=1e-5)
    assert meta["object_area_px_mean"] == pytest.approx(frac.mean() * size ** 2, abs=0.05)
    assert abs(frac.mean() - (lo + hi) / 2) < 0.006  # uniform in the range


def test_object_colour_is_independent_of_the_class(tmp_path):
    root = Path(generate(tmp_path / "r", n_train=480, n_val=0, n_test=0, size=32)["out"])
    colours = ["#%02x%02x%02x" % c for c in PALETTE]
    table = np.zeros((4, len(colours)), int)
    for r in _rows(root, "train"):
        table[VARIANTS["shapes"]["classes"].index(r["class"]), colours.index(r["object_colour"])] += 1
    assert table.min() > 0 and chi2_contingency(table).pvalue > 1e-3
    root = Path(generate(tmp_path / "c", n_train=40, n_val=0, n_test=0, size=32, object_colour="per-class")["out"])
    per_class = {}
    for r in _rows(root, "train"):
        per_class.setdefault(r["class"], set()).add(r["object_colour"])
    assert all(len(c) == 1 for c in per_class.values()) and len(set.union(*per_class.values())) == 4


def test_backgrounds_are_distinct_textures():
    means = []
    for bg in range(4):
        images = [render("shapes", 0, bg, 64, np.random.default_rng(i), draw_object=False)["image"] for i in range(4)]
        grey = [cv2.cvtColor(im, cv2.COLOR_RGB2GRAY).astype(float) for im in images]
        assert min(g.std() for g in grey) > 10  # textured (a flat colour with the sensor noise has std 2.5)
        means.append(np.mean([im.reshape(-1, 3).mean(0) for im in images], 0))
    assert min(np.linalg.norm(means[a] - means[b]) for a in range(4) for b in range(a + 1, 4)) > 40


def test_cells_sizes_decide_the_class(tmp_path):
    root = Path(generate(tmp_path / "c", variant="cells", n_train=24, n_val=0, n_test=4, size=64)["out"])
    meta = json.loads((root / "synth.json").read_text())
    assert meta["class_names"] == ["small", "large"] and meta["backgrounds"] == ["violet", "teal"]
    for r in _rows(root, "train"):
        m = _read(root / "masks" / r["file"]) > 0
        n, _, stats, _ = cv2.connectedComponentsWithStats(m.astype(np.uint8))
        assert 2 <= n <= 4  # 1-3 nuclei
        target = meta["object_area_range"][r["class"]][0] * 64 * 64
        assert all(abs(a - target) / target < 0.15 for a in stats[1:, cv2.CC_STAT_AREA])
    assert not any(_read(root / "masks" / r["file"]).any() for r in _rows(root, "only_bg"))


def test_refuses_to_overwrite(tmp_path):
    out = tmp_path / "s"
    generate(out, **SMALL)
    with pytest.raises(ValueError, match="already exists"):
        generate(out, **SMALL)
    generate(out, seed=1, on_exist="overwrite", **SMALL)
    assert json.loads((out / "synth.json").read_text())["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]
    other = tmp_path / "home"
    other.mkdir()
    (other / "precious.txt").write_text("keep")
    with pytest.raises(ValueError, match="not a synth benchmark"):
        generate(other, on_exist="overwrite", **SMALL)
    assert (other / "precious.txt").exists()


@pytest.mark.parametrize("kwargs, message", [
    (dict(variant="dogs"), "variant must be one of"),
    (dict(bg_agreement=1.5), r"probability in \[0, 1\] \(got 1.5\)"),
    (dict(bg_agreement=-0.1), r"probability in \[0, 1\] \(got -0.1\)"),
    (dict(bg_agreement=float("nan")), r"probability in \[0, 1\] \(got nan\)"),
    (dict(object_area=(0.0, 0.05)), r"0 < MIN <= MAX < 1 \(got 0.0 0.05\)"),
    (dict(object_area=(0.02, 1.0)), r"0 < MIN <= MAX < 1 \(got 0.02 1.0\)"),
    (dict(object_area=(0.05, 0.02)), r"0 < MIN <= MAX < 1 \(got 0.05 0.02\)"),
    (dict(object_area=(0.001, 0.05)), r"is 9.2 pixels at size 96; an outline needs at least 16: raise MIN to 0.0017"),
    (dict(object_area=(0.02, 0.5)), r"does not fit every shape inside a 96 px image at any rotation; use at most 0.29"),
    (dict(variant="cells", object_area=(0.02, 0.05)), "applies to shapes only"),
    (dict(object_colour="class"), "'random' or 'per-class'"),
])
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_largest_area_fits():
    top = max_object_area("shapes", 96)
    assert 0.28 < top < 0.3  # the star limits it: area 1.32 r^2 with r = 45.5 px
    for label in range(4):
        for seed in range(3):
            m = render("shapes", label, 0, 96, np.random.default_rng(seed), object_area=(top, top))["mask"]
            assert not (m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any())  # inside the image


def test_subcommand(tmp_path):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["synth", str(tmp_path / "s"), "--n-train", "8", "--n-val", "4", "--n-test", "4",
                              "--size", "40", "--seed", "2", "--bg-agreement", "0.5", "--object-area", "0.03", "0.06"])
    summary = args.func(args)
    assert summary["seed"] == 2 and summary["bg_agreement"] == 0.5 and summary["splits"]["only_bg"]["count"] == 4
    assert summary["object_area_range"]["circle"] == [0.03, 0.06]
    json.dumps(summary)
    args = parser.parse_args(["synth", str(tmp_path / "s"), "--n-train", "4", "--n-val", "0", "--n-test", "0",
                              "--variant", "cells", "--overwrite"])
    assert args.func(args)["splits"]["train"]["count"] == 4
