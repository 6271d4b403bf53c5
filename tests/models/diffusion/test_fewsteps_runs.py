"""The distilled models read their teacher from a ddpm run directory, train and sample
through the CLI like any model."""
import json

import numpy as np
import pytest

from refgen import models
from refgen.backend import default_rng
from refgen.autograd import Tensor
from refgen.cli import load_run, main
from refgen.models.diffusion.distill import _x0, ddim_sample

pytestmark = pytest.mark.usefixtures("numpy_backend")


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs") / "teacher"
    assert main(["train", "ddpm", "--data", "moons", "--steps", "3", "--out", str(d), "-q",
                 "--set", "T=64", "--set", "hidden=16", "--set", "depth=1",
                 "--set", "parameterization=v"]) == 0
    return d


def test_teacher_is_the_runs_model(teacher_run):
    ref, _ = load_run(teacher_run)
    pd = models.create("progressive-distillation", data_shape=(2,), teacher=str(teacher_run),
                       teacher_steps=8)
    for k, v in ref.state_dict().items():
        np.testing.assert_array_equal(pd.teacher.state_dict()[k], v)
        np.testing.assert_array_equal(pd.student.state_dict()[k], v)
    z = np.random.default_rng(0).standard_normal((5, 2)).astype(np.float32)
    want = ddim_sample(lambda zz, tt: _x0(ref, Tensor(zz), tt).data, ref.schedule, 4, z)
    np.testing.assert_allclose(pd.sample(5, steps=4, x_T=z, rng=default_rng(0)), want, rtol=1e-6)
    with pytest.raises(ValueError, match="^teacher: run directory .* does not exist"):
        models.create("consistency-distillation", data_shape=(2,), teacher=str(teacher_run / "x"))
    with pytest.raises(ValueError, match="^teacher: .* is not a refgen run directory: it has no config.json"):
        models.create("consistency-distillation", data_shape=(2,), teacher=str(teacher_run.parent))


@pytest.mark.parametrize("name,sets", [
    ("progressive-distillation", ["teacher_steps=8", "round_steps=2"]),
    ("consistency-distillation", ["N=6", "hidden=16", "depth=1"]),
])
def test_students_train_and_sample_from_the_cli(teacher_run, tmp_path, name, sets):
    out = tmp_path / name
    argv = ["train", name, "--data", "moons", "--steps", "4", "--out", str(out), "-q",
            "--set", f"teacher={teacher_run}"]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_kwargs"]["teacher"] == str(teacher_run)
    assert main(["sample", str(out), "-n", "50", "--out", str(tmp_path / "s.png")]) == 0
    model, _ = load_run(out)
    x = model.sample(50, rng=default_rng(0))
    assert x.shape == (50, 2) and np.isfinite(x).all()


def test_consistency_training_from_the_cli(tmp_path):
    out = tmp_path / "ct"
    assert main(["train", "consistency-training", "--data", "moons", "--steps", "4", "--out",
                 str(out), "-q", "--set", "K=4", "--set", "hidden=16"]) == 0
    model, _ = load_run(out)
    assert int(model.k) == 4
    assert np.isfinite(model.sample(20, rng=default_rng(0), steps=2)).all()
