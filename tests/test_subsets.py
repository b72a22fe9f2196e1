import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import Subset

from fakes import SquaresDataset
from topgap.data import open_dataset
from topgap.eval.subsets import check_same_sample, dataset_ids, dataset_labels, sample_record, stratified_indices

BALANCED = [0] * 30 + [1] * 30 + [2] * 30  # class-sorted, as every loader returns a split
UNBALANCED = [0] * 50 + [1] * 5 + [2] * 20


def _counts(labels, idx):
    return Counter(labels[i] for i in idx)


@pytest.mark.parametrize("labels", [BALANCED, UNBALANCED])
def test_stratified_counts_are_even(labels):
    sizes = Counter(labels)
    for n in range(len(labels) + 1):
        idx = stratified_indices(labels, n, seed=3)
        assert len(idx) == n == len(set(idx)) and idx == sorted(idx)
        got = _counts(labels, idx)
        top = max(got.values(), default=0)
        for c, size in sizes.items():  # a class is taken whole, or within one of the largest share
            assert got[c] == size or got[c] >= top - 1, (n, got)


def test_small_class_taken_whole_rest_spread():
    got = _counts(UNBALANCED, stratified_indices(UNBALANCED, 30, seed=0))
    assert got[1] == 5 and abs(got[0] - got[2]) <= 1 and got[0] + got[2] == 25


def test_first_images_are_not_the_sample():
    idx = stratified_indices(BALANCED, 9, seed=0)
    assert sorted(_counts(BALANCED, idx).values()) == [3, 3, 3]


def test_deterministic_and_seeded():
    a = stratified_indices(UNBALANCED, 20, seed=7)
    assert a == stratified_indices(UNBALANCED, 20, seed=7) == stratified_indices(np.array(UNBALANCED), 20, seed=7)
    assert a == stratified_indices(tuple(UNBALANCED), 20, seed=7)
    assert len({tuple(stratified_indices(UNBALANCED, 20, seed=s)) for s in range(5)}) == 5


@pytest.mark.parametrize("labels", [BALANCED, UNBALANCED])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nested(labels, seed):
    previous = set()
    for n in range(len(labels) + 1):
        idx = set(stratified_indices(labels, n, seed=seed))
        assert previous <= idx
        previous = idx
    road, attacks, quick = (set(stratified_indices(labels, n, seed=seed)) for n in (10, 50, 70))
    assert road <= attacks <= quick


def test_edge_sizes():
    assert stratified_indices(BALANCED, None) == stratified_indices(BALANCED, 90) == list(range(90))
    assert stratified_indices(BALANCED, 1000, seed=5) == list(range(90))
    assert stratified_indices(BALANCED, 0) == [] and stratified_indices([], 3) == []
    with pytest.raises(ValueError, match=">= 0"):
        stratified_indices(BALANCED, -1)


def _folder(root, spec):
    """ROOT/test/<class>/<name> tiny PNGs; spec = {class: [relative file names]}."""
    for c, names in spec.items():
        for name in names:
            path = root / "test" / c / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (len(name) * 20, 0, 0)).save(path)
    return root


def test_image_dataset_ids_are_relative_posix_paths(tmp_path):
    root = _folder(tmp_path / "d", {"cat": ["0.png", "1.png"], "dog": ["sub/2.png"]})
    ds = open_dataset(root, "test", input_size=(8, 8))
    assert ds.ids == ["test/cat/0.png", "test/cat/1.png", "test/dog/sub/2.png"]
    assert dataset_ids(ds) == ds.ids and dataset_labels(ds) == [0, 0, 1]
    assert ds.ids == open_dataset(root.resolve(), "test", input_size=(8, 8)).ids  # not the root's spelling


def test_subset_is_resolved(tmp_path):
    root = _folder(tmp_path / "d", {"a": [f"{i}.png" for i in range(4)], "b": [f"{i}.png" for i in range(3)]})
    ds = open_dataset(root, "test", input_size=(8, 8))
    sub = Subset(Subset(ds, [6, 1, 5, 0]), [0, 2])
    assert dataset_ids(sub) == ["test/b/2.png", "test/b/1.png"] and dataset_labels(sub) == [1, 1]


def test_dataset_without_ids_uses_positions():
    data = SquaresDataset(n=6, num_classes=3)
    assert dataset_ids(Subset(data, [4, 2])) == ["4", "2"] and dataset_labels(Subset(data, [4, 2])) == [1, 2]
    with pytest.raises(TypeError, match="labels"):
        dataset_labels(Subset(list(range(3)), [0]))


def test_sample_record(tmp_path):
    root = _folder(tmp_path / "d", {"a": [f"{i}.png" for i in range(5)], "b": ["0.png"], "c": ["0.png", "1.png"]})
    ds = open_dataset(root, "test", input_size=(8, 8))
    idx = stratified_indices(ds.labels, 4, seed=1)
    rec = sample_record(ds, idx, seed=1, purpose="road")
    assert json.loads(json.dumps(rec)) == rec
    assert rec["purpose"] == "road" and rec["seed"] == 1 and rec["n"] == 4 == len(rec["ids"])
    assert list(rec["per_class"]) == ["a", "b", "c"] and rec["per_class"]["b"] == 1
    assert sorted(rec["per_class"].values()) == [1, 1, 2]
    assert rec["ids"] == [ds.ids[i] for i in idx] and "test/b/0.png" in rec["ids"]
    none = sample_record(ds, [0], seed=0, purpose="road")["per_class"]
    assert none == {"a": 1, "b": 0, "c": 0}  # every class listed, an absent one as 0


def test_same_sample_check():
    data = SquaresDataset(n=12, num_classes=3)
    rec = lambda n, seed, purpose="attacks": sample_record(  # noqa: E731
        data, stratified_indices(data.labels, n, seed=seed), seed=seed, purpose=purpose)
    check_same_sample(rec(6, 0), rec(6, 0))
    check_same_sample(rec(12, 0), rec(12, 4))  # all images: the sample seed does not matter
    with pytest.raises(ValueError, match=r"'attacks' samples differ: \d+ of 6 ids only in the first report"):
        check_same_sample(rec(6, 0), rec(6, 1))
    with pytest.raises(ValueError, match="0 of 3 ids only in the first report, 3 of 6 only in the second"):
        check_same_sample(rec(3, 0), rec(6, 0))
    with pytest.raises(ValueError, match="different purposes: 'road' and 'attacks'"):
        check_same_sample(rec(6, 0, "road"), rec(6, 0))
    a = rec(6, 0)
    with pytest.raises(ValueError, match="different order"):
        check_same_sample(a, {**a, "ids": a["ids"][::-1]})
