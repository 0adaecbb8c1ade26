"""densenetc: ahead-of-time compiled DenseNets, from Python.

Run an artefact that ``densenetc compile`` wrote::

    import densenetc, numpy as np
    model = densenetc.load("densenet121.dnc", threads=4)
    logits = model(np.zeros(model.input_shape, np.float32))

Compile a PyTorch DenseNet (torchvision's, torchxrayvision's, or a ``Sequential`` holding one,
optionally followed by ``Sigmoid``/``Softmax``), a state dict or a checkpoint file::

    model = densenetc.compile(torchvision.models.densenet121(weights=...).eval(), batch=8)
    model.save("densenet121-b8.dnc")

Importing this package never imports torch: torch tensors are recognised by their type's
module and viewed as NumPy arrays (``Tensor.numpy()``, no copy).
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _densenetc

__all__ = ["Model", "load", "compile", "presets", "HEADS"]

#: The output heads ``compile(head=...)`` accepts.
HEADS = ("logits", "softmax", "sigmoid", "op-norm", "features")


def presets() -> List[str]:
    """The architecture presets ``arch=`` accepts (``densenet121``, ``densenet-bc-100``, ...)."""
    return list(_densenetc.presets())


def _is_torch_tensor(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "numpy") and hasattr(x, "device")


class Model:
    """A compiled DenseNet, ready to run on the CPU.

    Calls (``model(x)`` or ``model.run(x)``) are thread-safe: one ``Model`` may be called
    from many Python threads at once. Each call borrows a runtime session (an activation
    arena and a worker pool of ``threads`` threads) from a pool, making a new one when all
    are busy, and runs with the GIL released; the pool therefore grows to the largest number
    of concurrent callers (see ``sessions``).
    """

    __slots__ = ("_native",)

    def __init__(self, native: Any) -> None:
        self._native = native

    # -- properties ---------------------------------------------------------------------
    @property
    def input_shape(self) -> Tuple[int, ...]:
        """The input shape (N, C, H, W) the model was compiled for."""
        return tuple(self._native.input_shape)

    @property
    def output_shape(self) -> Tuple[int, ...]:
        """The output shape, (N, classes) for the logits."""
        return tuple(self._native.output_shape)

    @property
    def labels(self) -> Optional[List[str]]:
        """The class names stored in the artefact, if any."""
        return self._native.labels

    @property
    def sessions(self) -> int:
        """Runtime sessions made so far (the largest number of concurrent calls seen)."""
        return self._native.sessions

    @property
    def cpu_variant(self) -> Optional[str]:
        """The CPU code variant this model runs."""
        return self._native.cpu_variant

    @property
    def last_input_address(self) -> int:
        """The address of the last input buffer the runtime read (equal to the array's data
        pointer when the input was not copied)."""
        return self._native.last_input_address

    @property
    def manifest(self) -> Dict[str, Any]:
        """The artefact's manifest."""
        return json.loads(self._native.manifest_json)

    # -- running ------------------------------------------------------------------------
    def run(self, x: Any) -> Any:
        """Runs the model on ``x``: a float32 NCHW NumPy array (read-only ones included) or a
        CPU torch tensor of exactly ``input_shape``. Returns a new float32 array of
        ``output_shape`` (a torch tensor for a torch input).

        A C-contiguous float32 input is not copied: the runtime reads its buffer. Other
        layouts are copied once into a contiguous array. Raises ``ValueError`` for a wrong
        dtype or shape.
        """
        torch_in = _is_torch_tensor(x)
        if torch_in:
            if x.device.type != "cpu":
                raise ValueError(
                    f"densenetc: the input tensor is on {x.device}; densenetc runs CPU tensors"
                )
            arr = x.detach().numpy()  # a view, no copy
        elif isinstance(x, np.ndarray):
            arr = x
        else:
            arr = np.asarray(x)
        if arr.dtype != np.float32:
            raise ValueError(
                f"densenetc: expected a float32 input of shape {self.input_shape}, "
                f"got {arr.dtype} of shape {tuple(arr.shape)}"
            )
        if tuple(arr.shape) != self.input_shape:
            raise ValueError(
                f"densenetc: input shape {tuple(arr.shape)} does not match the model's "
                f"input shape {self.input_shape}"
            )
        if not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr)
        out = self._native._run(arr)
        if torch_in:
            return sys.modules["torch"].from_numpy(out)
        return out

    __call__ = run

    def save(self, path: Union[str, "os.PathLike[str]"]) -> None:
        """Writes the artefact to ``path`` (``densenetc.load`` and the ``densenetc`` CLI read it)."""
        self._native.save(os.fspath(path))

    def __repr__(self) -> str:
        return (
            f"densenetc.Model(input_shape={self.input_shape}, output_shape={self.output_shape}, "
            f"cpu_variant={self.cpu_variant!r})"
        )


def load(
    path: Union[str, "os.PathLike[str]"],
    device: str = "cpu",
    threads: Optional[int] = None,
    cpu: Optional[str] = None,
) -> Model:
    """Loads an artefact. ``threads``: worker threads per session (``None``: one per core).
    ``cpu``: run this CPU variant of a multi-variant artefact (default: the best supported)."""
    return Model(_densenetc.load(os.fspath(path), device, threads or 0, cpu))


# -- compile -------------------------------------------------------------------------------

ProgressArg = Union[None, bool, Callable[[str, str], None]]


def _progress_fn(progress: ProgressArg) -> Optional[Callable[[str, str], None]]:
    if progress is None or progress is False:
        return None
    if progress is True:
        def report(stage: str, message: str) -> None:
            print(f"densenetc: [{stage}] {message}", file=sys.stderr, flush=True)

        return report
    if callable(progress):
        return progress
    raise ValueError("progress must be None, True/False or a callable(stage, message)")


def _find_densenets(module: Any) -> List[Tuple[str, Any]]:
    found = []
    for name, m in module.named_modules():
        feats = getattr(m, "features", None)
        if feats is not None and hasattr(feats, "conv0") and hasattr(m, "classifier"):
            if not any(name.startswith(p + ".") or p == "" for p, _ in found):
                found.append((name, m))
    return found


_DENSE_PARTS = {"norm1", "relu1", "conv1", "norm2", "relu2", "conv2", "drop", "dropout"}
_TRANSITION_PARTS = {"norm", "relu", "conv", "pool"}
_STEM_PARTS = {"conv0", "norm0", "relu0", "pool0", "norm5"}


def _check_modules(net: Any, prefix: str) -> None:
    """Every submodule of the DenseNet must be one the compiler models."""
    for name, m in net.named_modules():
        if name in ("", "features"):
            continue
        parts = name.split(".")
        ok = False
        if parts[0] == "features" and len(parts) >= 2:
            p = parts[1]
            if len(parts) == 2:
                ok = p in _STEM_PARTS or re.fullmatch(r"(denseblock|transition)\d+", p) is not None
            elif re.fullmatch(r"denseblock\d+", p):
                ok = re.fullmatch(r"denselayer\d+", parts[2]) is not None and (
                    len(parts) == 3 or (len(parts) == 4 and parts[3] in _DENSE_PARTS)
                )
            elif re.fullmatch(r"transition\d+", p):
                ok = len(parts) == 3 and parts[2] in _TRANSITION_PARTS
        elif parts[0] == "classifier":
            ok = len(parts) == 1 or (len(parts) == 2 and type(m).__name__ in ("Linear", "Identity"))
            ok = ok or (len(parts) == 2 and _classifier_post(net) is not None
                        and type(m).__name__ in ("Sigmoid", "Softmax"))
        elif parts == ["upsample"]:
            ok = True  # torchxrayvision's (inactive unless its resolution fixing is on)
        if not ok:
            path = f"{prefix}.{name}" if prefix else name
            raise ValueError(
                f"densenetc.compile: unrecognised module `{path}` ({type(m).__name__}) in the DenseNet"
            )


def _classifier_post(net: Any) -> Optional[str]:
    """``sigmoid``/``softmax`` for a classifier ``Sequential(Linear, Sigmoid)`` (CheXNet's)."""
    cls = net.classifier
    if type(cls).__name__ != "Sequential":
        return None
    kinds = [type(m).__name__ for m in cls.children()]
    if len(kinds) == 2 and kinds[0] == "Linear" and kinds[1] in ("Sigmoid", "Softmax"):
        if kinds[1] == "Softmax" and list(cls.children())[1].dim not in (None, 1, -1):
            return None
        return kinds[1].lower()
    return None


def _config_of(net: Any) -> Dict[str, Any]:
    f = net.features
    conv0 = f.conv0
    k0 = conv0.kernel_size[0] if isinstance(conv0.kernel_size, tuple) else conv0.kernel_size
    if k0 == 7:
        stem = "imagenet"
    elif k0 == 3:
        stem = "cifar"
    else:
        raise ValueError(f"densenetc.compile: features.conv0 has a {k0}x{k0} kernel; expected 7 or 3")
    blocks = []
    i = 1
    while hasattr(f, f"denseblock{i}"):
        block = getattr(f, f"denseblock{i}")
        blocks.append(sum(1 for n, _ in block.named_children() if n.startswith("denselayer")))
        i += 1
    if not blocks:
        raise ValueError("densenetc.compile: the DenseNet has no features.denseblock1")
    first = f.denseblock1.denselayer1
    growth = first.conv2.out_channels
    bn_size = first.conv1.out_channels // growth if hasattr(first, "conv1") else 0
    transitions = []
    i = 1
    while hasattr(f, f"transition{i}"):
        tc = getattr(f, f"transition{i}").conv
        transitions.append((int(tc.in_channels), int(tc.out_channels)))
        i += 1
    compression = 1.0
    if transitions:
        c_in, c_out = transitions[0]
        # θ such that floor(C * θ) gives every transition's width (as the compiler computes it).
        for theta in (0.5, c_out / c_in, round(c_out / c_in, 2), round(c_out / c_in, 3)):
            if all(math.floor(a * theta) == b for a, b in transitions):
                compression = theta
                break
        else:
            raise ValueError(
                "densenetc.compile: the transitions' widths "
                f"{transitions} do not follow one compression factor"
            )
    if bn_size and first.conv1.out_channels % growth:
        raise ValueError(
            "densenetc.compile: features.denseblock1.denselayer1.conv1 has "
            f"{first.conv1.out_channels} channels, not a multiple of the growth rate {growth}"
        )
    cls = net.classifier
    if not hasattr(cls, "out_features"):
        cls = next(m for m in cls.modules() if hasattr(m, "out_features"))
    norm = getattr(f, "norm0", None) or f.norm5
    return {
        "growth_rate": int(growth),
        "block_config": blocks,
        "num_init_features": int(conv0.out_channels),
        "bn_size": int(bn_size),
        "compression": float(compression),
        "num_classes": int(cls.out_features),
        "in_channels": int(conv0.in_channels),
        "stem": stem,
        "conv_bias": conv0.bias is not None,
        "bn_eps": float(norm.eps),
    }


def _post_of(module: Any, net_path: str) -> Optional[str]:
    """The head a wrapper applies after the DenseNet (``Sequential(DenseNet, Sigmoid)``)."""
    if net_path == "":
        return None
    top = net_path.split(".")[0]
    if type(module).__name__ == "Sequential":
        names = [n for n, _ in module.named_children()]
        after = names[names.index(top) + 1:]
        before = names[: names.index(top)]
        if before:
            raise ValueError(
                f"densenetc.compile: unrecognised module `{before[0]}` "
                f"({type(getattr(module, before[0])).__name__}) before the DenseNet"
            )
        head = None
        for n in after:
            kind = type(getattr(module, n)).__name__
            if kind == "Identity":
                continue
            if kind in ("Sigmoid", "Softmax") and head is None:
                if kind == "Softmax" and getattr(module, n).dim not in (None, 1, -1):
                    raise ValueError(f"densenetc.compile: `{n}` is a Softmax over dim {getattr(module, n).dim}; only the class dimension is supported")
                head = kind.lower()
                continue
            raise ValueError(
                f"densenetc.compile: unrecognised module `{n}` ({kind}) after the DenseNet "
                f"(only one Sigmoid or Softmax may follow it)"
            )
        return head
    # Another wrapper: it must hold nothing but the DenseNet (its forward is not known).
    for name, m in module.named_modules():
        if name == "" or name == net_path or name.startswith(net_path + ".") or net_path.startswith(name + "."):
            continue
        raise ValueError(
            f"densenetc.compile: unrecognised module `{name}` ({type(m).__name__}) beside the DenseNet"
        )
    return None


def _to_numpy(t: Any) -> np.ndarray:
    if _is_torch_tensor(t):
        t = t.detach().cpu()
        if t.is_floating_point():
            t = t.float()
        return t.contiguous().numpy()
    return np.asarray(t)


def _tensors_of_state(state: Dict[str, Any]) -> Tuple[Dict[str, np.ndarray], Optional[List[float]]]:
    """The network's float tensors (names relative to the network) and op_threshs."""
    keys = list(state.keys())
    anchor = [k for k in keys if k.endswith("features.conv0.weight")]
    if len(anchor) != 1:
        raise ValueError(
            "densenetc.compile: the state dict must hold exactly one `features.conv0.weight` "
            f"(found {len(anchor)})"
        )
    prefix = anchor[0][: -len("features.conv0.weight")]
    tensors: Dict[str, np.ndarray] = {}
    op_threshs = None
    for k, v in state.items():
        if k.endswith("op_threshs"):
            if v is not None:
                op_threshs = [float(t) for t in _to_numpy(v).reshape(-1)]
            continue
        if not k.startswith(prefix) or k.endswith("num_batches_tracked"):
            continue
        a = _to_numpy(v)
        if a.dtype != np.float32:
            a = a.astype(np.float32)
        tensors[k[len(prefix):]] = np.ascontiguousarray(a)
    return tensors, op_threshs


def _overrides(arch: Any) -> Tuple[str, Dict[str, Any]]:
    if arch is None:
        raise ValueError(
            "densenetc.compile: a state dict or a checkpoint needs arch= (a preset such as "
            f"'densenet121', one of {presets()}, or a dict of configuration keys with 'arch')"
        )
    if isinstance(arch, str):
        return arch, {}
    if isinstance(arch, dict):
        o = dict(arch)
        base = o.pop("arch", None) or ("densenet-bc-100" if o.get("stem") == "cifar" else "densenet121")
        return base, o
    raise ValueError("densenetc.compile: arch must be a preset name or a dict of configuration keys")


def compile(
    model: Any,
    *,
    batch: int = 1,
    image_size: Optional[int] = None,
    target: str = "cpu",
    precision: str = "fp32",
    cpu: str = "native",
    head: Optional[str] = None,
    threads: Optional[int] = None,
    arch: Union[None, str, Dict[str, Any]] = None,
    labels: Optional[Sequence[str]] = None,
    progress: ProgressArg = None,
) -> Model:
    """Compiles a DenseNet and returns it loaded, ready to run.

    ``model`` is one of:

    * a ``torch.nn.Module``: a torchvision or torchxrayvision DenseNet, or a wrapper /
      ``Sequential`` holding exactly one, optionally followed by ``Sigmoid``/``Softmax``
      (compiled into the artefact as its head). The configuration is read from the modules
      and the weights are taken from its tensors directly (no file round trip);
    * a state dict (a ``dict`` of tensors or arrays): ``arch=`` is required;
    * a checkpoint path (``str`` / ``PathLike``; safetensors or ``torch.save``): ``arch=``
      is required.

    ``arch``: a preset name (``presets()``) or a dict of configuration keys (``arch``,
    ``growth_rate``, ``block_config``, ``num_init_features``, ``bn_size``, ``compression``,
    ``num_classes``, ``in_channels``, ``image_size``, ``stem``, ``conv_bias``, ``bn_eps``).
    ``head``: one of ``HEADS`` (default: the model's own, else the logits).
    ``image_size``: the input's height and width (default: 224 for the ImageNet stem, 32 for
    the CIFAR one). ``cpu``: ``native`` or an LLVM CPU name (``x86-64-v3``), comma-separated
    for a multi-variant artefact. ``precision``: ``fp32``, or ``bf16`` (on the CPU: needs
    AVX512_BF16, logits within 3e-2 of fp32; in a multi-variant artefact the CPUs without it
    stay fp32), ``tf32`` or ``fp16`` (CUDA only). ``threads``: worker threads per session at
    run time.
    ``progress``: ``True`` prints the compiler's stages to stderr; a callable receives
    ``(stage, message)``.
    """
    if head is not None and head not in HEADS:
        raise NotImplementedError(
            f"densenetc.compile: head {head!r} is not implemented (expected one of {HEADS})"
        )
    if batch < 1:
        raise ValueError("densenetc.compile: batch must be >= 1")
    common = dict(
        batch=int(batch),
        target=target,
        precision=precision,
        cpu=cpu,
        labels=list(labels) if labels is not None else None,
        progress=_progress_fn(progress),
        # A CUDA-only artefact runs on CUDA device 0 (a cpu,cuda one on the CPU; load() it
        # again with device="cuda" for the GPU).
        device="cpu" if "cpu" in [t.strip() for t in target.split(",")] else "cuda",
        threads=int(threads or 0),
    )
    if isinstance(model, (str, os.PathLike)):
        base, o = _overrides(arch)
        if image_size is not None:
            o["image_size"] = int(image_size)
        return Model(
            _densenetc.compile_checkpoint(base, json.dumps(o), os.fspath(model), head=head, **common)
        )
    if isinstance(model, dict):
        base, o = _overrides(arch)
        if image_size is not None:
            o["image_size"] = int(image_size)
        tensors, op_threshs = _tensors_of_state(model)
        if op_threshs is not None and head is None:
            head = "op-norm"
        return Model(
            _densenetc.compile(
                base, json.dumps(o), tensors, head=head, op_threshs=op_threshs if head == "op-norm" else None, **common
            )
        )
    if not hasattr(model, "named_modules") or not hasattr(model, "state_dict"):
        raise ValueError(
            "densenetc.compile: expected a torch.nn.Module, a state dict or a checkpoint path, "
            f"got {type(model).__name__}"
        )
    nets = _find_densenets(model)
    if len(nets) != 1:
        raise ValueError(
            f"densenetc.compile: expected exactly one DenseNet in the module, found {len(nets)}"
            + (f" ({', '.join(n or '<root>' for n, _ in nets)})" if nets else "")
        )
    net_path, net = nets[0]
    _check_modules(net, net_path)
    post = _post_of(model, net_path)
    cfg = _config_of(net)
    if isinstance(arch, dict):
        cfg.update({k: v for k, v in arch.items() if k != "arch"})
    cfg["image_size"] = int(image_size if image_size is not None else cfg.get("image_size") or (224 if cfg["stem"] == "imagenet" else 32))
    base = "densenet121" if cfg["stem"] == "imagenet" else "densenet-bc-100"
    if isinstance(arch, str):
        base = arch
    tensors, _ = _tensors_of_state({k: v for k, v in net.state_dict().items()})
    op = getattr(net, "op_threshs", None)
    op_threshs = [float(t) for t in _to_numpy(op).reshape(-1)] if op is not None else None
    inner = _classifier_post(net)
    if inner is not None and post is not None:
        raise ValueError(
            f"densenetc.compile: both the classifier and the wrapper apply a {inner}/{post}"
        )
    if head is None:
        head = post or inner
    if head is None and op_threshs is not None:
        head = "op-norm"  # torchxrayvision: sigmoid, then operating-point normalisation
    elif head is None and getattr(net, "apply_sigmoid", False):
        head = "sigmoid"
    return Model(
        _densenetc.compile(
            base,
            json.dumps(cfg),
            tensors,
            head=head,
            op_threshs=op_threshs if head == "op-norm" else None,
            **common,
        )
    )


def compile_random(
    arch: Union[str, Dict[str, Any]],
    *,
    seed: int = 0,
    batch: int = 1,
    image_size: Optional[int] = None,
    target: str = "cpu",
    precision: str = "fp32",
    cpu: str = "native",
    head: Optional[str] = None,
    threads: Optional[int] = None,
    progress: ProgressArg = None,
) -> Model:
    """Compiles ``arch`` (a preset name or a dict of configuration keys) with deterministic
    random weights (non-trivial BatchNorm statistics), as ``densenetc compile --random``:
    for benchmarks and tests that have no checkpoint. The other arguments are ``compile``'s."""
    if head is not None and head not in HEADS:
        raise NotImplementedError(
            f"densenetc.compile_random: head {head!r} is not implemented (expected one of {HEADS})"
        )
    base, o = _overrides(arch)
    if image_size is not None:
        o["image_size"] = int(image_size)
    return Model(
        _densenetc.compile_checkpoint(
            base, json.dumps(o), None, batch=int(batch), target=target, precision=precision, cpu=cpu,
            head=head, labels=None, progress=_progress_fn(progress), device="cpu",
            threads=int(threads or 0), seed=int(seed),
        )
    )


__all__.append("compile_random")
