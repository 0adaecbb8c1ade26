#!/usr/bin/env python3
"""Self-tests of the benchmark scripts (about 15 s):

    scripts/test_scripts.py

- the ONNX graph matches every golden fixture within 1e-4 on both engines;
- ``--random-weights`` reproduces densenetc's ``weights::randomize``: the
  SHA-256 of all tensors (sorted by name, little-endian f32) equals the one
  computed from densenetc's own output (dumped once with a throw-away Rust
  program that called ``compiler::weights::randomize`` on the preset graph);
- configs follow densenetc's rules (floor(C·θ), stem sizes);
- .safetensors round trip and errors that name the tensor.
"""

import _venv

_venv.ensure()

import hashlib  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import unittest  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import densenet_onnx as dn  # noqa: E402
import peers  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

# (preset, seed) -> SHA-256 of densenetc's random weights (see module doc).
RUST_RANDOM_WEIGHTS = {
    ("densenet121", 0): "872693fd5a37c71fd8376e496ad94a67d6e08ae06acb008184ed5a5aa43ec15a",
    ("densenet-bc-100", 12345678901234567890):
        "8debb4fe1294a0450d3b88e79d7f2c7667b5883b71607e3fb66032b641e76d33",
    ("densenet-40", 7): "1ce5014a0b8cf4b6fc455adcda544f534a18a704c017843518f9c947d4103e14",
}


def weights_digest(w: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(w):
        h.update(np.ascontiguousarray(w[name], "<f4").tobytes())
    return h.hexdigest()


class Tests(unittest.TestCase):
    def test_cpu_name_names_the_amd_core(self):
        self.assertEqual(peers.amd_core(25, 1), "Zen 3")
        self.assertEqual(peers.amd_core(25, 17), "Zen 4")
        self.assertEqual(peers.amd_core(25, 0x61), "Zen 4")
        self.assertEqual(peers.amd_core(26, 2), "Zen 5")
        self.assertIsNone(peers.amd_core(6, 143))
        self.assertIn("family", peers.cpu_name())

    def test_golden_fixtures(self):
        dirs = sorted(p.parent for p in (REPO / "tests/fixtures/golden").glob("*/config.json"))
        self.assertGreaterEqual(len(dirs), 4)
        with tempfile.TemporaryDirectory() as tmp:
            errs = peers.golden_errors(dirs, peers.ENGINES, 2, Path(tmp))
        for case, e in errs.items():
            for engine, v in e.items():
                self.assertLessEqual(v, 1e-4, f"{case} {engine}")

    def test_random_weights_equal_densenetc(self):
        for (arch, seed), digest in RUST_RANDOM_WEIGHTS.items():
            w = dn.random_weights(dn.preset(arch), seed)
            self.assertEqual(weights_digest(w), digest, f"{arch} seed {seed}")

    def test_random_weights_have_real_bn_statistics(self):
        w = dn.random_weights(dn.preset("densenet-bc-100"), 1)
        var = w["features.norm5.running_var"]
        self.assertTrue(((var >= 0.5) & (var < 2.0)).all())
        self.assertTrue((w["features.norm5.weight"] < 0).any())
        self.assertNotEqual(float(np.abs(w["features.norm5.running_mean"]).max()), 0.0)

    def test_macs_equal_densenetc_inspect(self):
        # `densenetc inspect --arch A [--image-size S]`, line `macs:` (ir::stats).
        for arch, overrides, macs in [("densenet121", {}, 2834161664),
                                      ("densenet-bc-100", {}, 287929692),
                                      ("densenet-40", {}, 264812928),
                                      ("densenet161", {"image_size": 96}, 1421213952)]:
            self.assertEqual(dn.macs(dn.resolve(arch, overrides)), macs, arch)

    def test_bench_cases(self):
        import bench_cpu

        self.assertEqual(bench_cpu.parse_cases("all"), bench_cpu.CASES)
        self.assertEqual(bench_cpu.parse_cases("densenet121-b8,densenet-bc-100-b64-32"),
                         [("densenet121", 8, 224, 15), ("densenet-bc-100", 64, 32, 10)])
        # Other cases cost about the MACs of DenseNet-121 b1's 60 iterations.
        [(arch, batch, size, iters)] = bench_cpu.parse_cases("densenet161-b2-160")
        self.assertEqual((arch, batch, size), ("densenet161", 2, 160))
        macs = dn.macs(dn.resolve("densenet161", {"image_size": 160})) * 2
        self.assertAlmostEqual(iters * macs / bench_cpu.BUDGET_MACS, 1.0, delta=0.05)
        self.assertEqual(bench_cpu.parse_cases("densenet-bc-250-b1")[0][1:3], (1, 32))
        self.assertEqual(bench_cpu.parse_cases("densenet201-b256")[0][3],
                         bench_cpu.ITERS_BOUNDS[0])
        for bad in ["densenet122-b1", "densenet121", "densenet121-b0", "densenet121-b1-8",
                    "densenet121-bx", ""]:
            with self.assertRaises(ValueError, msg=bad):
                bench_cpu.parse_cases(bad)

    def test_config_rules(self):
        cfg = dn.preset("densenet121")
        blocks, c = dn.stages(cfg)
        self.assertEqual(blocks, [(64, 56), (128, 28), (256, 14), (512, 7)])
        self.assertEqual(c, 1024)
        cfg = dn.resolve("densenet-bc-100", {"compression": 0.4, "image_size": 17})
        self.assertEqual(dn.stages(cfg)[0][1], (math.floor(0.4 * (24 + 16 * 12)), 8))
        with self.assertRaises(ValueError):
            dn.resolve("densenet121", {"image_size": 8})
        with self.assertRaises(ValueError):
            dn.preset("densenet122")

    def test_safetensors_round_trip_and_errors(self):
        cfg = dn.preset("densenet-40")
        w = dn.random_weights(cfg, 3)
        with tempfile.TemporaryDirectory() as tmp:
            f = Path(tmp) / "w.safetensors"
            dn.save_weights(w, f)
            self.assertEqual(weights_digest(dn.load_weights(f, cfg)), weights_digest(w))
            with self.assertRaisesRegex(ValueError, "features.conv0.weight: expected shape"):
                dn.load_weights(f, dn.resolve("densenet-40", {"in_channels": 1}))


if __name__ == "__main__":
    sys.exit(unittest.main(verbosity=2))
