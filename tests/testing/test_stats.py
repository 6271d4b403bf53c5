"""chi2_sf against the published 5% and 1% critical values and two closed forms."""
import math

import pytest

from refgen.testing.stats import chi2_sf


@pytest.mark.parametrize("df, x05, x01", [(1, 3.841459, 6.634897), (2, 5.991465, 9.210340),
                                          (4, 9.487729, 13.276704), (5, 11.070498, 15.086272),
                                          (20, 31.410433, 37.566235), (63, 82.528727, 92.010024)])
def test_critical_values(df, x05, x01):
    assert chi2_sf(x05, df) == pytest.approx(0.05, rel=1e-5)
    assert chi2_sf(x01, df) == pytest.approx(0.01, rel=1e-5)


def test_closed_forms_and_edges():
    for x in (0.3, 2.0, 7.5):
        assert chi2_sf(x, 2) == pytest.approx(math.exp(-x / 2), rel=1e-12)       # exponential
        assert chi2_sf(x, 1) == pytest.approx(math.erfc(math.sqrt(x / 2)), rel=1e-12)
    assert chi2_sf(0.0, 3) == 1.0 and chi2_sf(-1.0, 3) == 1.0
    with pytest.raises(ValueError, match="df must be a positive integer"):
        chi2_sf(1.0, 0)
