#!/usr/bin/env python3
"""Train a tiny DenseNet-BC on a procedural 10-class shapes dataset.

The golden fixtures of ``gen_golden.py`` have random weights, so their
predictions mean nothing: a reduced-precision (bf16) build can only be
checked there by its logits error. This script trains a small DenseNet on
a seeded, procedurally generated image set so that top-1 agreement with the
float32 model (and accuracy) is a meaningful check. It writes to
``tests/fixtures/trained/shapes10/``:

  config.json          the DenseNet config (densenetc's field names, as
                       gen_golden.py writes them) and, under "generator",
                       how the fixture was made (seed, torch version, epochs,
                       sizes, test accuracy, normalisation, class names,
                       training wall time, f32-vs-f64 logits discrepancy)
  weights.safetensors  the eval-mode state_dict, float32 (torchvision key
                       names, ``num_batches_tracked`` included as int64)
  test_images_u8.npy   uint8 [256, 3, 32, 32] held-out test images (NCHW)
  test_labels.npy      int64 [256] their labels
  torch_logits.npy     float32 [256, 10] PyTorch float32 eval-mode logits of
                       the normalised test images

Input normalisation: x = (u8 / 255 - 0.5) / 0.25, per channel, float32.

The classes (shape x colour family), label = 2 * shape + family:

  0 square_warm   1 square_cool     filled axis-aligned square
  2 disc_warm     3 disc_cool       filled disc
  4 hbar_warm     5 hbar_cool       horizontal bar (wide, thin)
  6 vbar_warm     7 vbar_cool       vertical bar (tall, thin)
  8 cross_warm    9 cross_cool      diagonal cross (an X of two strokes)

"warm" colours have red as the dominant channel (red, orange, magenta-ish),
"cool" colours have blue or green dominant (blue, cyan, teal). Each image has
a random-grey noisy background, the shape at a random position and size with
colour jitter inside its family, and 1-3 clutter items (small blobs of
random colour and short random strokes), so the task is not trivial. Some
ambiguous cases (small shapes, bars close to squares, low contrast) keep
the accuracy below 100%.

Usage: tools/train_tiny.py [--out DIR] [--epochs N] [--seed S]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_golden import BN_EPS, DenseNet, rel_error  # noqa: E402

CLASSES = [
    "square_warm", "square_cool",
    "disc_warm", "disc_cool",
    "hbar_warm", "hbar_cool",
    "vbar_warm", "vbar_cool",
    "cross_warm", "cross_cool",
]

CFG = dict(
    growth_rate=12, block_config=[4, 4, 4], num_init_features=24, bn_size=4,
    compression=0.5, num_classes=10, in_channels=3, image_size=32,
    stem="cifar", conv_bias=False, batch=256,
)

MEAN, STD = 0.5, 0.25
SIZE = 32


def family_colour(rng: np.random.Generator, family: int) -> np.ndarray:
    """A random RGB colour (0..255) of the warm (0) or cool (1) family."""
    hi = rng.uniform(150, 255)
    mid = rng.uniform(0, hi * 0.85)
    lo = rng.uniform(0, hi * 0.5)
    if family == 0:  # red dominant; green or blue second
        c = [hi, mid, lo] if rng.random() < 0.5 else [hi, lo, mid]
    else:  # blue or green dominant, red lowest
        c = [lo, mid, hi] if rng.random() < 0.5 else [lo, hi, mid]
    return np.array(c, dtype=np.float32)


def draw_shape(rng: np.random.Generator, shape: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Boolean mask [32, 32] of a shape of kind `shape` at a random place."""
    if shape == 0:  # filled square
        s = rng.uniform(7, 14)
        cy, cx = rng.uniform(s / 2 + 1, SIZE - s / 2 - 1, 2)
        return (np.abs(yy - cy) <= s / 2) & (np.abs(xx - cx) <= s / 2)
    if shape == 1:  # disc
        r = rng.uniform(3.5, 7.5)
        cy, cx = rng.uniform(r + 1, SIZE - r - 1, 2)
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    if shape in (2, 3):  # horizontal / vertical bar
        length = rng.uniform(12, 26)
        thick = rng.uniform(2.5, 5.5)
        ly, lx = (thick, length) if shape == 2 else (length, thick)
        cy = rng.uniform(ly / 2 + 1, SIZE - ly / 2 - 1)
        cx = rng.uniform(lx / 2 + 1, SIZE - lx / 2 - 1)
        return (np.abs(yy - cy) <= ly / 2) & (np.abs(xx - cx) <= lx / 2)
    # diagonal cross: two strokes |dy - dx| and |dy + dx| within a square
    h = rng.uniform(5, 10)
    w = rng.uniform(1.0, 2.0)
    cy, cx = rng.uniform(h + 1, SIZE - h - 1, 2)
    dy, dx = yy - cy, xx - cx
    inside = (np.abs(dy) <= h) & (np.abs(dx) <= h)
    return inside & ((np.abs(dy - dx) <= w * 1.4142) | (np.abs(dy + dx) <= w * 1.4142))


def make_dataset(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n images uint8 [n, 3, 32, 32] and labels int64 [n], balanced classes."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    labels = np.arange(n, dtype=np.int64) % len(CLASSES)
    rng.shuffle(labels)
    images = np.empty((n, 3, SIZE, SIZE), dtype=np.uint8)
    for i, label in enumerate(labels):
        shape, family = int(label) // 2, int(label) % 2
        bg = rng.uniform(40, 200)
        tint = rng.uniform(-25, 25, 3).astype(np.float32)
        img = np.empty((3, SIZE, SIZE), dtype=np.float32)
        img[:] = (bg + tint)[:, None, None]
        img += rng.normal(0, rng.uniform(8, 35), (3, SIZE, SIZE)).astype(np.float32)
        # clutter: small blobs and short strokes in arbitrary colours
        for _ in range(rng.integers(1, 4)):
            col = rng.uniform(0, 255, 3).astype(np.float32)
            if rng.random() < 0.5:
                r = rng.uniform(1.0, 2.5)
                cy, cx = rng.uniform(0, SIZE, 2)
                m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            else:
                cy, cx = rng.uniform(0, SIZE, 2)
                ang = rng.uniform(0, np.pi)
                ln = rng.uniform(3, 7)
                dy, dx = yy - cy, xx - cx
                along = dy * np.sin(ang) + dx * np.cos(ang)
                across = -dy * np.cos(ang) + dx * np.sin(ang)
                m = (np.abs(along) <= ln / 2) & (np.abs(across) <= 0.6)
            img[:, m] = col[:, None]
        mask = draw_shape(rng, shape, yy, xx)
        col = family_colour(rng, family)
        alpha = rng.uniform(0.35, 1.0)  # low contrast sometimes
        img[:, mask] = alpha * col[:, None] + (1 - alpha) * img[:, mask]
        img += rng.normal(0, 6, (3, SIZE, SIZE)).astype(np.float32)
        images[i] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return images, labels


def normalise(u8: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(u8).float() / 255.0 - MEAN) / STD


def main() -> int:
    repo = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=repo / "tests" / "fixtures" / "trained" / "shapes10")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--train", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=20240)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    n_test = CFG["batch"]

    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    train_x, train_y = make_dataset(args.train, rng)
    test_x, test_y = make_dataset(n_test, rng)
    gen_s = time.perf_counter() - t0
    print(f"dataset: {args.train} train + {n_test} test images in {gen_s:.1f}s")

    model = DenseNet(CFG)
    xt, yt = normalise(train_x), torch.from_numpy(train_y)
    xs = normalise(test_x)
    batch = 64
    steps = args.epochs * ((args.train + batch - 1) // batch)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(args.train, generator=gen)
        total, correct, loss_sum = 0, 0, 0.0
        for s in range(0, args.train, batch):
            idx = perm[s:s + batch]
            x, y = xt[idx], yt[idx]
            # augmentation: random horizontal flip (every class is flip-invariant)
            flip = torch.rand(len(idx), generator=gen) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
            out = model(x)
            loss = F.cross_entropy(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            correct += int((out.argmax(1) == y).sum())
            total += len(idx)
        model.eval()
        with torch.no_grad():
            acc = float((model(xs).argmax(1).numpy() == test_y).mean())
        print(f"epoch {epoch + 1}: loss {loss_sum / total:.4f}, train acc {correct / total:.4f}, "
              f"test acc {acc:.4f} ({time.perf_counter() - t0:.1f}s)")
    train_s = time.perf_counter() - t0

    model.eval()
    with torch.no_grad():
        y32 = model(xs)
        y64 = copy.deepcopy(model).double()(xs.double())
    f32_err = rel_error(y32, y64)
    pred = y32.argmax(1).numpy()
    correct = int((pred == test_y).sum())
    acc = correct / n_test
    agree64 = float((y64.argmax(1).numpy() == pred).mean())
    print(f"test accuracy {acc:.4f} ({correct}/{n_test}); f32 vs f64 rel error {f32_err:.2e}, "
          f"top-1 agreement {agree64:.4f}; training {train_s:.1f}s")

    from safetensors.torch import save_file

    d = args.out
    d.mkdir(parents=True, exist_ok=True)
    state = OrderedDict((k, v.detach().contiguous()) for k, v in model.state_dict().items())
    for k, v in state.items():
        assert v.dtype == (torch.int64 if k.endswith("num_batches_tracked") else torch.float32), k
    save_file(dict(state), str(d / "weights.safetensors"), metadata={"format": "pt"})
    np.save(d / "test_images_u8.npy", np.ascontiguousarray(test_x, dtype=np.uint8))
    np.save(d / "test_labels.npy", np.ascontiguousarray(test_y, dtype="<i8"))
    np.save(d / "torch_logits.npy", np.ascontiguousarray(y32.numpy(), dtype="<f4"))
    params = sum(v.numel() for k, v in state.items() if not k.endswith("num_batches_tracked"))
    meta = dict(CFG)
    meta["generator"] = {
        "script": "tools/train_tiny.py",
        "seed": args.seed,
        "torch": torch.__version__,
        "threads": args.threads,
        "bn_eps": BN_EPS,
        "tensors": len(state),
        "numel": params,
        "dataset": "procedural shapes10 (see tools/train_tiny.py): 5 shapes x 2 colour families",
        "class_names": CLASSES,
        "normalisation": "x = (u8 / 255 - 0.5) / 0.25, float32, every channel",
        "train_size": args.train,
        "test_size": n_test,
        "epochs": args.epochs,
        "optimizer": f"Adam (weight decay 1e-4), one-cycle lr max 3e-3, batch {batch}, random h-flip",
        "test_correct": correct,
        "test_accuracy": acc,
        "train_wall_s": round(train_s, 1),
        "dataset_wall_s": round(gen_s, 1),
        "torch_logits": "float32 eval-mode PyTorch CPU logits of the normalised test images",
        "torch_f32_vs_f64_rel_error": f32_err,
        "torch_f32_vs_f64_top1_agreement": agree64,
    }
    (d / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    for f in sorted(d.iterdir()):
        print(f"  wrote {f} ({f.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
