"""The first stage of latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis
with Latent Diffusion Models"): an autoencoder from images x (C, H, W) to a small latent grid
z (c, h, w), h = H / f, regularised so that the latent's scale stays bounded.

    KL-reg   q(z | x) = N(mu(x), diag(sigma^2(x))),  z = mu + sigma eps
             loss = ||x - D(z)||^2 + kl_weight KL(q(z | x) || N(0, I))                 (R1)
             KL   = sum_i (mu_i^2 + sigma_i^2 - 1 - log sigma_i^2) / 2   (closed form)
    VQ-reg   VQ-VAE's quantizer inside the decoder: D(z) = Dec(e_k), k = argmin ||z - e_j||
             loss = (Q2) of refgen.models.vae.vqvae, without its PixelCNN prior

Both expose the interface latent diffusion uses: ``latent_shape`` (c, h, w),
``encode_latent(x, rng)`` (KL: a draw from q(z | x); VQ: the encoder's output z_e, before
quantization, as the paper diffuses it) and ``decode_latent(z)`` (the decoder's mean image).
The squared error is a Gaussian likelihood of fixed unit variance, up to a factor 1/2 and a
constant; data in [-1, 1].
"""
from __future__ import annotations

import refgen.functional as F
from refgen.autograd import Tensor, as_tensor, no_grad
from refgen.backend import default_rng, xp
from refgen.distributions import kl_normal_std
from refgen.models import register
from refgen.models.base import DataSpec
from refgen.models.vae.nets import activation as _activation
from refgen.models.vae.vqvae import VQVAE
from refgen.nn import Conv2d, ConvTranspose2d, Module, ModuleList, init

__all__ = ["KLAutoencoder", "VQAutoencoder", "default_levels"]


def default_levels(size: int) -> int:
    """Stride-2 levels that take an image side down to 7 (28 -> 7: 2, 14 -> 7: 1), at least 1."""
    levels = 0
    while size % 2 == 0 and size // 2 >= 7:
        size //= 2
        levels += 1
    return max(levels, 1)


class _Down(Module):
    """(B, C, H, W) -> (B, ch, H / 2^levels, W / 2^levels): 4x4 stride-2 convs, then a 3x3."""

    def __init__(self, cin, ch, levels, act, rng):
        super().__init__()
        self.convs = ModuleList([Conv2d(cin if i == 0 else ch, ch, 4, stride=2, padding=1, rng=rng)
                                 for i in range(levels)])
        self.mix = Conv2d(ch, ch, 3, padding=1, rng=rng)
        self.act = act

    def forward(self, x):
        for conv in self.convs:
            x = self.act(conv(x))                                      # halves H and W
        return self.act(self.mix(x))


class _Up(Module):
    """(B, c, h, w) -> (B, C, H, W): a 3x3 conv, transposed 4x4 stride-2 convs, a 3x3 out."""

    def __init__(self, cin, ch, cout, sizes, act, rng):
        super().__init__()
        self.inp = Conv2d(cin, ch, 3, padding=1, rng=rng)
        # sizes: the sides from the largest to the grid; output_padding restores odd sides
        self.ups = ModuleList([ConvTranspose2d(ch, ch, 4, stride=2, padding=1,
                                               output_padding=big - 2 * small, rng=rng)
                               for big, small in zip(sizes[-2::-1], sizes[:0:-1])])
        self.out = Conv2d(ch, cout, 3, padding=1, rng=rng)
        self.act = act

    def forward(self, z):
        h = self.act(self.inp(z))
        for up in self.ups:
            h = self.act(up(h))                                        # doubles H and W
        return self.out(h)


def _sides(size, levels):
    sizes = [int(size)]
    for _ in range(levels):
        sizes.append(sizes[-1] // 2)
    if sizes[-1] < 1:
        raise ValueError(f"image side {size} is too small for {levels} stride-2 levels")
    return sizes


def _images(data_shape, name):
    shape = tuple(int(s) for s in data_shape)
    if len(shape) != 3 or shape[1] != shape[2]:
        raise ValueError(f"{name} takes square images (C, H, H); got {shape}")
    return shape


@register("kl-autoencoder")
class KLAutoencoder(Module):
    """The KL-regularised autoencoder (R1): a conv encoder to the mean and log-variance of a
    (latent_channels, h, w) Gaussian, a transposed-conv decoder.

    levels: stride-2 halvings (None: down to 7 x 7). kl_weight: the small weight of the KL
    term (the latent is then nearly free, only kept from growing without bound).
    ``sample`` decodes z ~ N(0, I), which with a small kl_weight is far from the codes the
    decoder saw: the autoencoder is a first stage, latent diffusion is what samples.
    """

    data_spec = DataSpec(kinds=("continuous",), ndims=(3,), image_range=(-1.0, 1.0))
    default_train = dict(steps=2000, batch_size=64, lr=1e-3)
    eval_samples = 500

    def __init__(self, data_shape, *, seed=0, latent_channels: int = 4, channels: int = 32,
                 levels: int | None = None, kl_weight: float = 1e-3, activation: str = "silu"):
        super().__init__()
        self.data_shape = _images(data_shape, "kl-autoencoder")
        if float(kl_weight) < 0:
            raise ValueError(f"kl_weight must be >= 0, got {kl_weight}")
        self.kl_weight = float(kl_weight)
        levels = default_levels(self.data_shape[1]) if levels is None else int(levels)
        sides = _sides(self.data_shape[1], levels)
        self.latent_shape = (int(latent_channels), sides[-1], sides[-1])
        act = _activation(activation)
        g = init.get_rng(int(seed))
        self.encoder = _Down(self.data_shape[0], int(channels), levels, act, g)
        self.to_moments = Conv2d(int(channels), 2 * int(latent_channels), 3, padding=1, rng=g)
        self.decoder = _Up(int(latent_channels), int(channels), self.data_shape[0], sides, act, g)
        self.last_stats = {}

    def posterior(self, x):
        """x (B, C, H, W) -> (mu, logvar), each (B, c, h, w): the parameters of q(z | x)."""
        mu, logvar = F.chunk(self.to_moments(self.encoder(as_tensor(x))), 2, dim=1)
        return mu, logvar

    def kl(self, x):
        """KL(q(z | x) || N(0, I)) per image, nats (B,), in closed form (R1)."""
        mu, logvar = self.posterior(x)
        return F.sum_except_batch(kl_normal_std(mu, logvar))

    def encode_latent(self, x, rng):
        """z = mu + sigma eps, a draw from q(z | x): (B, c, h, w)."""
        mu, logvar = self.posterior(x)
        eps = rng.standard_normal(mu.shape, dtype=mu.dtype)
        return mu + F.exp(0.5 * logvar) * Tensor(eps)

    def decode_latent(self, z):
        """z (B, c, h, w) -> the decoder's mean image (B, C, H, W)."""
        return self.decoder(as_tensor(z))

    def reconstruct(self, x):
        """D(mu(x)): the reconstruction from the posterior mean."""
        with no_grad():
            return self.decode_latent(self.posterior(x)[0]).data

    def loss(self, batch, rng):
        """(R1): squared error summed over pixels + kl_weight KL, averaged over the batch."""
        x = as_tensor(batch.x)
        mu, logvar = self.posterior(x)
        eps = Tensor(rng.standard_normal(mu.shape, dtype=mu.dtype))
        z = mu + F.exp(0.5 * logvar) * eps                            # reparameterised draw
        rec = F.sum_except_batch((self.decode_latent(z) - x) ** 2).mean()
        kl = F.sum_except_batch(kl_normal_std(mu, logvar)).mean()
        self.last_stats = {"rec": float(rec.data), "kl": float(kl.data)}
        return rec + self.kl_weight * kl

    def sample(self, n, cond=None, *, rng):
        """Decodings of z ~ N(0, I) (see the class docstring), (n, C, H, W) in [-1, 1]."""
        rng = default_rng(rng)
        with no_grad():
            z = rng.standard_normal((int(n),) + self.latent_shape, dtype=xp.float32)
            return xp.clip(self.decode_latent(Tensor(z)).data, -1.0, 1.0)


@register("vq-autoencoder")
class VQAutoencoder(VQVAE):
    """The VQ-regularised autoencoder: refgen's VQ-VAE (its encoder, quantizer (Q1), decoder
    and loss (Q2)) without the PixelCNN prior, the quantizer counted as part of the decoder.
    Its grid is VQ-VAE's (H / 4). ``sample`` decodes codes drawn uniformly (no prior)."""

    data_spec = DataSpec(kinds=("continuous",), ndims=(3,), image_range=(-1.0, 1.0))
    default_train = dict(steps=2000, batch_size=64, lr=1e-3)
    eval_samples = 500

    def __init__(self, data_shape, *, seed=0, num_codes: int = 64, code_dim: int = 4,
                 channels="32,64", activation: str = "relu", commitment: float = 0.25):
        super().__init__(_images(data_shape, "vq-autoencoder"), seed=seed, num_codes=num_codes,
                         code_dim=code_dim, channels=channels, activation=activation,
                         commitment=commitment, likelihood="gaussian", prior=False)
        self.latent_shape = (self.code_dim,) + tuple(self.grid)

    def encode_latent(self, x, rng=None):
        """z_e = E(x) (B, D, h, w): the latent before quantization (deterministic)."""
        return self.encode(x)

    def decode_latent(self, z):
        """Quantize z to its nearest codes (Q1), then decode: the decoder's mean image."""
        z = as_tensor(z)
        return self.likelihood.mean(self.decode(self.lookup(self.quantize(z))))

    def sample(self, n, cond=None, *, rng):
        """Decodings of code grids drawn uniformly from the codebook, (n, C, H, W)."""
        rng = default_rng(rng)
        with no_grad():
            k = rng.integers(0, self.num_codes, size=(int(n),) + tuple(self.grid))
            return xp.clip(self.likelihood.mean(self.decode(self.lookup(k))).data, -1.0, 1.0)
