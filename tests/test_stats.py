import math

import numpy as np
import pytest

from topgap.eval.stats import mean_std, paired_bootstrap, verdict


def test_identical_sides_give_zero_and_no_verdict():
    a = np.array([1, 0, 1, 1, 0, 1.0])
    ci = paired_bootstrap(a, a, samples=500)
    assert (ci["diff"], ci["low"], ci["high"]) == (0.0, 0.0, 0.0)
    assert verdict(ci) == "no clear difference"


def test_a_constant_gap_is_exact_and_the_direction_follows_the_metric():
    a, b = np.full(20, 0.3), np.full(20, 0.1)
    ci = paired_bootstrap(a, b, samples=300)
    assert ci["diff"] == pytest.approx(0.2) and ci["low"] == pytest.approx(0.2) and ci["high"] == pytest.approx(0.2)
    assert verdict(ci, higher_is_better=True) == "better" and verdict(ci, higher_is_better=False) == "worse"


def test_interval_covers_the_difference_and_shrinks_with_more_images():
    rng = np.random.default_rng(0)
    small = paired_bootstrap(rng.random(20), rng.random(20), samples=1000)
    big = paired_bootstrap(rng.random(2000), rng.random(2000), samples=1000)
    assert small["low"] <= small["diff"] <= small["high"]
    assert big["high"] - big["low"] < (small["high"] - small["low"]) / 4


def test_custom_statistic_and_bad_input():
    a, b = np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[0.0, 0.0], [0.0, 0.0]])
    ci = paired_bootstrap(a, b, statistic=lambda x: float(x.sum()), samples=50)
    assert ci["diff"] == 10.0
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap([1, 2], [1])
    assert paired_bootstrap([], [])["diff"] is None and verdict(paired_bootstrap([], [])) == "n/a"
    assert verdict(paired_bootstrap([math.nan], [1.0])) == "n/a"


def test_mean_std():
    assert mean_std([1.0, 3.0, None]) == {"mean": 2.0, "std": 1.0, "n": 2}


def test_direction_of_each_metric():
    from topgap.eval.stats import higher_is_better

    assert higher_is_better("accuracy") and higher_is_better("iou_gradcam") and higher_is_better("test_shifted_accuracy")
    assert higher_is_better("mixed_rand_accuracy") and higher_is_better("only_fg_accuracy")
    # without the object, a correct answer can only come from the background: less is better
    for m in ("l1", "l1_gradcam", "bg_gap", "only_bg_accuracy", "only_bg_t_accuracy", "no_fg_accuracy"):
        assert not higher_is_better(m), m


def test_majority_is_the_most_predicted_class_and_its_share():
    from topgap.eval.stats import majority

    assert majority([2, 0, 2, 1]) == (2, 0.5)
    assert majority([1, 0]) == (0, 0.5)  # a tie goes to the lower class
    assert majority([3, 3, 3]) == (3, 1.0)
