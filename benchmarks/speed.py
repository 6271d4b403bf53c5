"""refgen against PyTorch on one CPU thread, float32: whole training steps and the hot ops.

    nice python benchmarks/speed.py [--pairs 7] [--ddim-pairs 3] [--only gpt,attention]

Each workload runs once in refgen and once in PyTorch (when ``torch`` imports: the optional
extra ``pip install .[bench]``), alternating which goes first, ``--pairs`` times in one
process; the figure kept is the median over pairs of the time ratio refgen / torch (and
each side's median seconds). Pairs taken back to back see the same machine load, so their
ratio is steadier on a shared machine than either time alone.

Model steps (forward, loss, backward, Adam; the architectures and batch sizes of the
benchmark recipes; synthetic data of the right kind, so no dataset is needed):

    vae        MLP VAE, 784-200-200-50, tanh, Bernoulli decoder, batch 200 (vae_mnist.py)
    unet       DDPM U-Net on 28x28, 16 channels, one ResBlock per level, 10 classes, batch 64
    pixelcnn   gated PixelCNN, 12 layers of 24 channels, 27x27 first layer, batch 16
    gpt        GPT on 14x14 binary MNIST (196 tokens + BOS), 4 layers, 4 heads, width 64, batch 32
    ddim       50 DDIM steps (eta = 0) of the U-Net above drawing 64 images (no gradient)
    pixelcnn_draw  the gated PixelCNN drawing 4 images, one network pass over rows 0..i per
               pixel on both sides (refgen's 'full' sampler; its default 'cached' draw is
               recorded beside it as refgen_cached_s)

and ops (forward + backward, float32):

    attention  causal scaled-dot-product attention, (32, 4, 196, 32)
    gelu_tanh  (6272, 256): GPT's MLP activation;   silu, sigmoid  (64, 32, 28, 28)
    layer_norm (32, 196, 64) with its affine;       group_norm (64, 32, 28, 28), 8 groups

The PyTorch side mirrors each network module for module, under the same parameter names,
and starts from refgen's weights (``weights_copied`` counts the tensors copied; every one of
the torch model's parameters must be found); for GPT and the PixelCNN the result records the
largest difference between the two networks' logits on the benchmark batch, and for the ops
between the two forward values. (The U-Net's last convolution and attention projections
start at zero, so its outputs agree trivially; its mirror is checked by names and shapes.) The result (command, CPU model, cores, load
average before and after) goes to benchmarks/results/speed_cpu.json. ``--smoke``: tiny
shapes, two pairs, written to a temporary directory.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, SMOKE, add_smoke, command, machine, smoke, write_json  # noqa: E402

import numpy as np  # noqa: E402

import refgen  # noqa: E402
import refgen.functional as F  # noqa: E402
from refgen import models  # noqa: E402
from refgen.backend import default_rng  # noqa: E402
from refgen.models.base import Batch  # noqa: E402
from refgen.optim import Adam  # noqa: E402

try:
    import torch
    import torch.nn as tnn
    import torch.nn.functional as TF
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
except ImportError:  # the benchmark still times refgen alone
    torch = None

MODELS = ("vae", "unet", "pixelcnn", "gpt", "ddim", "pixelcnn_draw")
OPS = ("attention", "gelu_tanh", "silu", "sigmoid", "layer_norm", "group_norm")


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=7, help="alternating refgen/torch pairs per workload")
    ap.add_argument("--ddim-pairs", type=int, default=3,
                    help="pairs for the two draws (DDIM, the PixelCNN)")
    ap.add_argument("--only", default="", help="comma-separated workloads (default: all)")
    ap.add_argument("--tag", default="speed_cpu", help="result file name (without .json)")
    ap.add_argument("--label", default="", help="a note stored with the result (e.g. the code measured)")
    args = add_smoke(ap).parse_args(argv)
    if SMOKE:
        args.pairs = args.ddim_pairs = 2
    return args


# --- timing ----------------------------------------------------------------------------------

def _seconds(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def paired(ours, theirs, pairs):
    """Median seconds of each side and the median of the per-pair ratios ours / theirs; the
    two run alternately (ours first in even pairs, theirs first in odd ones), after one
    warm-up call each."""
    ours()
    if theirs is None:
        t = [_seconds(ours) for _ in range(pairs)]
        return {"refgen_s": statistics.median(t), "pairs": pairs}
    theirs()
    a, b = [], []
    for i in range(pairs):
        if i % 2 == 0:
            a.append(_seconds(ours))
            b.append(_seconds(theirs))
        else:
            b.append(_seconds(theirs))
            a.append(_seconds(ours))
    return {"refgen_s": statistics.median(a), "torch_s": statistics.median(b),
            "ratio": statistics.median(x / y for x, y in zip(a, b)), "pairs": pairs}


# --- shared helpers --------------------------------------------------------------------------

def refgen_step(model, batch, lr):
    opt = Adam(list(model.parameters()), lr=lr)
    params = list(model.parameters())
    rng = default_rng(0)  # the step's noise (VAE, DDPM), as the training loop passes it

    def step():
        for p in params:
            p.grad = None
        loss = model.loss(batch, rng)
        loss.backward()
        opt.step()
    return step


def torch_step(net, loss_fn, lr):
    opt = torch.optim.Adam(net.parameters(), lr=lr)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        opt.step()
    return step


def copy_weights(src, dst):
    """refgen module -> torch module, by parameter name; every torch parameter must be found."""
    ours = dict(src.named_parameters())
    n = 0
    with torch.no_grad():
        for name, p in dst.named_parameters():
            if name not in ours or tuple(ours[name].shape) != tuple(p.shape):
                raise ValueError(f"torch mirror parameter {name} {tuple(p.shape)} has no refgen twin")
            p.copy_(torch.from_numpy(np.asarray(ours[name].data)))
            n += 1
    return n


# --- VAE -------------------------------------------------------------------------------------

if torch is not None:
    class TorchVAE(tnn.Module):
        def __init__(self, d, hidden, latent):
            super().__init__()
            enc = [d] + hidden
            self.encoder = tnn.Module()
            self.encoder.layers = tnn.ModuleList(tnn.Linear(i, o) for i, o in zip(enc, enc[1:]))
            self.encoder.mu_head = tnn.Linear(hidden[-1], latent)
            self.encoder.logvar_head = tnn.Linear(hidden[-1], latent)
            dec = [latent] + hidden[::-1]
            self.decoder = tnn.Module()
            self.decoder.layers = tnn.ModuleList(tnn.Linear(i, o) for i, o in zip(dec, dec[1:]))
            self.decoder.out = tnn.Linear(hidden[0], d)

        def loss(self, x):
            h = x.flatten(1)
            for lyr in self.encoder.layers:
                h = torch.tanh(lyr(h))
            mu, logvar = self.encoder.mu_head(h), self.encoder.logvar_head(h)
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
            for lyr in self.decoder.layers:
                z = torch.tanh(lyr(z))
            logits = self.decoder.out(z)
            rec = -TF.binary_cross_entropy_with_logits(logits, x.flatten(1), reduction="none").sum(1)
            kl = 0.5 * (mu * mu + logvar.exp() - 1 - logvar).sum(1)
            return -(rec - kl).mean()


def vae_workload(rng):
    b, hidden = smoke(200, 8), [200, 200]
    model = models.create("vae", data_shape=(1, 28, 28), latent_dim=50, hidden="200,200",
                          activation="tanh")
    x = rng.random((b, 1, 28, 28), dtype=np.float32)
    ours = refgen_step(model, Batch(refgen.tensor(x)), 2e-3)
    if torch is None:
        return ours, None, {}
    net = TorchVAE(784, hidden, 50)
    n = copy_weights(model, net)
    xt = torch.from_numpy(x)
    return ours, torch_step(net, lambda: net.loss(xt), 2e-3), {"weights_copied": n}


# --- U-Net (DDPM) ----------------------------------------------------------------------------

def _gcd_groups(c, groups=8):
    return __import__("math").gcd(c, groups)


if torch is not None:
    class TAttn(tnn.Module):
        def __init__(self, c, heads):
            super().__init__()
            self.heads = heads
            self.q_proj, self.k_proj = tnn.Linear(c, c), tnn.Linear(c, c)
            self.v_proj, self.out_proj = tnn.Linear(c, c), tnn.Linear(c, c)

        def forward(self, x, is_causal=False):
            b, n, c = x.shape

            def heads(t):  # (B, L, E) -> (B, H, L, D)
                return t.view(b, n, self.heads, c // self.heads).transpose(1, 2)
            y = TF.scaled_dot_product_attention(heads(self.q_proj(x)), heads(self.k_proj(x)),
                                                heads(self.v_proj(x)), is_causal=is_causal)
            return self.out_proj(y.transpose(1, 2).reshape(b, n, c))

    class TResBlock(tnn.Module):
        def __init__(self, cin, cout, emb_dim):
            super().__init__()
            self.norm1 = tnn.GroupNorm(_gcd_groups(cin), cin)
            self.conv1 = tnn.Conv2d(cin, cout, 3, padding=1)
            self.emb = tnn.Linear(emb_dim, cout)
            self.norm2 = tnn.GroupNorm(_gcd_groups(cout), cout)
            self.conv2 = tnn.Conv2d(cout, cout, 3, padding=1)
            self.skip = tnn.Conv2d(cin, cout, 1) if cin != cout else None

        def forward(self, x, e):
            h = self.conv1(TF.silu(self.norm1(x)))
            h = TF.silu(self.norm2(h + self.emb(TF.silu(e))[:, :, None, None]))
            return (x if self.skip is None else self.skip(x)) + self.conv2(h)

    class TAttnBlock(tnn.Module):
        def __init__(self, c, heads=1):
            super().__init__()
            self.norm = tnn.GroupNorm(_gcd_groups(c), c)
            self.attn = TAttn(c, heads)

        def forward(self, x):
            b, c, h, w = x.shape
            t = self.norm(x).flatten(2).transpose(1, 2)            # (B, HW, C)
            return x + self.attn(t).transpose(1, 2).reshape(b, c, h, w)

    class TDown(tnn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv = tnn.Conv2d(c, c, 3, stride=2, padding=1)

        def forward(self, x):
            return self.conv(x)

    class TUp(tnn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv = tnn.Conv2d(c, c, 3, padding=1)

        def forward(self, x):
            return self.conv(TF.interpolate(x, scale_factor=2, mode="nearest"))

    class TUNet(tnn.Module):
        """refgen.nn.UNet's layout (plain ResBlocks, self-attention only), same names."""

        def __init__(self, cin, cout, size, ch, mult, nres, attn_res, heads, num_classes):
            """nres: residual blocks per level (a tuple, as refgen's U-Net keeps it)."""
            super().__init__()
            emb = 4 * ch
            self.ch = ch
            self.embed = tnn.Module()
            self.embed.lin1, self.embed.lin2 = tnn.Linear(ch, emb), tnn.Linear(emb, emb)
            self.embed.label = tnn.Embedding(num_classes + 1, emb) if num_classes else None
            self.conv_in = tnn.Conv2d(cin, ch, 3, padding=1)
            self.down, skips, c, r = tnn.ModuleList(), [ch], ch, size
            for level, m in enumerate(mult):
                for _ in range(nres[level]):
                    blocks = tnn.ModuleList([TResBlock(c, ch * m, emb)])
                    c = ch * m
                    if r in attn_res:
                        blocks.append(TAttnBlock(c, heads))
                    self.down.append(blocks)
                    skips.append(c)
                if level < len(mult) - 1:
                    self.down.append(tnn.ModuleList([TDown(c)]))
                    skips.append(c)
                    r //= 2
            self.mid1, self.mid_attn, self.mid2 = TResBlock(c, c, emb), TAttnBlock(c, heads), TResBlock(c, c, emb)
            self.up = tnn.ModuleList()
            for level, m in reversed(list(enumerate(mult))):
                for i in range(nres[level] + 1):
                    blocks = tnn.ModuleList([TResBlock(c + skips.pop(), ch * m, emb)])
                    c = ch * m
                    if r in attn_res:
                        blocks.append(TAttnBlock(c, heads))
                    if level > 0 and i == nres[level]:
                        blocks.append(TUp(c))
                        r *= 2
                    self.up.append(blocks)
            self.norm_out = tnn.GroupNorm(_gcd_groups(c), c)
            self.conv_out = tnn.Conv2d(c, cout, 3, padding=1)

        def time_embedding(self, t):
            half = self.ch // 2
            freqs = torch.exp(-np.log(10000.0) * torch.arange(half, dtype=torch.float64) / half)
            args = t.double()[:, None] * freqs
            return torch.cat([torch.cos(args), torch.sin(args)], 1).float()

        def forward(self, x, t, y):
            e = self.embed.lin2(TF.silu(self.embed.lin1(self.time_embedding(t))))
            if self.embed.label is not None:
                e = e + self.embed.label(y)
            h = self.conv_in(x)
            hs = [h]
            for blocks in self.down:
                h = self._apply(blocks, h, e)
                hs.append(h)
            h = self._apply([self.mid1, self.mid_attn, self.mid2], h, e)
            for blocks in self.up:
                h = self._apply(blocks, torch.cat([h, hs.pop()], 1), e)
            return self.conv_out(TF.silu(self.norm_out(h)))

        @staticmethod
        def _apply(blocks, h, e):
            for b in blocks:
                h = b(h, e) if isinstance(b, TResBlock) else b(h)
            return h


UNET = dict(channels=16, num_res_blocks=1)  # diffusion_mnist28_small's model


def _ddpm(size):
    return models.create("ddpm", data_shape=(1, size, size), num_classes=10,
                         **({"channels": 8, "num_res_blocks": 1} if SMOKE else UNET))


def _torch_unet(model):
    u, net = model.net, model.network
    tn = TUNet(1, 1, model.data_shape[-1], net.channels, u.mult, u.num_res_blocks, u.attn_res,
               net.heads, 10)
    return tn, copy_weights(u, tn)


def unet_workload(rng):
    b, size = smoke(64, 2), 28
    model = _ddpm(size)
    x = (rng.random((b, 1, size, size), dtype=np.float32) * 2 - 1)
    y = rng.integers(0, 10, b)
    ours = refgen_step(model, Batch(refgen.tensor(x), y), 1e-3)
    if torch is None:
        return ours, None, {}
    tn, n = _torch_unet(model)
    abar = torch.from_numpy(np.cos(np.linspace(0, 1.5, model.T + 1)) ** 2).float()
    xt0, yt = torch.from_numpy(x), torch.from_numpy(y)

    def loss():  # L_simple: t ~ U{1..T}, labels dropped with p = 0.1
        t = torch.randint(1, model.T + 1, (b,))
        eps = torch.randn_like(xt0)
        a = abar[t][:, None, None, None]
        xt = a.sqrt() * xt0 + (1 - a).sqrt() * eps
        lab = torch.where(torch.rand(b) < 0.1, torch.full_like(yt, 10), yt)
        return ((tn(xt, t, lab) - eps) ** 2).mean()
    return ours, torch_step(tn, loss, 1e-3), {"weights_copied": n}


def ddim_workload(rng):
    n_img, steps = smoke(64, 2), smoke(50, 3)
    model = _ddpm(28)
    cond = np.arange(n_img) % 10
    seed = iter(range(10**6))

    def ours():
        model.sample(n_img, cond, rng=default_rng(next(seed)), steps=steps,
                     sampler="ddim", eta=0.0)
    if torch is None:
        return ours, None, {}
    tn, n = _torch_unet(model)
    ts = np.linspace(model.T, 1, steps).round().astype(int)
    abar = np.cos(np.linspace(0, 1.5, model.T + 1)) ** 2
    yt = torch.from_numpy(cond)

    @torch.no_grad()
    def theirs():  # x0 = (x - sqrt(1 - a) eps) / sqrt(a), clipped; x <- sqrt(a') x0 + sqrt(1 - a') eps
        x = torch.randn(n_img, 1, 28, 28)
        for i, t in enumerate(ts):
            a = float(abar[t])
            a_prev = float(abar[ts[i + 1]]) if i + 1 < len(ts) else 1.0
            eps = tn(x, torch.full((n_img,), int(t)), yt)
            x0 = ((x - (1 - a) ** 0.5 * eps) / a ** 0.5).clamp(-1, 1)
            eps = (x - a ** 0.5 * x0) / (1 - a) ** 0.5
            x = a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * eps
        return x
    return ours, theirs, {"weights_copied": n, "steps": steps, "images": n_img}


# --- gated PixelCNN --------------------------------------------------------------------------

if torch is not None:
    class TGated(tnn.Module):
        def __init__(self, cin, c, k, first):
            super().__init__()
            self.first, self.r = first, k // 2
            self.v_conv = tnn.Conv2d(cin, 2 * c, (self.r + 1, k))
            self.h_conv = tnn.Conv2d(cin, 2 * c, (1, self.r + 1))
            self.v_to_h = tnn.Conv2d(2 * c, 2 * c, 1)
            self.h_out = tnn.Conv2d(c, c, 1)
            mask = torch.ones_like(self.h_conv.weight)
            if first:
                mask[..., -1] = 0
            self.register_buffer("h_mask", mask)

        @staticmethod
        def gate(a):
            h = a.shape[1] // 2
            return torch.tanh(a[:, :h]) * torch.sigmoid(a[:, h:])

        def forward(self, v_in, h_in):
            r = self.r
            v = self.v_conv(TF.pad(v_in, (r, r, r, 0)))
            hh = TF.conv2d(TF.pad(h_in, (r, 0, 0, 0)), self.h_conv.weight * self.h_mask, self.h_conv.bias)
            hh = hh + self.v_to_h(TF.pad(v, (0, 0, 1, 0))[:, :, :-1])
            h_out = self.h_out(self.gate(hh))
            return self.gate(v), (h_out if self.first else h_in + h_out)

    class TGatedPixelCNN(tnn.Module):
        def __init__(self, c, layers, k0, k, head):
            super().__init__()
            self.layers = tnn.ModuleList([TGated(1, c, k0, True)] + [TGated(c, c, k, False) for _ in range(layers - 1)])
            self.head1, self.head2 = tnn.Conv2d(c, head, 1), tnn.Conv2d(head, 1, 1)

        def forward(self, x):  # (B, 1, H, W) -> (B, 1, H, W) Bernoulli logits
            v = hs = x
            for layer in self.layers:
                v, hs = layer(v, hs)
            return self.head2(TF.relu(self.head1(TF.relu(hs))))

        def loss(self, x):
            return TF.binary_cross_entropy_with_logits(self(x), x, reduction="none").sum((1, 2, 3)).mean()


def pixelcnn_workload(rng):
    b = smoke(16, 2)
    cfg = dict(channels=24, layers=12, first_kernel=27) if not SMOKE else dict(channels=8, layers=2, first_kernel=7)
    model = models.create("gated-pixelcnn", data_shape=(1, 28, 28), **cfg)
    x = (rng.random((b, 1, 28, 28)) < 0.3).astype(np.float32)
    ours = refgen_step(model, Batch(refgen.tensor(x)), 6e-3)
    if torch is None:
        return ours, None, {}
    tn = TGatedPixelCNN(cfg["channels"], cfg["layers"], cfg["first_kernel"], 3, 64)
    n = copy_weights(model, tn)
    xt = torch.from_numpy(x)
    with torch.no_grad(), refgen.no_grad():
        diff = float(np.max(np.abs(tn(xt).numpy()[:, 0] - model.logits(refgen.tensor(x)).data[:, 0, 0])))
    return ours, torch_step(tn, lambda: tn.loss(xt), 6e-3), {"weights_copied": n,
                                                             "max_abs_diff_logits": diff}


def pixelcnn_draw_workload(rng):
    """4 binary images from the gated PixelCNN above, pixel by pixel, each pixel's logit from
    a pass of the whole network over rows 0..i (refgen's 'full' sampler, the same work on both
    sides); refgen's default 'cached' draw is timed once beside it."""
    n = smoke(4, 1)
    cfg = dict(channels=24, layers=12, first_kernel=27) if not SMOKE else dict(channels=8, layers=2, first_kernel=7)
    size = smoke(28, 6)
    model = models.create("gated-pixelcnn", data_shape=(1, size, size), **cfg)
    seed = iter(range(10**6))

    def ours():
        model.sample(n, rng=default_rng(next(seed)), sampler="full")
    t = time.perf_counter()
    model.sample(n, rng=default_rng(0), sampler="cached")
    extra = {"images": n, "refgen_cached_s": round(time.perf_counter() - t, 3)}
    if torch is None:
        return ours, None, extra
    tn = TGatedPixelCNN(cfg["channels"], cfg["layers"], cfg["first_kernel"], 3, 64)
    extra["weights_copied"] = copy_weights(model, tn)

    @torch.no_grad()
    def theirs():
        x = torch.zeros(n, 1, size, size)
        for i in range(size):
            for j in range(size):
                p = torch.sigmoid(tn(x[:, :, :i + 1])[:, 0, i, j])
                x[:, 0, i, j] = torch.bernoulli(p)
        return x
    return ours, theirs, extra


# --- GPT -------------------------------------------------------------------------------------

if torch is not None:
    class TBlock(tnn.Module):
        def __init__(self, e, heads):
            super().__init__()
            self.ln1, self.ln2 = tnn.LayerNorm(e), tnn.LayerNorm(e)
            self.attn = TAttn(e, heads)
            self.mlp = tnn.Sequential(tnn.Linear(e, 4 * e), tnn.GELU(approximate="tanh"), tnn.Linear(4 * e, e))

        def forward(self, h):
            h = h + self.attn(self.ln1(h), is_causal=True)
            return h + self.mlp(self.ln2(h))

    class TGPT(tnn.Module):
        def __init__(self, vocab, block, n_layer, heads, e, out):
            super().__init__()
            self.tok_emb = tnn.Embedding(vocab, e)
            self.pos_emb = tnn.Parameter(torch.zeros(block, e))
            self.blocks = tnn.ModuleList(TBlock(e, heads) for _ in range(n_layer))
            self.ln_f = tnn.LayerNorm(e)
            self.head = tnn.Linear(e, out, bias=False)

        def forward(self, tokens):  # (B, T) ids -> (B, T, V) logits
            h = self.tok_emb(tokens) + self.pos_emb[:tokens.shape[1]]
            for blk in self.blocks:
                h = blk(h)
            return self.head(self.ln_f(h))

        def loss(self, ids):  # ids (B, D) in {0, 1}; input [BOS, x_1 .. x_{D-1}]
            bos = torch.full((ids.shape[0], 1), 2, dtype=torch.long)
            logits = self(torch.cat([bos, ids[:, :-1]], 1))
            return TF.cross_entropy(logits.transpose(1, 2), ids, reduction="none").sum(1).mean()


def gpt_workload(rng):
    b = smoke(32, 2)
    cfg = dict(n_layer=4, n_head=4, n_embd=64) if not SMOKE else dict(n_layer=1, n_head=2, n_embd=16)
    model = models.create("gpt", data_shape=(1, 14, 14), **cfg)
    x = (rng.random((b, 1, 14, 14)) < 0.3).astype(np.float32)
    ours = refgen_step(model, Batch(refgen.tensor(x)), 2e-3)
    if torch is None:
        return ours, None, {}
    tn = TGPT(3, 196, cfg["n_layer"], cfg["n_head"], cfg["n_embd"], 2)
    wrapper = tnn.Module()
    wrapper.net = tn  # refgen's parameters live under model.net
    n = copy_weights(model, wrapper)
    ids = torch.from_numpy(x.reshape(b, -1).astype(np.int64))
    tokens = np.concatenate([np.full((b, 1), 2), x.reshape(b, -1)[:, :-1]], 1).astype(np.int64)
    with torch.no_grad(), refgen.no_grad():  # the mirror computes the same logits
        diff = float(np.max(np.abs(tn(torch.from_numpy(tokens)).numpy() - model.net(tokens).data)))
    return ours, torch_step(tn, lambda: tn.loss(ids), 2e-3), {"weights_copied": n,
                                                              "max_abs_diff_logits": diff}


# --- ops -------------------------------------------------------------------------------------

def _op_pair(rng, shapes, ours_f, theirs_f, n_params=0):
    """fwd + bwd of f(*inputs) with a fixed upstream gradient, on both sides."""
    arrays = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    ts = [refgen.tensor(a, requires_grad=True) for a in arrays]
    y = ours_f(*ts)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    gy_r = refgen.tensor(gy)

    def ours():
        for t in ts:
            t.grad = None
        ours_f(*ts).backward(gy_r)
    if torch is None:
        return ours, None, {}
    tt = [torch.from_numpy(a.copy()).requires_grad_() for a in arrays]
    gy_t = torch.from_numpy(gy)

    def theirs():
        for t in tt:
            t.grad = None
        theirs_f(*tt).backward(gy_t)
    with torch.no_grad():
        err = float(np.max(np.abs(theirs_f(*tt).numpy() - ours_f(*ts).data)))
    return ours, theirs, {"max_abs_diff_forward": err}


def attention_workload(rng):
    shape = smoke((32, 4, 196, 32), (2, 2, 16, 8))
    return _op_pair(rng, [shape] * 3,
                    lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                    lambda q, k, v: TF.scaled_dot_product_attention(q, k, v, is_causal=True))


def gelu_tanh_workload(rng):
    return _op_pair(rng, [smoke((6272, 256), (16, 8))], lambda x: F.gelu(x, approximate="tanh"),
                    lambda x: TF.gelu(x, approximate="tanh"))


def silu_workload(rng):
    return _op_pair(rng, [smoke((64, 32, 28, 28), (2, 4, 5, 5))], F.silu, lambda x: TF.silu(x))


def sigmoid_workload(rng):
    return _op_pair(rng, [smoke((64, 32, 28, 28), (2, 4, 5, 5))], F.sigmoid, lambda x: torch.sigmoid(x))


def layer_norm_workload(rng):
    s = smoke((32, 196, 64), (2, 5, 8))
    e = s[-1]
    return _op_pair(rng, [s, (e,), (e,)], lambda x, w, b: F.layer_norm(x, e, w, b),
                    lambda x, w, b: TF.layer_norm(x, (e,), w, b))


def group_norm_workload(rng):
    s = smoke((64, 32, 28, 28), (2, 8, 5, 5))
    c = s[1]
    return _op_pair(rng, [s, (c,), (c,)], lambda x, w, b: F.group_norm(x, 8, w, b),
                    lambda x, w, b: TF.group_norm(x, 8, w, b))


WORKLOADS = {"vae": vae_workload, "unet": unet_workload, "pixelcnn": pixelcnn_workload,
             "pixelcnn_draw": pixelcnn_draw_workload,
             "gpt": gpt_workload, "ddim": ddim_workload, "attention": attention_workload,
             "gelu_tanh": gelu_tanh_workload, "silu": silu_workload, "sigmoid": sigmoid_workload,
             "layer_norm": layer_norm_workload, "group_norm": group_norm_workload}


def _git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                              capture_output=True, text=True, timeout=10).stdout.strip() or None
    except OSError:
        return None


def main(argv=None):
    args = parse(argv)
    names = [n for n in args.only.split(",") if n] or list(WORKLOADS)
    unknown = set(names) - set(WORKLOADS)
    if unknown:
        raise SystemExit(f"unknown workloads {sorted(unknown)}; accepted: {', '.join(WORKLOADS)}")
    load_before = [round(v, 2) for v in os.getloadavg()]
    results = {}
    for name in names:
        rng = np.random.default_rng(0)
        torch is not None and torch.manual_seed(0)
        ours, theirs, info = WORKLOADS[name](rng)
        res = paired(ours, theirs, args.ddim_pairs if name in ("ddim", "pixelcnn_draw") else args.pairs)
        results[name] = {**res, **info}
        line = f"{name:11s} refgen {res['refgen_s'] * 1e3:9.1f} ms"
        if "ratio" in res:
            line += f"   torch {res['torch_s'] * 1e3:9.1f} ms   ratio {res['ratio']:.2f}"
        print(line, flush=True)
    result = {"command": command(), "machine": machine(), "load_avg_at_start": load_before,
              "torch": torch.__version__ if torch is not None else None,
              "torch_threads": torch.get_num_threads() if torch is not None else None,
              "refgen_commit": _git_commit(), "label": args.label,
              "timing": "median over alternating refgen/torch pairs in one process; ratio = "
                        "median of per-pair refgen_s / torch_s; one thread, float32",
              "results": results}
    write_json(RESULTS / f"{args.tag}.json", result)


if __name__ == "__main__":
    main()
