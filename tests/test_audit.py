"""The batch audit (topgap.explorer.audit): pairing, bounds, bad zips, the rows (the /explain figures) and the CSV."""
import csv
import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from appfamily import make_family
from topgap.explorer.audit import COLUMNS, Bounds, collect, pair, read_uploads, read_zip, run_audit, write_csv
from topgap.explorer.explain import Family, InputError, explain_all, own_mask

MB = 2**20


def png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, "PNG")
    return out.getvalue()


def make_zip(path, members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


RNG = np.random.default_rng(0)
IMAGE = png((RNG.random((48, 64, 3)) * 255).astype(np.uint8))
MASK = np.zeros((96, 128), np.uint8)  # twice the image's size, same aspect ratio
MASK[20:70, 30:80] = 255


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return Family(make_family(tmp_path_factory.mktemp("models"), "fam"))


def test_masks_pair_by_stem_in_a_masks_folder_or_by_suffix():
    files = {"x/a.png": b"1", "masks/a.png": b"m1", "b.jpg": b"2", "b_mask.png": b"m2", "c.png": b"3",
             "c.mask.png": b"m3", "d.png": b"4", "masks/zzz.png": b"m4", "p/e.png": b"5", "q/e.png": b"6",
             "masks/e.png": b"m5"}
    items, notes = pair(files)
    got = {i.name: (i.mask_name, i.mask) for i in items}
    assert got == {"x/a.png": ("masks/a.png", b"m1"), "b.jpg": ("b_mask.png", b"m2"), "c.png": ("c.mask.png", b"m3"),
                   "d.png": (None, None), "p/e.png": (None, None), "q/e.png": (None, None)}
    assert notes == ["masks/zzz.png: a mask without an image named zzz.*, ignored"]
    assert [i.notes for i in items if i.name.endswith("e.png")] == [
        ["mask masks/e.png fits 2 images named e.*, not used; give the images unique names"]] * 2


def test_traversal_and_absolute_names_ignored_nothing_extracted(tmp_path):
    inner = tmp_path / "inner"
    inner.mkdir()
    path = make_zip(inner / "up.zip", {"../evil.png": IMAGE, "/abs.png": IMAGE, "C:/win.png": IMAGE,
                                       "ok.png": IMAGE, "readme.txt": b"hi", "__MACOSX/._ok.png": b"x"})
    files, notes = read_zip(path)
    assert list(files) == ["ok.png"] and files["ok.png"] == IMAGE
    assert notes == ["../evil.png: a name outside the zip's folder, ignored",
                     "/abs.png: a name outside the zip's folder, ignored",
                     "C:/win.png: a name outside the zip's folder, ignored",
                     "readme.txt: not an image (.png, .jpg, .jpeg, .webp, .bmp, .tif, .tiff, .gif), ignored"]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["inner", "up.zip"]  # read in memory only


def test_zip_bombs_refused(tmp_path):
    bomb = make_zip(tmp_path / "bomb.zip", {"zeros.bmp": bytes(20 * MB)})
    assert bomb.stat().st_size < 100_000
    with pytest.raises(InputError, match=r"zeros.bmp unpacks to more than 10 MB, the most one image may take"):
        read_zip(bomb)
    ratio = make_zip(tmp_path / "ratio.zip", {"zeros.bmp": bytes(5 * MB)})  # under 10 MB, but 1000:1
    with pytest.raises(InputError, match=r"compressed more than 100:1 .*a zip bomb"):
        read_zip(ratio)
    many = make_zip(tmp_path / "many.zip", {f"{i}.bmp": bytes(MB) for i in range(4)}, zipfile.ZIP_STORED)
    with pytest.raises(InputError, match=r"unpack to more than 3 MB, the most one audit takes; split"):
        read_zip(many, Bounds(total=3 * MB))


def test_count_and_upload_size_bounds(tmp_path):
    path = make_zip(tmp_path / "three.zip", {"a.png": IMAGE, "b.png": IMAGE, "c.png": IMAGE, "masks/a.png": IMAGE})
    assert len(read_uploads([path], Bounds(images=3))[0]) == 4  # masks do not count
    with pytest.raises(InputError, match="holds 3 images, more than the 2 one audit takes; split it into batches"):
        read_uploads([path], Bounds(images=2))
    (tmp_path / "d.png").write_bytes(IMAGE)
    with pytest.raises(InputError, match="holds 4 images, more than the 3"):  # counted over every uploaded file
        read_uploads([path, tmp_path / "d.png"], Bounds(images=3))
    with pytest.raises(InputError, match=r"the upload is 0.0\d+ MB, more than the 0.0156 MB one audit takes"):
        read_uploads([path], Bounds(upload=2**14))


def test_corrupt_zip_and_no_image_say_what_to_do(tmp_path):
    (tmp_path / "junk.zip").write_bytes(b"PK\x03\x04 certainly not a zip")
    with pytest.raises(InputError, match="junk.zip is not a readable zip file .*zip the images again"):
        read_zip(tmp_path / "junk.zip")
    good = make_zip(tmp_path / "cut.zip", {"a.png": IMAGE})
    (tmp_path / "cut.zip").write_bytes(good.read_bytes()[:len(IMAGE) // 2])  # truncated: no central directory
    with pytest.raises(InputError, match="cut.zip is not a readable zip file"):
        read_zip(tmp_path / "cut.zip")
    with pytest.raises(InputError, match="holds no image"):
        collect([make_zip(tmp_path / "text.zip", {"a.txt": b"x"})])


def test_rows_are_the_explain_figures_and_bad_files_get_a_note(family, tmp_path):
    other = np.zeros((64, 64), np.uint8)  # square: another aspect ratio than the 64x48 image
    other[10:30, 10:30] = 255
    up = make_zip(tmp_path / "up.zip", {"a.png": IMAGE, "masks/a.png": png(MASK), "b.png": IMAGE,
                                        "masks/b.png": png(other), "broken.png": b"\x89PNG broken"})
    items, notes = collect([up])
    assert notes == [] and [i.name for i in items] == ["a.png", "b.png", "broken.png"]
    rows = run_audit(family, items)
    assert len(rows) == 2 * (len(family.ks) + 1) + 1
    expected = explain_all(family, IMAGE).with_mask(*own_mask(png(MASK), (384, 512))).report()["models"]
    a = [r for r in rows if r[0] == "a.png"]
    assert [r[2] for r in a] == list(expected)  # every k, then the baseline
    for row in a:
        m = dict(zip(COLUMNS, row))
        want = expected[m["model"]]
        assert m["mask"] == "masks/a.png" and m["pxap"] is not None and 0 <= m["pxap"] <= 1
        assert [m[c] for c in ("k", "label", "probability", "l1", "iou", "threshold", "mass", "pxap")] == \
            [want[c] for c in ("k", "label", "probability", "l1", "iou", "threshold", "mass", "pxap")]
    b = [dict(zip(COLUMNS, r)) for r in rows if r[0] == "b.png"]
    assert all(m["mask"] is None and m["iou"] is None and m["l1"] is not None for m in b)
    assert "mask not used: the mask is 64x64 (aspect ratio 1.00) but the image's aspect ratio is 1.33" in b[0]["notes"]
    broken = [r for r in rows if r[0] == "broken.png"]
    assert len(broken) == 1 and broken[0][2] is None and "not an image Pillow can read" in broken[0][-1]
    with pytest.raises(InputError, match="unknown CAM method 'nope'"):
        run_audit(family, items, method="nope")


def test_csv_round_trip(family, tmp_path):
    items, _ = collect([make_zip(tmp_path / "up.zip", {"a.png": IMAGE, "a_mask.png": png(MASK), "z.png": b"x"})])
    rows = run_audit(family, items)
    path = write_csv(rows, tmp_path / "out")
    assert path == tmp_path / "out" / "audit.csv" and [p.name for p in path.parent.iterdir()] == ["audit.csv"]
    with open(path, newline="", encoding="utf-8") as f:
        header, *back = list(csv.reader(f))

    def parse(cell: str, like):
        return None if cell == "" else type(like)(cell)
    assert header == COLUMNS
    assert [[parse(c, v) for c, v in zip(line, row)] for line, row in zip(back, rows)] == rows
    formula = write_csv([["=HYPERLINK(1).png", None, "-x"]], tmp_path)  # a spreadsheet would run it: quoted
    assert formula.read_text().splitlines()[1] == "'=HYPERLINK(1).png,,'-x"


def test_decompression_bomb_is_a_row_note(family, tmp_path):
    bomb = io.BytesIO()
    Image.new("L", (8000, 6000)).save(bomb, "PNG")  # 48 MP of zeros, a few dozen KB
    assert len(bomb.getvalue()) < MB
    items, _ = collect([make_zip(tmp_path / "up.zip", {"big.png": bomb.getvalue(), "a.png": IMAGE})])
    rows = run_audit(family, items)
    big = [r for r in rows if r[0] == "big.png"]
    assert len(big) == 1 and "8000x6000 = 48 MP, more than the 40 MP this app accepts; downscale it" in big[0][-1]
    assert len([r for r in rows if r[0] == "a.png"]) == len(family.ks) + 1  # the others still audited
