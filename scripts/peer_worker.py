"""One inference engine in its own process, driven by scripts/peers.py.

    python peer_worker.py ENGINE MODEL.onnx INPUT.npy --threads N

ENGINE is ``ort`` (ONNX Runtime), ``openvino`` (f32) or ``openvino-bf16``. The process imports only
numpy and that engine (not onnx, not the other engine), so its peak RSS is
the engine's. It loads the model, then answers JSON commands read one per
line on stdin with one JSON line each:

    {"cmd": "run", "n": N, "warmup": W}   -> {"samples_ms": [...]}  (W untimed runs first)
    {"cmd": "infer", "output": PATH}      -> {"ok": true}            (one run, output saved as .npy)
    {"cmd": "quit"}                       -> {"hwm_kb": VmHWM}, then exits

Its first line is {"ready": true, ...} with the engine's version, the
settings read back from the engine, the load time and VmHWM after imports
and after loading; an error is {"error": "..."} followed by exit status 1.
Replies go to the original stdout; anything a library prints to stdout is
sent to stderr so it cannot corrupt the protocol.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback


def vm_hwm_kb() -> int:
    """Peak resident set size of this process so far (kB)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return -1


class Ort:
    def __init__(self, model: str, threads: int):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.sess = ort.InferenceSession(model, sess_options=so,
                                         providers=["CPUExecutionProvider"])
        self.input = self.sess.get_inputs()[0].name
        self.version = ort.__version__
        self.settings = {
            "providers": self.sess.get_providers(),
            "intra_op_num_threads": so.intra_op_num_threads,
            "inter_op_num_threads": so.inter_op_num_threads,
            "execution_mode": str(so.execution_mode),
            "graph_optimization_level": str(so.graph_optimization_level),
        }

    def bind(self, x):
        self.x = x

    def run(self):
        return self.sess.run(None, {self.input: self.x})[0]


class OpenVino:
    """OpenVINO forced to ``precision``: f32 (never a silent bf16/f16 downgrade), or bf16
    (its default on CPUs with AVX512_BF16 or AMX), checked against what it really runs."""

    precision = "f32"

    def __init__(self, model: str, threads: int):
        import openvino as ov

        core = ov.Core()
        config = {
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": self.precision,
        }
        self.compiled = core.compile_model(core.read_model(model), "CPU", config)
        self.req = self.compiled.create_infer_request()
        self.version = ov.__version__.split("-")[0]
        self.ov = ov
        self.settings = {k: self._prop(k) for k in (
            "INFERENCE_NUM_THREADS", "PERFORMANCE_HINT", "INFERENCE_PRECISION_HINT",
            "EXECUTION_MODE_HINT", "NUM_STREAMS", "ENABLE_CPU_PINNING")}
        self.settings["runtime_precisions"] = self.runtime_precisions()
        if self.settings["INFERENCE_PRECISION_HINT"] != self.precision:
            raise RuntimeError(f"OpenVINO compiled with precision "
                               f"{self.settings['INFERENCE_PRECISION_HINT']}, not {self.precision}")
        low = [p for p in self.settings["runtime_precisions"] if p in ("bf16", "f16")]
        if self.precision == "f32" and low:
            raise RuntimeError(f"OpenVINO runs layers in {low}: {self.settings['runtime_precisions']}")
        if self.precision == "bf16" and "bf16" not in low:
            raise RuntimeError("OpenVINO runs no layer in bf16 (the CPU lacks AVX512_BF16?): "
                               f"{self.settings['runtime_precisions']}")

    def _prop(self, key: str) -> str:
        v = self.compiled.get_property(key)
        if isinstance(v, self.ov.Type):
            return v.get_type_name()  # "f32", not "<Type: 'float32'>"
        return str(v)

    def runtime_precisions(self) -> dict[str, int]:
        """How many layers of the executed graph run in each precision."""
        counts: dict[str, int] = {}
        for op in self.compiled.get_runtime_model().get_ops():
            info = op.get_rt_info()
            if "runtimePrecision" in info:
                p = str(info["runtimePrecision"].astype(str))
                counts[p] = counts.get(p, 0) + 1
        return counts

    def bind(self, x):
        self.x = x
        self.req.set_input_tensor(self.ov.Tensor(x, shared_memory=True))

    def run(self):
        self.req.infer()
        return self.req.get_output_tensor(0).data


class OpenVinoBf16(OpenVino):
    precision = "bf16"


ENGINES = {"ort": Ort, "openvino": OpenVino, "openvino-bf16": OpenVinoBf16}


def main() -> int:
    # Keep the real stdout for the protocol; route fd 1 to stderr.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def reply(obj):
        proto.write(json.dumps(obj) + "\n")

    ap = argparse.ArgumentParser()
    ap.add_argument("engine", choices=sorted(ENGINES))
    ap.add_argument("model")
    ap.add_argument("input")
    ap.add_argument("--threads", type=int, required=True)
    a = ap.parse_args()
    try:
        import numpy as np

        x = np.ascontiguousarray(np.load(a.input), dtype=np.float32)
        cls = ENGINES[a.engine]
        # Import the engine before measuring the post-import high-water mark.
        __import__("onnxruntime" if a.engine == "ort" else "openvino")
        hwm_import = vm_hwm_kb()
        t0 = time.perf_counter()
        eng = cls(a.model, a.threads)
        eng.bind(x)
        load_s = time.perf_counter() - t0
        reply({"ready": True, "engine": a.engine, "version": eng.version,
               "settings": eng.settings, "load_s": load_s, "pid": os.getpid(),
               "hwm_kb": {"after_import": hwm_import, "after_load": vm_hwm_kb()}})
        for line in sys.stdin:
            cmd = json.loads(line)
            if cmd["cmd"] == "run":
                for _ in range(cmd.get("warmup", 0)):
                    eng.run()
                samples = []
                for _ in range(cmd["n"]):
                    t = time.perf_counter_ns()
                    eng.run()
                    samples.append((time.perf_counter_ns() - t) / 1e6)
                reply({"samples_ms": samples})
            elif cmd["cmd"] == "infer":
                np.save(cmd["output"], np.array(eng.run(), dtype=np.float32, copy=True))
                reply({"ok": True, "hwm_kb": vm_hwm_kb()})
            elif cmd["cmd"] == "quit":
                reply({"hwm_kb": vm_hwm_kb()})
                return 0
            else:
                raise ValueError(f"unknown command {cmd!r}")
        return 0
    except Exception as e:  # report, don't hang the parent
        traceback.print_exc()
        reply({"error": f"{a.engine}: {type(e).__name__}: {e}"})
        return 1


if __name__ == "__main__":
    sys.exit(main())
