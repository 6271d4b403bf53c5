"""Train the MNIST feature network behind fid_mnist / cond_accuracy, with refgen itself.

    OPENBLAS_NUM_THREADS=1 python benchmarks/train_mnist_classifier.py

Adam, batch 128, a cosine learning-rate decay over a few epochs on the 60,000 training
images (pixels k / 127.5 - 1). The only augmentation: a fraction ``--low-res`` of each
batch is shown as its ``mnist-14`` version (2x2 average pooling, then nearest upsampling
back to 28x28, exactly what the classifier does to 14x14 inputs), so that FID and
cond_accuracy of mnist-14 models are measured by a network that has seen such images.

Writes refgen/metrics/mnist_classifier.npz (float32 weights), puts its sha256 into
CLASSIFIER_SHA256 in refgen/metrics/classifier.py (and prints it), and reports test accuracy
per epoch, at 28x28 and at 14x14, in benchmarks/results/mnist_classifier.json and .md.
``--smoke``: one epoch on 64 images, the weights written to a temporary directory (the
committed weights and their sha256 are left alone).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, SMOKE, add_smoke, load, low_res, machine  # noqa: E402

import numpy as np  # noqa: E402

import refgen.functional as F  # noqa: E402
from refgen import backend  # noqa: E402
from refgen.autograd import Tensor, no_grad  # noqa: E402
from refgen.metrics import classifier as C  # noqa: E402
from refgen.optim import Adam, cosine_schedule  # noqa: E402


def accuracy(model, x, y, batch_size=1000) -> float:
    """Fraction of (x, y) the model classifies correctly (eval mode, no graph)."""
    model.eval()
    correct = 0
    with no_grad():
        for i in range(0, len(x), batch_size):
            logits = model(Tensor(backend.asarray(x[i:i + batch_size])))
            correct += int((backend.to_numpy(logits.data).argmax(1) == y[i:i + batch_size]).sum())
    model.train()
    return correct / len(x)


def update_sha_constant(sha: str):
    src = Path(C.__file__)
    text = src.read_text()
    new, n = re.subn(r'^CLASSIFIER_SHA256 = "[0-9a-f]{64}"', f'CLASSIFIER_SHA256 = "{sha}"',
                     text, flags=re.M)
    if n != 1:
        raise SystemExit(f"could not find the CLASSIFIER_SHA256 line in {src}")
    src.write_text(new)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--low-res", type=float, default=0.25,
                   help="fraction of each batch shown at 14x14 resolution")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(C.CLASSIFIER_PATH))
    p.add_argument("--no-update-sha", action="store_true",
                   help="do not write the new sha256 into refgen/metrics/classifier.py")
    p.add_argument("--tag", default="mnist_classifier")
    p.add_argument("--train-limit", type=int, default=None,
                   help="use only the first N training images")
    args = add_smoke(p).parse_args(argv)
    if SMOKE:
        args.epochs, args.batch_size, args.no_update_sha = 1, 16, True
        args.out = str(RESULTS / "mnist_classifier.npz")
    return args


def main(argv=None):
    args = parse(argv)
    cmd = "python " + " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])
    train = load("mnist", "train")
    if args.train_limit:
        train.x, train.y = train.x[:args.train_limit], train.y[:args.train_limit]
    test = load("mnist", "test")
    model, history, wall = fit(args, train, test)
    out, sha = save_weights(args, model)
    # the file as load_classifier will see it: reload, verify and score again
    reloaded = C.load_classifier(out, sha256=sha)
    final = accuracy(reloaded, test.x, test.y)
    result = {
        "command": cmd, "machine": machine(), "wall_s": round(wall, 1),
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
        "schedule": "cosine, 100 warmup steps", "optimizer": "Adam", "low_res": args.low_res,
        "seed": args.seed, "parameters": model.num_parameters(),
        "architecture": f"conv3x3 channels {C.CHANNELS}, 2 max-pools, fc {C.HIDDEN}, fc 10",
        "file": os.path.relpath(out, ROOT), "file_bytes": out.stat().st_size, "sha256": sha,
        "test_acc": final, "test_acc_14x14": history[-1]["test_acc_14x14"], "history": history,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = "\n".join(f"| {h['epoch']} | {h['train_loss']:.4f} | {h['train_acc']:.4f} | "
                     f"{h['test_acc']:.4f} | {h['test_acc_14x14']:.4f} | {h['wall_s']} |"
                     for h in history)
    m = result["machine"]
    (RESULTS / f"{args.tag}.md").write_text(
        f"# MNIST feature network (for fid_mnist and cond_accuracy)\n\n"
        f"Command: `OPENBLAS_NUM_THREADS=1 {cmd}`\n\n"
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), shared; backend {m['backend']}, "
        f"Python {m['python']}, NumPy {m['numpy']}, BLAS threads {m['blas_threads']}.\n\n"
        f"Network: {result['architecture']}; {result['parameters']} parameters, "
        f"`{result['file']}` {result['file_bytes']} bytes, sha256 `{sha}`.\n\n"
        f"Training: Adam lr {args.lr}, cosine decay, batch {args.batch_size}, {args.epochs} "
        f"epochs, {args.low_res:.0%} of each batch shown at 14x14; wall {wall:.0f} s.\n\n"
        f"**Test accuracy: {final:.4f}** (10,000 test images; {result['test_acc_14x14']:.4f} "
        f"on the same images at 14x14).\n\n"
        f"| epoch | train loss | train acc | test acc | test acc 14x14 | wall s |\n"
        f"|---|---|---|---|---|---|\n{rows}\n")
    print(json.dumps({k: result[k] for k in ("test_acc", "test_acc_14x14", "wall_s", "sha256")}),
          flush=True)



def fit(args, train, test):
    """Adam with a cosine decay, a fraction of each batch shown at 14x14; test accuracy at
    28x28 and 14x14 after every epoch."""
    test14 = low_res(test.x)
    rng = np.random.default_rng(args.seed)
    model = C.MNISTClassifier(seed=args.seed)
    opt = Adam(model.parameters(), lr=args.lr)
    n = len(train.x)
    steps_per_epoch = n // args.batch_size  # each epoch's tail is dropped
    total = steps_per_epoch * args.epochs
    print(f"{model.num_parameters()} parameters; {total} steps of batch {args.batch_size}",
          flush=True)

    history, step, t0 = [], 0, time.perf_counter()
    for epoch in range(args.epochs):
        perm = rng.permutation(n)
        loss_sum, correct, seen = 0.0, 0, 0
        for b in range(steps_per_epoch):
            idx = perm[b * args.batch_size:(b + 1) * args.batch_size]
            xb, yb = train.x[idx], train.y[idx]
            pick = rng.random(len(idx)) < args.low_res
            if pick.any():
                xb = xb.copy()
                xb[pick] = low_res(xb[pick])
            opt.lr = args.lr * cosine_schedule(step, total, warmup=100)
            logits = model(Tensor(backend.asarray(xb)))
            loss = F.cross_entropy(logits, backend.asarray(yb))
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            loss_sum += float(loss.data) * len(idx)
            correct += int((backend.to_numpy(logits.data).argmax(1) == yb).sum())
            seen += len(idx)
            if step % 50 == 0 or step == total:
                el = time.perf_counter() - t0
                print(f"step {step}/{total} epoch {epoch + 1} loss {loss_sum / seen:.4f} "
                      f"train_acc {correct / seen:.4f} {step / el:.2f} steps/s "
                      f"eta {(total - step) * el / step:.0f}s", flush=True)
        acc, acc14 = accuracy(model, test.x, test.y), accuracy(model, test14, test.y)
        rec = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / seen,
               "test_acc": acc, "test_acc_14x14": acc14,
               "wall_s": round(time.perf_counter() - t0, 1)}
        history.append(rec)
        print(json.dumps(rec), flush=True)
    wall = time.perf_counter() - t0
    return model, history, wall


def save_weights(args, model):
    """The float32 weights to --out, and (for the committed file) the sha256 constant."""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: backend.to_numpy(v).astype(np.float32) for k, v in model.state_dict().items()}
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez(tmp, **state)
    os.replace(tmp, out)
    sha = C.file_sha256(out)
    print(f"wrote {out} ({out.stat().st_size} bytes), sha256 {sha}", flush=True)
    if not args.no_update_sha and out.resolve() == C.CLASSIFIER_PATH.resolve():
        update_sha_constant(sha)
        print(f"updated CLASSIFIER_SHA256 in {C.__file__}", flush=True)
    return out, sha


if __name__ == "__main__":
    main()
