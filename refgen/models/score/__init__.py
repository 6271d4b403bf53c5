"""Score-based generative models (NCSN, score SDEs), read top to bottom:

    losses.py      denoising score matching per level and over a ladder, in continuous time
                   (with lambda = sigma^2 or the likelihood weighting g^2); explicit and
                   sliced score matching and the divergence estimators are in
                   refgen.score_matching, shared with the energy family
    sde.py         VE, VP, sub-VP: drift, diffusion, perturbation kernel, prior
    solvers.py     RK4 and adaptive Dormand-Prince RK45
    samplers.py    Langevin, annealed Langevin, reverse-SDE Euler-Maruyama, predictor-corrector,
                   probability-flow ODE
    likelihood.py  log p(x) by the instantaneous change of variables; dequantised bits/dim
    sampling.py    sampling and likelihood entry points for any (SDE, score)
    mixture.py     the exact score of a Gaussian mixture under noise (the tests' oracle)
    nets.py        the score networks (MLP, U-Net)
    ncsn.py        the registered ``ncsn`` (Song & Ermon 2019, 2020)
    sde_model.py   the registered ``sde-ve``, ``sde-vp``, ``sde-subvp`` (Song et al. 2021)
    bridge.py      a trained ``ddpm`` as a VP-SDE score model (eq. (21))

docs/score.md walks through them equation by equation.
"""
from refgen.models.score.ncsn import NCSN  # noqa: F401
from refgen.models.score.sde_model import ScoreSDE, VEModel, VPModel, SubVPModel  # noqa: F401
from refgen.models.score.bridge import DDPMScore  # noqa: F401
