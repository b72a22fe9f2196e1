import argparse
import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from topgap.data import list_splits, open_dataset
from topgap.data.synth import SPLITS, VARIANTS, generate, register, render

SMALL = dict(n_train=16, n_val=8, n_test=8, size=48)


def _files(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _rows(root: Path) -> list[dict]:
    with open(root / "metadata.csv") as f:
        return list(csv.DictReader(f))


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
    assert {s: meta["splits"][s]["count"] for s in SPLITS} == {"train": 16, "val": 8, "test": 8, "test_shifted": 8}
    assert list_splits(root) == sorted(SPLITS)
    assert not list(tmp_path.glob("*.tmp-*"))
    ds = open_dataset(root, "test_shifted", input_size=(48, 48))
    assert len(ds) == 8 and ds.class_names == sorted(meta["class_names"]) and ds.has_masks and not ds.skipped
    item = ds[0]
    assert set(item["mask"].unique().tolist()) == {0, 1}
    rows = _rows(root)
    assert len(rows) == 40
    for r in rows[:10]:  # the mask file holds exactly the pixels metadata counts
        m = cv2.imread(str(root / "masks" / r["file"]), cv2.IMREAD_UNCHANGED)
        assert set(np.unique(m).tolist()) == {0, 255} and (m > 0).sum() == int(r["object_pixels"])


def test_bias_rate(tmp_path):
    root = Path(generate(tmp_path / "s", n_train=400, n_val=0, n_test=400, size=32, bias=0.8)["out"])
    rows = _rows(root)
    rate = {s: np.mean([int(r["aligned"]) for r in rows if r["split"] == s]) for s in ("train", "test", "test_shifted")}
    assert abs(rate["train"] - 0.8) < 0.06 and abs(rate["test"] - 0.8) < 0.06
    assert abs(rate["test_shifted"] - 0.25) < 0.07
    meta = json.loads((root / "synth.json").read_text())
    assert meta["splits"]["train"]["aligned_rate"] == pytest.approx(rate["train"], abs=1e-4)
    # a misaligned background is one of the others, drawn uniformly
    bgs = {r["background"] for r in rows if r["split"] == "train" and r["class"] == "circle" and r["aligned"] == "0"}
    assert bgs == {"grass", "sand", "sky"}


@pytest.mark.parametrize("label", range(4))
def test_shape_mask_is_the_object(label):
    size = 96
    scene = render("shapes", label, background=(label + 1) % 4, size=size, rng=np.random.default_rng(label))
    mask, image = scene["mask"], scene["image"].astype(float)
    area = VARIANTS["shapes"]["area"][VARIANTS["shapes"]["classes"][label]] * size * size
    assert abs(mask.sum() - area) / area < 0.05
    assert cv2.connectedComponents(mask.astype(np.uint8))[0] == 2  # one object
    inner = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    colour = np.float64(scene["color"])
    assert np.abs(image[inner] - colour).mean() < 20  # object pixels carry the object colour
    outer = ~cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    assert np.abs(image[outer] - colour).mean() > 40  # the rest is background


def test_cells_sizes_decide_the_class(tmp_path):
    root = Path(generate(tmp_path / "c", variant="cells", n_train=24, n_val=0, n_test=0, size=64)["out"])
    meta = json.loads((root / "synth.json").read_text())
    assert meta["class_names"] == ["small", "large"] and meta["backgrounds"] == ["violet", "teal"]
    for r in _rows(root):
        m = cv2.imread(str(root / "masks" / r["file"]), cv2.IMREAD_UNCHANGED) > 0
        n, _, stats, _ = cv2.connectedComponentsWithStats(m.astype(np.uint8))
        assert 2 <= n <= 4  # 1-3 nuclei
        target = meta["object_area_px"][r["class"]]
        assert all(abs(a - target) / target < 0.15 for a in stats[1:, cv2.CC_STAT_AREA])


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


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="variant"):
        generate(tmp_path / "x", variant="dogs")
    with pytest.raises(ValueError, match="bias"):
        generate(tmp_path / "x", bias=1.5)


def test_subcommand(tmp_path):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["synth", str(tmp_path / "s"), "--n-train", "8", "--n-val", "4", "--n-test", "4",
                              "--size", "40", "--seed", "2", "--bias", "0.5", "--variant", "cells"])
    summary = args.func(args)
    assert summary["variant"] == "cells" and summary["seed"] == 2 and summary["splits"]["train"]["count"] == 8
    json.dumps(summary)
    args = parser.parse_args(["synth", str(tmp_path / "s"), "--n-train", "4", "--overwrite"])
    assert args.func(args)["splits"]["train"]["count"] == 4
