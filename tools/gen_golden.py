#!/usr/bin/env python3
"""Generate densenetc's golden fixtures from PyTorch.

For each case, builds a DenseNet whose module structure and parameter names
are torchvision's (``features.conv0``, ``features.denseblock1.denselayer1.
norm1``, ``features.transition1.conv``, ``features.norm5``, ``classifier``),
fills it with random weights *and* random BatchNorm statistics, puts it in
eval mode, runs a random input through it, and writes to
``tests/fixtures/golden/<case>/``:

  config.json          the DenseNet config (densenetc's field names) and how
                       the fixture was made (under "generator")
  weights.safetensors  the state_dict (num_batches_tracked included, as in a
                       real checkpoint; importers must ignore it)
  weights.pth          the same state_dict, ``torch.save``d
  input.npy            float32 NCHW input: standard normal plus a per-image,
                       per-channel offset U(-1, 1), so that the pooled
                       features (and the logits) differ between images
  features.npy         float32 output of ``model.features`` (after norm5,
                       before the final ReLU), NCHW, computed in float64
  output.npy           float32 logits, computed in float64 from the same
                       (float32) weights and input, then rounded: the exact
                       PyTorch semantics without float32 accumulation noise
  output_torch_f32.npy float32 logits of the float32 PyTorch CPU model

The model is written here rather than taken from torchvision because
torchvision's DenseNet has no CIFAR stem, plain (no-bottleneck) layers,
compression other than 0.5, conv biases or other input channel counts.
When torchvision is importable, the script checks that this module and
torchvision's have identical state_dict keys and shapes for DenseNet-121
and compute the same logits on the ImageNet-stem case.

Usage: tools/gen_golden.py [--out DIR] [--case NAME ...]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

BN_EPS = 1e-5


class DenseLayer(nn.Module):
    """torchvision's ``_DenseLayer``; with ``bn_size == 0`` the plain layer
    of the paper: norm1, relu1, conv1 (3x3, ``growth_rate`` outputs)."""

    def __init__(self, cin: int, growth_rate: int, bn_size: int, bias: bool):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin, eps=BN_EPS)
        self.relu1 = nn.ReLU()
        if bn_size > 0:
            mid = bn_size * growth_rate
            self.conv1 = nn.Conv2d(cin, mid, 1, bias=bias)
            self.norm2 = nn.BatchNorm2d(mid, eps=BN_EPS)
            self.relu2 = nn.ReLU()
            self.conv2 = nn.Conv2d(mid, growth_rate, 3, padding=1, bias=bias)
        else:
            self.conv1 = nn.Conv2d(cin, growth_rate, 3, padding=1, bias=bias)
        self.bottleneck = bn_size > 0

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.conv1(self.relu1(self.norm1(torch.cat(features, 1))))
        if self.bottleneck:
            x = self.conv2(self.relu2(self.norm2(x)))
        return x


class DenseBlock(nn.ModuleDict):
    """torchvision's ``_DenseBlock``: layers ``denselayer1..``; layer i sees
    the block input and the outputs of layers 1..i-1, concatenated."""

    def __init__(self, layers: int, cin: int, growth_rate: int, bn_size: int, bias: bool):
        super().__init__()
        for i in range(layers):
            self.add_module(
                "denselayer%d" % (i + 1),
                DenseLayer(cin + i * growth_rate, growth_rate, bn_size, bias),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    """torchvision's ``_Transition``: norm, relu, 1x1 conv, 2x2/2 avg pool."""

    def __init__(self, cin: int, cout: int, bias: bool):
        super().__init__()
        self.norm = nn.BatchNorm2d(cin, eps=BN_EPS)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(cin, cout, 1, bias=bias)
        self.pool = nn.AvgPool2d(2, 2)


def transition_channels(c: int, compression: float) -> int:
    """floor(C * theta), in float64 as densenetc computes it."""
    return int(math.floor(c * compression))


class DenseNet(nn.Module):
    """torchvision's ``DenseNet``, generalised to densenetc's config."""

    def __init__(self, cfg: dict):
        super().__init__()
        k, bias = cfg["growth_rate"], cfg["conv_bias"]
        c = cfg["num_init_features"]
        if cfg["stem"] == "imagenet":
            stem = [
                ("conv0", nn.Conv2d(cfg["in_channels"], c, 7, 2, 3, bias=bias)),
                ("norm0", nn.BatchNorm2d(c, eps=BN_EPS)),
                ("relu0", nn.ReLU()),
                ("pool0", nn.MaxPool2d(3, 2, 1)),
            ]
        elif cfg["stem"] == "cifar":
            stem = [("conv0", nn.Conv2d(cfg["in_channels"], c, 3, 1, 1, bias=bias))]
        else:
            raise ValueError("stem must be 'imagenet' or 'cifar'")
        self.features = nn.Sequential(OrderedDict(stem))
        blocks = cfg["block_config"]
        for i, layers in enumerate(blocks):
            block = DenseBlock(layers, c, k, cfg["bn_size"], bias)
            self.features.add_module("denseblock%d" % (i + 1), block)
            c += layers * k
            if i != len(blocks) - 1:
                out = transition_channels(c, cfg["compression"])
                self.features.add_module("transition%d" % (i + 1), Transition(c, out, bias))
                c = out
        self.features.add_module("norm5", nn.BatchNorm2d(c, eps=BN_EPS))
        self.classifier = nn.Linear(c, cfg["num_classes"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.features(x))
        out = F.adaptive_avg_pool2d(out, (1, 1))
        return self.classifier(torch.flatten(out, 1))


def randomize(model: nn.Module, gen: torch.Generator) -> None:
    """Random weights and BatchNorm statistics, far from the identity:
    BN weight U(-0.5, 1.5) (a quarter negative), bias U(-0.2, 0.2),
    running_mean U(-0.5, 0.5), running_var U(0.5, 2); conv weights He-normal,
    conv biases U(-0.2, 0.2); classifier U(+-1/sqrt(in)), bias U(-0.1, 0.1)."""

    def uniform(t: torch.Tensor, lo: float, hi: float) -> None:
        t.copy_(torch.rand(t.shape, generator=gen, dtype=torch.float64) * (hi - lo) + lo)

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                std = math.sqrt(2.0 / fan_in)
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * std)
                if m.bias is not None:
                    uniform(m.bias, -0.2, 0.2)
            elif isinstance(m, nn.BatchNorm2d):
                uniform(m.weight, -0.5, 1.5)
                uniform(m.bias, -0.2, 0.2)
                uniform(m.running_mean, -0.5, 0.5)
                uniform(m.running_var, 0.5, 2.0)
                m.num_batches_tracked.fill_(1000)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.in_features)
                uniform(m.weight, -bound, bound)
                uniform(m.bias, -0.1, 0.1)


# The fixture cases. Field names are densenetc's DenseNet config.
CASES = {
    # (a) DenseNet-BC, L=40, k=12, CIFAR.
    "bc40_cifar": dict(
        growth_rate=12, block_config=[6, 6, 6], num_init_features=24, bn_size=4,
        compression=0.5, num_classes=10, in_channels=3, image_size=32,
        stem="cifar", conv_bias=False, batch=2,
    ),
    # (b) Plain DenseNet (no bottleneck, no compression), CIFAR.
    "plain_cifar": dict(
        growth_rate=12, block_config=[3, 3, 3], num_init_features=16, bn_size=0,
        compression=1.0, num_classes=10, in_channels=3, image_size=32,
        stem="cifar", conv_bias=False, batch=1,
    ),
    # (c) ImageNet stem (7x7/2, BN, ReLU, 3x3/2 max pool) on an odd image.
    "imagenet_stem_odd": dict(
        growth_rate=8, block_config=[2, 3, 2], num_init_features=16, bn_size=2,
        compression=0.5, num_classes=5, in_channels=3, image_size=57,
        stem="imagenet", conv_bias=False, batch=3,
    ),
    # (d) Every conv with a bias, compression 0.4, one input channel.
    "conv_bias_theta04": dict(
        growth_rate=6, block_config=[2, 3, 2], num_init_features=10, bn_size=2,
        compression=0.4, num_classes=7, in_channels=1, image_size=17,
        stem="cifar", conv_bias=True, batch=2,
    ),
}


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b||_inf / ||b||_inf, the project's measure."""
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def check_against_torchvision(cfg: dict, model: DenseNet, x: torch.Tensor) -> str:
    """Compare with torchvision's DenseNet where it can express `cfg`."""
    try:
        import torchvision
    except ImportError:
        return "torchvision not available: skipped"
    ref = torchvision.models.densenet121(weights=None)
    mine = DenseNet(dict(
        growth_rate=32, block_config=[6, 12, 24, 16], num_init_features=64, bn_size=4,
        compression=0.5, num_classes=1000, in_channels=3, stem="imagenet", conv_bias=False,
    ))
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in mine.state_dict().items()}
    if want != got:
        raise SystemExit(f"state_dict differs from torchvision's densenet121: "
                         f"{sorted(set(want.items()) ^ set(got.items()))[:10]}")
    msg = f"densenet121 state_dict keys/shapes match torchvision {torchvision.__version__}"
    expressible = (cfg["stem"] == "imagenet" and cfg["in_channels"] == 3
                   and cfg["compression"] == 0.5 and cfg["bn_size"] > 0 and not cfg["conv_bias"])
    if expressible:
        tv = torchvision.models.DenseNet(
            growth_rate=cfg["growth_rate"], block_config=tuple(cfg["block_config"]),
            num_init_features=cfg["num_init_features"], bn_size=cfg["bn_size"],
            num_classes=cfg["num_classes"])
        tv.load_state_dict(model.state_dict(), strict=True)
        tv = tv.double().eval()
        with torch.no_grad():
            err = rel_error(tv(x.double()), copy.deepcopy(model).double()(x.double()))
        if err > 1e-12:
            raise SystemExit(f"torchvision's DenseNet disagrees: rel error {err:.3e}")
        msg += f"; same logits as torchvision's DenseNet (rel error {err:.1e})"
    return msg


def generate(name: str, cfg: dict, out_dir: Path, seed: int) -> None:
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    model = DenseNet(cfg)
    randomize(model, gen)
    model.eval()
    shape = (cfg["batch"], cfg["in_channels"], cfg["image_size"], cfg["image_size"])
    x = torch.randn(shape, generator=gen, dtype=torch.float32)
    x += (torch.rand(shape[:2] + (1, 1), generator=gen) * 2 - 1).float()
    with torch.no_grad():
        y32 = model(x)
        model64 = copy.deepcopy(model).double()
        y64 = model64(x.double())
        f64 = model64.features(x.double())
    f32_err = rel_error(y32, y64)
    tv_note = check_against_torchvision(cfg, model, x)

    d = out_dir / name
    d.mkdir(parents=True, exist_ok=True)
    state = OrderedDict((k, v.detach().contiguous()) for k, v in model.state_dict().items())
    save_file(dict(state), str(d / "weights.safetensors"), metadata={"format": "pt"})
    torch.save(state, d / "weights.pth")
    np.save(d / "input.npy", np.ascontiguousarray(x.numpy(), dtype="<f4"))
    np.save(d / "features.npy", np.ascontiguousarray(f64.float().numpy(), dtype="<f4"))
    np.save(d / "output.npy", np.ascontiguousarray(y64.float().numpy(), dtype="<f4"))
    np.save(d / "output_torch_f32.npy", np.ascontiguousarray(y32.numpy(), dtype="<f4"))
    params = sum(v.numel() for k, v in state.items() if not k.endswith("num_batches_tracked"))
    meta = dict(cfg)
    meta["generator"] = {
        "script": "tools/gen_golden.py",
        "seed": seed,
        "torch": torch.__version__,
        "bn_eps": BN_EPS,
        "tensors": len(state),
        "numel": params,
        "features_shape": list(f64.shape),
        "output": "float64 evaluation of the float32 weights and input, rounded to float32",
        "torch_f32_vs_f64_rel_error": f32_err,
        "torchvision_check": tv_note,
    }
    (d / "config.json").write_text(json.dumps(meta, indent=2) + "\n")

    print(f"{name}: {tuple(shape)} -> {tuple(y64.shape)}, {len(state)} tensors, "
          f"{params} values; f32 vs f64 rel error {f32_err:.2e}; {tv_note}")
    for f in sorted(d.iterdir()):
        print(f"  wrote {f} ({f.stat().st_size} bytes)")


def main() -> int:
    repo = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=repo / "tests" / "fixtures" / "golden")
    ap.add_argument("--case", action="append", choices=sorted(CASES),
                    help="generate only this case (repeatable); default: all")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    for i, name in enumerate(CASES):
        if args.case and name not in args.case:
            continue
        generate(name, CASES[name], args.out, seed=1000 + i)
    return 0


if __name__ == "__main__":
    sys.exit(main())
