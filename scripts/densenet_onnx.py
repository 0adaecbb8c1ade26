"""DenseNet configurations, weights and the ONNX graph, in numpy.

Mirrors densenetc's builder (compiler/src/builder/) and random weights
(compiler/src/weights/random.rs) so that the peers run *the same network
with the same weights* as densenetc:

- ``Config``: the presets of ``DenseNetConfig::preset`` and the same
  overrides and checks (``floor(C * θ)`` transitions, stem size rules).
- ``expected_shapes``: every tensor the model needs, with torchvision's
  names (``features.denseblock1.denselayer1.norm1.weight``, ...).
- ``random_weights``: a bit-exact port of ``weights::randomize`` (SplitMix64
  seeded by the seed and the tensor's FNV-1a name hash), so
  ``--random-weights SEED`` here equals ``densenetc --random-weights SEED``.
- ``load_weights`` / ``save_weights``: .safetensors files.
- ``build_onnx``: the torchvision forward pass as a plain ONNX graph (NCHW;
  Conv, BatchNormalization, Relu, Concat, MaxPool, AveragePool,
  GlobalAveragePool, Flatten, Gemm), opset 17.

Needs numpy, safetensors and onnx; nothing here runs a model.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PRESETS = [
    "densenet121",
    "densenet161",
    "densenet169",
    "densenet201",
    "densenet-bc-100",
    "densenet-bc-250",
    "densenet-bc-190",
    "densenet-40",
]


@dataclass
class Config:
    """densenetc's ``DenseNetConfig`` (same field names)."""

    name: str
    growth_rate: int
    block_config: list[int]
    num_init_features: int
    bn_size: int = 4
    compression: float = 0.5
    num_classes: int = 1000
    in_channels: int = 3
    image_size: int = 224
    stem: str = "imagenet"
    conv_bias: bool = False
    bn_eps: float = 1e-5

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def preset(name: str) -> Config:
    def imagenet(k, blocks, init):
        return Config(name, k, list(blocks), init)

    def cifar_bc(k, depth):
        return Config(name, k, [(depth - 4) // 6] * 3, 2 * k, num_classes=10,
                      image_size=32, stem="cifar")

    table = {
        "densenet121": lambda: imagenet(32, [6, 12, 24, 16], 64),
        "densenet161": lambda: imagenet(48, [6, 12, 36, 24], 96),
        "densenet169": lambda: imagenet(32, [6, 12, 32, 32], 64),
        "densenet201": lambda: imagenet(32, [6, 12, 48, 32], 64),
        "densenet-bc-100": lambda: cifar_bc(12, 100),
        "densenet-bc-250": lambda: cifar_bc(24, 250),
        "densenet-bc-190": lambda: cifar_bc(40, 190),
        "densenet-40": lambda: dataclasses.replace(
            cifar_bc(12, 40), block_config=[12] * 3, num_init_features=16,
            bn_size=0, compression=1.0),
    }
    if name not in table:
        raise ValueError(f"unknown architecture `{name}`; valid names: {', '.join(PRESETS)}")
    return table[name]()


# Keys of a densenetc TOML config / golden config.json that override a preset.
OVERRIDE_KEYS = ["name", "growth_rate", "block_config", "num_init_features", "bn_size",
                 "compression", "num_classes", "in_channels", "image_size", "stem",
                 "conv_bias", "bn_eps"]


def resolve(arch: str | None, overrides: dict) -> Config:
    """``DenseNetConfig::resolve``: start from ``arch`` (default densenet121),
    apply every override that is not None, validate."""
    base = arch or "densenet121"
    cfg = preset(base)
    set_ = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(set_) - set(OVERRIDE_KEYS)
    if unknown:
        raise ValueError(f"unknown configuration keys: {', '.join(sorted(unknown))}")
    if set_ and "name" not in set_:
        set_["name"] = f"{base}-custom"
    cfg = dataclasses.replace(cfg, **set_)
    cfg.block_config = [int(b) for b in cfg.block_config]
    stages(cfg)  # validates
    return cfg


def config_from_toml(path: Path) -> Config:
    """A densenetc ``--config`` TOML file: ``arch`` plus overrides."""
    with open(path, "rb") as f:
        o = tomllib.load(f)
    return resolve(o.pop("arch", None), o)


def config_from_json(path: Path) -> tuple[Config, int | None]:
    """A golden fixture's ``config.json``: the config, and its batch."""
    import json

    d = json.loads(Path(path).read_text())
    o = {k: d[k] for k in OVERRIDE_KEYS if k in d}
    if "bn_eps" in d.get("generator", {}):
        o["bn_eps"] = d["generator"]["bn_eps"]
    o.setdefault("name", Path(path).parent.name)
    return resolve(d.get("arch"), o), d.get("batch")


def imagenet_conv0_size(image_size: int) -> int:
    """Output side of the ImageNet stem's conv0 (7x7, stride 2, padding 3)."""
    return (image_size + 6 - 7) // 2 + 1


def stages(cfg: Config) -> tuple[list[tuple[int, int]], int]:
    """``(channels_in, size)`` per dense block and the final channel count;
    raises ValueError as densenetc's ``validate`` does."""
    if cfg.growth_rate < 1 or cfg.num_init_features < 1 or cfg.num_classes < 1 \
            or cfg.in_channels < 1:
        raise ValueError("growth rate, init features, classes and in channels must be >= 1")
    if not cfg.block_config or min(cfg.block_config) < 1:
        raise ValueError(f"every dense block needs at least one layer: {cfg.block_config}")
    if not 0.0 < cfg.compression <= 1.0:
        raise ValueError(f"compression θ = {cfg.compression} is outside (0, 1]")
    if cfg.stem not in ("imagenet", "cifar"):
        raise ValueError(f"unknown stem `{cfg.stem}` (expected imagenet or cifar)")
    if cfg.bn_size < 0 or cfg.image_size < 1:
        raise ValueError("bn_size must be >= 0 and image size >= 1")
    size = cfg.image_size
    if cfg.stem == "imagenet":
        size = imagenet_conv0_size(size)
        size = (size + 2 - 3) // 2 + 1  # pool0 3x3/2 pad 1
    c = cfg.num_init_features
    out = []
    for i, layers in enumerate(cfg.block_config):
        out.append((c, size))
        c += layers * cfg.growth_rate
        if i + 1 < len(cfg.block_config):
            t = math.floor(c * cfg.compression)
            if t < 1:
                raise ValueError(f"transition {i + 1} would output floor({c} * "
                                 f"{cfg.compression}) = 0 channels")
            c = t
            if size < 2:
                raise ValueError(f"image size {cfg.image_size} is too small: the transition "
                                 f"{i + 1} pool sees {size}x{size} but needs at least 2x2")
            size //= 2
    return out, c


def macs(cfg: Config) -> int:
    """Multiply-accumulates of one image through the convolutions and the classifier, as
    ``densenetc inspect`` counts them (``macs:``, torchvision conventions, before any pass)."""
    blocks, c_final = stages(cfg)
    if cfg.stem == "imagenet":
        s = imagenet_conv0_size(cfg.image_size)
        total = s * s * cfg.num_init_features * cfg.in_channels * 49
    else:
        total = cfg.image_size ** 2 * cfg.num_init_features * cfg.in_channels * 9
    g, bottleneck = cfg.growth_rate, cfg.bn_size * cfg.growth_rate
    for i, ((c, size), layers) in enumerate(zip(blocks, cfg.block_config)):
        hw = size * size
        for layer in range(layers):
            k = c + layer * g
            if bottleneck:
                total += hw * k * bottleneck + hw * bottleneck * g * 9
            else:
                total += hw * k * g * 9
        if i + 1 < len(blocks):
            total += hw * (c + layers * g) * blocks[i + 1][0]
    return total + c_final * cfg.num_classes


# ---------------------------------------------------------------- weights

# Roles, as in compiler/src/weights/random.rs.
CONV_WEIGHT, LINEAR_WEIGHT, BIAS, SCALE, SHIFT, MEAN, VAR = range(7)


@dataclass
class Tensor:
    shape: tuple[int, ...]
    role: int


def expected_shapes(cfg: Config) -> dict[str, Tensor]:
    """Name -> (shape, role) of every weight, in densenetc's builder order."""
    t: dict[str, Tensor] = {}

    def conv(name, cin, cout, k):
        t[f"{name}.weight"] = Tensor((cout, cin, k, k), CONV_WEIGHT)
        if cfg.conv_bias:
            t[f"{name}.bias"] = Tensor((cout,), BIAS)

    def bn(name, c):
        for p, role in (("weight", SCALE), ("bias", SHIFT), ("running_mean", MEAN),
                        ("running_var", VAR)):
            t[f"{name}.{p}"] = Tensor((c,), role)

    k = cfg.growth_rate
    conv("features.conv0", cfg.in_channels, cfg.num_init_features, 7 if cfg.stem == "imagenet" else 3)
    if cfg.stem == "imagenet":
        bn("features.norm0", cfg.num_init_features)
    blocks, c_final = stages(cfg)
    for b, (layers, (c, _)) in enumerate(zip(cfg.block_config, blocks), start=1):
        for l in range(1, layers + 1):
            p = f"features.denseblock{b}.denselayer{l}"
            cin = c + (l - 1) * k
            bn(f"{p}.norm1", cin)
            if cfg.bn_size > 0:
                conv(f"{p}.conv1", cin, cfg.bn_size * k, 1)
                bn(f"{p}.norm2", cfg.bn_size * k)
                conv(f"{p}.conv2", cfg.bn_size * k, k, 3)
            else:
                conv(f"{p}.conv1", cin, k, 3)
        if b < len(cfg.block_config):
            cin = c + layers * k
            bn(f"features.transition{b}.norm", cin)
            conv(f"features.transition{b}.conv", cin, math.floor(cin * cfg.compression), 1)
    bn("features.norm5", c_final)
    t["classifier.weight"] = Tensor((cfg.num_classes, c_final), LINEAR_WEIGHT)
    t["classifier.bias"] = Tensor((cfg.num_classes,), BIAS)
    return t


_M64 = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15


def _fnv1a(s: str) -> int:
    h = 0xCBF29CE484222325
    for b in s.encode():
        h = ((h ^ b) * 0x100000001B3) & _M64
    return h


def _mix(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _splitmix_stream(state: int, n: int) -> np.ndarray:
    """The next ``n`` outputs of SplitMix64 from ``state``."""
    steps = np.arange(1, n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return _mix(np.uint64(state) + steps * np.uint64(_GAMMA))


def _uniform(u: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``lo + (hi - lo) * unit`` in f32, unit = top 24 bits / 2^24 (exact)."""
    unit = (u >> np.uint64(40)).astype(np.float32) * np.float32(1.0 / 16_777_216.0)
    lo32, hi32 = np.float32(lo), np.float32(hi)
    return lo32 + (hi32 - lo32) * unit


def random_tensor(name: str, t: Tensor, seed: int) -> np.ndarray:
    """``weights::randomize`` for one constant, bit for bit."""
    n = math.prod(t.shape)
    state = (seed ^ _fnv1a(name)) & _M64
    state = int(_splitmix_stream(state, 1)[0])  # decorrelate nearby seeds
    fan_in = max(math.prod(t.shape[1:]), 1)
    if t.role in (CONV_WEIGHT, LINEAR_WEIGHT):
        b = float(np.float32(math.sqrt((6.0 if t.role == CONV_WEIGHT else 3.0) / fan_in)))
        v = _uniform(_splitmix_stream(state, n), -b, b)
    elif t.role in (BIAS, SCALE):
        u = _splitmix_stream(state, 2 * n).reshape(n, 2)
        if t.role == BIAS:
            m = _uniform(u[:, 0], 0.01, 0.1)
            negative = (u[:, 1] & np.uint64(1)) == 1
        else:
            m = _uniform(u[:, 0], 0.5, 1.5)
            negative = _uniform(u[:, 1], 0.0, 1.0) < np.float32(0.2)
        v = np.where(negative, -m, m)
    elif t.role == VAR:
        v = _uniform(_splitmix_stream(state, n), 0.5, 2.0)
    else:  # SHIFT, MEAN
        v = _uniform(_splitmix_stream(state, n), -0.5, 0.5)
    return v.astype(np.float32).reshape(t.shape)


def random_weights(cfg: Config, seed: int) -> dict[str, np.ndarray]:
    if not 0 <= seed < 1 << 64:
        raise ValueError(f"seed {seed} is not a u64")
    return {name: random_tensor(name, t, seed) for name, t in expected_shapes(cfg).items()}


def load_weights(path: Path, cfg: Config) -> dict[str, np.ndarray]:
    """Read a .safetensors file and check it against ``cfg``: every tensor
    present with its shape; ``num_batches_tracked`` ignored; errors name the
    tensor and both shapes."""
    from safetensors.numpy import load_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: only .safetensors weights are supported here "
                         "(convert a .pth with safetensors.torch.save_file)")
    raw = load_file(str(path))
    want = expected_shapes(cfg)
    problems = []
    out = {}
    for name, t in want.items():
        if name not in raw:
            problems.append(f"missing tensor {name} {list(t.shape)}")
            continue
        a = raw[name]
        if tuple(a.shape) != t.shape:
            problems.append(f"tensor {name}: expected shape {list(t.shape)}, "
                            f"found {list(a.shape)}")
        elif not np.issubdtype(a.dtype, np.floating):
            problems.append(f"tensor {name}: dtype {a.dtype} is not floating point")
        else:
            out[name] = np.ascontiguousarray(a, dtype=np.float32)
    extra = [n for n in raw if n not in want and not n.endswith("num_batches_tracked")]
    problems += [f"unexpected tensor {n} {list(raw[n].shape)}" for n in extra]
    if problems:
        raise ValueError(f"{path} does not fit {cfg.name}:\n  " + "\n  ".join(problems))
    return out


def save_weights(weights: dict[str, np.ndarray], path: Path) -> None:
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in weights.items()}, str(path))


# ---------------------------------------------------------------- ONNX

OPSET = 17
IR_VERSION = 8  # what ONNX Runtime and OpenVINO have read for years


def build_onnx(cfg: Config, weights: dict[str, np.ndarray], batch: int):
    """The torchvision forward pass as an ONNX ModelProto with a static input
    ``input`` [batch, C, S, S] and output ``logits`` [batch, classes]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = []

    def node(op, inputs, name, **attrs):
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def conv(name, x, k, stride, pad):
        inputs = [x, f"{name}.weight"] + ([f"{name}.bias"] if cfg.conv_bias else [])
        return node("Conv", inputs, name, kernel_shape=[k, k], strides=[stride, stride],
                    pads=[pad] * 4)

    def bn_relu(norm, relu, x):
        y = node("BatchNormalization",
                 [x] + [f"{norm}.{p}" for p in ("weight", "bias", "running_mean", "running_var")],
                 norm, epsilon=float(cfg.bn_eps))
        return node("Relu", [y], relu)

    x = "input"
    if cfg.stem == "imagenet":
        x = conv("features.conv0", x, 7, 2, 3)
        x = bn_relu("features.norm0", "features.relu0", x)
        x = node("MaxPool", [x], "features.pool0", kernel_shape=[3, 3], strides=[2, 2],
                 pads=[1] * 4)
    else:
        x = conv("features.conv0", x, 3, 1, 1)
    for b, layers in enumerate(cfg.block_config, start=1):
        block = f"features.denseblock{b}"
        features = [x]
        for l in range(1, layers + 1):
            p = f"{block}.denselayer{l}"
            inp = x if len(features) == 1 else node("Concat", features, f"{p}.cat", axis=1)
            y = bn_relu(f"{p}.norm1", f"{p}.relu1", inp)
            if cfg.bn_size > 0:
                y = conv(f"{p}.conv1", y, 1, 1, 0)
                y = bn_relu(f"{p}.norm2", f"{p}.relu2", y)
                y = conv(f"{p}.conv2", y, 3, 1, 1)
            else:
                y = conv(f"{p}.conv1", y, 3, 1, 1)
            features.append(y)
        x = node("Concat", features, f"{block}.cat", axis=1)
        if b < len(cfg.block_config):
            t = f"features.transition{b}"
            y = bn_relu(f"{t}.norm", f"{t}.relu", x)
            y = conv(f"{t}.conv", y, 1, 1, 0)
            x = node("AveragePool", [y], f"{t}.pool", kernel_shape=[2, 2], strides=[2, 2])
    x = bn_relu("features.norm5", "features.relu5", x)
    x = node("GlobalAveragePool", [x], "avgpool")
    x = node("Flatten", [x], "flatten", axis=1)
    nodes.append(helper.make_node("Gemm", [x, "classifier.weight", "classifier.bias"],
                                  ["logits"], name="classifier", transB=1))

    want = expected_shapes(cfg)
    missing = [n for n in want if n not in weights]
    if missing:
        raise ValueError(f"weights lack {len(missing)} tensors, e.g. {missing[:3]}")
    inits = [numpy_helper.from_array(np.asarray(weights[n], np.float32), n) for n in want]
    s = cfg.image_size
    graph = helper.make_graph(
        nodes, cfg.name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, cfg.in_channels, s, s])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, cfg.num_classes])],
        initializer=inits)
    model = helper.make_model(graph, producer_name="densenetc/scripts/peers.py",
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model
