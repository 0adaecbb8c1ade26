#!/usr/bin/env python3
"""Per-kernel-class time table of densenetc artefacts, before/after style.

    scripts/profile_classes.py [--densenetc target/release/densenetc] [--iters 20]
                               [--threads 2] [--rounds 3] [--peak-gflops 187] A.dnc [B.dnc ...]

Runs `densenetc bench X --profile --json` for every artefact, interleaved over
`--rounds` rounds, and takes each kernel's median over the rounds. Kernels are
classed by their torchvision names (so artefacts from any densenetc version
compare): stem conv, 1x1 bottleneck, 3x3 growth conv, transition 1x1, pools,
classifier. Prints one markdown table per artefact: kernels, MACs, ms,
effective GFLOP/s (2 x direct MACs / time), % of `--peak-gflops`, share of
the summed kernel time. Only the standard library is needed.
"""
import argparse
import json
import statistics
import subprocess
import sys


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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artefacts", nargs="+")
    ap.add_argument("--densenetc", default="target/release/densenetc")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--peak-gflops", type=float, default=187.0)
    a = ap.parse_args()
    samples = {x: [] for x in a.artefacts}
    for _ in range(a.rounds):
        for x in a.artefacts:
            out = subprocess.run(
                [a.densenetc, "bench", x, "--iters", str(a.iters), "--threads", str(a.threads), "--profile", "--json"],
                check=True, capture_output=True, text=True,
            ).stdout
            samples[x].append(json.loads(out))
    for x in a.artefacts:
        runs = samples[x]
        median_ms = statistics.median(r["median_ms"] for r in runs)
        kernels = runs[0]["profile"]
        per = [statistics.median(r["profile"][i]["ms"] for r in runs) for i in range(len(kernels))]
        classes = {}
        for k, ms in zip(kernels, per):
            c = classes.setdefault(kernel_class(k["name"], k["op"]), [0, 0, 0.0])
            c[0] += 1
            c[1] += k["macs"]
            c[2] += ms
        total = sum(per)
        print(f"\n{x}: whole run median {median_ms:.2f} ms ({a.rounds} rounds x {a.iters} iters, {a.threads} threads); kernels timed alone sum to {total:.2f} ms\n")
        print("| class | kernels | MACs | ms | GFLOP/s effective | % of peak | share |")
        print("|---|---|---|---|---|---|---|")
        for name, (n, macs, ms) in sorted(classes.items(), key=lambda kv: -kv[1][2]):
            gf = 2 * macs / (ms * 1e6) if ms > 0 else 0.0
            print(f"| {name} | {n} | {macs:,} | {ms:.2f} | {gf:.1f} | {100 * gf / a.peak_gflops:.0f}% | {100 * ms / total:.1f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
