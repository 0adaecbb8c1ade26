#!/usr/bin/env python3
"""The GPU check of densenetc, for a machine with an NVIDIA GPU and PyTorch:

    scripts/gpu-check.sh [--densenetc PATH] [--reduced] [--iters N] [--out DIR]
                         [--precision fp32|tf32|fp16|bf16|all]
    scripts/gpu-check.sh --dry-run      # every step that needs no GPU

1. builds densenetc (``cargo build --release``; or ``--densenetc PATH``);
2. compiles every preset for ``cpu,cuda`` (batch 1, random weights;
   ``--reduced``: ImageNet presets at 64x64) and checks that
   ``densenetc run --device cuda`` matches ``--device cpu`` on the same
   random input, in relative error (max |a - b| / max |b|): within 1e-4
   for ``--precision fp32``, within 5e-3 for ``tf32`` and ``fp16``, 3e-2
   for ``bf16`` (the CUDA GEMMs on the tensor cores with operands of that
   type, as ``cuda::Precision::rel_bound`` documents; the CPU code is f32);
3. times DenseNet-121 at batch 1 and 64 on the GPU: ``densenetc bench
   --device cuda`` against PyTorch eager (cuDNN, channels_last, benchmark
   mode) and ``torch.compile`` of the same torchvision model, medians of
   ``--iters`` synchronised runs, and prints a markdown table. PyTorch runs
   at the same precision: ``allow_tf32`` for matmul and cuDNN in tf32 mode,
   ``torch.autocast`` to float16 / bfloat16 in fp16 / bf16 mode (PyTorch's
   usual mixed precision, which also stores activations in 16 bits where
   densenetc keeps them in f32).

``--precision all`` (the default) checks and times every mode; on a
machine with a per-command time limit run one mode per command.

Without a GPU it stops at once with a message saying so. ``--dry-run`` runs
steps 1 and 2 up to the CPU side (compile, CPU run) and step 3's compiles,
and prints the table with the GPU columns empty. Needs Python 3.10+ only;
PyTorch only for step 3 (imported there).

Two phases, for a GPU machine without LLVM or Rust (the compiler needs
LLVM; the runtime-only ``densenetc`` needs libc alone):

    scripts/gpu-check.sh --prepare DIR [--presets ..] [--precision P] [--batches 1,64]
    scripts/gpu-check.sh --prebuilt DIR [the same selection]    # on the GPU machine

``--prepare`` (no GPU) writes into DIR a stripped ``densenetc``, the CUDA
artefacts (parity at batch 1, timing at ``--batches``) and the CPU
reference outputs, and prints DIR's size; ``--prebuilt`` runs the checks
with them, compiling nothing. Each artefact holds its model's weights
(DenseNet-121: 32 MB), so select what fits the way to the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import struct
import subprocess
import sys
import tempfile
from array import array
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

PRESETS = ["densenet121", "densenet161", "densenet169", "densenet201",
           "densenet-bc-100", "densenet-bc-250", "densenet-bc-190", "densenet-40"]
IMAGENET = {"densenet121", "densenet161", "densenet169", "densenet201"}
TIMED = "densenet121"
BATCHES = [1, 64]
PRECISIONS = ["fp32", "tf32", "fp16", "bf16"]
# CUDA vs CPU relative error per --precision: f32 as ARCHITECTURE.md (Targets) asks; the
# tensor-core modes as the compiler documents them (cuda::Precision::rel_bound,
# measured through its emulator).
TOLERANCES = {"fp32": 1e-4, "tf32": 5e-3, "fp16": 5e-3, "bf16": 3e-2}
TOLERANCE = TOLERANCES["fp32"]


class CheckError(Exception):
    """A failed check, with the message to print."""


def require_gpu(which=shutil.which, run=subprocess.run) -> str:
    """The GPU list of ``nvidia-smi -L``, or a CheckError saying why there is none."""
    hint = ("gpu-check needs a machine with an NVIDIA GPU, its driver and PyTorch; "
            "run `scripts/gpu-check.sh --dry-run` to check the other steps here")
    smi = which("nvidia-smi")
    if smi is None:
        raise CheckError(f"no GPU: nvidia-smi not found. {hint}")
    r = run([smi, "-L"], capture_output=True, text=True)
    gpus = [line for line in r.stdout.splitlines() if line.startswith("GPU ")]
    if r.returncode != 0 or not gpus:
        raise CheckError(f"no GPU: `nvidia-smi -L` listed none ({(r.stderr or r.stdout).strip()}). {hint}")
    return "\n".join(gpus)


def read_npy(path: Path) -> tuple[list[int], array]:
    """A little-endian float32 C-order .npy file (what densenetc writes)."""
    data = path.read_bytes()
    if data[:6] != b"\x93NUMPY":
        raise CheckError(f"{path}: not a .npy file")
    major = data[6]
    (hlen,), start = (struct.unpack_from("<H", data, 8), 10) if major == 1 else (struct.unpack_from("<I", data, 8), 12)
    header = data[start:start + hlen].decode("latin1")
    if "'<f4'" not in header or "'fortran_order': False" not in header:
        raise CheckError(f"{path}: expected little-endian float32 in C order, header {header.strip()}")
    shape_text = header.split("'shape':")[1].split(")")[0].strip(" (")
    shape = [int(d) for d in shape_text.split(",") if d.strip()]
    values = array("f")
    values.frombytes(data[start + hlen:])
    if sys.byteorder != "little":
        values.byteswap()
    return shape, values


def rel_error(got, want) -> float:
    """max |got - want| / max |want| (the project's relative error)."""
    if len(got) != len(want):
        raise CheckError(f"{len(got)} values against {len(want)}")
    scale = max((abs(w) for w in want), default=0.0)
    diff = max((abs(g - w) for g, w in zip(got, want)), default=0.0)
    return diff / scale if scale > 0 else diff


def compile_args(preset: str, reduced: bool, batch: int, targets: str, out: Path,
                 precision: str = "fp32") -> list[str]:
    args = ["compile", "--arch", preset, "--random-weights", "1", "--batch", str(batch),
            "--target", targets, "-o", str(out)]
    if precision != "fp32":
        args += ["--precision", precision]
    if reduced and preset in IMAGENET:
        args += ["--image-size", "64"]
    return args


def markdown_table(rows: list[dict]) -> str:
    """Rows of {batch, densenetc, eager, compiled} (ms or None) and an optional precision
    (default fp32) as a markdown table."""
    def ms(v):
        return "n/a" if v is None else f"{v:.3f}"

    def speedup(a, b):
        return "n/a" if a is None or b is None or a <= 0 else f"{b / a:.2f}x"

    lines = ["| model | precision | batch | densenetc (ms) | PyTorch eager (ms) "
             "| torch.compile (ms) | vs eager | vs compile |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {TIMED} | {r.get('precision', 'fp32')} | {r['batch']} "
                     f"| {ms(r['densenetc'])} | {ms(r['eager'])} "
                     f"| {ms(r['compiled'])} | {speedup(r['densenetc'], r['eager'])} "
                     f"| {speedup(r['densenetc'], r['compiled'])} |")
    return "\n".join(lines)


class Runner:
    """Runs densenetc. ``dry_run``: no GPU step; ``prebuilt``: no compile either (the
    artefacts and CPU outputs are in ``out`` already); ``scratch``: where artefacts that
    only the CPU side needs go (``out`` unless preparing)."""

    def __init__(self, densenetc: Path, out: Path, dry_run: bool, prebuilt: bool = False,
                 scratch: Path | None = None):
        self.densenetc, self.out, self.dry_run, self.prebuilt = densenetc, out, dry_run, prebuilt
        self.scratch = scratch or out
        self.compiled: set[Path] = set()

    def __call__(self, *args: str) -> str:
        cmd = [str(self.densenetc), *args]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise CheckError(f"`{' '.join(cmd)}` failed:\n{r.stderr.strip()}")
        return r.stdout

    def compile(self, dnc: Path, preset: str, reduced: bool, batch: int, targets: str,
                precision: str) -> None:
        """Compiles ``dnc`` once per run; with ``prebuilt`` only checks that it is there."""
        if self.prebuilt:
            if not dnc.exists():
                raise CheckError(f"{dnc} is missing: make it with --prepare and the same selection")
        elif dnc not in self.compiled:
            self(*compile_args(preset, reduced, batch, targets, dnc, precision))
            self.compiled.add(dnc)


def build(args) -> Path:
    if args.densenetc:
        return Path(args.densenetc)
    print("## building densenetc (cargo build --release)", flush=True)
    r = subprocess.run(["cargo", "build", "--release", "-p", "compiler", "--bin", "densenetc"], cwd=REPO)
    if r.returncode != 0:
        raise CheckError("cargo build failed (or pass --densenetc PATH to a built binary)")
    return REPO / "target" / "release" / "densenetc"


def artefact_stem(preset: str, precision: str) -> str:
    """The file name stem of a preset's outputs: fp32 keeps the plain name."""
    return preset if precision == "fp32" else f"{preset}-{precision}"


def size_tag(preset: str, reduced: bool) -> str:
    """``-64px`` in the names of artefacts compiled at the reduced image size."""
    return "-64px" if reduced and preset in IMAGENET else ""


def cuda_artefact(out: Path, preset: str, precision: str, batch: int, reduced: bool = False) -> Path:
    """The CUDA artefact of a preset (the batch-1 one serves parity and timing alike)."""
    return out / f"{artefact_stem(preset, precision)}{size_tag(preset, reduced)}-b{batch}-cuda.dnc"


def parity(run: Runner, presets: list[str], reduced: bool,
           precision: str = "fp32") -> list[tuple[str, float | None]]:
    """CUDA against the CPU code on the same random input: the CPU output comes from a
    CPU-only artefact (in ``run.scratch``), the CUDA one from a CUDA-only artefact."""
    results = []
    for preset in presets:
        stem = artefact_stem(preset, precision)
        cpu_y = run.out / f"{stem}-cpu.npy"
        if not run.prebuilt:
            # The CPU code is f32 whatever the precision: one artefact per preset.
            cpu_dnc = run.scratch / f"{preset}{size_tag(preset, reduced)}-cpu.dnc"
            run.compile(cpu_dnc, preset, reduced, 1, "cpu", "fp32")
            run("run", str(cpu_dnc), "--random-input", "7", "--device", "cpu", "--output", str(cpu_y))
        elif not cpu_y.exists():
            raise CheckError(f"{cpu_y} is missing: make it with --prepare and the same selection")
        dnc = cuda_artefact(run.out, preset, precision, 1, reduced)
        run.compile(dnc, preset, reduced, 1, "cuda", precision)
        if run.dry_run:
            results.append((preset, None))
            print(f"{preset} {precision}: compiled, CPU run done (dry run: no CUDA run)", flush=True)
            continue
        cuda_y = run.out / f"{stem}-cuda.npy"
        run("run", str(dnc), "--random-input", "7", "--device", "cuda", "--output", str(cuda_y))
        (shape_c, c), (shape_g, g) = read_npy(cpu_y), read_npy(cuda_y)
        if shape_c != shape_g:
            raise CheckError(f"{preset}: CPU output {shape_c}, CUDA output {shape_g}")
        err = rel_error(g, c)
        results.append((preset, err))
        print(f"{preset} {precision}: CUDA vs CPU relative error {err:.2e}", flush=True)
    return results


def set_torch_precision(torch, precision: str):
    """PyTorch at densenetc's precision: TF32 tensor cores for tf32, strict f32 otherwise;
    returns the context to run the model in (autocast to float16 / bfloat16 for fp16 / bf16)."""
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    dtype = {"fp16": "float16", "bf16": "bfloat16"}.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=getattr(torch, dtype))


def torch_times(batch: int, iters: int, precision: str = "fp32") -> tuple[float, float]:
    """Medians (ms) of PyTorch eager (cuDNN, channels_last) and torch.compile, DenseNet-121."""
    import torch
    import torchvision

    if not torch.cuda.is_available():
        raise CheckError("PyTorch sees no CUDA device")
    torch.backends.cudnn.benchmark = True
    context = set_torch_precision(torch, precision)
    model = torchvision.models.densenet121(weights=None).eval().cuda()
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 224, 224, device="cuda").to(memory_format=torch.channels_last)

    def median_ms(fn) -> float:
        with torch.inference_mode(), context:
            for _ in range(10):
                fn(x)
            torch.cuda.synchronize()
            times = []
            for _ in range(iters):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn(x)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
        times.sort()
        return times[len(times) // 2]

    eager = median_ms(model)
    compiled = median_ms(torch.compile(model))
    return eager, compiled


def timing(run: Runner, iters: int, precision: str = "fp32",
           batches: list[int] | None = None) -> list[dict]:
    rows = []
    for batch in BATCHES if batches is None else batches:
        dnc = cuda_artefact(run.out, TIMED, precision, batch)
        run.compile(dnc, TIMED, False, batch, "cuda", precision)
        row = {"precision": precision, "batch": batch, "densenetc": None, "eager": None,
               "compiled": None}
        if not run.dry_run:
            bench = json.loads(run("bench", str(dnc), "--device", "cuda", "--iters", str(iters), "--json"))
            row["densenetc"] = bench["median_ms"]
            row["eager"], row["compiled"] = torch_times(batch, iters, precision)
        rows.append(row)
        print(f"{TIMED} {precision} b{batch}: {row}", flush=True)
    return rows


def strip_into(binary: Path, dest: Path) -> None:
    """``binary`` without its debug information (a fifth of the size), or as it is."""
    strip = shutil.which("strip")
    if strip is None or subprocess.run([strip, "-o", str(dest), str(binary)]).returncode != 0:
        shutil.copy2(binary, dest)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="only the steps that need no GPU")
    mode.add_argument("--prepare", metavar="DIR",
                      help="no GPU: write a stripped densenetc, the artefacts and the CPU outputs into DIR")
    mode.add_argument("--prebuilt", metavar="DIR",
                      help="on the GPU: check with what --prepare wrote into DIR, compiling nothing")
    p.add_argument("--densenetc", help="a built densenetc (default: cargo build --release)")
    p.add_argument("--reduced", action="store_true", help="ImageNet presets at 64x64 for the parity step")
    p.add_argument("--presets", default=",".join(PRESETS), help="comma-separated presets to check")
    p.add_argument("--batches", default=",".join(map(str, BATCHES)),
                   help=f"comma-separated batches to time {TIMED} at (default: 1,64; none: empty)")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--out", help="where artefacts and outputs go (default: a temporary directory)")
    p.add_argument("--precision", choices=[*PRECISIONS, "all"], default="all",
                   help="CUDA GEMM arithmetic to check and time (default: all)")
    args = p.parse_args(argv)
    precisions = PRECISIONS if args.precision == "all" else [args.precision]
    presets = [s for s in args.presets.split(",") if s]
    if unknown := [s for s in presets if s not in PRESETS]:
        p.error(f"unknown presets {unknown}; known: {', '.join(PRESETS)}")
    try:
        batches = [int(b) for b in args.batches.split(",") if b]
    except ValueError:
        p.error(f"--batches {args.batches!r}: expected comma-separated integers")
    if args.out and (args.prepare or args.prebuilt):
        p.error("--prepare and --prebuilt use their DIR, not --out")
    try:
        if not (args.dry_run or args.prepare):
            print(f"## GPU\n{require_gpu()}", flush=True)
        if args.prebuilt:
            densenetc = Path(args.prebuilt) / "densenetc"
            if not densenetc.exists():
                raise CheckError(f"{densenetc} is missing: make it with --prepare")
        else:
            densenetc = build(args)
        with tempfile.TemporaryDirectory(prefix="dnc-gpu-check-") as tmp:
            out = Path(args.prepare or args.prebuilt or args.out or tmp)
            out.mkdir(parents=True, exist_ok=True)
            if args.prepare:
                strip_into(densenetc, out / "densenetc")
            run = Runner(densenetc, out, dry_run=bool(args.dry_run or args.prepare),
                         prebuilt=bool(args.prebuilt), scratch=Path(tmp) if args.prepare else out)
            results, rows = [], []
            for precision in precisions:
                print(f"## CUDA vs CPU parity ({precision})", flush=True)
                results += [(precision, p_, e) for p_, e in parity(run, presets, args.reduced, precision)]
            for precision in precisions:
                print(f"## timing ({precision})", flush=True)
                rows += timing(run, args.iters, precision, batches)
        if args.prepare:
            size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
            print(f"\nprepared {out}: {size / 2**20:.1f} MiB; on the GPU machine run "
                  f"scripts/gpu-check.sh --prebuilt {out} with the same selection")
            return 0
        print("\n| preset | precision | CUDA vs CPU rel. error | bound |\n|---|---|---:|---:|")
        for precision, preset, err in results:
            shown = "n/a (dry run)" if err is None else f"{err:.2e}"
            print(f"| {preset} | {precision} | {shown} | {TOLERANCES[precision]:.0e} |")
        print()
        print(markdown_table(rows))
        bad = out_of_bounds(results)
        if bad:
            raise CheckError(f"CUDA differs from the CPU by more than its bound: {bad}")
    except CheckError as e:
        print(f"gpu-check: error: {e}", file=sys.stderr)
        return 1
    return 0


def out_of_bounds(results: list[tuple[str, str, float | None]]) -> list[tuple[str, str, float]]:
    """The (precision, preset, error) results above their precision's bound."""
    return [(pr, p_, e) for pr, p_, e in results if e is not None and e > TOLERANCES[pr]]


if __name__ == "__main__":
    sys.exit(main())
