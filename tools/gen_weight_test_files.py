#!/usr/bin/env python3
"""Write the small weight files the importer's tests read (compiler/tests/data/).

The outputs are committed, so the Rust tests need no Python; rerun this only
to change them:

    python tools/gen_weight_test_files.py [OUT_DIR]

Needs torch, torchvision and safetensors. Every file is deterministic in
content except the zip timestamps and serialization ids torch writes.

The "mini DenseNet" is torchvision's DenseNet class with a small stem conv
(3x3, 2 input channels) so the file stays small:
growth 2, blocks (2, 1), 4 initial features, bn_size 2, 3 classes.
Its BatchNorm parameters and statistics are randomised (never identity).
"""

import collections
import io
import os
import struct
import sys
import zipfile
import zlib

import torch
import torchvision
from safetensors.torch import save_file


def mini_densenet():
    torch.manual_seed(0)
    m = torchvision.models.DenseNet(
        growth_rate=2, block_config=(2, 1), num_init_features=4, bn_size=2, num_classes=3
    )
    m.features.conv0 = torch.nn.Conv2d(2, 4, kernel_size=3, stride=1, padding=1, bias=False)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                c = mod.num_features
                mod.weight.copy_(torch.rand(c) + 0.5)
                mod.bias.copy_(torch.rand(c) - 0.5)
                mod.running_mean.copy_(torch.rand(c) - 0.5)
                mod.running_var.copy_(torch.rand(c) * 1.5 + 0.5)
                mod.num_batches_tracked.fill_(17)
            elif isinstance(mod, torch.nn.Linear):
                mod.bias.copy_(torch.rand(mod.out_features) - 0.5)
    return m.eval()


def legacy_name(name):
    # The inverse of torchvision's `_load_state_dict` renaming: norm1 -> norm.1.
    import re

    return re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", name)


def repack(src, dst, zip64=False, compress=False):
    """Rewrite a zip archive: stored entries in ZIP64 form, or deflated."""
    with zipfile.ZipFile(src) as z:
        entries = [(i.filename, z.read(i.filename)) for i in z.infolist()]
    if compress:
        with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_DEFLATED) as z:
            for name, data in entries:
                z.writestr(name, data)
        return
    assert zip64
    out = io.BytesIO()
    central = []
    for name, data in entries:
        off = out.tell()
        nb = name.encode()
        crc = zlib.crc32(data)
        extra = struct.pack("<HHQQ", 1, 16, len(data), len(data))
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 0, 0, 0, crc,
                              0xFFFFFFFF, 0xFFFFFFFF, len(nb), len(extra)))
        out.write(nb + extra + data)
        central.append((nb, crc, len(data), off))
    cd_off = out.tell()
    for nb, crc, size, off in central:
        extra = struct.pack("<HHQQQ", 1, 24, size, size, off)
        out.write(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 0, 0, 0, crc,
                              0xFFFFFFFF, 0xFFFFFFFF, len(nb), len(extra), 0, 0, 0, 0,
                              0xFFFFFFFF))
        out.write(nb + extra)
    cd_size = out.tell() - cd_off
    z64_off = out.tell()
    n = len(central)
    out.write(struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, cd_size, cd_off))
    out.write(struct.pack("<IIQI", 0x07064B50, 0, z64_off, 1))
    out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF,
                          0xFFFFFFFF, 0xFFFFFFFF, 0))
    with open(dst, "wb") as f:
        f.write(out.getvalue())


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(__file__), "..", "compiler", "tests", "data")
    os.makedirs(out, exist_ok=True)
    p = lambda name: os.path.join(out, name)

    model = mini_densenet()
    sd = model.state_dict()

    # 1. A plain state dict, as `torch.save(model.state_dict(), f)` writes it.
    torch.save(sd, p("mini_densenet.pth"))
    # 2. The same tensors as safetensors (num_batches_tracked included, int64).
    save_file({k: v.contiguous() for k, v in sd.items()}, p("mini_densenet.safetensors"))
    # 3. DataParallel: every name prefixed with `module.`.
    torch.save(torch.nn.DataParallel(model).state_dict(), p("mini_densenet_dataparallel.pth"))
    # 4. A training checkpoint wrapping the state dict, with other entries.
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    torch.save({"epoch": 3, "arch": "mini_densenet", "best_acc1": 0.625,
                "state_dict": sd, "optimizer": opt.state_dict(), "done": None},
               p("mini_densenet_checkpoint.pth"))
    # 5. Wrapped under `model`, written with pickle protocol 4.
    torch.save({"model": sd}, p("mini_densenet_model_key_proto4.pth"), pickle_protocol=4)
    # 6. Old torchvision spelling (`norm.1`, `conv.2`).
    torch.save(collections.OrderedDict((legacy_name(k), v) for k, v in sd.items()),
               p("mini_densenet_legacy_names.pth"))
    # 7. A golden input/output pair for the mini model.
    torch.manual_seed(1)
    x = torch.randn(1, 2, 8, 8)
    with torch.no_grad():
        y = model(x)
    save_file({"input": x, "output": y}, p("mini_densenet_golden.safetensors"))

    # Views, shared storages, parameters, odd shapes.
    big = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    shared = torch.tensor([1.5, -2.0, 3.25])
    views = collections.OrderedDict()
    views["transposed"] = big.t()[1:]          # offset 1, strides (1, 4)
    views["row"] = big[2]                      # offset 8, contiguous
    views["column"] = big[:, 3]                # offset 3, stride 4
    views["tied_a"] = shared
    views["tied_b"] = shared
    views["param"] = torch.nn.Parameter(torch.tensor([[0.5, 0.25]]))
    views["scalar"] = torch.tensor(2.5)
    views["empty"] = torch.zeros(0, 3)
    views["bn.num_batches_tracked"] = torch.tensor(7)
    torch.save(views, p("views.pth"))
    repack(p("views.pth"), p("views_zip64.pth"), zip64=True)

    # Non-f32 tensors.
    torch.save({"w64": torch.ones(2, dtype=torch.float64),
                "w16": torch.ones(2, dtype=torch.float16),
                "wbf16": torch.ones(2, dtype=torch.bfloat16),
                "idx": torch.arange(3)}, p("dtypes.pth"))

    small = {"w": torch.tensor([1.0, 2.0])}
    # A wrapper key holding a string, beside the real state dict.
    torch.save({"model": "tiny", "state_dict": small}, p("wrapped_with_model_name.pth"))
    # A state dict under a key densenetc does not know.
    torch.save({"epoch": 1, "net": small}, p("unknown_wrapper.pth"))
    # Formats we refuse, each with its own message.
    torch.save(small, p("legacy_format.pth"), _use_new_zipfile_serialization=False)
    repack(p("views.pth"), p("compressed.pth"), compress=True)
    torch.save(torch.nn.Linear(2, 1), p("whole_module.pth"))


if __name__ == "__main__":
    main()
