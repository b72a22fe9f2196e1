"""Per-image ROAD curves (topgap.explorer.faith) go through the evaluation's road_scores, never a copy."""
import numpy as np
import pytest

import topgap.explorer.faith as faith
from appfamily import KS, make_family
from topgap.eval.faithfulness import ROAD_PERCENTILES, road_scores
from topgap.explorer.explain import Family, explain_all


@pytest.fixture(scope="module")
def fam_result(tmp_path_factory):
    fam = Family(make_family(tmp_path_factory.mktemp("models"), "fam"))
    image = (np.random.default_rng(0).random((64, 200, 3)) * 255).astype(np.uint8)  # a panorama: letterboxed
    return fam, explain_all(fam, image)


def test_input_map_puts_the_picture_in_its_box(fam_result):
    _, result = fam_result
    y0, y1, x0, x1 = result.box
    assert (y0, x0) != (0, 0)  # letterboxed
    m = faith.input_map(result.topgap[0], result)
    assert m.shape == tuple(result.x01.shape[-2:]) and (m[:y0] == 0).all() and (m[y1:] == 0).all()
    assert (m[y0:y1, x0:x1] == result.topgap[0].cam_input).all()


def test_road_curves_are_the_evaluations_scores(fam_result, monkeypatch):
    fam, result = fam_result
    calls = []
    monkeypatch.setattr(faith, "road_scores", lambda *a, **k: calls.append(k["percentiles"]) or road_scores(*a, **k))
    curves = faith.road_curves(fam, result)
    assert set(curves) == {f"k{k}" for k in KS} | {"baseline"}
    assert calls == [(p,) for p in ROAD_PERCENTILES] * (len(KS) + 1)
    for name, c in curves.items():
        assert c["percentiles"] == list(ROAD_PERCENTILES) and len(c["scores"]) == len(ROAD_PERCENTILES)
        m = next(x for x in result.topgap + [result.baseline] if x.name == name)
        whole = road_scores(fam.model01(name), result.x01, faith.input_map(m, result)[None],
                            [fam.class_names.index(m.label)])
        assert c["road"] == pytest.approx(float(whole[0]), abs=1e-6)  # mean over p = the evaluation's ROAD
