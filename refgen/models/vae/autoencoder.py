"""The autoencoder: non-linear PCA, and its linear tied-weight special case, PCA itself.

    z = e(x),   x_hat = d(z),   loss = ||x - d(e(x))||^2                               (A1)

summed over the data dims and averaged over the batch. With a linear encoder z = W (x - b)
and the tied decoder x_hat = W^T z + b, (A1) is minimised exactly when the rows of W span
the top-d principal subspace of the data (Baldi & Hornik 1989): the autoencoder *is* PCA
up to a rotation of the code. Neural networks for e and d make it non-linear PCA.

Nothing organises the code space, so decoding a random z gives garbage in general; to honour
the model contract ``sample`` draws z from a Gaussian fitted to the codes seen in training
(running moments), which is exactly the step a VAE makes principled.
"""
from __future__ import annotations

import refgen.functional as F
from refgen.autograd import Tensor, as_tensor, no_grad
from refgen.backend import xp
from refgen.models import register
from refgen.models.base import DataSpec
from refgen.models.vae.nets import Decoder, Encoder
from refgen.nn import Module, Parameter, init, parse_hidden

__all__ = ["Autoencoder", "LinearAutoencoder"]

_MOMENT_DECAY = 0.99  # running moments of the codes, for ``sample``


class _CodeMoments(Module):
    """Running mean and variance of the codes (buffers: saved, never trained)."""

    def _init_moments(self, latent_dim, dtype=xp.float32):
        self.register_buffer("code_mean", xp.zeros((latent_dim,), dtype=dtype))
        self.register_buffer("code_var", xp.ones((latent_dim,), dtype=dtype))

    def _track(self, z):
        if not self.training:
            return
        zd = z.data.reshape(-1, z.shape[-1])
        a = _MOMENT_DECAY
        self.code_mean = a * self.code_mean + (1 - a) * zd.mean(0)
        self.code_var = a * self.code_var + (1 - a) * zd.var(0)

    def sample(self, n, cond=None, *, rng):
        """n decodings of z ~ N(code_mean, diag(code_var)) (see the module docstring)."""
        with no_grad():
            eps = rng.standard_normal((int(n), self.latent_dim), dtype=self.code_mean.dtype)
            z = self.code_mean + xp.sqrt(self.code_var) * eps
            return self._output(self.decode(Tensor(z))).data


@register("autoencoder")
class Autoencoder(_CodeMoments):
    """e and d are MLPs or convnets (refgen.models.vae.nets); loss (A1).

    reconstruction: 'mse' (squared error on the decoder's output) or 'bce' (the decoder
    outputs logits, for data in [0, 1]; the squared error is then the Gaussian special case).
    """

    data_spec = DataSpec(kinds=("binary", "continuous"), ndims=(1, 3))
    default_train = dict(steps=10000, batch_size=100, lr=1e-3)

    def __init__(self, data_shape, *, seed=0, latent_dim: int = 32, hidden="512,256",
                 arch: str = "mlp", activation: str = "relu", reconstruction: str = "mse",
                 channels="32,64"):
        super().__init__()
        if reconstruction not in ("mse", "bce"):
            raise ValueError(f"unknown reconstruction {reconstruction!r}; accepted: mse, bce")
        self.data_shape, self.latent_dim = tuple(int(s) for s in data_shape), int(latent_dim)
        self.reconstruction = reconstruction
        hidden, channels = parse_hidden(hidden), parse_hidden(channels)
        g = init.get_rng(int(seed))
        self.encoder = Encoder(self.data_shape, self.latent_dim, hidden, arch, activation,
                               channels=channels, deterministic=True, rng=g)
        self.decoder = Decoder(self.data_shape, self.latent_dim, hidden[::-1], arch, activation,
                               channels=channels, rng=g)
        self._init_moments(self.latent_dim)

    def encode(self, x):
        return self.encoder(as_tensor(x))                    # (B, latent)

    def decode(self, z):
        return self.decoder(z)                               # (B, *data_shape)

    def _output(self, out):
        return F.sigmoid(out) if self.reconstruction == "bce" else out

    def reconstruct(self, x):
        with no_grad():
            return self._output(self.decode(self.encode(x))).data

    def loss(self, batch, rng):
        """||x - d(e(x))||^2 (A1) (or the cross-entropy), summed over dims, batch mean."""
        x = as_tensor(batch.x)
        z = self.encode(x)
        self._track(z)
        out = self.decode(z)
        if self.reconstruction == "bce":
            return F.sum_except_batch(F.binary_cross_entropy_with_logits(out, x, reduction="none")).mean()
        return F.sum_except_batch(F.mse_loss(out, x, reduction="none")).mean()


@register("linear-autoencoder")
class LinearAutoencoder(_CodeMoments):
    """z = W (x - b), x_hat = W^T z + b: tied weights W (latent, D) and one offset b (D,).

    At the minimum of (A1) the rows of W span the principal subspace of the data
    (``principal_subspace`` returns an orthonormal basis of it)."""

    data_spec = DataSpec(kinds=("binary", "continuous"), ndims=(1, 3))
    default_train = dict(steps=5000, batch_size=100, lr=1e-3)

    def __init__(self, data_shape, *, seed=0, latent_dim: int = 2, init_std: float = 0.1):
        super().__init__()
        self.data_shape, self.latent_dim = tuple(int(s) for s in data_shape), int(latent_dim)
        dim = 1
        for s in self.data_shape:
            dim *= s
        g = init.get_rng(int(seed))
        self.weight = init.normal_(Parameter(xp.zeros((self.latent_dim, dim), dtype=xp.float32)),
                                   0.0, init_std, rng=g)
        self.offset = Parameter(xp.zeros((dim,), dtype=xp.float32))
        self._init_moments(self.latent_dim)

    def encode(self, x):
        x = F.flatten(as_tensor(x), 1)
        return F.matmul(x - self.offset, F.transpose(self.weight, 0, 1))   # (B, D) -> (B, d)

    def decode(self, z):
        x = F.matmul(z, self.weight) + self.offset                        # W^T z + b, (B, D)
        return F.reshape(x, (x.shape[0],) + self.data_shape)

    def _output(self, out):
        return out

    def reconstruct(self, x):
        with no_grad():
            return self.decode(self.encode(x)).data

    def loss(self, batch, rng):
        x = as_tensor(batch.x)
        z = self.encode(x)
        self._track(z)
        d = self.decode(z) - x
        return F.sum_except_batch(d * d).mean()                           # (A1)

    def principal_subspace(self):
        """An orthonormal basis (D, d) of the row space of W (QR of W^T)."""
        q, _ = xp.linalg.qr(self.weight.data.T.astype(xp.float64))
        return q
