"""topgap backgrounds: the Backgrounds Challenge variants, pixel-exact on tiny hand-made images."""
import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from topgap.cli import main
from topgap.data import open_dataset
from topgap.data.backgrounds import VARIANTS, build, largest_rectangle, only_bg_t

PETS = Path(__file__).parents[2] / "shared" / "data" / "oxford-iiit-pet-3breeds"


def grey(rows) -> np.ndarray:
    """(H, W, 3) uint8 with R = G = B = the given values."""
    return np.repeat(np.array(rows, np.uint8)[..., None], 3, axis=2)


A1 = grey([[1, 2, 3, 4, 5], [11, 12, 13, 14, 15], [21, 22, 23, 24, 25], [31, 32, 33, 34, 35]])
A1_MASK = np.array([[0, 0, 0, 1, 1], [0, 0, 0, 1, 1], [0, 0, 0, 0, 0], [1, 1, 0, 0, 0]], bool)
A2 = grey(100 + np.array([[0, 1, 2, 3, 4], [10, 11, 12, 13, 14], [20, 21, 22, 23, 24], [30, 31, 32, 33, 34]]))
A2_MASK = np.array([[0, 0, 0, 0, 0], [0, 1, 1, 0, 0], [0, 1, 1, 0, 0], [0, 0, 0, 0, 0]], bool)
B1 = grey(200 + np.array([[0, 1, 2, 3, 4], [10, 11, 12, 13, 14], [20, 21, 22, 23, 24], [30, 31, 32, 33, 34]]))
B1_TRIMAP = np.array([[2, 2, 2, 2, 2], [2, 3, 1, 3, 2], [2, 2, 2, 2, 2], [2, 2, 2, 2, 2]], np.uint8)  # 3 = band


def write_dataset(root: Path, with_masks: bool = True) -> Path:
    """test/{a,b}/*.png with masks/test/...: a1, a2 (0/255 masks), b1 (an Oxford-style trimap), b2, b3."""
    images = {"a/a1": (A1, A1_MASK * 255), "a/a2": (A2, A2_MASK * 255), "b/b1": (B1, B1_TRIMAP)}
    for n, name in enumerate(("b/b2", "b/b3")):
        mask = np.zeros((4, 5), np.uint8)
        mask[3, 4 - n] = 255
        images[name] = (grey(np.full((4, 5), 50 + 10 * n)), mask)
    for name, (image, mask) in images.items():
        for path, a in ((root / "test" / name, image), (root / "masks" / "test" / name, mask))[:2 if with_masks else 1]:
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(a.astype(np.uint8)).save(path.with_suffix(".png"))
    return root


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_largest_rectangle_by_hand():
    assert largest_rectangle(~A1_MASK) == (0, 0, 3, 3)  # rows 0-2, cols 0-2: 9 pixels (row 2 alone: 5, cols 2-4 x rows 2-3: 6)
    assert largest_rectangle(~A2_MASK) == (0, 3, 4, 2)  # cols 3-4 over all rows: 8 pixels
    assert largest_rectangle(np.zeros((3, 3), bool)) is None
    assert largest_rectangle(np.array([[1, 0, 1]], bool)) == (0, 0, 1, 1)  # ties: the first found


def test_only_bg_t_tiles_the_background_rectangle_in_phase():
    out = only_bg_t(A1, A1_MASK)[..., 0]
    np.testing.assert_array_equal(out, [[1, 2, 3, 1, 2], [11, 12, 13, 11, 12], [21, 22, 23, 24, 25], [1, 2, 33, 34, 35]])
    out = only_bg_t(A2, A2_MASK)[..., 0]  # tile = cols 3-4, so col x takes col 3 + (x - 3) % 2
    np.testing.assert_array_equal(out, [[100, 101, 102, 103, 104], [110, 113, 114, 113, 114],
                                        [120, 123, 124, 123, 124], [130, 131, 132, 133, 134]])
    with pytest.raises(ValueError, match="no background pixel"):
        only_bg_t(A1, np.ones((4, 5), bool))


@pytest.fixture
def built(tmp_path):
    src = write_dataset(tmp_path / "src")
    before = tree_digest(src)
    summary = build(src, tmp_path / "out", size=(4, 5), seed=0)
    assert tree_digest(src) == before  # nothing written into the source
    return tmp_path / "out", summary


def test_every_variant_pixel_exact(built):
    out, summary = built
    assert summary["images_per_variant"] == 5 and summary["per_class"] == {"a": 2, "b": 3}
    expected = {
        "original": A1[..., 0],
        "only_fg": [[0, 0, 0, 4, 5], [0, 0, 0, 14, 15], [0, 0, 0, 0, 0], [31, 32, 0, 0, 0]],
        "no_fg": [[1, 2, 3, 0, 0], [11, 12, 13, 0, 0], [21, 22, 23, 24, 25], [0, 0, 33, 34, 35]],
        "only_bg_t": [[1, 2, 3, 1, 2], [11, 12, 13, 11, 12], [21, 22, 23, 24, 25], [1, 2, 33, 34, 35]],
        # a1 on only_bg_t(a2), the only other image of class a
        "mixed_same": [[100, 101, 102, 4, 5], [110, 113, 114, 14, 15], [120, 123, 124, 123, 124], [31, 32, 132, 133, 134]],
    }
    for variant, want in expected.items():
        got = pixels(out / variant / "a" / "a1.png")
        assert got.shape == (4, 5, 3) and (got == got[..., :1]).all(), variant
        np.testing.assert_array_equal(got[..., 0], want, err_msg=variant)
        np.testing.assert_array_equal(pixels(out / "masks" / variant / "a" / "a1.png"), np.where(A1_MASK, 1, 2))
    rows = {(r["variant"], r["file"]): r for r in csv.DictReader((out / "metadata.csv").open())}
    assert rows[("mixed_same", "mixed_same/a/a1.png")]["background"] == "test/a/a2.png"
    for variant in ("mixed_rand", "mixed_next"):
        bg = rows[(variant, f"{variant}/a/a1.png")]["background"]
        assert bg != "test/a/a1.png" and (variant == "mixed_rand" or bg.startswith("test/b/"))
        j = Path(bg).stem
        j_image, j_mask = {"a2": (A2, A2_MASK), "b1": (B1, B1_TRIMAP != 2)}.get(j, (None, None))
        if j_image is None:  # b2 / b3: flat grey 50 or 60 with one object pixel, texture = the same grey
            j_image, j_mask = grey(np.full((4, 5), 50 + 10 * int(j[1:] == "3"))), np.zeros((4, 5), bool)
        want = np.where(A1_MASK, A1[..., 0], only_bg_t(j_image, j_mask)[..., 0])
        np.testing.assert_array_equal(pixels(out / variant / "a" / "a1.png")[..., 0], want, err_msg=variant)


def test_a_trimap_band_moves_with_the_object_and_stays_ignored(built):
    out, _ = built
    np.testing.assert_array_equal(pixels(out / "only_fg" / "b" / "b1.png")[..., 0],
                                  [[0] * 5, [0, 211, 212, 213, 0], [0] * 5, [0] * 5])
    np.testing.assert_array_equal(pixels(out / "masks" / "mixed_rand" / "b" / "b1.png"), B1_TRIMAP)


def test_output_is_the_folder_format_evaluate_reads(built, tmp_path):
    out, _ = built
    for variant in VARIANTS:
        ds = open_dataset(out, variant, input_size=(4, 5))
        assert ds.class_names == ["a", "b"] and len(ds) == 5 and ds.has_masks
    item = open_dataset(out, "mixed_next", input_size=(4, 5))[2]  # b1: band = 255 (ignored), object = 1
    np.testing.assert_array_equal(item["mask"].numpy()[1], [0, 255, 1, 255, 0])


def test_same_seed_same_bytes(built, tmp_path):
    out, _ = built
    build(tmp_path / "src", tmp_path / "again", size=(4, 5), seed=0)
    assert tree_digest(out) == tree_digest(tmp_path / "again")


def test_class_order_of_the_source_is_kept(tmp_path):
    src = write_dataset(tmp_path / "src")
    (src / "classes.txt").write_text("b\na\n")
    build(src, tmp_path / "out", size=(4, 5))
    assert (tmp_path / "out" / "classes.txt").read_text() == "b\na\n"
    assert open_dataset(tmp_path / "out", "original").class_names == ["b", "a"]


# ---------------------------------------------------------------- bad input

def test_image_without_mask_is_named(tmp_path):
    src = write_dataset(tmp_path / "src", with_masks=False)
    with pytest.raises(ValueError, match=r"image .*a1.png: no mask; .*--on-error skip"):
        build(src, tmp_path / "out", size=(4, 5))
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out.tmp-*"))


def test_missing_or_mismatched_mask_is_named(tmp_path):
    src = write_dataset(tmp_path / "src")
    (src / "masks" / "test" / "b" / "b3.png").unlink()
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(src / "masks" / "test" / "b" / "b2.png")
    with pytest.raises(ValueError, match=r"b2.png: mask is 3x3 but its image is 5x4(.|\n)*b3.png: mask missing"):
        build(src, tmp_path / "out", size=(4, 5))
    with pytest.raises(ValueError, match="class b has a single usable image; mixed_same needs 2 per class"):
        build(src, tmp_path / "out", size=(4, 5), on_error="skip")
    b2_mask, b3_mask = src / "masks" / "test" / "b" / "b2.png", src / "masks" / "test" / "b" / "b3.png"
    Image.fromarray(np.eye(4, 5, dtype=np.uint8) * 255).save(b2_mask)
    Image.fromarray(np.full((4, 5), 255, np.uint8)).save(b3_mask)  # all object
    with pytest.raises(ValueError, match=r"b3.png: the mask leaves no background"):
        build(src, tmp_path / "out", size=(4, 5))
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(b2_mask)
    Image.fromarray(np.eye(4, 5, dtype=np.uint8) * 255).save(b3_mask)
    summary = build(src, tmp_path / "out", size=(4, 5), on_error="skip")  # b2 left out and listed
    assert summary["per_class"] == {"a": 2, "b": 2} and [Path(f).name for f, _ in summary["skipped"]] == ["b2.png"]


def test_mask_without_object_is_named(tmp_path):
    src = write_dataset(tmp_path / "src")
    Image.fromarray(np.zeros((4, 5), np.uint8)).save(src / "masks" / "test" / "a" / "a2.png")
    with pytest.raises(ValueError, match=r"image .*a2.png: the mask marks no object"):
        build(src, tmp_path / "out", size=(4, 5))


def test_never_writes_into_the_source_and_replaces_atomically(tmp_path):
    src = write_dataset(tmp_path / "src")
    with pytest.raises(ValueError, match="inside the source"):
        build(src, src / "variants", size=(4, 5))
    out = tmp_path / "out"
    build(src, out, size=(4, 5))
    with pytest.raises(ValueError, match="already exists; .*--overwrite"):
        build(src, out, size=(4, 5))
    before = tree_digest(out)
    Image.fromarray(np.zeros((4, 5), np.uint8)).save(src / "masks" / "test" / "a" / "a2.png")  # now bad
    with pytest.raises(ValueError, match="marks no object"):
        build(src, out, size=(4, 5), overwrite=True)
    assert tree_digest(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


def test_cli(tmp_path, capsys):
    src = write_dataset(tmp_path / "src")
    assert main(["backgrounds", str(src), str(tmp_path / "out"), "--size", "4", "5", "--seed", "3"]) == 0
    assert '"images_per_variant": 5' in capsys.readouterr().out
    assert main(["backgrounds", str(src), str(tmp_path / "out"), "--size", "4", "5"]) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.skipif(not PETS.exists(), reason="../shared/data/oxford-iiit-pet-3breeds absent: real-data tests need "
                                              "the shared Oxford-IIIT Pet subset")
def test_oxford_pets_keep_their_label_order(tmp_path):
    summary = build(PETS, tmp_path / "bg", size=(64, 64), per_class=2)
    assert summary["per_class"] == {"Abyssinian": 2, "american_bulldog": 2, "Bengal": 2}
    ds = open_dataset(tmp_path / "bg", "mixed_same", input_size=(64, 64))
    assert ds.class_names == open_dataset(PETS, "test").class_names and ds.has_masks
