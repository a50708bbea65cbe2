"""refsim.validation.compare: NaN as NaN, zeros by sign, known differences, ULP histogram."""

from __future__ import annotations

import numpy as np
import pytest

from refsim.validation.report import compare, ulp_distance


def test_nan_payloads_equal_and_zero_signs_differ():
    quiet = np.array([np.nan], np.float32)
    other = np.array([0x7F800001], np.uint32).view(np.float32)  # a signalling-NaN payload
    report = compare(other, quiet)
    assert report.ok and report.total == 1
    report = compare(np.array([0.0, 1.0]), np.array([-0.0, 1.0]), np.array([-0.25, 1.0]))
    assert not report.ok and report.mismatched == 1
    assert report.histogram["zero sign"] == 1
    text = str(report)
    assert "0x8000000000000000" in text and "s=1" in text and "e=0x0" in text


def test_first_mismatches_and_fields():
    x = np.array([1.0625, 3.0, 5.0], np.float32)
    expected = np.array([1.0, 3.0, 5.0], np.float32)
    actual = np.array([1.125, 3.0, 4.0], np.float32)
    report = compare(actual, expected, x, fmt="e4m3fn", limit=1)
    assert report.mismatched == 2 and len(report.first) == 1
    first = report.first[0]
    assert first.index == 0
    assert first.input.startswith("0x3f880000") and "m=0x80000" in first.input
    assert first.expected.startswith("0x3f800000") and first.actual.startswith("0x3f900000")
    # 1.0 -> 1.125 is one e4m3 step; 5.0 -> 4.0 is two (4.5 lies between)
    assert report.histogram["1"] == 1 and report.histogram["2"] == 1


def test_known_mask_moves_mismatches_out_of_failures():
    expected = np.array([np.nan, 1.0, 2.0])
    actual = np.array([448.0, 1.0, 3.0])
    report = compare(actual, expected, known=np.array([True, False, False]),
                     known_reason="saturates")
    assert report.mismatched == 1 and report.known == 1 and report.status == "FAIL"
    report = compare(actual[:2], expected[:2], known=np.array([True, False]),
                     known_reason="saturates")
    assert report.ok and report.status == "known" and "saturates" in str(report)
    assert report.histogram["nan"] == 1


def test_callables_and_errors():
    x = np.linspace(-4, 4, 17)
    report = compare(lambda v: v * 1.0, lambda v: v + 0.0, x)
    assert report.ok and report.total == 17
    with pytest.raises(ValueError, match="inputs is required"):
        compare(lambda v: v, x)
    with pytest.raises(ValueError, match="one dtype and shape"):
        compare(x.astype(np.float32), x)


def test_ulp_distance_in_dtype_steps_crosses_zero():
    e = np.array([np.float32(1e-45), 1.0, np.nan], np.float32)
    a = np.array([-np.float32(1e-45), np.nextafter(np.float32(1), np.float32(2)), 1.0],
                 np.float32)
    assert list(ulp_distance(e, a)) == [2, 1, -1]


def test_package_exports_compare():
    import refsim.validation

    assert refsim.validation.compare is compare
    assert refsim.validation.compare(np.zeros(2), np.zeros(2)).ok
