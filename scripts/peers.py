#!/usr/bin/env python3
"""Time ONNX Runtime and OpenVINO on the same DenseNet, with the same weights,
as densenetc.

The network is built as a plain ONNX graph straight from the weights (no
torch): from a .safetensors file (``--weights``) or from deterministic
random weights identical to ``densenetc --random-weights SEED``. Each engine
runs in its own process (scripts/peer_worker.py) on ``--threads`` threads,
f32; rounds alternate between the engines so that machine noise hits them
alike. Reported per engine: median, p90 (nearest rank), min and mean latency
over all timed runs, and the peak RSS of a separate process that only loads
the model in that engine and runs it once.

Modes:
  bench (default)            time the engines
  --check-output Y --input X run X through each engine, print ||a-y||inf/||y||inf
  --golden DIR...            the same against golden fixture directories
                             (config.json, weights.safetensors, input.npy,
                             output.npy); fails above --tol

Examples:
  scripts/peers.py --arch densenet121 --random-weights 0 --batch 1
  scripts/peers.py --arch densenet-bc-100 --random-weights 0 --batch 64 --iters 20 --json
  scripts/peers.py --golden tests/fixtures/golden/*
  scripts/peers.py --arch densenet121 --weights W.safetensors \\
      --input x.npy --check-output y.npy

The first run creates scripts/.venv and installs scripts/requirements.txt.
"""

from __future__ import annotations

import _venv

_venv.ensure()

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import densenet_onnx as dn  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ENGINES = ["ort", "openvino"]
ENGINE_NAMES = {"ort": "ONNX Runtime", "openvino": "OpenVINO", "openvino-bf16": "OpenVINO bf16"}
RSS_METHOD = ("ru_maxrss (wait4, via scripts/maxrss.py) of a process that imports numpy "
              "and the engine only, loads the ONNX file, runs one inference and exits")


# ---------------------------------------------------------------- engines

class WorkerError(RuntimeError):
    pass


class Worker:
    """An engine in a child process (peer_worker.py), driven over pipes and
    started through maxrss.py, which records the child's peak RSS."""

    def __init__(self, engine: str, model: Path, x_path: Path, threads: int):
        self.engine = engine
        self.name = ENGINE_NAMES[engine]
        fd, self.rss_file = tempfile.mkstemp(prefix=f"peers-{engine}-", suffix=".json")
        os.close(fd)
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "maxrss.py"), self.rss_file, "--",
             sys.executable, str(HERE / "peer_worker.py"), engine, str(model), str(x_path),
             "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.maxrss_kb = self.hwm_kb = None
        self.ready = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self._reap()
            raise WorkerError(f"{self.engine} worker exited with status "
                              f"{self.proc.returncode} (see its stderr above)")
        msg = json.loads(line)
        if "error" in msg:
            self._reap()
            raise WorkerError(msg["error"])
        return msg

    def _send(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def run(self, n: int, warmup: int = 0) -> list[float]:
        return self._send(cmd="run", n=n, warmup=warmup)["samples_ms"]

    def infer(self, output: Path) -> np.ndarray:
        self._send(cmd="infer", output=str(output))
        return np.load(output)

    def _reap(self) -> None:
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        try:
            self.maxrss_kb = json.loads(Path(self.rss_file).read_text())["maxrss_kb"]
        except (OSError, ValueError, KeyError):
            pass
        Path(self.rss_file).unlink(missing_ok=True)

    def quit(self) -> int:
        """Stop the child; returns its peak RSS in kB (ru_maxrss via maxrss.py)."""
        if self.proc.returncode is None:
            try:
                self.hwm_kb = self._send(cmd="quit").get("hwm_kb")
            except (BrokenPipeError, WorkerError):
                pass
            self._reap()
        return self.maxrss_kb if self.maxrss_kb is not None else -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.returncode is None and exc[0] is not None:
            self.proc.kill()
        self.quit()


def stats(samples: list[float]) -> dict:
    s = sorted(samples)
    return {
        "median_ms": float(np.median(s)),
        "p90_ms": s[max(math.ceil(0.9 * len(s)) - 1, 0)],  # nearest rank
        "min_ms": s[0],
        "mean_ms": float(np.mean(s)),
        "samples": len(s),
    }


def interleave(engines: dict, iters: int, warmup: int, rounds: int, pause_s: float = 0.2,
               log=None) -> dict[str, list[float]]:
    """Time every engine for ``iters`` runs, split into ``rounds`` rounds that
    alternate between the engines (starting engine rotated each round).
    ``engines`` maps a name to an object whose ``run(n, warmup)`` returns the
    latencies (ms) of ``n`` timed runs after ``warmup`` untimed ones. Each
    engine first gets ``warmup`` untimed runs; each round then starts with one
    untimed run, since the other engines have just evicted its caches."""
    names = list(engines)
    rounds = min(rounds, iters)
    per_round = max(math.ceil(iters / rounds), 1)
    for name in names:
        engines[name].run(0, warmup)
        time.sleep(pause_s)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            n = min(per_round, iters - len(samples[name]))
            if n <= 0:
                continue
            samples[name] += engines[name].run(n, 1)
            if log:
                log(f"  round {r + 1}/{rounds} {name}: median "
                    f"{np.median(samples[name][-n:]):.2f} ms over {n}")
            # Let spinning thread pools go idle before the next engine.
            time.sleep(pause_s)
    return samples


def peak_rss(engine: str, model: Path, x_path: Path, out: Path, threads: int) -> dict:
    """Peak RSS of a process that loads ``model`` in ``engine`` and runs it
    once; also returns that run's output (for the cross-engine check)."""
    w = Worker(engine, model, x_path, threads)
    y = w.infer(out)
    kb = w.quit()
    return {"peak_rss_kb": kb, "peak_rss_mib": kb / 1024, "vm_hwm_kb": w.hwm_kb,
            "hwm_after_import_kb": w.ready["hwm_kb"]["after_import"],
            "hwm_after_load_kb": w.ready["hwm_kb"]["after_load"],
            "output": y}


def rel_error(a: np.ndarray, ref: np.ndarray) -> float:
    """densenetc's measure: ||a - ref||_inf / max(||ref||_inf, 1e-30)."""
    if a.shape != ref.shape:
        raise ValueError(f"shape {list(a.shape)} vs reference {list(ref.shape)}")
    d = np.abs(a.astype(np.float64) - ref.astype(np.float64))
    if not np.all(np.isfinite(d)):
        return math.inf
    return float(d.max() / max(np.abs(ref).max(), 1e-30))


# ---------------------------------------------------------------- environment

def git_commit() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], check=True,
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"],
                               capture_output=True, text=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def amd_core(family: int, model: int) -> str | None:
    """The AMD core generation of a CPUID family and model, where the family alone (or with
    the model's documented ranges) tells: under a hypervisor the model name is often just
    "AMD EPYC", which says nothing of Zen 3 (AVX2) against Zen 4 (AVX-512)."""
    if family == 0x17:
        return "Zen 2" if model >= 0x30 else "Zen / Zen+"
    if family == 0x19:
        # Zen 3: Milan 0x00-0x0f, Vermeer/Cezanne/Rembrandt 0x20-0x5f; Zen 4: Genoa 0x10-0x1f,
        # Raphael/Phoenix/Bergamo 0x60-0xaf.
        return "Zen 4" if 0x10 <= model <= 0x1f or 0x60 <= model <= 0xaf else "Zen 3"
    if family == 0x1a:
        return "Zen 5"
    return None


def cpu_name() -> str:
    """The model name, with the CPUID family and model (and, for AMD, the core generation)."""
    fields: dict[str, str] = {}
    try:
        for line in open("/proc/cpuinfo"):
            if not line.strip():
                break
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or "unknown"
    try:
        family, model = int(fields["cpu family"]), int(fields["model"])
    except (KeyError, ValueError):
        return name
    core = amd_core(family, model) if fields.get("vendor_id") == "AuthenticAMD" else None
    return f"{name} (family {family} model {model}{', ' + core if core else ''})"


def cpu_flags() -> set[str]:
    """The CPU's flags from /proc/cpuinfo (empty if unreadable)."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_isa() -> str:
    """The vector ISA level of this CPU, from /proc/cpuinfo's flags: what decides which
    kernels densenetc runs (`avx512` with AVX-512 F/VL/BW/DQ, else `avx2`) and whether
    OpenVINO's default is bf16 (AVX512_BF16, AMX)."""
    try:
        flags: set[str] = set()
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        return "unknown"
    level = ("x86-64-v4 (AVX-512)" if {"avx512f", "avx512vl", "avx512bw", "avx512dq"} <= flags
             else "x86-64-v3 (AVX2)" if {"avx2", "fma"} <= flags else "below x86-64-v3")
    extras = [f for f in ("avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile") if f in flags]
    return level + (", " + ", ".join(extras) if extras else "")


def cpu_busy_percent(interval: float = 1.0) -> float | None:
    """Share of all CPUs busy (not idle or iowait) over ``interval`` seconds,
    from /proc/stat, while this process sleeps: what other jobs take now.
    The load average lags by a minute; this does not."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]

    try:
        t0, i0 = sample()
        time.sleep(interval)
        t1, i1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return 100.0 * (1 - (i1 - i0) / max(t1 - t0, 1))


def machine() -> dict:
    return {"cpu": cpu_name(), "isa": cpu_isa(), "cpus": os.cpu_count(), "loadavg": list(os.getloadavg()),
            "busy_percent": cpu_busy_percent(), "python": platform.python_version()}


# ---------------------------------------------------------------- CLI

def add_model_args(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("model (as densenetc's flags)")
    g.add_argument("--arch", help=f"preset: {', '.join(dn.PRESETS)}")
    g.add_argument("--config", type=Path, help="densenetc TOML config (arch + overrides)")
    g.add_argument("--growth-rate", type=int)
    g.add_argument("--block-config", type=lambda s: [int(v) for v in s.split(",")],
                   help="layers per block, e.g. 6,12,24,16")
    g.add_argument("--init-features", type=int)
    g.add_argument("--bn-size", type=int, help="0 = plain BN-ReLU-3x3 layers")
    g.add_argument("--compression", type=float, help="θ in (0, 1]")
    g.add_argument("--num-classes", type=int)
    g.add_argument("--in-channels", type=int)
    g.add_argument("--stem", choices=["imagenet", "cifar"])
    g.add_argument("--conv-bias", action="store_true", default=None)
    g.add_argument("--bn-eps", type=float)
    g.add_argument("--image-size", type=int)
    g.add_argument("--batch", type=int, default=1)
    w = ap.add_argument_group("weights")
    w.add_argument("--weights", type=Path, help="a .safetensors file (torchvision names)")
    w.add_argument("--random-weights", type=int, metavar="SEED",
                   help="deterministic random weights, equal to densenetc --random-weights SEED")
    w.add_argument("--save-weights", type=Path, metavar="FILE.safetensors",
                   help="write the weights used (for densenetc compile --weights)")
    w.add_argument("--save-onnx", type=Path, metavar="FILE.onnx")


def model_config(a) -> dn.Config:
    overrides = {
        "growth_rate": a.growth_rate, "block_config": a.block_config,
        "num_init_features": a.init_features, "bn_size": a.bn_size,
        "compression": a.compression, "num_classes": a.num_classes,
        "in_channels": a.in_channels, "image_size": a.image_size, "stem": a.stem,
        "conv_bias": a.conv_bias, "bn_eps": a.bn_eps,
    }
    if a.config:
        base = dn.config_from_toml(a.config)
        overrides = {k: v for k, v in overrides.items() if v is not None}
        return dn.resolve(None, {**base.to_dict(), **overrides})
    if not a.arch:
        raise ValueError("no model given: use --arch NAME or --config FILE")
    return dn.resolve(a.arch, overrides)


def model_weights(a, cfg: dn.Config) -> tuple[dict, str]:
    if a.weights and a.random_weights is not None:
        raise ValueError("--weights and --random-weights exclude each other")
    if a.weights:
        w, desc = dn.load_weights(a.weights, cfg), str(a.weights)
    elif a.random_weights is not None:
        w, desc = dn.random_weights(cfg, a.random_weights), f"random seed {a.random_weights}"
    else:
        raise ValueError("no weights given: use --weights FILE.safetensors or --random-weights SEED")
    if a.save_weights:
        dn.save_weights(w, a.save_weights)
    return w, desc


def write_model(cfg, weights, batch, path: Path) -> None:
    import onnx

    onnx.save_model(dn.build_onnx(cfg, weights, batch), str(path))


def check(engines, cfg, weights, x, ref, threads, work: Path, tag: str) -> dict[str, float]:
    """Run ``x`` through each engine; relative error of each against ``ref``."""
    if x.ndim != 4 or x.shape[1:] != (cfg.in_channels, cfg.image_size, cfg.image_size):
        raise ValueError(f"input shape {list(x.shape)} does not fit {cfg.name}: expected "
                         f"[N, {cfg.in_channels}, {cfg.image_size}, {cfg.image_size}]")
    model, x_path = work / f"{tag}.onnx", work / f"{tag}.input.npy"
    write_model(cfg, weights, x.shape[0], model)
    np.save(x_path, x.astype(np.float32))
    errors = {}
    for e in engines:
        with Worker(e, model, x_path, threads) as w:
            errors[e] = rel_error(w.infer(work / f"{tag}.{e}.npy"), ref)
    return errors


def golden_errors(dirs, engines, threads: int, work: Path, log=None) -> dict:
    """Relative error of each engine on each golden fixture directory."""
    results = {}
    for d in map(Path, dirs):
        cfg, batch = dn.config_from_json(d / "config.json")
        w = dn.load_weights(d / "weights.safetensors", cfg)
        x, ref = np.load(d / "input.npy"), np.load(d / "output.npy")
        if batch is not None and x.shape[0] != batch:
            raise ValueError(f"{d}: input batch {x.shape[0]} but config says {batch}")
        results[d.name] = check(engines, cfg, w, x, ref, threads, work, d.name)
        if log:
            log(f"{d.name:24s} " + "  ".join(f"{e} {v:.2e}" for e, v in results[d.name].items()))
    return results


def run_golden(a, work: Path) -> int:
    results = golden_errors(a.golden, a.engines, a.threads, work,
                            log=None if a.json else print)
    worst = max(v for errs in results.values() for v in errs.values())
    ok = worst <= a.tol
    if a.json:
        print(json.dumps({"mode": "golden", "tol": a.tol, "ok": ok, "errors": results,
                          "versions": engine_versions(a.engines)}, indent=2))
    else:
        print(f"worst {worst:.2e} {'<=' if ok else '>'} tol {a.tol:g}: {'OK' if ok else 'FAIL'}")
    return 0 if ok else 1


def engine_versions(engines) -> dict:
    import importlib.metadata as md

    dist = {"ort": "onnxruntime", "openvino": "openvino", "openvino-bf16": "openvino"}
    return {e: md.version(dist[e]) for e in engines}


def run_check(a, work: Path) -> int:
    if not a.input:
        raise ValueError("--check-output needs --input X.npy")
    x, ref = np.load(a.input), np.load(a.check_output)
    cfg = model_config(a)
    if a.image_size is None and x.ndim == 4 and cfg.image_size != x.shape[-1]:
        a.image_size = x.shape[-1]  # the input's size, as densenetc --image-size
        cfg = model_config(a)
    w, desc = model_weights(a, cfg)
    if a.save_onnx:
        write_model(cfg, w, x.shape[0], a.save_onnx)
    errs = check(a.engines, cfg, w, x, ref, a.threads, work, "check")
    ok = max(errs.values()) <= a.tol
    if a.json:
        print(json.dumps({"mode": "check", "model": cfg.name, "weights": desc, "tol": a.tol,
                          "ok": ok, "errors": errs}, indent=2))
    else:
        for e, v in errs.items():
            print(f"{ENGINE_NAMES[e]:12s} rel error {v:.3e} vs {a.check_output}")
    return 0 if ok else 1


def bench(a, cfg: dn.Config, weights_desc: str, model: Path, x_path: Path, work: Path,
          extra_engines: dict | None = None, log=None) -> dict:
    """Time the peer engines (and any ``extra_engines`` with the same
    ``run(n, warmup)`` interface) interleaved; measure peak RSS per engine;
    cross-check the engines' outputs. Returns the result record."""
    result = {
        "model": cfg.name, "config": cfg.to_dict(), "batch": a.batch,
        "image_size": cfg.image_size, "weights": weights_desc, "threads": a.threads,
        "iters": a.iters, "warmup": a.warmup, "rounds": min(a.rounds, a.iters),
        "machine_before": machine(), "engines": {},
    }
    workers = {}
    try:
        for e in a.engines:
            workers[e] = Worker(e, model, x_path, a.threads)
        timed = {**workers, **(extra_engines or {})}
        samples = interleave(timed, a.iters, a.warmup, a.rounds, log=log)
        for e, w in workers.items():
            rec = {"name": w.name, "version": w.ready["version"],
                   "settings": w.ready["settings"], "load_s": w.ready["load_s"],
                   **stats(samples[e])}
            rec["timing_process_peak_rss_kb"] = w.quit()
            result["engines"][e] = rec
        for e, eng in (extra_engines or {}).items():
            result["engines"][e] = {**stats(samples[e]), **getattr(eng, "info", {})}
    finally:
        for w in workers.values():
            w.quit()
    outputs = {}
    if a.rss:
        for e in a.engines:
            r = peak_rss(e, model, x_path, work / f"{e}.out.npy", a.threads)
            outputs[e] = r.pop("output")
            result["engines"][e].update(r, rss_method=RSS_METHOD)
    if len(outputs) > 1:
        first = next(iter(outputs))
        for e, y in outputs.items():
            result["engines"][e]["rel_error_vs_" + first] = rel_error(y, outputs[first])
    result["machine_after"] = machine()
    return result


def print_bench(r: dict) -> None:
    print(f"{r['model']} batch {r['batch']} {r['image_size']}x{r['image_size']}, "
          f"weights {r['weights']}, {r['threads']} threads, {r['iters']} iters in "
          f"{r['rounds']} interleaved rounds after {r['warmup']} warmup")
    print(f"{'engine':14s} {'version':10s} {'median ms':>10s} {'p90':>9s} {'min':>9s} "
          f"{'peak RSS MiB: once':>19s} {'timed':>7s}")
    for e, s in r["engines"].items():
        once = f"{s['peak_rss_kb'] / 1024:.1f}" if "peak_rss_kb" in s else "n/a"
        timed = s.get("timing_process_peak_rss_kb", -1)
        timed = f"{timed / 1024:.1f}" if timed > 0 else "n/a"
        print(f"{s.get('name', e):14s} {str(s.get('version', '')):10s} "
              f"{s['median_ms']:10.2f} {s['p90_ms']:9.2f} {s['min_ms']:9.2f} {once:>19s} {timed:>7s}")
    for e, s in r["engines"].items():
        for k, v in s.items():
            if k.startswith("rel_error_vs_") and v > 0:
                print(f"{s['name']} output vs {k[13:]}: rel error {v:.2e}")
    mb, ma = r["machine_before"], r["machine_after"]
    print(f"machine: {mb['cpus']} CPUs; busy (other jobs) {mb['busy_percent']:.0f}% before, "
          f"{ma['busy_percent']:.0f}% after; load average {mb['loadavg'][0]:.2f} before, "
          f"{ma['loadavg'][0]:.2f} after")
    if any("peak_rss_mib" in s for s in r["engines"].values()):
        print(f"peak RSS once: {RSS_METHOD}; timed: the same for the timing process")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    add_model_args(ap)
    r = ap.add_argument_group("running")
    r.add_argument("--engines", default="ort,openvino",
                   type=lambda s: [e.strip() for e in s.split(",") if e.strip()],
                   help="comma-separated: ort, openvino (f32), openvino-bf16 (default: ort,openvino)")
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--iters", type=int, default=30, help="timed runs per engine")
    r.add_argument("--warmup", type=int, default=5, help="untimed runs per engine first")
    r.add_argument("--rounds", type=int, default=5, help="interleaved rounds the runs are split into")
    r.add_argument("--no-rss", dest="rss", action="store_false",
                   help="skip the peak-RSS processes")
    r.add_argument("--input", type=Path, help="input .npy (NCHW float32) for --check-output")
    r.add_argument("--check-output", type=Path, metavar="Y.npy",
                   help="reference logits: report each engine's relative error instead of timing")
    r.add_argument("--golden", nargs="+", metavar="DIR",
                   help="check against golden fixture directories instead of timing")
    r.add_argument("--tol", type=float, default=1e-4)
    r.add_argument("--input-seed", type=int, default=0, help="seed of the timing input")
    r.add_argument("--work-dir", type=Path, help="keep the .onnx and .npy files here")
    r.add_argument("--json", action="store_true", help="print one JSON object")
    r.add_argument("-v", "--verbose", action="store_true", help="log each round to stderr")
    a = ap.parse_args(argv)
    bad = [e for e in a.engines if e not in ENGINE_NAMES]
    if bad or not a.engines:
        ap.error(f"unknown engine(s) {bad}; choose from {', '.join(ENGINE_NAMES)}")
    if min(a.threads, a.iters, a.rounds, a.batch) < 1 or a.warmup < 0:
        ap.error("--threads, --iters, --rounds and --batch must be >= 1, --warmup >= 0")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="peers-") as tmp:
        work = a.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if a.golden:
            return run_golden(a, work)
        if a.check_output:
            return run_check(a, work)
        cfg = model_config(a)
        weights, desc = model_weights(a, cfg)
        model, x_path = work / "model.onnx", work / "input.npy"
        write_model(cfg, weights, a.batch, model)
        if a.save_onnx:
            write_model(cfg, weights, a.batch, a.save_onnx)
        rng = np.random.default_rng(a.input_seed)
        s = cfg.image_size
        np.save(x_path, rng.standard_normal((a.batch, cfg.in_channels, s, s), np.float32))
        log = (lambda m: print(m, file=sys.stderr, flush=True)) if a.verbose else None
        r = bench(a, cfg, desc, model, x_path, work, log=log)
        r["command"] = shlex.join([sys.argv[0], *(argv or sys.argv[1:])])
        r["git_commit"] = git_commit()
        if a.json:
            print(json.dumps(r, indent=2))
        else:
            print_bench(r)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, FileNotFoundError, WorkerError) as e:
        sys.exit(f"error: {e}")
