"""Drift statistics for continuous evaluation: does what a served model sees now differ from its baseline?

Three two-sample tests, each returning a `TestResult`:

* `ks_test`: one numeric feature (a confidence score, an image's brightness), Kolmogorov-Smirnov.
* `chi_square_test`: a categorical distribution (predicted classes, formats), chi-square homogeneity.
* `mmd_test`: vectors (a model's embeddings), maximum mean discrepancy with a permutation p-value.

Non-finite values (NaN, inf) are dropped before testing and not counted. With fewer than `MIN_SAMPLE`
values on either side no test is made: the p-value is NaN, `drift` is False and `note` says why.

numpy only at import time: scipy.stats (about 2 s to import) is imported by the tests that use it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

MIN_SAMPLE = 5  # fewer values on either side: no test
SIGNIFICANT_DIGITS = 6  # of the floats in TestResult.to_json
# Permutations whose MMD^2 are computed with one matrix product (bounds memory: pooled size x this).
_PERMUTATION_BLOCK = 128


@dataclass(frozen=True)
class TestResult:
    """One drift test of a current sample against a baseline."""

    test: str  # "ks", "chi_square" or "mmd"
    statistic: float  # NaN when no test was made
    p_value: float  # NaN when no test was made
    baseline_size: int  # finite values (or total count) of the baseline
    current_size: int  # the same of the current sample
    drift: bool  # p_value < alpha
    note: str = ""  # why no test was made

    def to_json(self) -> dict[str, Any]:
        """The fields as a JSON-able dict: floats to 6 significant digits, NaN and inf as None."""
        row = asdict(self)
        for name in ("statistic", "p_value"):
            value = row[name]
            row[name] = float(f"{value:.{SIGNIFICANT_DIGITS}g}") if math.isfinite(value) else None
        return row


def ks_test(baseline: Sequence[float] | np.ndarray, current: Sequence[float] | np.ndarray,
            alpha: float = 0.01) -> TestResult:
    """Two-sample Kolmogorov-Smirnov (scipy.stats.ks_2samp, two-sided) of two 1-D samples."""
    _check_alpha(alpha)
    x, y = _finite_values(baseline, "baseline"), _finite_values(current, "current")
    note = _too_few(len(x), len(y))
    if note:
        return _no_test("ks", len(x), len(y), note)
    from scipy import stats

    result = stats.ks_2samp(x, y, alternative="two-sided")
    return _tested("ks", float(result.statistic), float(result.pvalue), len(x), len(y), alpha)


def chi_square_test(baseline_counts: Mapping[str, int], current_counts: Mapping[str, int],
                    alpha: float = 0.01) -> TestResult:
    """Whether the current class (or category) distribution differs from the baseline's.

    Chi-square test of homogeneity (scipy.stats.chi2_contingency, with its default Yates correction
    when only two categories are left) on the 2 x K table over the union of categories; categories
    with zero in both are dropped. The sizes are the total counts.
    """
    _check_alpha(alpha)
    _check_counts(baseline_counts, "baseline_counts")
    _check_counts(current_counts, "current_counts")
    categories = sorted(c for c in set(baseline_counts) | set(current_counts)
                        if baseline_counts.get(c, 0) or current_counts.get(c, 0))
    table = np.array([[baseline_counts.get(c, 0) for c in categories],
                      [current_counts.get(c, 0) for c in categories]], dtype=np.int64).reshape(2, -1)
    n, m = (int(total) for total in table.sum(axis=1))
    note = _too_few(n, m)
    if not note and len(categories) < 2:
        note = f"one category only: {categories[0]!r}"
    if note:
        return _no_test("chi_square", n, m, note)
    from scipy import stats

    result = stats.chi2_contingency(table)
    return _tested("chi_square", float(result.statistic), float(result.pvalue), n, m, alpha)


def mmd_test(baseline: np.ndarray, current: np.ndarray, alpha: float = 0.01, permutations: int = 500,
             seed: int = 0, max_samples: int = 1000) -> TestResult:
    """Maximum mean discrepancy between two samples of vectors (e.g. a model's embeddings).

    Gaussian kernel whose bandwidth is the median pairwise distance over the pooled sample (1.0 when
    that is zero), unbiased MMD^2 estimate, p-value from a permutation test:
    (1 + #permutations with MMD^2 >= observed) / (1 + permutations). Rows with a non-finite value are
    dropped; each side is then randomly subsampled to at most `max_samples` rows (the sizes reported
    are before subsampling). Deterministic for a seed. Time and memory grow with the square of the
    pooled (subsampled) size.
    """
    _check_alpha(alpha)
    if permutations < 1:
        raise ValueError(f"permutations must be >= 1, got {permutations}")
    if max_samples < MIN_SAMPLE:
        raise ValueError(f"max_samples must be >= {MIN_SAMPLE}, got {max_samples}")
    x, y = _as_rows(baseline, "baseline"), _as_rows(current, "current")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"baseline and current differ in dimension: {x.shape} and {y.shape}")
    x, y = x[np.isfinite(x).all(axis=1)], y[np.isfinite(y).all(axis=1)]
    n_total, m_total = len(x), len(y)
    note = _too_few(n_total, m_total)
    if note:
        return _no_test("mmd", n_total, m_total, note)

    rng = np.random.default_rng(seed)
    if len(x) > max_samples:
        x = x[rng.choice(len(x), max_samples, replace=False)]
    if len(y) > max_samples:
        y = y[rng.choice(len(y), max_samples, replace=False)]
    n, m = len(x), len(y)
    kernel = _gaussian_kernel(np.concatenate([x, y]))

    # With row sums r and total t of the pooled kernel, a split into X (indicator v) and Y needs only
    # sxx = v'Kv: sum(Kxy) = r.v - sxx and sum(Kyy) = t - 2 r.v + sxx. The diagonal (all 1) is excluded.
    row_sums = kernel.sum(axis=1)
    total = row_sums.sum()

    def mmd2(indicators: np.ndarray) -> np.ndarray:
        sxx = np.einsum("ip,ip->p", indicators, kernel @ indicators)
        sx = row_sums @ indicators
        return ((sxx - n) / (n * (n - 1)) + (total - 2 * sx + sxx - m) / (m * (m - 1))
                - 2 * (sx - sxx) / (n * m))

    observed = float(mmd2(np.concatenate([np.ones(n), np.zeros(m)])[:, None])[0])
    exceed = 0
    for start in range(0, permutations, _PERMUTATION_BLOCK):
        block = min(_PERMUTATION_BLOCK, permutations - start)
        indicators = np.zeros((n + m, block))
        for column in range(block):
            indicators[rng.permutation(n + m)[:n], column] = 1.0
        exceed += int(np.count_nonzero(mmd2(indicators) >= observed))
    p_value = (1 + exceed) / (1 + permutations)
    return _tested("mmd", observed, p_value, n_total, m_total, alpha)


def _gaussian_kernel(z: np.ndarray) -> np.ndarray:
    """exp(-|zi - zj|^2 / (2 s^2)), s the median pairwise distance of distinct rows' pairs (1.0 if 0)."""
    squared_norms = np.einsum("ij,ij->i", z, z)
    distances = squared_norms[:, None] + squared_norms[None, :] - 2.0 * (z @ z.T)
    np.maximum(distances, 0.0, out=distances)
    np.fill_diagonal(distances, 0.0)
    median = float(np.median(distances[np.triu_indices(len(z), k=1)]))
    bandwidth_squared = median if median > 0 else 1.0
    distances *= -0.5 / bandwidth_squared
    return np.exp(distances, out=distances)


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def _check_counts(counts: Mapping[str, int], name: str) -> None:
    for category, count in counts.items():
        if not (math.isfinite(count) and count >= 0 and count == int(count)):
            raise ValueError(f"{name}[{category!r}] must be a non-negative integer, got {count!r}")


def _finite_values(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    return array[np.isfinite(array)]


def _as_rows(values: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"{name} must be 1-D or 2-D (n, d), got shape {array.shape}")
    return array


def _too_few(n: int, m: int) -> str:
    short = [f"{size} {side}" for side, size in (("baseline", n), ("current", m)) if size < MIN_SAMPLE]
    return f"too few values: {', '.join(short)} (need >= {MIN_SAMPLE})" if short else ""


def _no_test(test: str, n: int, m: int, note: str) -> TestResult:
    return TestResult(test, math.nan, math.nan, n, m, drift=False, note=note)


def _tested(test: str, statistic: float, p_value: float, n: int, m: int, alpha: float) -> TestResult:
    return TestResult(test, statistic, p_value, n, m, drift=bool(p_value < alpha))
