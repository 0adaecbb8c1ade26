#!/usr/bin/env python3
"""Side-by-side CPU benchmark: densenetc vs ONNX Runtime vs OpenVINO.

Called by scripts/bench-cpu.sh (which builds densenetc first). For each
case (DenseNet-121 b1 and b8 at 224, DenseNet-BC-100 b1 and b64 at 32, or
those ``--cases`` names: any preset, batch and image size):

1. write deterministic random weights (seed --seed) to a .safetensors file;
2. build the ONNX graph from them (scripts/densenet_onnx.py);
3. if densenetc has `compile`: `densenetc compile --weights W -o X.dnc`;
4. time ONNX Runtime, OpenVINO and (if it has `bench`) `densenetc bench
   X.dnc --iters N --threads T --json`, interleaved in rounds;
5. measure peak RSS: each peer in a process that loads and runs once;
   densenetc via `densenetc run X.dnc` (if it has `run`); all through
   scripts/maxrss.py. densenetc's output is checked against ONNX Runtime's.

With bf16 (``--bf16 on``, or ``auto`` on a CPU with AVX512_BF16) the same rounds also time
``densenetc compile --precision bf16`` and OpenVINO forced to bf16 (its default on such CPUs),
reported in a second table; their outputs are compared with ONNX Runtime's f32.

Prints a markdown report (command, commit, machine, load, versions, tables)
and writes every number to target/bench-cpu/results.json.
"""

from __future__ import annotations

import _venv

_venv.ensure()

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402

import densenet_onnx as dn  # noqa: E402
import peers  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# (arch, batch, image size, timed iterations): about 2-10 s per engine each.
CASES = [
    ("densenet121", 1, 224, 60),
    ("densenet121", 8, 224, 15),
    ("densenet-bc-100", 1, 32, 150),
    ("densenet-bc-100", 64, 32, 10),
]
# Timed iterations of any other case: as many as cost the MACs of DenseNet-121 b1's 60 (the
# engines run DenseNets at roughly their MAC rate), within these bounds.
BUDGET_MACS = 60 * dn.macs(dn.preset("densenet121"))
ITERS_BOUNDS = (3, 300)


def parse_cases(text: str) -> list[tuple[str, int, int, int]]:
    """``--cases``: ``all`` (the four above), or a comma-separated list of ``ARCH-bN`` (a preset
    at its own image size, batch N) and ``ARCH-bN-SIZE``; ValueError names a bad entry."""
    if text == "all":
        return list(CASES)
    known = {(arch, batch, size): iters for arch, batch, size, iters in CASES}
    cases = []
    for entry in text.split(","):
        m = re.fullmatch(r"(.+)-b(\d+)(?:-(\d+))?", entry.strip())
        if m is None:
            raise ValueError(f"case `{entry}`: expected ARCH-bN or ARCH-bN-SIZE, e.g. "
                             "densenet121-b8 or densenet161-b1-320")
        arch, batch = m.group(1), int(m.group(2))
        cfg = dn.preset(arch)  # ValueError for an unknown architecture, listing the presets
        size = int(m.group(3)) if m.group(3) else cfg.image_size
        if batch < 1:
            raise ValueError(f"case `{entry}`: the batch must be at least 1")
        if size != cfg.image_size:
            cfg = dn.resolve(arch, {"image_size": size})  # ValueError for a size too small
        iters = known.get((arch, batch, size))
        if iters is None:
            lo, hi = ITERS_BOUNDS
            iters = min(hi, max(lo, round(BUDGET_MACS / (dn.macs(cfg) * batch))))
        cases.append((arch, batch, size, iters))
    return cases


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Densenetc:
    """The densenetc CLI; which subcommands exist is read from --help."""

    def __init__(self, exe: Path):
        self.exe = exe
        help_text = subprocess.run([str(exe), "--help"], capture_output=True, text=True,
                                   check=True).stdout
        commands = help_text.split("Commands:", 1)[-1].split("\n\n", 1)[0]
        self.commands = set(re.findall(r"^\s{2}([a-z][\w-]*)\s", commands, re.M))
        self.version = subprocess.run([str(exe), "--version"], capture_output=True,
                                      text=True).stdout.strip()

    def has(self, cmd: str) -> bool:
        return cmd in self.commands

    def compile(self, arch: str, weights: Path, batch: int, size: int, out: Path,
                precision: str = "fp32") -> float:
        cmd = [str(self.exe), "compile", "--arch", arch, "--weights", str(weights),
               "--batch", str(batch), "--image-size", str(size), "-o", str(out)]
        if precision != "fp32":
            cmd += ["--precision", precision]
        log("$ " + shlex.join(cmd))
        t = time.perf_counter()
        r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"densenetc compile failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
        return time.perf_counter() - t


class DensenetcBench:
    """``densenetc bench`` as an engine for peers.interleave: each round is
    one `bench` process. Its samples are the per-iteration times when the
    JSON has them (``samples_ms``), else the round's median."""

    def __init__(self, dnc: Densenetc, artefact: Path, threads: int):
        self.dnc, self.artefact, self.threads = dnc, artefact, threads
        self.info = {"name": "densenetc", "version": dnc.version, "runs": []}

    def run(self, n: int, warmup: int = 0) -> list[float]:
        if n == 0:
            if warmup:
                self._bench(warmup)  # untimed: the artefact's pages and caches warm up
            return []
        j = self._bench(n)
        self.info["runs"].append(j)
        if isinstance(j.get("samples_ms"), list) and len(j["samples_ms"]) == n:
            self.info["stat"] = "per-iteration samples from bench --json"
            return [float(v) for v in j["samples_ms"]]
        self.info["stat"] = "median of the per-round bench medians"
        return [float(j["median_ms"])]

    def _bench(self, n: int) -> dict:
        cmd = [str(self.dnc.exe), "bench", str(self.artefact), "--iters", str(n),
               "--threads", str(self.threads), "--json"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{shlex.join(cmd)} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
        return json.loads(r.stdout)


def densenetc_rss(dnc: Densenetc, artefact: Path, x_path: Path, out: Path, threads: int) -> dict:
    rss_file = out.with_suffix(".rss.json")
    cmd = [str(dnc.exe), "run", str(artefact), "--input", str(x_path), "--output", str(out),
           "--threads", str(threads)]
    r = subprocess.run([sys.executable, str(HERE / "maxrss.py"), str(rss_file), "--", *cmd],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    kb = json.loads(rss_file.read_text())["maxrss_kb"]
    return {"peak_rss_kb": kb, "peak_rss_mib": kb / 1024, "output": np.load(out),
            "rss_method": "ru_maxrss (wait4, via scripts/maxrss.py) of `" + shlex.join(cmd) + "`"}


def run_case(a, dnc: Densenetc | None, arch: str, batch: int, size: int, iters: int,
             work: Path) -> dict:
    tag = f"{arch}-b{batch}-{size}"
    log(f"== {tag}")
    cfg = dn.resolve(arch, {"image_size": size} if size != dn.preset(arch).image_size else {})
    weights_file = work / f"{arch}-seed{a.seed}.safetensors"
    weights = dn.random_weights(cfg, a.seed)
    dn.save_weights(weights, weights_file)  # always: densenetc must read these very tensors
    model, x_path = work / f"{tag}.onnx", work / f"{tag}.input.npy"
    peers.write_model(cfg, weights, batch, model)
    rng = np.random.default_rng(a.seed)
    np.save(x_path, rng.standard_normal((batch, cfg.in_channels, size, size), np.float32))

    extra, notes = {}, []
    dnc_state = "n/a (densenetc not built)"
    artefact = work / f"{tag}.dnc"
    artefact_bf16 = work / f"{tag}.bf16.dnc"
    compile_s = None
    engines = list(peers.ENGINES) + (["openvino-bf16"] if a.bf16 else [])
    if dnc is not None:
        if not dnc.has("compile"):
            dnc_state = "n/a (compile not available)"
        else:
            try:
                compile_s = dnc.compile(arch, weights_file, batch, size, artefact)
                if dnc.has("bench"):
                    extra["densenetc"] = DensenetcBench(dnc, artefact, a.threads)
                    dnc_state = "ok"
                else:
                    dnc_state = "n/a (bench not available)"
            except RuntimeError as e:
                dnc_state = "n/a (compile failed)"
                notes.append(str(e))
            if a.bf16 and dnc_state == "ok":
                try:
                    dnc.compile(arch, weights_file, batch, size, artefact_bf16, "bf16")
                    extra["densenetc-bf16"] = DensenetcBench(dnc, artefact_bf16, a.threads)
                except RuntimeError as e:
                    notes.append(f"densenetc bf16: {e}")
    opts = SimpleNamespace(engines=engines, threads=a.threads, iters=iters,
                           warmup=a.warmup, rounds=a.rounds, rss=True, batch=batch)
    try:
        r = peers.bench(opts, cfg, f"random seed {a.seed} ({weights_file.name})", model,
                        x_path, work, extra_engines=extra, log=log if a.verbose else None)
    except RuntimeError as e:  # densenetc bench failed mid-run: time the peers alone
        if not extra:
            raise
        notes.append(str(e))
        dnc_state = "n/a (bench failed)"
        r = peers.bench(opts, cfg, f"random seed {a.seed} ({weights_file.name})", model,
                        x_path, work, log=log if a.verbose else None)
    r["densenetc_state"] = dnc_state
    r["densenetc_compile_s"] = compile_s
    if dnc is not None and dnc_state == "ok" and dnc.has("run"):
        for name, path in (("densenetc", artefact), ("densenetc-bf16", artefact_bf16)):
            if name not in r["engines"]:
                continue
            try:
                rss = densenetc_rss(dnc, path, x_path, work / f"{tag}.{name}.npy", a.threads)
                y = rss.pop("output")
                ref = np.load(work / "ort.out.npy")
                rss["rel_error_vs_ort"] = peers.rel_error(y, ref)
                r["engines"][name].update(rss)
            except (RuntimeError, ValueError, OSError) as e:
                notes.append(f"{name} run: {e}")
    r["notes"] = notes
    for n in notes:
        log("note: " + n)
    return r


def fmt_ms(s: dict | None) -> str:
    return f"{s['median_ms']:.1f} ms (p90 {s['p90_ms']:.1f}, min {s['min_ms']:.1f})" if s else ""


def report(a, results: list[dict], command: str, started: str, golden: dict) -> str:
    first = results[0]
    v = {e: first["engines"][e]["version"] for e in peers.ENGINES}
    lines = [
        "# densenetc vs ONNX Runtime vs OpenVINO (CPU)",
        "",
        f"- command: `{command}`",
        f"- git commit: `{peers.git_commit()}`; started {started}",
        f"- machine: {first['machine_before']['cpu']}, ISA {first['machine_before'].get('isa', 'unknown')}, "
        f"{first['machine_before']['cpus']} CPUs; "
        f"{a.threads} threads per engine; f32; random weights seed {a.seed} (same file for all)",
        f"- engines: ONNX Runtime {v['ort']} (CPU EP, intra-op {a.threads}, inter-op 1, "
        f"sequential, all graph optimisations); OpenVINO {v['openvino']} (CPU, "
        f"INFERENCE_NUM_THREADS {a.threads}, LATENCY hint, INFERENCE_PRECISION_HINT f32); "
        f"densenetc: {results[0].get('densenetc_version', 'n/a')}",
        "- CPU busy: share of both CPUs used by other jobs over 1 s just before and after each "
        "model (from /proc/stat); load avg: 1-minute load average",
        f"- timing: interleaved rounds ({a.rounds}) per model, warmup {a.warmup} per engine; "
        "cells: median over all timed runs (p90 nearest rank, min)",
        "",
        "| model | batch | ONNX Runtime | OpenVINO | densenetc | best peer / densenetc | CPU busy before → after | load avg before → after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    warn = []
    for r in results:
        e = r["engines"]
        peer_best = min(e["ort"]["median_ms"], e["openvino"]["median_ms"])
        if "densenetc" in e and "median_ms" in e["densenetc"]:
            d = fmt_ms(e["densenetc"])
            ratio = f"{peer_best / e['densenetc']['median_ms']:.2f}x"
        else:
            d, ratio = r["densenetc_state"], "n/a"
        mb, ma = r["machine_before"], r["machine_after"]
        lines.append(f"| {r['model']} {r['image_size']}x{r['image_size']} | {r['batch']} | "
                     f"{fmt_ms(e['ort'])} | {fmt_ms(e['openvino'])} | {d} | {ratio} | "
                     f"{mb['busy_percent']:.0f}% → {ma['busy_percent']:.0f}% | "
                     f"{mb['loadavg'][0]:.2f} → {ma['loadavg'][0]:.2f} |")
        busy = max(mb["busy_percent"], ma["busy_percent"])
        if busy > 10:
            warn.append(f"{r['model']} b{r['batch']}: other jobs kept {busy:.0f}% of the CPUs busy")
    if warn:
        lines += ["", "**Warning: the machine was not quiet; the latencies above are inflated "
                  "(ONNX Runtime's spinning thread pool suffers most).** " + "; ".join(warn) + "."]
    if any("openvino-bf16" in r["engines"] for r in results):
        lines += [
            "",
            "bf16, same rounds: densenetc `--precision bf16` (f32 sums; on the AMX tiles, "
            "tdpbf16ps, where this CPU has AMX-BF16, else vdpbf16ps) against "
            "OpenVINO with INFERENCE_PRECISION_HINT bf16 (its default on this CPU); relative "
            "error of the logits against ONNX Runtime f32.",
            "",
            "| model | batch | OpenVINO bf16 | densenetc bf16 | OpenVINO bf16 / densenetc bf16 "
            "| densenetc f32 / densenetc bf16 | error OpenVINO bf16 | error densenetc bf16 |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in results:
            e = r["engines"]
            ov, d, d32 = e.get("openvino-bf16"), e.get("densenetc-bf16"), e.get("densenetc")
            if not ov or not d or "median_ms" not in d:
                continue
            ratio = f"{ov['median_ms'] / d['median_ms']:.2f}x"
            own = (f"{d32['median_ms'] / d['median_ms']:.2f}x"
                   if d32 and "median_ms" in d32 else "n/a")
            err = lambda x: (f"{x['rel_error_vs_ort']:.1e}"  # noqa: E731
                             if "rel_error_vs_ort" in x else "n/a")
            lines.append(f"| {r['model']} {r['image_size']}x{r['image_size']} | {r['batch']} | "
                         f"{fmt_ms(ov)} | {fmt_ms(d)} | {ratio} | {own} | {err(ov)} | {err(d)} |")
    lines += [
        "",
        "Peak RSS in MiB (ru_maxrss via scripts/maxrss.py). *once*: a process that loads the "
        "model, runs it once and exits (as `densenetc run` does); *timed*: the timing "
        "process, after warmup and every timed run. The peers' processes include Python and "
        f"numpy, ~{first['engines']['ort']['hwm_after_import_kb'] / 1024:.0f} MiB with ONNX "
        "Runtime imported.",
        "",
        "| model | batch | ONNX Runtime once | timed | OpenVINO once | timed | densenetc run "
        "| densenetc run / ONNX Runtime once |",
        "|---|---|---|---|---|---|---|---|",
    ]
    mib = lambda kb: f"{kb / 1024:.1f}"  # noqa: E731
    for r in results:
        e = r["engines"]
        ort, ov = e["ort"], e["openvino"]
        d = e.get("densenetc", {}).get("peak_rss_kb")
        lines.append(f"| {r['model']} | {r['batch']} | {mib(ort['peak_rss_kb'])} | "
                     f"{mib(ort['timing_process_peak_rss_kb'])} | {mib(ov['peak_rss_kb'])} | "
                     f"{mib(ov['timing_process_peak_rss_kb'])} | "
                     + (f"{mib(d)} | {d / ort['peak_rss_kb']:.2f} |" if d else "n/a | n/a |"))
    lines += ["", "Output agreement (‖a−b‖∞/‖b‖∞ against ONNX Runtime, same input):", ""]
    for r in results:
        errs = ", ".join(f"{k} {s['rel_error_vs_ort']:.1e}" for k, s in r["engines"].items()
                         if k != "ort" and "rel_error_vs_ort" in s)
        lines.append(f"- {r['model']} b{r['batch']}: {errs}")
    compiled = [f"{r['model']} b{r['batch']} {r['densenetc_compile_s']:.1f} s" for r in results
                if r.get("densenetc_compile_s") is not None]
    if compiled:
        lines += ["", "densenetc compile time (wall): " + ", ".join(compiled) + "."]
    if golden:
        worst = max(v for errs in golden.values() for v in errs.values())
        lines += ["", f"The ONNX graph was checked first against the {len(golden)} golden fixtures "
                  f"(tests/fixtures/golden, PyTorch float64 logits): worst rel error {worst:.1e} "
                  "(bound 1e-4)."]
    notes = [n for r in results for n in r["notes"]]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--densenetc", type=Path, default=REPO / "target/release/densenetc")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="random weights and input seed")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters-scale", type=float, default=1.0,
                    help="multiply every case's iteration count (e.g. 0.2 for a quick look)")
    ap.add_argument("--cases", default="all",
                    help="`all` (DenseNet-121 b1/b8 at 224, DenseNet-BC-100 b1/b64 at 32) or a "
                         "comma-separated list of ARCH-bN[-SIZE] with any preset, e.g. "
                         "densenet121-b1,densenet161-b1,densenet201-b4-320")
    ap.add_argument("--work-dir", type=Path, default=REPO / "target/bench-cpu")
    ap.add_argument("--skip-golden", action="store_true",
                    help="skip checking the ONNX graph against the golden fixtures first")
    ap.add_argument("--bf16", choices=["auto", "on", "off"], default="auto",
                    help="also time densenetc --precision bf16 and OpenVINO bf16 (auto: where "
                         "the CPU has AVX512_BF16)")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args()
    try:
        cases = parse_cases(a.cases)
    except ValueError as e:
        ap.error(f"--cases: {e}")
    a.bf16 = a.bf16 == "on" or (a.bf16 == "auto" and "avx512_bf16" in peers.cpu_flags())
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    # bench-cpu.sh passes the command the user typed.
    command = shlex.join([os.environ.get("BENCH_CPU_COMMAND") or sys.argv[0], *sys.argv[1:]])
    a.work_dir.mkdir(parents=True, exist_ok=True)
    dnc = Densenetc(a.densenetc) if a.densenetc.exists() else None
    if dnc is None:
        log(f"note: {a.densenetc} not found; timing the peers only")
    else:
        log(f"densenetc subcommands: {', '.join(sorted(dnc.commands))}")
    golden = {}
    if not a.skip_golden:
        log("checking the ONNX graph against tests/fixtures/golden (tolerance 1e-4)")
        dirs = sorted(p.parent for p in (REPO / "tests/fixtures/golden").glob("*/config.json"))
        golden = peers.golden_errors(dirs, peers.ENGINES, a.threads, a.work_dir, log=log)
        worst = max((v for errs in golden.values() for v in errs.values()), default=0.0)
        if worst > 1e-4:
            raise RuntimeError(f"ONNX graph differs from the golden fixtures: rel error {worst:.2e}")
    results = []
    for arch, batch, size, iters in cases:
        r = run_case(a, dnc, arch, batch, size, max(1, round(iters * a.iters_scale)), a.work_dir)
        r["densenetc_version"] = dnc.version if dnc else "not built"
        results.append(r)
    text = report(a, results, command, started, golden)
    out = a.work_dir / "results.json"
    out.write_text(json.dumps({"command": command, "git_commit": peers.git_commit(),
                               "started": started, "golden_errors": golden,
                               "results": results}, indent=2, default=str))
    (a.work_dir / "report.md").write_text(text)
    print(text)
    log(f"wrote {out} and {a.work_dir / 'report.md'}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
