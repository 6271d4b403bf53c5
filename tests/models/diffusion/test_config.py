"""DDPM's option groups: flat keywords, groups and --set values build the same model, None is
the one "not set" value, and the CLI sees every field as a hyperparameter."""
import numpy as np
from refgen.backend import default_rng
import pytest

from refgen.backend import to_numpy
from refgen.cli import parse_sets
from refgen.models.base import constructor_kwargs, hyperparameters
from refgen.models.diffusion import DDPM
from refgen.models.diffusion.config import NetworkConfig, ProcessConfig, SamplingConfig


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(np.array_equal(to_numpy(sa[k]), to_numpy(sb[k])) for k in sa)


def test_flat_keywords_and_groups_build_the_same_model():
    flat = DDPM((2,), seed=1, T=40, learn_sigma=True, hidden=16, depth=1, sampler="ddim", eta=0.5)
    grouped = DDPM((2,), seed=1, process=ProcessConfig(T=40, learn_sigma=True),
                   network=NetworkConfig(hidden=16, depth=1),
                   sampling=SamplingConfig(sampler="ddim", eta=0.5))
    assert _same(flat, grouped)
    assert (flat.process, flat.network, flat.sampling) == (grouped.process, grouped.network,
                                                           grouped.sampling)
    assert (flat.T, flat.variance, flat.sampler, flat.eta) == (40, "learned", "ddim", 0.5)
    # a flat keyword overrides its group's value; the other fields of the group stay
    m = DDPM((2,), process=ProcessConfig(T=40, schedule="cosine"), T=20, hidden=8)
    assert m.T == 20 and m.process.schedule == "cosine"


def test_an_unknown_option_names_the_accepted_ones():
    with pytest.raises(ValueError, match="no option 'nope'; accepted: schedule, T,.*threshold"):
        DDPM((2,), nope=1)


def test_threshold_not_set_is_chosen_by_the_data():
    assert DDPM((1, 8, 8), channels=8).threshold == "static"
    assert DDPM((2,), hidden=8).threshold is None
    assert DDPM((1, 8, 8), channels=8, threshold="none").threshold is None
    assert DDPM((2,), hidden=8, threshold="dynamic").threshold == "dynamic"
    for bad in ("auto", "None", "clip"):
        with pytest.raises(ValueError, match="threshold must be none, static or dynamic"):
            DDPM((2,), hidden=8, threshold=bad)


def test_sample_threshold_none_means_the_models_own():
    m = DDPM((1, 4, 4), T=30, channels=4, num_res_blocks=1, groups=2, sample_steps=3)
    for p in m.parameters():   # a non-zero output, large enough to leave [-1, 1]
        p.data = p.data + np.float32(0.3)
    kw = dict(sampler="ddim")
    static, off = m.sample(2, **kw, rng=default_rng(3)), m.sample(2, threshold="none", **kw, rng=default_rng(3))
    assert np.array_equal(to_numpy(m.sample(2, threshold=None, **kw, rng=default_rng(3))), to_numpy(static))
    assert np.array_equal(to_numpy(m.sample(2, threshold="static", **kw, rng=default_rng(3))), to_numpy(static))
    assert not np.allclose(to_numpy(static), to_numpy(off))


def test_the_cli_sees_every_field():
    hp = hyperparameters(DDPM)
    assert hp["T"] == 1000 and hp["channels"] == 32 and hp["threshold"] is None
    assert {"process", "network", "sampling"}.isdisjoint(hp)
    sets = parse_sets(["T=30", "hidden=8", "threshold=dynamic", "sample_steps=5", "sampler=ddim"])
    kw = constructor_kwargs(DDPM, data_shape=(2,), seed=2, overrides=sets)
    m = DDPM(**kw)
    assert (m.T, m.network.hidden, m.threshold, m.sample_steps, m.sampler) == (30, 8, "dynamic", 5, "ddim")
    with pytest.raises(ValueError, match="no option"):
        DDPM(**constructor_kwargs(DDPM, data_shape=(2,), overrides={"nope": 1}))
