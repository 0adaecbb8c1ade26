#!/usr/bin/env python3
"""Write checkpoints laid out the way DenseNet users actually save them, with
PyTorch goldens, for the weight-discovery tests (compiler/tests/data/checkpoints/).

The outputs are committed, so the Rust tests need no Python; rerun this only
to change them:

    python tools/gen_checkpoint_fixtures.py [OUT_DIR]

Needs torch, torchvision and safetensors. Each case is a small DenseNet
(random weights, random BatchNorm statistics: never an identity BN) saved as
the project it imitates saves it:

  chexnet_model.pth.tar   arnoweng/CheXNet: torchvision's densenet121 inside a
                          user module (`DenseNet121.densenet121`), classifier
                          `Sequential(Linear, Sigmoid)`, wrapped in
                          DataParallel, old torchvision names (`norm.1`), no
                          num_batches_tracked (PyTorch 0.3), in a training
                          checkpoint {'epoch', 'arch', 'state_dict',
                          'best_loss', 'optimizer'} saved in the legacy
                          (pre-1.6) format with CUDA storage locations.
  xrv_densenet.pt         mlmed/torchxrayvision: `torch.save(model)` of a
  xrv_densenet_legacy.pt  `torchxrayvision.models.DenseNet` (1 input channel,
                          buffer `op_threshs`, an `upsample` module); once in
                          the zip format, once in the legacy format without
                          `_non_persistent_buffers_set` (PyTorch < 1.6, as the
                          distributed weights are).
  dp_trainer.ckpt         a DataParallel trainer's checkpoint: `module.` keys
                          under `model_state_dict`, beside
                          `optimizer_state_dict` (SGD momentum),
                          `scheduler_state_dict`, an EMA copy
                          `ema_state_dict` (other values) and argparse args.
  efficient_densenet.dat  gpleiss/efficient_densenet_pytorch: its DenseNet
                          (`small_inputs`: a 3x3 conv0 only, `norm_final`),
                          `torch.save(model.state_dict(), 'model.dat')`.
  two_densenets.pth       bad input: two different networks under two keys.
  xrv_missing_param.pt    bad input: the zip xrv module with one BatchNorm
                          weight deleted from its `_parameters`.

Each case `NAME` has `NAME.golden.safetensors` with `input`, `logits` (the
output of the final Linear, which is what densenetc's graph computes) and
`output` (the project's own forward: CheXNet's sigmoid, torchxrayvision's
sigmoid + op_norm; equal to `logits` otherwise), computed in float64 from the
float32 weights and input, then rounded to float32. dp_trainer also has
`ema_logits`. manifest.json lists every case with its densenetc config.

The files are not byte-for-byte reproducible (legacy storage keys are memory
addresses; zip archives carry serialization ids), only in content.
"""

import argparse
import collections
import copy
import json
import math
import os
import re
import sys
import types

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))


def randomize(model, seed):
    """Random weights and BatchNorm statistics (never identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                c = mod.num_features
                mod.weight.copy_(torch.rand(c, generator=g) + 0.5)
                mod.bias.copy_(torch.rand(c, generator=g) - 0.5)
                mod.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
                mod.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
                mod.num_batches_tracked.fill_(31)
            elif isinstance(mod, nn.Conv2d):
                fan_in = mod.weight[0].numel()
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * math.sqrt(2.0 / fan_in))
            elif isinstance(mod, nn.Linear):
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) / math.sqrt(mod.in_features))
                mod.bias.copy_(torch.rand(mod.out_features, generator=g) - 0.5)
    return model.eval()


def f64(fn, model, x):
    """fn(model, x) evaluated in float64, rounded to float32."""
    m = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        return fn(m, x.double()).float()


def legacy_name(name):
    """torchvision < 0.3 spelling: denselayerN.norm1 -> denselayerN.norm.1."""
    return re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", name)


def head(features, classifier):
    """torchvision's DenseNet head: relu, global average pool, flatten, linear."""
    return classifier(torch.flatten(F.adaptive_avg_pool2d(F.relu(features), (1, 1)), 1))


def save_legacy(obj, path, location="cpu"):
    """torch.save in the pre-1.6 format, storages tagged with `location`."""
    real = torch.serialization.location_tag
    torch.serialization.location_tag = lambda storage: location
    try:
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    finally:
        torch.serialization.location_tag = real


# --- arnoweng/CheXNet ---------------------------------------------------------

class DenseNet121(nn.Module):
    """CheXNet's model: torchvision's DenseNet with a Sequential(Linear, Sigmoid) head."""

    def __init__(self, out_size, **densenet):
        super().__init__()
        self.densenet121 = torchvision.models.DenseNet(**densenet)
        num_ftrs = self.densenet121.classifier.in_features
        self.densenet121.classifier = nn.Sequential(nn.Linear(num_ftrs, out_size), nn.Sigmoid())

    def forward(self, x):
        return self.densenet121(x)


# --- mlmed/torchxrayvision (the classes `torch.save(model)` pickles by name) --

xrv = types.ModuleType("torchxrayvision.models")
xrv.__file__ = os.path.abspath(__file__)  # the legacy format stores class sources
sys.modules["torchxrayvision"] = types.ModuleType("torchxrayvision")
sys.modules["torchxrayvision.models"] = xrv


class _DenseLayer(nn.Sequential):
    def __init__(self, num_input_features, growth_rate, bn_size, drop_rate):
        super().__init__()
        self.add_module("norm1", nn.BatchNorm2d(num_input_features))
        self.add_module("relu1", nn.ReLU(inplace=True))
        self.add_module("conv1", nn.Conv2d(num_input_features, bn_size * growth_rate,
                                           kernel_size=1, stride=1, bias=False))
        self.add_module("norm2", nn.BatchNorm2d(bn_size * growth_rate))
        self.add_module("relu2", nn.ReLU(inplace=True))
        self.add_module("conv2", nn.Conv2d(bn_size * growth_rate, growth_rate,
                                           kernel_size=3, stride=1, padding=1, bias=False))
        self.drop_rate = drop_rate

    def forward(self, x):
        new_features = super().forward(x)
        return torch.cat([x, new_features], 1)


class _DenseBlock(nn.Sequential):
    def __init__(self, num_layers, num_input_features, bn_size, growth_rate, drop_rate):
        super().__init__()
        for i in range(num_layers):
            layer = _DenseLayer(num_input_features + i * growth_rate, growth_rate, bn_size, drop_rate)
            self.add_module("denselayer%d" % (i + 1), layer)


class _Transition(nn.Sequential):
    def __init__(self, num_input_features, num_output_features):
        super().__init__()
        self.add_module("norm", nn.BatchNorm2d(num_input_features))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module("conv", nn.Conv2d(num_input_features, num_output_features,
                                          kernel_size=1, stride=1, bias=False))
        self.add_module("pool", nn.AvgPool2d(kernel_size=2, stride=2))


class XrvDenseNet(nn.Module):
    """torchxrayvision.models.DenseNet, as far as its pickled state goes."""

    def __init__(self, growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64,
                 bn_size=4, drop_rate=0, num_classes=18, in_channels=1, op_threshs=None):
        super().__init__()
        self.pathologies = ["Atelectasis", "Consolidation", "Infiltration", "Pneumothorax",
                            "Edema", "Emphysema"][:num_classes]
        self.weights = None
        self.apply_sigmoid = False
        self.features = nn.Sequential(collections.OrderedDict([
            ("conv0", nn.Conv2d(in_channels, num_init_features, kernel_size=7, stride=2,
                                padding=3, bias=False)),
            ("norm0", nn.BatchNorm2d(num_init_features)),
            ("relu0", nn.ReLU(inplace=True)),
            ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
        ]))
        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            block = _DenseBlock(num_layers, num_features, bn_size, growth_rate, drop_rate)
            self.features.add_module("denseblock%d" % (i + 1), block)
            num_features = num_features + num_layers * growth_rate
            if i != len(block_config) - 1:
                trans = _Transition(num_features, num_features // 2)
                self.features.add_module("transition%d" % (i + 1), trans)
                num_features = num_features // 2
        self.features.add_module("norm5", nn.BatchNorm2d(num_features))
        self.classifier = nn.Linear(num_features, num_classes)
        self.upsample = nn.Upsample(size=(224, 224), mode="bilinear", align_corners=False)
        if op_threshs is not None:
            self.register_buffer("op_threshs", op_threshs)

    def features2(self, x):
        features = self.features(x)
        out = F.relu(features, inplace=True)
        return F.adaptive_avg_pool2d(out, (1, 1)).view(features.size(0), -1)

    def logits(self, x):
        # torchxrayvision upsamples other resolutions to 224 first
        # (fix_resolution); the tiny fixture is evaluated at its own size.
        return self.classifier(self.features2(x))

    def forward(self, x):
        out = torch.sigmoid(self.logits(x))
        return op_norm(out, self.op_threshs)


def op_norm(outputs, op_threshs):
    """torchxrayvision.models.op_norm."""
    op_threshs = op_threshs.expand(outputs.shape[0], -1)
    outputs_new = torch.zeros(outputs.shape, dtype=outputs.dtype)
    mask_leq = outputs < op_threshs
    outputs_new[mask_leq] = outputs[mask_leq] / (op_threshs[mask_leq] * 2)
    outputs_new[~mask_leq] = 1.0 - ((1.0 - outputs[~mask_leq]) / ((1 - op_threshs[~mask_leq]) * 2))
    return outputs_new


XrvDenseNet.__name__ = XrvDenseNet.__qualname__ = "DenseNet"
for cls in (_DenseLayer, _DenseBlock, _Transition, XrvDenseNet):
    cls.__module__ = "torchxrayvision.models"
    setattr(xrv, cls.__name__, cls)
xrv.op_norm = op_norm


# --- gpleiss/efficient_densenet_pytorch ------------------------------------------

class _EffDenseLayer(nn.Module):
    def __init__(self, num_input_features, growth_rate, bn_size, drop_rate, efficient=False):
        super().__init__()
        self.add_module("norm1", nn.BatchNorm2d(num_input_features))
        self.add_module("relu1", nn.ReLU(inplace=True))
        self.add_module("conv1", nn.Conv2d(num_input_features, bn_size * growth_rate,
                                           kernel_size=1, stride=1, bias=False))
        self.add_module("norm2", nn.BatchNorm2d(bn_size * growth_rate))
        self.add_module("relu2", nn.ReLU(inplace=True))
        self.add_module("conv2", nn.Conv2d(bn_size * growth_rate, growth_rate,
                                           kernel_size=3, stride=1, padding=1, bias=False))
        self.drop_rate = drop_rate
        self.efficient = efficient

    def forward(self, *prev_features):
        concated = torch.cat(prev_features, 1)
        bottleneck_output = self.conv1(self.relu1(self.norm1(concated)))
        return self.conv2(self.relu2(self.norm2(bottleneck_output)))


class _EffTransition(nn.Sequential):
    def __init__(self, num_input_features, num_output_features):
        super().__init__()
        self.add_module("norm", nn.BatchNorm2d(num_input_features))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module("conv", nn.Conv2d(num_input_features, num_output_features,
                                          kernel_size=1, stride=1, bias=False))
        self.add_module("pool", nn.AvgPool2d(kernel_size=2, stride=2))


class _EffDenseBlock(nn.Module):
    def __init__(self, num_layers, num_input_features, bn_size, growth_rate, drop_rate,
                 efficient=False):
        super().__init__()
        for i in range(num_layers):
            layer = _EffDenseLayer(num_input_features + i * growth_rate, growth_rate=growth_rate,
                                   bn_size=bn_size, drop_rate=drop_rate, efficient=efficient)
            self.add_module("denselayer%d" % (i + 1), layer)

    def forward(self, init_features):
        features = [init_features]
        for name, layer in self.named_children():
            features.append(layer(*features))
        return torch.cat(features, 1)


class EfficientDenseNet(nn.Module):
    """efficient_densenet_pytorch's models/densenet.py DenseNet."""

    def __init__(self, growth_rate=12, block_config=(16, 16, 16), compression=0.5,
                 num_init_features=24, bn_size=4, drop_rate=0, num_classes=10,
                 small_inputs=True, efficient=False):
        super().__init__()
        assert 0 < compression <= 1
        if small_inputs:
            self.features = nn.Sequential(collections.OrderedDict([
                ("conv0", nn.Conv2d(3, num_init_features, kernel_size=3, stride=1, padding=1,
                                    bias=False)),
            ]))
        else:
            raise NotImplementedError("the fixture uses small_inputs")
        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            block = _EffDenseBlock(num_layers=num_layers, num_input_features=num_features,
                                   bn_size=bn_size, growth_rate=growth_rate,
                                   drop_rate=drop_rate, efficient=efficient)
            self.features.add_module("denseblock%d" % (i + 1), block)
            num_features = num_features + num_layers * growth_rate
            if i != len(block_config) - 1:
                trans = _EffTransition(num_input_features=num_features,
                                       num_output_features=int(num_features * compression))
                self.features.add_module("transition%d" % (i + 1), trans)
                num_features = int(num_features * compression)
        self.features.add_module("norm_final", nn.BatchNorm2d(num_features))
        self.classifier = nn.Linear(num_features, num_classes)

    def forward(self, x):
        return head(self.features(x), self.classifier)


# --- cases ------------------------------------------------------------------------

def cfg(arch, **o):
    return dict(arch=arch, **o)


def write_golden(out, name, x, logits, output, **extra):
    tensors = {"input": x, "logits": logits, "output": output, **extra}
    tensors = {k: v.detach().clone().contiguous() for k, v in tensors.items()}
    save_file(tensors, os.path.join(out, name + ".golden.safetensors"))


def chexnet(out, manifest):
    n_classes = 5
    model = DenseNet121(n_classes, growth_rate=4, block_config=(2, 2), num_init_features=8,
                        bn_size=2)
    randomize(model, 1)
    dp = nn.DataParallel(model)
    opt = torch.optim.Adam(dp.parameters(), lr=0.001, betas=(0.9, 0.999))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(11))
    # One training step, so that the optimizer holds moments; then the
    # random weights (and statistics) back.
    weights = copy.deepcopy(dp.state_dict())
    model.train()
    dp(x).sum().backward()
    opt.step()
    dp.load_state_dict(weights)
    model.eval()
    # PyTorch 0.3: no num_batches_tracked; torchvision < 0.3: `norm.1` names.
    sd = collections.OrderedDict((legacy_name(k), v) for k, v in dp.state_dict().items()
                                 if not k.endswith("num_batches_tracked"))
    name = "chexnet_model.pth.tar"
    save_legacy({"epoch": 7, "arch": "densenet121", "state_dict": sd, "best_loss": 0.1523,
                 "optimizer": opt.state_dict()}, os.path.join(out, name), location="cuda:0")
    d = model.densenet121
    logits = f64(lambda m, x: head(m.densenet121.features(x), m.densenet121.classifier[0]),
                 model, x)
    output = f64(lambda m, x: m(x), model, x)
    write_golden(out, name, x, logits, output)
    manifest.append(dict(
        file=name, format="legacy", golden=name + ".golden.safetensors",
        config=cfg("densenet121", growth_rate=4, block_config=[2, 2], num_init_features=8,
                   bn_size=2, num_classes=n_classes, image_size=32),
        batch=2, path="state_dict", prefix="module.densenet121.",
        imitates="arnoweng/CheXNet model.pth.tar"))
    assert d.classifier[0].out_features == n_classes


def xrv_model():
    model = XrvDenseNet(growth_rate=4, block_config=(2, 2), num_init_features=8, bn_size=2,
                        num_classes=6, in_channels=1,
                        op_threshs=torch.tensor([0.3, 0.45, 0.5, 0.25, 0.6, 0.4]))
    return randomize(model, 2)


def xrv_cases(out, manifest):
    model = xrv_model()
    x = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(12))
    logits = f64(lambda m, x: m.logits(x), model, x)
    output = f64(lambda m, x: m(x), model, x)
    config = cfg("densenet121", growth_rate=4, block_config=[2, 2], num_init_features=8,
                 bn_size=2, num_classes=6, in_channels=1, image_size=32)
    name = "xrv_densenet.pt"
    torch.save(model, os.path.join(out, name))
    write_golden(out, name, x, logits, output)
    manifest.append(dict(file=name, format="zip", golden=name + ".golden.safetensors",
                         config=config, batch=1, path="", prefix="",
                         imitates="mlmed/torchxrayvision torch.save(model)"))

    # PyTorch < 1.6: the legacy format, modules without _non_persistent_buffers_set.
    old = copy.deepcopy(model)
    for m in old.modules():
        m.__dict__.pop("_non_persistent_buffers_set", None)
    name = "xrv_densenet_legacy.pt"
    save_legacy(old, os.path.join(out, name))
    write_golden(out, name, x, logits, output)
    manifest.append(dict(file=name, format="legacy", golden=name + ".golden.safetensors",
                         config=config, batch=1, path="", prefix="",
                         imitates="mlmed/torchxrayvision weights saved before PyTorch 1.6"))

    broken = copy.deepcopy(model)
    del broken.features.denseblock2.denselayer1.norm2._parameters["weight"]
    torch.save(broken, os.path.join(out, "xrv_missing_param.pt"))


def golden_densenet(config):
    sys.path.insert(0, HERE)
    from gen_golden import DenseNet as Generic  # torchvision names, any stem
    return Generic(config)


def dp_trainer(out, manifest):
    config = dict(growth_rate=4, block_config=[2, 2], num_init_features=8, bn_size=4,
                  compression=0.5, num_classes=5, in_channels=3, image_size=16,
                  stem="cifar", conv_bias=False)
    model = randomize(golden_densenet(config), 3)
    ema = randomize(golden_densenet(config), 4)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(13))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[150, 225], gamma=0.1)
    weights = copy.deepcopy(model.state_dict())
    model.train()
    model(x).sum().backward()
    opt.step()
    sched.step()
    model.load_state_dict(weights)
    model.eval()
    args = argparse.Namespace(arch="densenet_bc", lr=0.1, epochs=300, batch_size=64)
    name = "dp_trainer.ckpt"
    torch.save({"epoch": 12, "model_state_dict": nn.DataParallel(model).state_dict(),
                "optimizer_state_dict": opt.state_dict(),
                "scheduler_state_dict": sched.state_dict(),
                "ema_state_dict": nn.DataParallel(ema).state_dict(),
                "best_acc1": 0.91, "args": args}, os.path.join(out, name))
    logits = f64(lambda m, x: m(x), model, x)
    ema_logits = f64(lambda m, x: m(x), ema, x)
    write_golden(out, name, x, logits, logits, ema_logits=ema_logits)
    manifest.append(dict(
        file=name, format="zip", golden=name + ".golden.safetensors",
        config=cfg("densenet-bc-100", growth_rate=4, block_config=[2, 2], num_init_features=8,
                   num_classes=5, image_size=16),
        batch=2, path="model_state_dict", prefix="module.",
        imitates="a DataParallel trainer's checkpoint (with an EMA copy)"))


def efficient(out, manifest):
    model = randomize(EfficientDenseNet(growth_rate=4, block_config=(2, 2, 2), compression=0.5,
                                        num_init_features=8, bn_size=4, num_classes=4,
                                        small_inputs=True, efficient=True), 5)
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(14))
    name = "efficient_densenet.dat"
    torch.save(model.state_dict(), os.path.join(out, name))
    logits = f64(lambda m, x: m(x), model, x)
    write_golden(out, name, x, logits, logits)
    config = cfg("densenet-bc-100", growth_rate=4, block_config=[2, 2, 2], num_init_features=8,
                 num_classes=4, image_size=16)
    manifest.append(dict(file=name, format="zip", golden=name + ".golden.safetensors",
                         config=config, batch=1, path="", prefix="",
                         imitates="gpleiss/efficient_densenet_pytorch model.dat"))

    # Bad input: two different networks of that config under two keys.
    generic = dict(growth_rate=4, block_config=[2, 2, 2], num_init_features=8, bn_size=4,
                   compression=0.5, num_classes=4, in_channels=3, image_size=16,
                   stem="cifar", conv_bias=False)
    a = randomize(golden_densenet(generic), 6).state_dict()
    b = randomize(golden_densenet(generic), 7).state_dict()
    torch.save({"epoch": 3, "model_a": a, "model_b": b}, os.path.join(out, "two_densenets.pth"))


def check_loads(out, manifest):
    """Each checkpoint loads back in PyTorch and holds the golden's network."""
    for case in manifest:
        path = os.path.join(out, case["file"])
        obj = torch.load(path, map_location="cpu", weights_only=False)
        assert obj is not None, path
    old = torch.load(os.path.join(out, "xrv_densenet_legacy.pt"), map_location="cpu",
                     weights_only=False)
    new = xrv_model()
    for (k, v), (k2, v2) in zip(old.state_dict().items(), new.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        HERE, "..", "compiler", "tests", "data", "checkpoints")
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    manifest = []
    chexnet(out, manifest)
    xrv_cases(out, manifest)
    dp_trainer(out, manifest)
    efficient(out, manifest)
    check_loads(out, manifest)
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump({"generator": {"torch": torch.__version__,
                                 "torchvision": torchvision.__version__},
                   "cases": manifest}, f, indent=1)
        f.write("\n")
    for name in sorted(os.listdir(out)):
        print(f"{os.path.getsize(os.path.join(out, name)):8d}  {name}")


if __name__ == "__main__":
    main()
