import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from topgap.data import list_splits, open_dataset, read_image

SHARED = Path(__file__).parents[2] / "shared" / "data"
PETS = SHARED / "oxford-iiit-pet-3breeds"
CIFAR = SHARED / "cifar10-jpeg"


def _scene(h=80, w=100, box=(20, 30, 50, 70)):
    """A black image with a white box, and the box as a 0/255 mask."""
    img = np.zeros((h, w, 3), np.uint8)
    mask = np.zeros((h, w), np.uint8)
    y0, x0, y1, x1 = box
    img[y0:y1, x0:x1] = 255
    mask[y0:y1, x0:x1] = 255
    return img, mask


def _folder(root: Path, spec: dict, masks: bool = True) -> Path:
    """ROOT/<split>/<class>/<n>.png with box scenes; spec = {split: {class: count}}."""
    for split, classes in spec.items():
        for c, n in classes.items():
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img, mask = _scene(box=(10 + i, 20, 40 + i, 60))
                Image.fromarray(img).save(root / split / c / f"{i}.png")
                if masks:
                    (root / "masks" / split / c).mkdir(parents=True, exist_ok=True)
                    Image.fromarray(mask).save(root / "masks" / split / c / f"{i}.png")
    return root


def _snapshot(root: Path) -> dict:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*")}


def _iou(item) -> float:
    obj = item["image"].mean(0) > 0.5
    m = item["mask"] == 1
    assert not (item["mask"] == 255).any()
    return (obj & m).sum().item() / max((obj | m).sum().item(), 1)


def test_folder_resize_keeps_alignment(tmp_path):
    root = _folder(tmp_path / "d", {"train": {"a": 2, "b": 1}})
    before = _snapshot(root)
    ds = open_dataset(root, "train", input_size=(48, 64))
    assert len(ds) == 3 and ds.class_names == ["a", "b"] and ds.labels == [0, 0, 1] and ds.has_masks
    item = ds[0]
    assert item["image"].shape == (3, 48, 64) and item["image"].dtype == torch.float32
    assert 0 <= item["image"].min() and item["image"].max() <= 1
    assert item["mask"].shape == (48, 64) and item["mask"].dtype == torch.uint8
    assert item["has_mask"] and item["index"] == 0 and item["label"] == 0
    assert _iou(item) > 0.9
    assert _snapshot(root) == before  # nothing written into the data folder


@pytest.mark.parametrize("size", [(96, 96), (32, 32)])  # random resized crop; CIFAR pad-4 crop
def test_augmentation_moves_image_and_mask_together(tmp_path, size):
    root = _folder(tmp_path / "d", {"train": {"a": 1}})
    ds = open_dataset(root, "train", input_size=size, train=True)
    torch.manual_seed(0)
    items = [ds[0] for _ in range(12)]
    assert all(_iou(it) > 0.85 for it in items)
    assert len({it["mask"].numpy().tobytes() for it in items}) > 1  # it does augment


def test_without_masks_all_unknown(tmp_path):
    root = _folder(tmp_path / "d", {"train": {"a": 1}}, masks=False)
    item = open_dataset(root, "train", input_size=(32, 32))[0]
    assert not item["has_mask"] and (item["mask"] == 255).all()


def test_class_indices_consistent_across_splits(tmp_path):
    root = _folder(tmp_path / "d", {"train": {"cat": 1, "dog": 1, "eel": 1}, "test": {"dog": 2, "eel": 1}})
    assert list_splits(root) == ["test", "train"]
    test = open_dataset(root, "test", input_size=(32, 32))
    assert test.class_names == ["cat", "dog", "eel"] and test.labels == [1, 1, 2]
    with pytest.raises(ValueError, match="available: test, train"):
        open_dataset(root, "val")


def test_classes_txt_sets_the_label_order(tmp_path):
    root = _folder(tmp_path / "d", {"test": {"cat": 1, "dog": 2, "eel": 1}})
    (root / "classes.txt").write_text("eel\ncat\ndog\n")
    test = open_dataset(root, "test", input_size=(32, 32))
    assert test.class_names == ["eel", "cat", "dog"]
    assert [(it.source.parent.name, it.label) for it in test.items] == [("eel", 0), ("cat", 1), ("dog", 2), ("dog", 2)]
    (root / "classes.txt").write_text("cat\ndog\n")
    with pytest.raises(ValueError, match=r"classes.txt lists \['cat', 'dog'\] but the class folders are "
                                         r"\['cat', 'dog', 'eel'\]; make it list each class folder once"):
        open_dataset(root, "test")


def _save(path: Path, im: Image.Image, **kw) -> Path:
    im.save(path, **kw)
    return path


def test_mode_conversions(tmp_path):
    px = lambda p: tuple(read_image(p)[0, 0].tolist())  # noqa: E731
    # 16-bit grey is scaled onto 0-255, not clipped
    a16 = np.array([[65535, 0, 257 * 100]], np.uint16)
    arr = read_image(_save(tmp_path / "g16.png", Image.fromarray(a16)))
    assert arr[0, :, 0].tolist() == [255, 0, 100] and arr.shape == (1, 3, 3)
    # RGBA composited on white: 200 * 128/255 + 255 * 127/255 = 227.4, ...
    got = px(_save(tmp_path / "rgba.png", Image.new("RGBA", (2, 2), (200, 100, 50, 128))))
    assert np.allclose(got, (227.4, 177.2, 152.1), atol=1.0)
    # palette with a transparent index: that index becomes white, others keep their colour
    p = Image.fromarray(np.array([[0, 1]], np.uint8), mode="P")
    p.putpalette([10, 200, 30, 250, 250, 250] + [0] * 762)
    arr = read_image(_save(tmp_path / "p.png", p, transparency=1))
    assert arr[0, 0].tolist() == [10, 200, 30] and arr[0, 1].tolist() == [255, 255, 255]
    # CMYK, grayscale, 1-bit
    assert px(_save(tmp_path / "cmyk.tif", Image.new("CMYK", (2, 2), (0, 255, 255, 0)))) == (255, 0, 0)
    assert px(_save(tmp_path / "l.png", Image.new("L", (2, 2), 77))) == (77, 77, 77)
    assert px(_save(tmp_path / "b.png", Image.new("1", (2, 2), 1))) == (255, 255, 255)
    # a GIF and an RGBA PNG named .jpg decode by content
    assert px(_save(tmp_path / "gif.jpg", Image.new("RGB", (4, 4), (255, 0, 0)), format="GIF"))[0] > 200
    assert px(_save(tmp_path / "png.jpg", Image.new("RGBA", (4, 4), (0, 0, 255, 255)), format="PNG")) == (0, 0, 255)


def test_exif_orientation(tmp_path):
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = (255, 0, 0)  # left half red, right half blue
    a[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    arr = read_image(_save(tmp_path / "r.jpg", Image.fromarray(a), exif=exif, quality=95))
    assert arr.shape == (40, 20, 3)
    assert arr[5, 10, 0] > 200 and arr[35, 10, 2] > 200  # red on top, blue below


def test_decompression_bomb_is_a_clear_error(tmp_path, monkeypatch):
    path = _save(tmp_path / "big.png", Image.new("L", (100, 100)))
    monkeypatch.setattr("topgap.data.imageio.MAX_PIXELS", 1000)
    with pytest.raises(ValueError, match="big.png.*downscale"):
        read_image(path)


def test_bad_files_stop_or_skip(tmp_path):
    root = _folder(tmp_path / "d", {"train": {"a": 2}}, masks=False)
    good = (root / "train" / "a" / "0.png").read_bytes()
    (root / "train" / "a" / "trunc.png").write_bytes(good[: len(good) // 2])
    jpg = tmp_path / "x.jpg"
    Image.new("RGB", (64, 64), (9, 9, 9)).save(jpg, quality=90)
    (root / "train" / "a" / "trunc.jpg").write_bytes(jpg.read_bytes()[:300])
    (root / "train" / "a" / "text.jpg").write_text("not an image")
    (root / "train" / "a" / "notes.txt").write_text("stray")
    (root / "train" / "a" / ".DS_Store").write_text("hidden files are ignored")
    with pytest.raises(ValueError) as e:
        open_dataset(root, "train")
    msg = str(e.value)
    for name in ("trunc.png", "trunc.jpg", "text.jpg", "notes.txt"):
        assert name in msg
    assert "on_error='skip'" in msg and "--on-error skip" in msg and ".DS_Store" not in msg
    ds = open_dataset(root, "train", on_error="skip")
    assert len(ds) == 2
    assert sorted(Path(f).name for f, _ in ds.skipped) == ["notes.txt", "text.jpg", "trunc.jpg", "trunc.png"]


def test_missized_and_missing_masks(tmp_path):
    root = _folder(tmp_path / "d", {"train": {"a": 3}})
    Image.new("L", (50, 40)).save(root / "masks" / "train" / "a" / "1.png")
    (root / "masks" / "train" / "a" / "2.png").unlink()
    with pytest.raises(ValueError, match=r"1\.png: mask is 50x40 but its image is 100x80"):
        open_dataset(root, "train")
    ds = open_dataset(root, "train", on_error="skip", input_size=(32, 32))
    assert len(ds) == 3  # the images are kept, without their masks
    assert [ds[i]["has_mask"] for i in range(3)] == [True, False, False]
    assert {Path(f).name: why.split(";")[0] for f, why in ds.skipped} == {
        "1.png": "mask is 50x40 but its image is 100x80", "2.png": "mask missing"}


def test_empty_class_folder(tmp_path):
    root = _folder(tmp_path / "d", {"train": {"a": 1}}, masks=False)
    (root / "train" / "b").mkdir()
    with pytest.raises(ValueError, match="empty class folder"):
        open_dataset(root, "train")
    with pytest.warns(UserWarning, match="empty class folder"):
        ds = open_dataset(root, "train", on_error="skip")
    assert ds.class_names == ["a", "b"] and len(ds) == 1


def test_cifar_style_tar(tmp_path):
    src = tmp_path / "src"
    for split, classes in {"train": ["bird", "cat", "dog"], "test": ["cat", "dog"]}.items():
        for k, c in enumerate(classes):
            (src / split / c).mkdir(parents=True)
            Image.new("RGB", (32, 32), (k * 100, 0, 0)).save(src / split / c / "0001.jpg")
    (src / "test" / "dog" / "0002.jpg").write_bytes(b"broken")
    root = tmp_path / "cifar"
    root.mkdir()
    for split in ("train", "test"):
        with tarfile.open(root / f"{split}.tar.gz", "w:gz") as tf:
            tf.add(src / split, arcname=split)
    before = _snapshot(root)
    assert list_splits(root) == ["test", "train"]
    with pytest.raises(ValueError, match="0002.jpg"):
        open_dataset(root, "test")
    ds = open_dataset(root, "test", input_size=(32, 32), on_error="skip")
    assert ds.class_names == ["bird", "cat", "dog"] and ds.labels == [1, 2] and len(ds.skipped) == 1
    assert ds.ids == ["test/cat/0001.jpg", "test/dog/0001.jpg"]  # the tar member names
    item = ds[1]
    assert item["image"].shape == (3, 32, 32) and item["image"][0].mean() > 0.35 and not item["has_mask"]
    assert _snapshot(root) == before


needs_pets = pytest.mark.skipif(not PETS.exists(), reason="../shared/data/oxford-iiit-pet-3breeds absent: "
                                "real-data tests need the shared Oxford-IIIT Pet subset")
needs_cifar = pytest.mark.skipif(not CIFAR.exists(), reason="../shared/data/cifar10-jpeg absent: "
                                 "real-data tests need the shared CIFAR-10 JPEG copy")


@needs_pets
def test_oxford_pet_subset():
    assert list_splits(PETS) == ["trainval", "test", "train", "val"]
    tv = open_dataset(PETS, "trainval", input_size=(64, 64))
    test = open_dataset(PETS, "test", input_size=(64, 64))
    assert (len(tv), len(test)) == (300, 298) and tv.split == "trainval"
    assert all(i.startswith("images/") and i.endswith(".jpg") for i in tv.ids) and len(set(tv.ids)) == 300
    assert tv.class_names == test.class_names == ["Abyssinian", "american_bulldog", "Bengal"]
    assert sorted(set(tv.labels)) == [0, 1, 2] and tv.has_masks and not tv.skipped
    assert all(it.source.suffix == ".jpg" for it in tv.items)  # the .mat files are no items
    for i in (0, 150, 299):
        item = tv[i]
        assert item["image"].shape == (3, 64, 64) and item["has_mask"]
        assert set(item["mask"].unique().tolist()) <= {0, 1, 255} and (item["mask"] == 1).any()
    train, val = open_dataset(PETS, "train"), open_dataset(PETS, "val")
    assert (len(train), len(val)) == (240, 60) and [val.labels.count(c) for c in range(3)] == [20, 20, 20]
    assert not {i.source for i in train.items} & {i.source for i in val.items}
    assert {i.source for i in train.items} | {i.source for i in val.items} == {i.source for i in tv.items}
    species = open_dataset(PETS, "test", labels="species")
    assert species.class_names == ["cat", "dog"] and sorted(set(species.labels)) == [0, 1]


@needs_pets
def test_oxford_odd_files_decode():
    gif = read_image(PETS / "images" / "Abyssinian_34.jpg")
    rgba = read_image(PETS / "images" / "Abyssinian_5.jpg")
    assert gif.shape == (202, 250, 3) and rgba.shape == (150, 200, 3)
    assert gif.std() > 10 and rgba.std() > 10


@needs_pets
def test_oxford_torchvision_subfolder(tmp_path):
    (tmp_path / "oxford-iiit-pet").symlink_to(PETS.resolve(), target_is_directory=True)
    ds = open_dataset(tmp_path, "test", input_size=(32, 32))
    assert len(ds) == 298 and ds.root.name == "oxford-iiit-pet"


@needs_cifar
def test_cifar10_jpeg_test_split():
    ds = open_dataset(CIFAR, "test", input_size=(32, 32), train=True)
    assert len(ds) == 10000 and len(ds.class_names) == 10 and ds.class_names[0] == "airplane"
    assert np.bincount(ds.labels).tolist() == [1000] * 10
    item = ds[123]
    assert item["image"].shape == (3, 32, 32) and not item["has_mask"] and (item["mask"] == 255).all()
