#!/usr/bin/env python3
"""Per-kernel-class time table of densenetc artefacts, before/after style.

    scripts/profile_classes.py [--densenetc target/release/densenetc] [--iters 20]
                               [--threads 2] [--rounds 3] [--by-block]
                               [--peak-gflops 187 | --measure-peak ymm|zmm] A.dnc [B.dnc ...]

Runs `densenetc bench X --profile --json` for every artefact, interleaved over
`--rounds` rounds, and takes each kernel's median over the rounds. Kernels are
classed by their torchvision names (so artefacts from any densenetc version
compare): stem conv, 1x1 bottleneck, 3x3 growth conv, transition 1x1, pools,
classifier. Prints one markdown table per artefact: kernels, MACs, ms,
effective GFLOP/s (2 x direct MACs / time), % of the peak, share of the
summed kernel time. With `--by-block` the dense blocks' and transitions' kernels
are split by their block ("bottleneck conv 1x1, block 3", "transition conv
1x1, transition 3"): where in the network a class gains or loses.

The peak is `--peak-gflops`, or with `--measure-peak WIDTH` the median of
`scripts/fma_peak.c` runs (WIDTH registers, `--threads` threads), one before
every round and one after the last: on a shared machine the FMA peak itself
moves by several percent within minutes, so a figure measured beside the
kernels is the fair denominator. Needs a C compiler (`cc`) for that; otherwise
only the standard library.
"""
import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

FMA_PEAK_C = Path(__file__).resolve().parent / "fma_peak.c"


def kernel_class(name, op):
    if name.endswith("conv0"):
        return "stem conv"
    if ".denselayer" in name and name.endswith(".conv1"):
        return "bottleneck conv 1x1" if op in ("conv", "conv1x1") else f"layer conv1 ({op})"
    if ".denselayer" in name and name.endswith(".conv2"):
        return "growth conv 3x3"
    if ".transition" in name and name.endswith(".conv"):
        return "transition conv 1x1"
    if name.endswith("pool0"):
        return "max pool 3x3/2"
    if ".transition" in name and name.endswith(".pool"):
        return "transition avg pool 2x2"
    if "classifier" in name:
        return "classifier"
    return "other (global pool, affine)"


def kernel_key(name, op, by_block):
    """The row a kernel is summed into: its class, with `by_block` split by its dense block
    or transition (from the torchvision name)."""
    cls = kernel_class(name, op)
    m = re.search(r"\.(denseblock|transition)(\d+)\.", name) if by_block else None
    if m is None:
        return cls
    return f"{cls}, {'block' if m.group(1) == 'denseblock' else 'transition'} {m.group(2)}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artefacts", nargs="+")
    ap.add_argument("--densenetc", default="target/release/densenetc")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--by-block", action="store_true", help="split the classes by dense block and transition")
    peak = ap.add_mutually_exclusive_group()
    peak.add_argument("--peak-gflops", type=float, default=187.0)
    peak.add_argument("--measure-peak", choices=["ymm", "zmm"], help="measure the FMA peak between rounds")
    ap.add_argument("--peak-iters", type=int, default=200_000_000, help="FMA iterations per thread and peak run")
    a = ap.parse_args()
    samples = {x: [] for x in a.artefacts}
    peaks = []
    with tempfile.TemporaryDirectory() as tmp:
        measure = fma_peak_runner(tmp, a) if a.measure_peak else None
        for _ in range(a.rounds):
            if measure:
                peaks.append(measure())
            run_round(a, samples)
        if measure:
            peaks.append(measure())
    if peaks:
        a.peak_gflops = statistics.median(peaks)
        print(
            f"peak ({a.measure_peak}, {a.threads} threads, scripts/fma_peak.c): median {a.peak_gflops:.1f} GFLOP/s "
            f"of {len(peaks)} runs between the rounds ({min(peaks):.1f} .. {max(peaks):.1f})"
        )
    report(a, samples)
    return 0


def parse_gflops(line):
    """The GFLOP/s of one `fma_peak` output line."""
    m = re.search(r":\s*([0-9.]+) GFLOP/s", line)
    if not m:
        raise ValueError(f"no GFLOP/s in fma_peak's output: {line!r}")
    return float(m.group(1))


def fma_peak_runner(tmp, a):
    """Compile scripts/fma_peak.c into `tmp`; a function that runs it once and returns GFLOP/s."""
    exe = str(Path(tmp) / "fma_peak")
    subprocess.run(["cc", "-O2", "-pthread", str(FMA_PEAK_C), "-o", exe], check=True)

    def measure():
        run = subprocess.run([exe, str(a.threads), a.measure_peak, str(a.peak_iters)], capture_output=True, text=True)
        if run.returncode != 0:
            sys.exit(
                f"profile_classes: fma_peak {a.measure_peak} failed (exit {run.returncode}"
                f"{', a signal: does this CPU have AVX-512?' if run.returncode < 0 else ''}): {run.stderr.strip()}"
            )
        return parse_gflops(run.stdout)

    return measure


def run_round(a, samples):
    """One `densenetc bench --profile --json` of every artefact, appended to `samples`."""
    for x in a.artefacts:
        out = subprocess.run(
            [a.densenetc, "bench", x, "--iters", str(a.iters), "--threads", str(a.threads), "--profile", "--json"],
            check=True, capture_output=True, text=True,
        ).stdout
        samples[x].append(json.loads(out))


def report(a, samples):
    for x in a.artefacts:
        runs = samples[x]
        median_ms = statistics.median(r["median_ms"] for r in runs)
        kernels = runs[0]["profile"]
        per = [statistics.median(r["profile"][i]["ms"] for r in runs) for i in range(len(kernels))]
        classes = {}
        for k, ms in zip(kernels, per):
            c = classes.setdefault(kernel_key(k["name"], k["op"], a.by_block), [0, 0, 0.0])
            c[0] += 1
            c[1] += k["macs"]
            c[2] += ms
        total = sum(per)
        print(f"\n{x}: whole run median {median_ms:.2f} ms ({a.rounds} rounds x {a.iters} iters, {a.threads} threads); kernels timed alone sum to {total:.2f} ms\n")
        print(f"| class | kernels | MACs | ms | GFLOP/s effective | % of {a.peak_gflops:.1f} | share |")
        print("|---|---|---|---|---|---|---|")
        for name, (n, macs, ms) in sorted(classes.items(), key=lambda kv: -kv[1][2]):
            gf = 2 * macs / (ms * 1e6) if ms > 0 else 0.0
            print(f"| {name} | {n} | {macs:,} | {ms:.2f} | {gf:.1f} | {100 * gf / a.peak_gflops:.0f}% | {100 * ms / total:.1f}% |")


if __name__ == "__main__":
    sys.exit(main())
