"""Latent-variable models: the autoencoder, the VAE and its variants, VQ-VAE.

- ``autoencoder`` / ``linear-autoencoder``: reconstruction only, ||x - d(e(x))||^2; the
  linear tied case is PCA (autoencoder.py).
- ``vae``, ``beta-vae``, ``cvae``, ``iwae``: the ELBO, beta on its KL, labels in encoder and
  decoder, the k-sample importance-weighted bound (vae.py).
- ``linear-vae``: probabilistic PCA as a VAE, where every term is exact (linear.py).
- ``vqvae``: a codebook bottleneck with the straight-through gradient and a PixelCNN prior
  over the code grid (vqvae.py).
- ``vqvae2``: two levels of codes (a coarse top grid feeding a finer bottom grid), gated
  PixelCNN priors p(k_top) p(k_bottom | k_top) (vqvae2.py).
- ``kl-autoencoder``, ``vq-autoencoder``: latent diffusion's first stage, an image to a small
  latent grid with a small KL penalty or a quantizer (regularized.py).
"""
from refgen.models.vae.autoencoder import Autoencoder, LinearAutoencoder
from refgen.models.vae.vae import VAE, BetaVAE, ConditionalVAE, IWAE
from refgen.models.vae.linear import LinearGaussianVAE, ppca_mle
from refgen.models.vae.vqvae import VQVAE, nearest_code, perplexity
from refgen.models.vae.regularized import KLAutoencoder, VQAutoencoder
from refgen.models.vae.vqvae2 import VQVAE2

__all__ = ["Autoencoder", "LinearAutoencoder", "VAE", "BetaVAE", "ConditionalVAE", "IWAE",
           "LinearGaussianVAE", "ppca_mle", "VQVAE", "nearest_code", "perplexity",
           "KLAutoencoder", "VQAutoencoder", "VQVAE2"]
