"""A DDPM whose network is replaced by the exact answer for Gaussian data N(m, s^2 I), so the
ODE, distillation and consistency code can be checked without training anything.

For x_0 ~ N(m, s^2 I): x_t = sqrt(ab) x_0 + sqrt(1 - ab) eps has E[eps | x_t] =
sqrt(1 - ab) (x_t - sqrt(ab) m) / (ab s^2 + 1 - ab); in sigma-time (x = x_0 + sigma eps) the
probability-flow ODE dx/dsigma = sigma (x - m) / (s^2 + sigma^2) has the exact flow

    x(sigma') = m + (x(sigma) - m) sqrt((s^2 + sigma'^2) / (s^2 + sigma^2)),

so the exact consistency function is f(x, t) = m + (x - m) sqrt((s^2 + eps^2) / (s^2 + t^2)).
The network is told a fractional step t; its alpha_bar is that of ode.sigma_to_t's inverse.
"""
import numpy as np

from refgen.models.diffusion import DDPM
from refgen.models.diffusion.ode import schedule_sigmas

M = np.array([0.7, -0.4])
S = np.array([0.5, 1.3])


def flow(x, sigma, sigma_to):
    """The exact PF-ODE flow from sigma to sigma_to (floats or (B,) arrays)."""
    r = np.sqrt((S ** 2 + np.reshape(sigma_to, (-1, 1)) ** 2) / (S ** 2 + np.reshape(sigma, (-1, 1)) ** 2))
    return M + (x - M) * r


def consistency_exact(x, t, epsilon):
    """The exact consistency function f(x, t) = flow from t to epsilon."""
    return flow(x, t, np.full(np.shape(t), epsilon))


def eps_exact_sigma(x, sigma):
    """E[eps | x] in sigma-time: the drift of the ODE."""
    sigma = np.reshape(sigma, (-1, 1))
    return sigma * (x - M) / (S ** 2 + sigma ** 2)


def x0_exact(sch, z, t):
    """E[x_0 | x_t = z] at integer steps t (B,) of schedule sch (the teacher's x_hat)."""
    ab = sch.alpha_bar[np.asarray(t)].reshape(-1, 1)
    v = ab * S ** 2 + 1 - ab
    return M + np.sqrt(ab) * S ** 2 * (z - np.sqrt(ab) * M) / v


class OracleDDPM(DDPM):
    """A ddpm (vectors, 2D) whose network output is the exact eps, x0 or v of N(M, S^2)."""

    def _net(self, xt, t_net, y):
        x = np.asarray(xt.data if hasattr(xt, "data") else xt, dtype=np.float64)
        t = np.broadcast_to(np.asarray(t_net, dtype=np.float64), (x.shape[0],))
        log_s = np.log(schedule_sigmas(self.schedule)[1:])
        sigma = np.exp(np.interp(t, np.arange(1, self.T + 1), log_s)).reshape(-1, 1)
        ab = 1.0 / (1.0 + sigma ** 2)
        v = ab * S ** 2 + 1 - ab
        eps = np.sqrt(1 - ab) * (x - np.sqrt(ab) * M) / v
        x0 = (x - np.sqrt(1 - ab) * eps) / np.sqrt(ab)
        out = {"eps": eps, "x0": x0, "v": np.sqrt(ab) * eps - np.sqrt(1 - ab) * x0}[self.parameterization]
        from refgen.autograd import Tensor
        return Tensor(out)


def oracle(parameterization="v", T=1000, schedule="linear"):
    return OracleDDPM((2,), T=T, schedule=schedule, parameterization=parameterization,
                      hidden=8, depth=1)
