"""refgen's DCGAN recipe re-run in PyTorch from the same initial weights: is the MNIST FID the
recipe's or refgen's?

    OPENBLAS_NUM_THREADS=1 nice python benchmarks/gan_mnist_torch.py --steps 19800 \\
        --eval-at 9900,19800

Builds gan_mnist.py's model (``nsgan`` at ``channels=32`` on 28x28 MNIST: the DCGAN
generator Linear -> (64, 7, 7) -> BN, ReLU, ConvTranspose 4x4/2 -> BN, ReLU, ConvTranspose
4x4/2 -> tanh, and the discriminator Conv 4x4/2 -> LReLU(0.2) x 2 -> Linear 256 -> LReLU ->
Linear 1), copies its initial weights into a PyTorch mirror of the same layers (every
parameter found by name), and trains the mirror with the same recipe: batch 64 drawn with
replacement, z ~ N(0, I) of dimension 64, one discriminator step on -log D(x) - log(1 -
D(G(z))) (on logits, softplus) then one generator step on -log D(G(z)), Adam at 2e-4 with
betas (0.5, 0.999), one thread. At each --eval-at step it scores --n samples of the
generator in eval mode (BatchNorm's running statistics) with refgen's own FID (the MNIST
feature net against the test set), the measure gan_mnist.py reports; the last point also at
--eval-n. Writes benchmarks/results/<tag>.json. Needs ``torch`` (the ``bench`` extra); without
it the script says so in its result file and exits. ``--smoke``: a few steps, 20 samples.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SMOKE, add_smoke, command, load, machine, smoke, write_result  # noqa: E402

import numpy as np  # noqa: E402

from refgen.metrics import fid_mnist  # noqa: E402
from refgen.models import create  # noqa: E402

try:
    import torch
    import torch.nn as tnn
except ImportError:  # the optional bench extra
    torch = None


def mirror(ch):
    """The PyTorch twin of refgen's conv Generator and Discriminator (same parameter names)."""
    class G(tnn.Module):
        def __init__(self):
            super().__init__()
            self.fc = tnn.Linear(64, 2 * ch * 49)
            self.ups = tnn.ModuleList([tnn.ConvTranspose2d(2 * ch, ch, 4, 2, 1), tnn.ConvTranspose2d(ch, 1, 4, 2, 1)])
            self.norms = tnn.ModuleList([tnn.BatchNorm2d(2 * ch), tnn.BatchNorm2d(ch)])

        def forward(self, z):
            h = self.fc(z).reshape(len(z), 2 * ch, 7, 7)
            for norm, up in zip(self.norms, self.ups):
                h = up(torch.relu(norm(h)))
            return torch.tanh(h)

    class D(tnn.Module):
        def __init__(self):
            super().__init__()
            self.convs = tnn.ModuleList([tnn.Conv2d(1, ch, 4, 2, 1), tnn.Conv2d(ch, 2 * ch, 4, 2, 1)])
            self.layers = tnn.ModuleList([tnn.Linear(2 * ch * 49, 256)])
            self.head = tnn.Linear(256, 1)

        def forward(self, x):
            h = x
            for conv in self.convs:
                h = tnn.functional.leaky_relu(conv(h), 0.2)
            h = tnn.functional.leaky_relu(self.layers[0](h.flatten(1)), 0.2)
            return self.head(h).reshape(-1)

    return G(), D()


def copy_in(src, dst):
    """refgen module -> torch module by parameter name; returns how many were copied."""
    ours = dict(src.named_parameters())
    with torch.no_grad():
        for name, p in dst.named_parameters():
            if name not in ours or tuple(ours[name].shape) != tuple(p.shape):
                raise ValueError(f"torch parameter {name} {tuple(p.shape)} has no refgen twin")
            p.copy_(torch.from_numpy(np.array(ours[name].data)))
    return len(list(dst.parameters()))


def fid_of(G, n, seed):
    G.eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        x = torch.cat([G(torch.randn(min(500, n - i), 64, generator=gen)) for i in range(0, n, 500)]).numpy()
    G.train()
    return float(fid_mnist(x.astype(np.float32)))


def main():
    p = add_smoke(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    p.add_argument("--steps", type=int, default=19800)
    p.add_argument("--eval-at", default="9900,19800")
    p.add_argument("--n", type=int, default=2000, help="samples at each --eval-at step")
    p.add_argument("--eval-n", type=int, default=10000, help="samples at the last step too")
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default="gan_mnist_torch")
    args = p.parse_args()
    if torch is None:
        write_result(args.tag, {"command": command(), "skipped": "torch is not installed (pip install refgen[bench])"})
        return
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    steps, n = smoke(args.steps, 4), smoke(args.n, 20)
    points = sorted({min(smoke(int(s), 4), steps) for s in args.eval_at.split(",")})
    ours = create("nsgan", data_shape=(1, 28, 28), seed=args.seed, channels=args.channels)
    G, D = mirror(args.channels)
    copied = copy_in(ours.G, G) + copy_in(ours.D, D)
    x = torch.from_numpy(load("mnist", "train").x[:smoke(60000, 64)])
    opt_g = torch.optim.Adam(G.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), 2e-4, betas=(0.5, 0.999))
    sp, rng = tnn.functional.softplus, np.random.default_rng(args.seed)
    t0, curve, evals, train_s = time.perf_counter(), [], {}, 0.0
    for k in range(1, steps + 1):
        ts = time.perf_counter()
        xb = x[rng.integers(0, len(x), 64)]
        with torch.no_grad():
            fake = G(torch.randn(64, 64))
        d_loss = sp(-D(xb)).mean() + sp(D(fake)).mean()                  # -log D(x) - log(1 - D(G(z)))
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        g_loss = sp(-D(G(torch.randn(64, 64)))).mean()                  # -log D(G(z))
        opt_g.zero_grad()
        g_loss.backward()
        opt_g.step()
        train_s += time.perf_counter() - ts
        if k % max(1, steps // 20) == 0:
            curve.append((k, round(d_loss.item(), 4), round(g_loss.item(), 4)))
            print("step", *curve[-1], f"{time.perf_counter() - t0:.0f}s", flush=True)
        if k in points:
            evals[str(k)] = {"fid_mnist": fid_of(G, n, args.seed + 1), "n": n}
            print("fid", k, evals[str(k)], flush=True)
    last = {"fid_mnist": fid_of(G, smoke(args.eval_n, 20), args.seed + 2), "n": smoke(args.eval_n, 20)}
    write_result(args.tag, {
        "command": command(), "machine": machine(), "torch": torch.__version__,
        "model": f"nsgan channels={args.channels} (refgen's initial weights, {copied} tensors copied)",
        "recipe": "batch 64, z_dim 64, Adam 2e-4 betas (0.5, 0.999), one D then one G step, non-saturating",
        "steps": steps, "train_s": round(train_s, 1), "train_s_per_step": round(train_s / steps, 4),
        "fid_by_step": evals, "fid_at_end": last, "loss_curve (step, d, g)": curve,
        "sampling": "eval mode (BatchNorm running statistics), trained weights"})


if __name__ == "__main__":
    main()
