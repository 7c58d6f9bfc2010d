"""msdn_core.froc: hits, FROC and CPM against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from msdn_core.froc import FP_RATES, ScanMatch, froc, match_candidates


def scan_volumes():
    one = np.zeros((10, 10, 10), np.int32)
    one[1:4, 1:4, 1:4] = 1
    one[6:9, 6:9, 6:9] = 2
    two = np.zeros((10, 10, 10), np.int32)
    two[4:6, 4:6, 4:6] = 1
    return one, two, np.zeros((10, 10, 10), np.int32)


def matched(include_two=True):
    one, two, three = scan_volumes()
    m1 = match_candidates(
        [
            (0.9, (2, 2, 2)),  # nodule 1
            (0.8, (5, 5, 5)),  # FP
            (0.7, (3.4, 1.2, 2.6)),  # nodule 1 again (rounds to (3, 1, 3)): ignored
            (0.6, (7, 8, 6)),  # nodule 2
            (0.3, (0, 9, 0)),  # FP
        ],
        one,
    )
    m2 = match_candidates([(0.95, (0, 0, 0)), (0.5, (4.6, 4.4, 5.0))], two)  # FP, nodule 1 (rounds to 5, 4, 5)
    m3 = match_candidates([(0.4, (1, 1, 1)), (0.99, (-1, 0, 0))], three)  # FP; outside the volume: FP
    return [m1, m2, m3]


def test_matching_counts_each_nodule_once():
    m1, m2, m3 = matched()
    assert m1.nodules == [1, 2] and m1.hits == {1: 0.9, 2: 0.6} and m1.false_positives == [0.8, 0.3]
    assert m2.hits == {1: 0.5} and m2.false_positives == [0.95]
    assert m3.nodules == [] and m3.false_positives == [0.4, 0.99]


def test_froc_curve_and_cpm_by_hand():
    m1, m2, m3 = matched()
    m3.false_positives = [0.4]  # drop the outside-the-volume candidate for this count
    curve = froc([m1, m2, m3])
    # thresholds 0.95 (FP), 0.9 (TP), 0.8 (FP), 0.6 (TP), 0.5 (TP), 0.4 (FP), 0.3 (FP); 3 nodules, 3 scans
    np.testing.assert_allclose(curve.thresholds[1:], [0.95, 0.9, 0.8, 0.6, 0.5, 0.4, 0.3])
    np.testing.assert_allclose(curve.fp_per_scan, np.array([0, 1, 1, 2, 2, 2, 3, 4]) / 3)
    np.testing.assert_allclose(curve.sensitivity, np.array([0, 0, 1, 1, 2, 3, 3, 3]) / 3)
    expected = {0.125: 0.0, 0.25: 0.0, 0.5: 1 / 3, 1.0: 1.0, 2.0: 1.0, 4.0: 1.0, 8.0: 1.0}
    for rate, sens in expected.items():
        assert curve.sensitivity_at(rate) == pytest.approx(sens)
    assert curve.cpm() == pytest.approx((1 / 3 + 4) / 7)  # 13/21
    table = curve.table()
    assert list(table) == ["0.125", "0.25", "0.5", "1", "2", "4", "8", "cpm"]
    assert table["cpm"] == pytest.approx(13 / 21)


def test_a_subset_ignores_the_other_nodules():
    m1, m2, m3 = matched()
    m3.false_positives = [0.4]
    curve = froc([m1, m2, m3], include=[{1}, set(), set()])
    # one nodule (0.9); FPs 0.95, 0.8, 0.4, 0.3; the hits on the left-out nodules (0.6, 0.5) count neither way
    assert curve.num_nodules == 1
    np.testing.assert_allclose(curve.fp_per_scan, np.array([0, 1, 1, 2, 3, 4]) / 3)
    np.testing.assert_allclose(curve.sensitivity, [0, 0, 1, 1, 1, 1])
    assert curve.cpm() == pytest.approx(5 / 7)


def test_ties_enter_together_and_no_candidates():
    tie = ScanMatch(nodules=[1], hits={1: 0.5}, false_positives=[0.5, 0.5])
    curve = froc([tie, ScanMatch()])
    # at t = 0.5: sensitivity 1 with 2 FP over 2 scans = 1 FP per scan
    assert curve.sensitivity_at(0.5) == 0.0 and curve.sensitivity_at(1.0) == 1.0
    empty = froc([ScanMatch(nodules=[1]), ScanMatch()])
    assert empty.cpm() == 0.0 and empty.num_nodules == 1
    assert FP_RATES == (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
    with pytest.raises(ValueError):
        froc([])
