"""The mode-collapse protocol of VEEGAN and PacGAN (min_share=0) beside refgen's stricter
default, on samples whose answer is known by construction."""
import numpy as np

from refgen.data import toy2d
from refgen.metrics import mode_stats


def _samples(counts, centres, std, seed=0):
    r = np.random.default_rng(seed)
    return np.concatenate([c + 0.5 * std * r.standard_normal((k, 2)) for c, k in zip(centres, counts)])


def test_published_rule_counts_a_mode_with_one_high_quality_sample():
    centres, std = toy2d.modes("grid25")
    counts = [104] * 23 + [1, 0]                  # mode 23 holds one sample, mode 24 none
    x = _samples(counts, centres, std)
    far = np.array([[3.0, 3.0], [-1.0, 0.9]])     # low quality: far from every mode
    x = np.concatenate([x, far])
    pub = mode_stats(x, centres, std, min_share=0)
    assert pub["modes_covered"] == 24             # the lone sample counts, the empty mode not
    assert pub["hq_fraction"] == (len(x) - 2) / len(x)
    assert mode_stats(x, centres, std)["modes_covered"] == 23   # the strict rule does not


def test_a_sample_outside_three_std_is_not_high_quality():
    centres, std = toy2d.modes("ring8")
    x = np.array([centres[0] + [2.9 * std, 0.0], centres[1] + [0.0, 3.1 * std]])
    out = mode_stats(x, centres, std, min_share=0)
    assert out == {"modes_covered": 1, "hq_fraction": 0.5}


def test_true_samples_cover_every_mode():
    for name, k in (("ring8", 8), ("grid25", 25)):
        centres, std = toy2d.modes(name)
        x = toy2d.sample(name, 2500, 0)
        out = mode_stats(x, centres, std, min_share=0)
        assert out["modes_covered"] == k and out["hq_fraction"] > 0.98   # 1 - exp(-4.5) = 0.989
