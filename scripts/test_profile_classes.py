#!/usr/bin/env python3
"""Self-tests of scripts/profile_classes.py (a few seconds; python3 and cc only):

    python3 scripts/test_profile_classes.py

Kernel classes by torchvision name (and by block), the parsing of fma_peak's output, and a whole
run against a stand-in densenetc (a script printing a fixed `bench --json`
profile), with the FMA peak measured between the rounds by scripts/fma_peak.c.
"""

import json
import os
import stat
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import profile_classes as pc  # noqa: E402

SCRIPT = Path(__file__).resolve().parent / "profile_classes.py"

# What `densenetc bench --profile --json` prints, cut to the fields the script reads: a 1x1
# bottleneck of 1,000,000 MACs in 0.01 ms is 200 GFLOP/s, a growth conv of 500,000 in 0.01 ms 100.
BENCH = {
    "median_ms": 0.05,
    "profile": [
        {"name": "features.conv0", "op": "conv7x7/2", "macs": 100_000, "ms": 0.01},
        {"name": "features.denseblock1.denselayer1.conv1", "op": "conv1x1", "macs": 1_000_000, "ms": 0.01},
        {"name": "features.denseblock1.denselayer1.conv2", "op": "conv3x3", "macs": 500_000, "ms": 0.01},
        {"name": "features.denseblock2.denselayer1.conv1", "op": "conv1x1", "macs": 3_000_000, "ms": 0.02},
        {"name": "classifier", "op": "linear", "macs": 1_000, "ms": 0.01},
    ],
}


class ProfileClassesTest(unittest.TestCase):
    def test_kernels_are_classed_by_their_torchvision_names(self):
        self.assertEqual(pc.kernel_class("features.conv0", "conv7x7/2"), "stem conv")
        self.assertEqual(pc.kernel_class("features.denseblock2.denselayer3.conv1", "conv1x1"), "bottleneck conv 1x1")
        self.assertEqual(pc.kernel_class("features.denseblock2.denselayer3.conv2", "conv3x3"), "growth conv 3x3")
        self.assertEqual(pc.kernel_class("features.transition1.conv", "conv1x1"), "transition conv 1x1")
        self.assertEqual(pc.kernel_class("features.transition1.pool", "avgpool2x2/2"), "transition avg pool 2x2")
        self.assertEqual(pc.kernel_class("classifier", "linear"), "classifier")

    def test_by_block_splits_dense_blocks_and_transitions(self):
        self.assertEqual(pc.kernel_key("features.denseblock2.denselayer3.conv1", "conv1x1", True),
                         "bottleneck conv 1x1, block 2")
        self.assertEqual(pc.kernel_key("features.transition3.conv", "conv1x1", True),
                         "transition conv 1x1, transition 3")
        self.assertEqual(pc.kernel_key("features.conv0", "conv7x7/2", True), "stem conv")
        self.assertEqual(pc.kernel_key("features.denseblock2.denselayer3.conv1", "conv1x1", False),
                         "bottleneck conv 1x1")

    def test_fma_peak_output_parses(self):
        self.assertEqual(pc.parse_gflops("zmm 2 threads: 449.4 GFLOP/s (0.342 s, checksum 19.6543)\n"), 449.4)
        with self.assertRaises(ValueError):
            pc.parse_gflops("fma_peak: unknown width\n")

    def run_on_stand_in(self, *args):
        """The script's stdout for `args` against a stand-in densenetc printing `BENCH`."""
        with tempfile.TemporaryDirectory() as tmp:
            fake = Path(tmp) / "densenetc"
            fake.write_text(f"#!{sys.executable}\nprint({json.dumps(json.dumps(BENCH))})\n")
            fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
            run = subprocess.run([sys.executable, str(SCRIPT), "--densenetc", str(fake), *args, "x.dnc"],
                                 capture_output=True, text=True, timeout=120)
        self.assertEqual(run.returncode, 0, run.stderr)
        return run.stdout

    def test_a_run_measures_the_peak_between_rounds(self):
        out = self.run_on_stand_in("--rounds", "2", "--threads", "1", "--measure-peak", "ymm",
                                   "--peak-iters", "2000000")
        head = out.splitlines()[0]
        self.assertIn("peak (ymm, 1 threads, scripts/fma_peak.c): median", head)
        self.assertIn("of 3 runs between the rounds", head)
        peak = float(head.split("median ")[1].split(" GFLOP/s")[0])
        self.assertGreater(peak, 0.0)
        self.assertIn(f"% of {peak:.1f}", out)
        row = next(line for line in out.splitlines() if line.startswith("| bottleneck conv 1x1 |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        # Both blocks' bottlenecks: 4,000,000 MACs in 0.03 ms.
        self.assertEqual(cells[1:5], ["2", "4,000,000", "0.03", "266.7"])
        self.assertEqual(cells[5], f"{100 * 266.7 / peak:.0f}%")

    def test_by_block_rows(self):
        out = self.run_on_stand_in("--rounds", "1", "--peak-gflops", "400", "--by-block")
        rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
        self.assertIn("| 1 | 1,000,000 | 0.01 | 200.0 | 50% |", rows["bottleneck conv 1x1, block 1"])
        self.assertIn("| 1 | 3,000,000 | 0.02 | 300.0 | 75% |", rows["bottleneck conv 1x1, block 2"])
        self.assertNotIn("bottleneck conv 1x1", rows)

    def test_a_fixed_peak_and_a_measured_one_exclude_each_other(self):
        run = subprocess.run(
            [sys.executable, str(SCRIPT), "--peak-gflops", "400", "--measure-peak", "zmm", "x.dnc"],
            capture_output=True, text=True,
        )
        self.assertNotEqual(run.returncode, 0)
        self.assertIn("not allowed with", run.stderr)


if __name__ == "__main__":
    os.chdir(Path(__file__).resolve().parent.parent)
    unittest.main()
