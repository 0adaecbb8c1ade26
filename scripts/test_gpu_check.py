#!/usr/bin/env python3
"""Self-tests of scripts/gpu_check.py that need no GPU and no PyTorch (a few seconds):

    python3 scripts/test_gpu_check.py

The no-GPU refusal (script and function), the .npy reader against a file
densenetc wrote, the relative error, the compile commands, the per-precision
bounds, PyTorch's TF32 switches and the table.
Set DENSENETC to a built densenetc to include the densenetc-backed test.
"""

import os
import subprocess
import sys
import tempfile
import unittest
from array import array
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_check as gc  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


class Completed:
    def __init__(self, rc, out="", err=""):
        self.returncode, self.stdout, self.stderr = rc, out, err


class Tests(unittest.TestCase):
    def test_no_nvidia_smi_is_a_clear_error(self):
        with self.assertRaises(gc.CheckError) as e:
            gc.require_gpu(which=lambda _: None)
        self.assertIn("no GPU: nvidia-smi not found", str(e.exception))
        self.assertIn("--dry-run", str(e.exception))

    def test_nvidia_smi_without_gpus_is_a_clear_error(self):
        fail = lambda *a, **k: Completed(9, "", "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver")  # noqa: E731
        with self.assertRaises(gc.CheckError) as e:
            gc.require_gpu(which=lambda _: "/usr/bin/nvidia-smi", run=fail)
        self.assertIn("couldn't communicate", str(e.exception))
        ok = lambda *a, **k: Completed(0, "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-x)\n")  # noqa: E731
        self.assertTrue(gc.require_gpu(which=lambda _: "/x", run=ok).startswith("GPU 0: NVIDIA H100"))

    def test_the_script_refuses_to_run_without_a_gpu(self):
        env = dict(os.environ, PATH="/usr/bin:/bin")
        if any((Path(d) / "nvidia-smi").exists() for d in env["PATH"].split(":")):
            self.skipTest("nvidia-smi is installed here")
        r = subprocess.run([str(REPO / "scripts/gpu-check.sh")], capture_output=True, text=True, env=env)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("gpu-check: error: no GPU", r.stderr)

    def test_relative_error(self):
        self.assertEqual(gc.rel_error([1.0, 2.0], [1.0, 2.0]), 0.0)
        self.assertAlmostEqual(gc.rel_error([1.0, -4.1], [1.0, -4.0]), 0.1 / 4.0)
        with self.assertRaises(gc.CheckError):
            gc.rel_error([1.0], [1.0, 2.0])

    def test_npy_reader(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "y.npy"
            header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"
            header += " " * (63 - (10 + len(header)) % 64) + "\n"
            body = array("f", [0.5, -1, 2, 3, 4, 5.25]).tobytes()
            path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + body)
            shape, values = gc.read_npy(path)
            self.assertEqual(shape, [2, 3])
            self.assertEqual(list(values), [0.5, -1, 2, 3, 4, 5.25])
            path.write_bytes(b"not npy")
            with self.assertRaises(gc.CheckError):
                gc.read_npy(path)

    def test_compile_commands(self):
        a = gc.compile_args("densenet121", True, 1, "cpu,cuda", Path("o.dnc"))
        self.assertEqual(a[:2], ["compile", "--arch"])
        self.assertIn("--image-size", a)
        self.assertEqual(a[a.index("--target") + 1], "cpu,cuda")
        self.assertNotIn("--image-size", gc.compile_args("densenet-40", True, 1, "cuda", Path("o")))
        self.assertEqual(len(gc.PRESETS), 8)
        self.assertNotIn("--precision", a)
        t = gc.compile_args("densenet121", False, 64, "cuda", Path("o"), "tf32")
        self.assertEqual(t[t.index("--precision") + 1], "tf32")
        self.assertEqual(gc.artefact_stem("densenet-40", "tf32"), "densenet-40-tf32")
        self.assertEqual(gc.artefact_stem("densenet-40", "fp32"), "densenet-40")

    def test_bounds_per_precision(self):
        self.assertEqual(gc.TOLERANCES["fp32"], 1e-4)
        self.assertGreater(gc.TOLERANCES["tf32"], gc.TOLERANCES["fp32"])
        self.assertEqual(set(gc.TOLERANCES), set(gc.PRECISIONS))
        self.assertGreater(gc.TOLERANCES["bf16"], gc.TOLERANCES["fp16"])
        results = [("fp32", "a", 5e-5), ("fp32", "b", 2e-4), ("tf32", "a", 2e-3),
                   ("tf32", "b", 0.5), ("tf32", "c", None)]
        self.assertEqual(gc.out_of_bounds(results), [("fp32", "b", 2e-4), ("tf32", "b", 0.5)])

    def test_torch_runs_at_the_same_precision(self):
        class Flags:
            allow_tf32 = None

        class Torch:
            class backends:
                class cuda:
                    matmul = Flags()
                cudnn = Flags()

            float16, bfloat16 = "f16", "bf16"

            @staticmethod
            def autocast(device, dtype):
                return ("autocast", device, dtype)

        for precision in ["tf32", "fp32", "fp16", "bf16"]:
            context = gc.set_torch_precision(Torch, precision)
            tf32 = precision == "tf32"
            self.assertIs(Torch.backends.cuda.matmul.allow_tf32, tf32, precision)
            self.assertIs(Torch.backends.cudnn.allow_tf32, tf32, precision)
            if precision in ("fp16", "bf16"):
                dtype = Torch.float16 if precision == "fp16" else Torch.bfloat16
                self.assertEqual(context, ("autocast", "cuda", dtype))
            else:
                with context:  # a no-op context
                    pass

    def test_table(self):
        t = gc.markdown_table([{"batch": 1, "densenetc": 1.0, "eager": 2.0, "compiled": None},
                               {"precision": "tf32", "batch": 64, "densenetc": 4.0, "eager": 2.0,
                                "compiled": 8.0}])
        self.assertIn("| densenet121 | fp32 | 1 | 1.000 | 2.000 | n/a | 2.00x | n/a |", t)
        self.assertIn("| densenet121 | tf32 | 64 | 4.000 | 2.000 | 8.000 | 0.50x | 2.00x |", t)
        self.assertEqual(len(t.splitlines()), 4)

    @unittest.skipUnless(os.environ.get("DENSENETC"), "set DENSENETC to a built densenetc")
    def test_dry_run_with_densenetc(self):
        with tempfile.TemporaryDirectory() as tmp:
            rc = gc.main(["--dry-run", "--densenetc", os.environ["DENSENETC"], "--presets",
                          "densenet-40", "--reduced", "--iters", "1", "--out", tmp])
            self.assertEqual(rc, 0)
            shape, values = gc.read_npy(Path(tmp) / "densenet-40-cpu.npy")
            self.assertEqual(shape, [1, 10])
            self.assertEqual(len(values), 10)
            self.assertTrue((Path(tmp) / "densenet121-b64-cuda.dnc").exists())
            for p in ["tf32", "fp16", "bf16"]:
                self.assertTrue((Path(tmp) / f"densenet121-{p}-b64-cuda.dnc").exists())
                shape, _ = gc.read_npy(Path(tmp) / f"densenet-40-{p}-cpu.npy")
                self.assertEqual(shape, [1, 10])

    @unittest.skipUnless(os.environ.get("DENSENETC"), "set DENSENETC to a built densenetc")
    def test_prepare_then_prebuilt(self):
        with tempfile.TemporaryDirectory() as tmp:
            prep = Path(tmp) / "gpu"
            rc = gc.main(["--prepare", str(prep), "--densenetc", os.environ["DENSENETC"],
                          "--presets", "densenet-40", "--precision", "fp16", "--batches", ""])
            self.assertEqual(rc, 0)
            names = sorted(f.name for f in prep.iterdir())
            # The runtime-only binary, the CUDA artefact and the CPU output; the CPU
            # artefact stayed behind.
            self.assertEqual(names, ["densenet-40-fp16-b1-cuda.dnc", "densenet-40-fp16-cpu.npy",
                                     "densenetc"])
            # The stripped runtime-only binary loads the artefact (and, without a GPU,
            # stops at the device).
            r = subprocess.run([str(prep / "densenetc"), "run", str(prep / "densenet-40-fp16-b1-cuda.dnc"),
                                "--random-input", "7", "--device", "cuda"], capture_output=True, text=True)
            self.assertTrue(r.returncode == 0 or "no CUDA driver" in r.stderr, r.stderr)
            # What --prebuilt does before its GPU steps: nothing compiled, files checked.
            run = gc.Runner(prep / "densenetc", prep, dry_run=True, prebuilt=True)
            self.assertEqual(gc.parity(run, ["densenet-40"], False, "fp16"), [("densenet-40", None)])
            with self.assertRaises(gc.CheckError) as e:
                gc.parity(run, ["densenet-40"], False, "bf16")
            self.assertIn("densenet-40-bf16-cpu.npy is missing: make it with --prepare", str(e.exception))
            with self.assertRaises(gc.CheckError) as e:
                gc.timing(run, 1, "fp16", [64])
            self.assertIn("densenet121-fp16-b64-cuda.dnc is missing", str(e.exception))


if __name__ == "__main__":
    unittest.main()
