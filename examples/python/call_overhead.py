"""The cost of calling a densenetc artefact from Python: ``model(x)`` against ``densenetc bench``
on the same artefact, interleaved (rounds alternate so that clock and thermal drift hit both).

    python examples/python/call_overhead.py /tmp/bc100_b1.dnc --densenetc target/release/densenetc

Without an artefact argument it compiles DenseNet-BC-100 (batch 1, random weights) first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time

import numpy as np

import densenetc


def python_round(model: densenetc.Model, x: np.ndarray, iters: int, warmup: int) -> float:
    for _ in range(warmup):
        model(x)
    samples = []
    for _ in range(iters):
        t = time.perf_counter()
        model(x)
        samples.append((time.perf_counter() - t) * 1e3)
    return statistics.median(samples)


def bench_round(exe: str, artefact: str, iters: int, warmup: int, threads: int) -> float:
    out = subprocess.run(
        [exe, "bench", artefact, "--json", "--iters", str(iters), "--warmup", str(warmup),
         "--threads", str(threads)],
        check=True, capture_output=True, text=True,
    ).stdout
    return float(json.loads(out)["median_ms"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("artefact", nargs="?")
    p.add_argument("--densenetc", default="densenetc", help="the densenetc executable")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    artefact = a.artefact
    if artefact is None:
        artefact = tempfile.mktemp(suffix=".dnc")
        densenetc.compile_random("densenet-bc-100", batch=1).save(artefact)
    model = densenetc.load(artefact, threads=a.threads)
    x = np.random.default_rng(0).standard_normal(model.input_shape).astype(np.float32)
    py, cli = [], []
    for r in range(a.rounds):
        cli.append(bench_round(a.densenetc, artefact, a.iters, a.warmup, a.threads))
        py.append(python_round(model, x, a.iters, a.warmup))
        print(f"round {r}: densenetc bench {cli[-1]:.3f} ms, python model(x) {py[-1]:.3f} ms")
    mp, mc = statistics.median(py), statistics.median(cli)
    print(f"median over rounds: bench {mc:.3f} ms, model(x) {mp:.3f} ms, "
          f"overhead {(mp - mc) * 1e3:+.1f} us ({(mp / mc - 1) * 100:+.1f} %)")


if __name__ == "__main__":
    main()
