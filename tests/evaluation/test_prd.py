"""PRD (Sajjadi et al. 2018): curve of known histograms, F-scores, k-means, and the mode-coverage
behaviour the metric exists to show."""

import numpy as np
import pytest

from evaluation.prd import compute_prd, equal_size, f_beta, kmeans, prd_curve


def modes(rng: np.random.Generator, centers: np.ndarray, per_mode: int) -> np.ndarray:
    """per_mode points around each center, spread 1 against centers ~50 apart."""
    return np.concatenate([c + rng.standard_normal((per_mode, centers.shape[1])) for c in centers])


@pytest.fixture
def centers() -> np.ndarray:
    return 50 * np.random.default_rng(0).standard_normal((4, 16))


def test_prd_curve_of_known_histograms():
    """P = [1, 0] against Q = [1/2, 1/2]: alpha(lambda) = min(lambda / 2, 1), so precision reaches 1
    for steep slopes and recall alpha / lambda tends to 1/2 for flat ones (the mass of Q that P covers).
    Tolerance 1e-9: tan(1e-10) scales the ends by at most 1e-10 relative."""
    precision, recall = prd_curve(np.array([1.0, 0.0]), np.array([0.5, 0.5]), num_angles=1001)
    assert precision.shape == recall.shape == (1001,)
    assert precision[-1] == pytest.approx(1, abs=1e-9) and recall[-1] == pytest.approx(0, abs=1e-9)
    assert recall[0] == pytest.approx(0.5, abs=1e-9) and precision[0] == pytest.approx(0, abs=1e-9)
    assert np.all(np.diff(precision) >= 0) and np.all(np.diff(recall) <= 0)


def test_f_beta_of_single_points():
    """F_b = (1 + b^2) P R / (b^2 P + R): equal P and R give that value for every b; P = 1, R = 1/2
    gives F_8 = 65/129 (near R) and F_1/8 = 65/66 (near P). Tolerance 1e-9 (the 1e-10 guard)."""
    assert f_beta(np.array([0.7]), np.array([0.7])) == pytest.approx((0.7, 0.7), abs=1e-9)
    assert f_beta(np.array([1.0]), np.array([0.5])) == pytest.approx((65 / 129, 65 / 66), abs=1e-9)
    with pytest.raises(ValueError, match="beta must be positive"):
        f_beta(np.array([1.0]), np.array([1.0]), beta=0)


def test_kmeans_recovers_well_separated_clusters(centers):
    rng = np.random.default_rng(1)
    points = modes(rng, centers, 30)
    labels = kmeans(points, 4, rng)
    truth = np.repeat(np.arange(4), 30)
    # the same partition up to renaming: each true cluster maps to one label and back
    assert len({(t, label) for t, label in zip(truth, labels, strict=True)}) == 4
    with pytest.raises(ValueError, match="at least 10 points"):
        kmeans(points[:5], 10, rng)


def test_identical_sets_have_f_scores_of_one(centers):
    """Equal histograms put precision = recall = 1 at slope 1 (the middle angle). Tolerance 1e-6:
    the middle slope is tan(pi/4) up to rounding, times the 1e-10 guard."""
    features = modes(np.random.default_rng(2), centers, 50)
    f8, f1_8 = f_beta(*compute_prd(features, features.copy(), num_runs=3))
    assert f8 == pytest.approx(1, abs=1e-6) and f1_8 == pytest.approx(1, abs=1e-6)


def test_covering_half_the_modes_gives_low_recall_and_high_precision(centers):
    """Generated images from 2 of the reference's 4 modes: recall tops out at 1/2 and precision at 1,
    so F_8 ~ 65/129 and F_1/8 ~ 65/66 (see test_f_beta_of_single_points); swapping the roles swaps
    them. Bounds leave room for clusters that cut a mode unevenly."""
    rng = np.random.default_rng(3)
    reference = modes(rng, centers, 100)
    generated = modes(rng, centers[:2], 200)
    f8, f1_8 = f_beta(*compute_prd(generated, reference, num_runs=3))
    assert f8 < 0.6 and f1_8 > 0.9
    f8_swapped, f1_8_swapped = f_beta(*compute_prd(reference, generated, num_runs=3))
    assert f8_swapped > 0.9 and f1_8_swapped < 0.6


def test_prd_repeats_exactly_with_the_same_seed(centers):
    rng = np.random.default_rng(4)
    a, b = modes(rng, centers, 40), modes(rng, centers[::-1] + 3, 40)
    first = compute_prd(a, b, num_clusters=8, num_runs=2, seed=7)
    again = compute_prd(a, b, num_clusters=8, num_runs=2, seed=7)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])


def test_prd_refuses_unequal_sample_counts():
    with pytest.raises(ValueError, match="equal sample counts"):
        compute_prd(np.zeros((10, 3)), np.zeros((12, 3)))


def test_equal_size_cuts_the_larger_sample_by_a_seeded_draw():
    a, b = np.arange(10)[:, None], np.arange(25)[:, None]
    cut_a, cut_b = equal_size(a, b, seed=1)
    assert cut_a is a and len(cut_b) == 10
    assert set(cut_b[:, 0]) <= set(b[:, 0]) and len(set(cut_b[:, 0])) == 10
    np.testing.assert_array_equal(equal_size(a, b, seed=1)[1], cut_b)
