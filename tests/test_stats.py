"""The statistics against distributions whose truth is known: intervals cover the true mean at
about their stated rate, and the test rejects a true null at about its stated rate."""

from __future__ import annotations

import numpy as np
import pytest

from workloads.analysis.stats import compare_sentence, holm, mean_ci, welch

DRAWS = 2000


@pytest.mark.parametrize("n", [3, 5, 10])
def test_t_interval_covers_the_true_mean_at_95_percent_for_normal_data(n: int) -> None:
    rng = np.random.default_rng(1234 + n)
    mu, sigma = 2.5, 1.7
    hits = 0
    for _ in range(DRAWS):
        e = mean_ci(rng.normal(mu, sigma, n).tolist())
        assert e.lo is not None and e.hi is not None
        hits += e.lo <= mu <= e.hi
    # binomial sd at p=0.95, 2000 draws is 0.49 %; 3 sd either side
    assert 0.935 <= hits / DRAWS <= 0.965, hits / DRAWS


def test_t_interval_on_skewed_data_with_ten_repetitions_stays_close_to_95() -> None:
    rng = np.random.default_rng(7)
    hits = sum(lo <= 1.0 <= hi for lo, hi in ((e.lo, e.hi) for e in (mean_ci(rng.exponential(1.0, 10).tolist()) for _ in range(DRAWS)))
               if lo is not None and hi is not None)
    assert 0.88 <= hits / DRAWS <= 0.965, hits / DRAWS  # t is known to undercover a little on exponential data at n=10


def test_welch_difference_interval_covers_the_true_difference_with_unequal_variances() -> None:
    rng = np.random.default_rng(99)
    hits = rejections = 0
    for _ in range(DRAWS):
        a, b = rng.normal(10.0, 1.0, 5), rng.normal(8.0, 3.0, 7)
        d = welch(a.tolist(), b.tolist())
        assert d.lo is not None and d.hi is not None and d.p is not None
        hits += d.lo <= 2.0 <= d.hi
        rejections += d.p < 0.05
    assert 0.935 <= hits / DRAWS <= 0.965, hits / DRAWS
    assert rejections / DRAWS > 0.2  # power is about 0.28 here (difference 2, standard error 1.2)


def test_welch_rejects_a_true_null_at_about_five_percent() -> None:
    rng = np.random.default_rng(5)
    rejections = sum(welch(rng.normal(0, 1, 6).tolist(), rng.normal(0, 2, 4).tolist()).p < 0.05 for _ in range(DRAWS))  # type: ignore[operator]
    assert 0.035 <= rejections / DRAWS <= 0.065, rejections / DRAWS


def test_known_small_case_matches_textbook_numbers() -> None:
    e = mean_ci([1.0, 2.0, 3.0])  # mean 2, sd 1, t(0.975, 2) = 4.3027
    assert e.mean == pytest.approx(2.0)
    assert e.hi == pytest.approx(2.0 + 4.302653 / np.sqrt(3), rel=1e-5)
    assert mean_ci([0.0, 0.0, 0.1], clip_low=0.0).lo == 0.0  # a loss interval never goes below zero
    assert mean_ci([4.2]).lo is None and mean_ci([4.2]).n == 1


def test_sentences_say_direction_interval_test_and_n() -> None:
    s = compare_sentence("centralized", "distributed", "loss", " pp", [5.0, 5.2, 4.9], [1.0, 1.1, 0.8])
    assert s.startswith("centralized had 4.07 pp more loss than distributed")
    assert "Welch t-test p < 0.001" in s and "a significant difference" in s and "n = 3 and 3" in s
    same = compare_sentence("a", "b", "loss", " %", [0.0, 0.0], [0.0, 0.0, 0.0])
    from scipy import stats as sst

    a, b = [5.0, 5.2, 4.9], [1.0, 1.1, 0.8]
    assert welch(a, b).p == pytest.approx(sst.ttest_ind(a, b, equal_var=False).pvalue)
    assert "same loss in every run" in same and "n = 2 and 3" in same
    tie = compare_sentence("a", "b", "throughput", " msg/s", [1.0, 2.0, 3.0], [3.0, 1.0, 2.0])
    assert tie.startswith("a and b had the same mean throughput, 2.00 msg/s (95 % CI of the difference -")
    few = compare_sentence("a", "b", "loss", " %", [1.0], [0.5, 0.6])
    assert "too few runs" in few


def test_holm_adjusts_a_family_step_down_and_keeps_missing_tests_out() -> None:
    # five tests, one missing: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1, made monotone
    assert holm([0.01, 0.04, None, 0.03, 0.005]) == pytest.approx([0.03, 0.06, None, 0.06, 0.02])  # type: ignore[arg-type]
    assert holm([0.5, 0.9]) == [1.0, 1.0] and holm([]) == [] and holm([None]) == [None]


def test_holm_controls_the_familywise_error_where_single_tests_do_not() -> None:
    # ten true null hypotheses, uniform p-values: at least one p < 0.05 in about 40 % of the
    # families; after Holm, in about 5 % at most
    rng = np.random.default_rng(3)
    fams = rng.uniform(size=(4000, 10))
    raw = float(np.mean((fams < 0.05).any(axis=1)))
    adjusted = float(np.mean([min(p for p in holm(list(f)) if p is not None) < 0.05 for f in fams]))
    assert raw > 0.35 and adjusted <= 0.06
