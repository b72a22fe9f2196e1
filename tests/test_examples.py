"""The examples gallery from a local dataset with masks (topgap.explorer.examples, app.py --examples)."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from topgap.explorer.examples import dataset_examples, hub_examples
from topgap.explorer.explain import InputError

PETS = Path(__file__).parents[2] / "shared" / "data" / "oxford-iiit-pet-3breeds"


def _write(root: Path, split: str, cls: str, stem: str, mask: bool = True) -> None:
    for sub, a in (("", np.zeros((8, 8, 3), np.uint8)), ("masks", np.eye(8, dtype=np.uint8) * 255)):
        if sub and not mask:
            continue
        path = root / sub / split / cls / f"{stem}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(path)


def test_first_images_with_a_mask_per_class_of_the_test_split(tmp_path):
    for n in range(4):
        _write(tmp_path, "test", "cat", f"c{n}", mask=n != 0)  # c0 has no mask: left out
        _write(tmp_path, "test", "dog", f"d{n}")
    _write(tmp_path, "train", "cat", "t0")
    ex = dataset_examples(tmp_path, per_class=2)
    assert ex.captions == ["cat (c1)", "cat (c2)", "dog (d0)", "dog (d1)"]
    assert ex.rows[0] == [str(tmp_path / "test/cat/c1.png"), str(tmp_path / "masks/test/cat/c1.png")]
    assert "test split" in ex.label and "not bundled" in ex.label
    assert len(dataset_examples(tmp_path, per_class=3, limit=4).rows) == 4


def test_a_folder_without_pairs_says_what_to_give(tmp_path):
    with pytest.raises(InputError, match=r"examples folder .*does not exist; give a dataset in the folder format"):
        dataset_examples(tmp_path / "missing")
    _write(tmp_path, "val", "cat", "a", mask=False)
    with pytest.raises(InputError, match=r"split 'val' has no image with a mask; give a dataset in the folder format"):
        dataset_examples(tmp_path)


@pytest.mark.skipif(not PETS.is_dir(), reason=f"{PETS} absent (a local Oxford-IIIT Pet copy)")
def test_an_oxford_pet_copy_gives_photos_with_their_trimaps():
    ex = dataset_examples(PETS, per_class=2)
    assert [c.split(" ")[0] for c in ex.captions] == ["Abyssinian"] * 2 + ["american_bulldog"] * 2 + ["Bengal"] * 2
    for image, trimap in ex.rows:
        assert Path(image).parent == PETS / "images" and Path(trimap) == PETS / "annotations/trimaps" / (
            Path(image).stem + ".png")


def test_hub_examples_downloaded_and_cited(tmp_path, monkeypatch):
    import huggingface_hub

    asked = []

    def fake_download(repo_id, filename, repo_type=None, revision=None):
        asked.append((repo_id, filename, repo_type, revision))
        path = tmp_path / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    ex = hub_examples("someone/pets@abc123", stems=("Bengal_192", "american_bulldog_203"))
    assert asked[:2] == [("someone/pets", "images/Bengal_192.jpg", "dataset", "abc123"),
                         ("someone/pets", "annotations/trimaps/Bengal_192.png", "dataset", "abc123")]
    assert ex.rows[1] == [str(tmp_path / "images/american_bulldog_203.jpg"),
                          str(tmp_path / "annotations/trimaps/american_bulldog_203.png")]
    assert ex.captions == ["Bengal (Bengal_192)", "american_bulldog (american_bulldog_203)"]
    assert "someone/pets@abc123" in ex.label and "Parkhi" in ex.label and "copyright stays with its owner" in ex.label


def test_hub_examples_off_without_network_with_one_log_line(monkeypatch, caplog):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("cannot reach the Hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with caplog.at_level("WARNING"):
        assert hub_examples("someone/pets@abc123") is None
        assert hub_examples("not a repo") is None
    assert [r.getMessage().split(" could not")[0] for r in caplog.records] == [
        "Hub examples off: someone/pets@abc123", "Hub examples off: not a repo"]
    assert "the app starts without them" in caplog.records[0].getMessage()
