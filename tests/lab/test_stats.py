import math

import pytest
from scipy import special, stats as sps

from loopgolf.lab.stats import betainc, mean_std, summarize, t_cdf, verdict, welch_less

NEW = [2.0512, 2.0498, 2.0531]  # per-seed val_loss in nats
REF = [2.0601, 2.0577, 2.0622, 2.0590]


def test_welch_matches_scipy():
    for a, b in [(NEW, REF), (REF, NEW), ([1.0, 1.2, 0.9, 1.4], [1.1, 1.3, 1.0]), ([5, 6], [5.5, 7.5, 6.1])]:
        ours = welch_less(a, b)
        ref = sps.ttest_ind(a, b, equal_var=False, alternative="less")
        assert ours["t"] == pytest.approx(ref.statistic, rel=1e-10)
        assert ours["p"] == pytest.approx(ref.pvalue, rel=1e-8, abs=1e-14)


def test_t_cdf_and_betainc_match_scipy():
    for t, df in [(-3.2, 2.5), (0.0, 4), (1.7, 10.3), (-0.4, 1), (25.0, 3)]:
        assert t_cdf(t, df) == pytest.approx(sps.t.cdf(t, df), rel=1e-9, abs=1e-15)
    for a, b, x in [(0.5, 0.5, 0.3), (2, 3, 0.9), (10, 0.5, 0.99), (1.25, 7, 0.01)]:
        assert betainc(a, b, x) == pytest.approx(special.betainc(a, b, x), rel=1e-10)


def test_summary_and_rules():
    m, s = mean_std([1.0, 2.0, 3.0])
    assert (m, s) == (2.0, 1.0)
    assert "± " in summarize([2.0, 2.1], [1.2, 1.25])["text"]
    v = verdict(NEW, REF)
    assert v["delta_nats"] == pytest.approx(2.05975 - 6.1541 / 3, abs=1e-12)
    assert v["record"] and v["progression"] and "RECORD" in v["text"]
    small = verdict([x - 0.002 for x in REF], REF)  # significant-ish but < 0.005 nats
    assert not small["record"] and small["progression"] == (small["p"] < 0.25)
    worse = verdict(REF, NEW)
    assert not worse["record"] and not worse["progression"] and "not significant" in worse["text"]
    with pytest.raises(ValueError, match="2 values"):
        welch_less([1.0], REF)
    assert math.isclose(verdict(NEW, REF)["p"], sps.ttest_ind(NEW, REF, equal_var=False, alternative="less").pvalue)
