"""components.monitor.drift: the continuous-evaluation drift tests on seeded samples, TensorFlow-free."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from components.monitor import drift


def normal(seed: int, n: int, shift: float = 0.0, dims: int | None = None) -> np.ndarray:
    size = n if dims is None else (n, dims)
    return np.random.default_rng(seed).normal(loc=shift, size=size)


def test_needs_no_tensorflow_or_scipy_at_import():
    code = "import sys, components.monitor.drift; sys.exit('tensorflow' in sys.modules or 'scipy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_ks_same_distribution():
    result = drift.ks_test(normal(1, 500), normal(2, 500))
    assert result.test == "ks"
    assert result.p_value > 0.01 and not result.drift
    assert (result.baseline_size, result.current_size, result.note) == (500, 500, "")


def test_ks_shifted_half_a_standard_deviation():
    result = drift.ks_test(normal(1, 500), normal(2, 500, shift=0.5))
    assert result.p_value < 1e-6 and result.drift
    assert 0.15 < result.statistic < 0.35


def test_ks_too_few_values():
    result = drift.ks_test(normal(1, 50), [1.0, 2.0, float("nan"), 3.0])
    assert not result.drift and math.isnan(result.p_value) and math.isnan(result.statistic)
    assert result.note == "too few values: 3 current (need >= 5)"
    assert (result.baseline_size, result.current_size) == (50, 3)


def test_ks_drops_non_finite_values():
    baseline = list(normal(1, 100)) + [float("nan"), float("inf"), -float("inf")]
    current = np.concatenate([normal(2, 80), np.full(5, np.nan)])
    result = drift.ks_test(baseline, current)
    assert (result.baseline_size, result.current_size) == (100, 80)
    assert result.p_value == pytest.approx(drift.ks_test(normal(1, 100), normal(2, 80)).p_value)


def test_ks_constant_samples():
    result = drift.ks_test([3.0] * 10, [3.0] * 10)
    assert result.statistic == 0.0 and not result.drift
    assert drift.ks_test([3.0] * 10, [4.0] * 10).drift


@pytest.mark.parametrize("bad", [[[1.0, 2.0]] * 10, 1.0])
def test_ks_needs_one_dimension(bad):
    with pytest.raises(ValueError, match="1-D"):
        drift.ks_test(bad, normal(1, 10))


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 2.0, float("nan")])
def test_alpha_must_be_a_probability(alpha):
    with pytest.raises(ValueError, match="alpha"):
        drift.ks_test(normal(1, 10), normal(2, 10), alpha=alpha)
    with pytest.raises(ValueError, match="alpha"):
        drift.chi_square_test({"a": 10, "b": 10}, {"a": 10, "b": 10}, alpha=alpha)
    with pytest.raises(ValueError, match="alpha"):
        drift.mmd_test(normal(1, 10), normal(2, 10), alpha=alpha)


def test_chi_square_same_proportions():
    result = drift.chi_square_test({"cat": 300, "dog": 200, "fox": 100}, {"cat": 150, "dog": 100, "fox": 50})
    assert result.test == "chi_square"
    assert result.statistic == pytest.approx(0.0) and result.p_value == pytest.approx(1.0)
    assert not result.drift
    assert (result.baseline_size, result.current_size) == (600, 300)


def test_chi_square_different_proportions():
    result = drift.chi_square_test({"cat": 300, "dog": 200, "fox": 100}, {"cat": 50, "dog": 100, "fox": 150})
    assert result.p_value < 1e-6 and result.drift


def test_chi_square_category_only_in_current():
    baseline = {"cat": 100, "dog": 100}
    result = drift.chi_square_test(baseline, {"cat": 90, "dog": 95, "wolf": 40})
    assert result.drift and result.current_size == 225
    # a category counted zero in both is no category: same table, same answer
    same = drift.chi_square_test({**baseline, "wolf": 0, "owl": 0}, {"cat": 90, "dog": 95, "wolf": 40, "owl": 0})
    assert same == result


def test_chi_square_single_category():
    result = drift.chi_square_test({"cat": 100, "dog": 0}, {"cat": 40})
    assert not result.drift and math.isnan(result.p_value)
    assert result.note == "one category only: 'cat'"


def test_chi_square_too_few_and_bad_counts():
    result = drift.chi_square_test({"cat": 2, "dog": 1}, {})
    assert result.note == "too few values: 3 baseline, 0 current (need >= 5)" and not result.drift
    with pytest.raises(ValueError, match="non-negative integer"):
        drift.chi_square_test({"cat": -1, "dog": 10}, {"cat": 10, "dog": 10})
    with pytest.raises(ValueError, match="non-negative integer"):
        drift.chi_square_test({"cat": 10, "dog": 10}, {"cat": float("nan"), "dog": 10})


def test_mmd_same_distribution():
    result = drift.mmd_test(normal(1, 200, dims=8), normal(2, 200, dims=8), permutations=200)
    assert result.test == "mmd"
    assert result.p_value > 0.01 and not result.drift
    assert (result.baseline_size, result.current_size) == (200, 200)


def test_mmd_mean_shift():
    permutations = 200
    result = drift.mmd_test(normal(1, 200, dims=8), normal(2, 200, shift=0.5, dims=8), permutations=permutations)
    assert result.p_value <= 2 / (1 + permutations) and result.drift
    assert result.statistic > 0


def test_mmd_is_deterministic_for_a_seed():
    x, y = normal(1, 100, dims=4), normal(2, 100, shift=0.1, dims=4)
    first = drift.mmd_test(x, y, permutations=100, seed=3)
    assert drift.mmd_test(x, y, permutations=100, seed=3) == first
    # and the seed is the permutation test's only randomness when nothing is subsampled
    assert drift.mmd_test(x, y, permutations=100, seed=4).statistic == first.statistic


def test_mmd_subsamples_to_max_samples():
    result = drift.mmd_test(normal(1, 3000, dims=4), normal(2, 2500, shift=1.0, dims=4), permutations=200,
                            max_samples=150)
    assert result.drift and (result.baseline_size, result.current_size) == (3000, 2500)


def test_mmd_dimension_mismatch():
    with pytest.raises(ValueError, match=r"\(10, 3\) and \(10, 4\)"):
        drift.mmd_test(normal(1, 10, dims=3), normal(2, 10, dims=4))


def test_mmd_bad_arguments():
    with pytest.raises(ValueError, match="permutations"):
        drift.mmd_test(normal(1, 10), normal(2, 10), permutations=0)
    with pytest.raises(ValueError, match="1-D or 2-D"):
        drift.mmd_test(np.zeros((10, 2, 2)), np.zeros((10, 2, 2)))


def test_mmd_one_dimensional_and_non_finite_rows():
    x = normal(1, 60)
    y = normal(2, 60, dims=1)
    y[:7, 0] = [np.nan, np.inf, np.nan, np.nan, -np.inf, np.nan, np.nan]
    result = drift.mmd_test(list(x), y, permutations=50)
    assert (result.baseline_size, result.current_size) == (60, 53)
    assert result == drift.mmd_test(x[:, None], y[7:], permutations=50)
    too_few = drift.mmd_test(x, y[:10], permutations=50)
    assert too_few.note == "too few values: 3 current (need >= 5)" and not too_few.drift


def test_mmd_constant_samples():
    same = drift.mmd_test(np.ones((20, 3)), np.ones((30, 3)), permutations=50)
    assert same.statistic == pytest.approx(0.0) and same.p_value == 1.0 and not same.drift
    apart = drift.mmd_test(np.zeros((20, 3)), np.ones((30, 3)), permutations=200)
    assert apart.drift and apart.p_value == 1 / 201


def test_mmd_false_positive_rate():
    flagged = sum(drift.mmd_test(normal(2 * i, 100, dims=4), normal(2 * i + 1, 100, dims=4), alpha=0.05,
                                 permutations=100, seed=i).drift
                  for i in range(20))
    assert flagged <= 4


def test_to_json():
    tested = drift.ks_test(normal(1, 50), normal(2, 50))
    row = json.loads(json.dumps(tested.to_json(), allow_nan=False))
    assert set(row) == {"test", "statistic", "p_value", "baseline_size", "current_size", "drift", "note"}
    assert row["p_value"] == pytest.approx(tested.p_value, rel=1e-5)
    untested = json.loads(json.dumps(drift.ks_test([1.0], [2.0]).to_json(), allow_nan=False))
    assert untested["p_value"] is None and untested["statistic"] is None and untested["drift"] is False
