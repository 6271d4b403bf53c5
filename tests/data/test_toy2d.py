"""toy2d: samplers, exact densities (normalisation on a grid) and entropies (MC vs grid)."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from refgen.data import toy2d

# (half-width of the integration square, grid spacing): fine enough for each density's scale
GRIDS = {"8gaussians": (6.0, 0.05), "grid25": (4.5, 0.01), "checkerboard": (4.0, 0.05),
         "rings": (4.0, 0.02), "ring8": (1.1, 0.002)}


def midpoint_grid(half, h):
    """Cell centres (m*m, 2) of a grid over [-half, half]^2 and the cell area."""
    c = np.arange(-half + h / 2, half, h)
    gx, gy = np.meshgrid(c, c)
    return np.stack([gx.ravel(), gy.ravel()], axis=1), h * h


def test_names_and_densities():
    assert set(toy2d.names()) >= {"moons", "circles", "8gaussians", "checkerboard", "swissroll",
                                  "pinwheel", "2spirals", "rings", "grid25", "ring8"}
    assert set(toy2d.DENSITIES) == {"8gaussians", "checkerboard", "rings", "grid25", "ring8"}
    assert set(toy2d.DENSITIES) <= set(toy2d.names())


@pytest.mark.parametrize("name", toy2d.names())
def test_sample_shape_scale_and_determinism(name):
    a = toy2d.sample(name, 2000, np.random.default_rng(7))
    b = toy2d.sample(name, 2000, np.random.default_rng(7))
    c = toy2d.sample(name, 2000, np.random.default_rng(8))
    assert a.shape == (2000, 2) and a.dtype == np.float64
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.isfinite(a).all()
    edge = 4.0 + (4 * 0.05 if name == "grid25" else 0.0)  # grid25's outer modes sit at +-4
    assert np.mean(np.abs(a) <= edge) > 0.99  # "the usual scale"
    assert a.std(0).min() > 0.3  # not collapsed


@given(n=st.integers(0, 40), seed=st.integers(0, 2**32 - 1), name=st.sampled_from(toy2d.names()))
def test_sample_any_size(n, seed, name):
    x = toy2d.sample(name, n, seed)
    assert x.shape == (n, 2)


@pytest.mark.parametrize("name", toy2d.DENSITIES)
def test_log_prob_normalised_on_grid(name):
    pts, area = midpoint_grid(*GRIDS[name])
    lp = toy2d.log_prob(name, pts)
    assert lp.shape == (len(pts),) and lp.dtype == np.float64
    assert abs(np.exp(lp).sum() * area - 1.0) < 1e-3


@pytest.mark.parametrize("name", toy2d.DENSITIES)
def test_samples_have_finite_log_prob(name):
    x = toy2d.sample(name, 5000, np.random.default_rng(0))
    lp = toy2d.log_prob(name, x.astype(np.float32))  # float32 input is accepted
    assert np.isfinite(lp).all()


@pytest.mark.parametrize("name", toy2d.DENSITIES)
def test_entropy_matches_grid_integration(name):
    h, se = toy2d.entropy(name)
    pts, area = midpoint_grid(*GRIDS[name])
    lp = toy2d.log_prob(name, pts)
    p = np.exp(lp)
    h_grid = -np.sum(p * np.where(p > 0, lp, 0.0)) * area
    assert se >= 0.0 and se < 2e-3
    assert abs(h - h_grid) < 5 * se + 1e-6, (h, se, h_grid)
    assert toy2d.entropy(name) == (h, se)  # cached, same value


def test_checkerboard_exact():
    assert toy2d.entropy("checkerboard") == (math.log(32.0), 0.0)
    pts = np.array([[-3.0, -3.0], [-1.0, -3.0], [1.0, 1.0], [3.0, -1.0], [5.0, 0.0]])
    expected = np.array([-math.log(32), -np.inf, -math.log(32), -math.log(32), -np.inf])
    np.testing.assert_array_equal(toy2d.log_prob("checkerboard", pts), expected)


def test_gaussian_mixture_peak_value():
    centres, std = toy2d.modes("8gaussians")
    # at a centre the other components are > 6 std away: p ~ (1/8) N(0; 0, std^2 I)
    lp = toy2d.log_prob("8gaussians", centres[:1])
    assert lp[0] == pytest.approx(-math.log(8) - math.log(2 * math.pi * std**2), abs=1e-6)


def test_rings_radial_marginal():
    # integrating p(x) over each annulus with the polar Jacobian gives the ring weights
    r = np.linspace(1e-4, 4.0, 40001)
    dr = r[1] - r[0]
    pts = np.stack([r, np.zeros_like(r)], axis=1)
    p_r = np.exp(toy2d.log_prob("rings", pts)) * 2 * np.pi * r  # density of |x|
    mass = [p_r[(r > a) & (r < b)].sum() * dr for a, b in [(0, 1.5), (1.5, 2.5), (2.5, 4.0)]]
    np.testing.assert_allclose(mass, [1 / 6, 2 / 6, 3 / 6], atol=1e-4)


def test_modes():
    c8, s8 = toy2d.modes("8gaussians")
    assert c8.shape == (8, 2) and s8 > 0
    np.testing.assert_allclose(np.linalg.norm(c8, axis=1), 2 * math.sqrt(2))
    c25, s25 = toy2d.modes("grid25")
    assert c25.shape == (25, 2) and s25 > 0
    assert set(np.round(c25.ravel(), 6)) == {-4.0, -2.0, 0.0, 2.0, 4.0} and s25 == 0.05
    x = toy2d.sample("grid25", 1000, 0)
    nearest = np.linalg.norm(x[:, None] - c25[None], axis=-1).min(1)
    assert np.mean(nearest < 3 * s25 * math.sqrt(2)) > 0.95
    c8r, s8r = toy2d.modes("ring8")  # PacGAN's 2D-ring: unit circle, std 0.01
    np.testing.assert_allclose(np.linalg.norm(c8r, axis=1), 1.0)
    np.testing.assert_allclose(np.arctan2(c8r[:, 1], c8r[:, 0]) % (2 * np.pi),
                               2 * np.pi * np.arange(8) / 8, atol=1e-12)
    assert s8r == 0.01


def test_unknown_names():
    with pytest.raises(ValueError, match="accepted"):
        toy2d.sample("spiral", 10, 0)
    with pytest.raises(ValueError, match="checkerboard"):
        toy2d.log_prob("moons", np.zeros((1, 2)))
    with pytest.raises(ValueError):
        toy2d.modes("rings")
