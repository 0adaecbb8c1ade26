"""Tests that need no PyTorch: compile with random weights, run, threads, zero-copy, errors."""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import densenetc

SMALL = {"arch": "densenet-bc-100", "block_config": [2, 2, 2]}


@pytest.fixture(scope="module")
def model():
    return densenetc.compile_random(SMALL, seed=7, batch=2, threads=1)


def _input(model, seed=0):
    return np.random.default_rng(seed).standard_normal(model.input_shape).astype(np.float32)


def test_import_does_not_import_torch():
    code = "import sys, densenetc; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_shapes_and_run(model):
    assert model.input_shape == (2, 3, 32, 32)
    assert model.output_shape == (2, 10)
    x = _input(model)
    y = model(x)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32 and y.shape == (2, 10)
    assert np.isfinite(y).all()
    np.testing.assert_array_equal(y, model.run(x))


def test_zero_copy_contiguous_and_read_only(model, tmp_path):
    x = _input(model)
    model(x)
    assert model.last_input_address == x.__array_interface__["data"][0]
    # A read-only memory-mapped array (as Ray hands out): used in place, not copied.
    path = tmp_path / "x.npy"
    np.save(path, x)
    mm = np.load(path, mmap_mode="r")
    assert not mm.flags.writeable
    y = model(mm)
    assert model.last_input_address == mm.__array_interface__["data"][0]
    np.testing.assert_array_equal(y, model(x))


def test_non_contiguous_input(model):
    x = _input(model)
    nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    view = nhwc.transpose(0, 3, 1, 2)  # NCHW view, not C-contiguous
    assert not view.flags.c_contiguous
    np.testing.assert_array_equal(model(view), model(x))


def test_wrong_shape_and_dtype(model):
    with pytest.raises(ValueError, match=r"\(1, 3, 32, 32\).*\(2, 3, 32, 32\)"):
        model(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match="float64"):
        model(np.zeros((2, 3, 32, 32), np.float64))


def test_threads_share_one_model(model):
    xs = [_input(model, seed=i) for i in range(8)]
    expected = [model(x) for x in xs]
    results = [None] * (len(xs) * 4)
    errors = []
    barrier = threading.Barrier(8)

    def work(t):
        try:
            barrier.wait()
            for j in range(4):
                i = (t + j) % len(xs)
                results[t * 4 + j] = (i, model(xs[i]))
        except Exception as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, y in results:
        np.testing.assert_array_equal(y, expected[i])
    assert 1 <= model.sessions <= 8


def test_save_load_round_trip(model, tmp_path):
    path = tmp_path / "small.dnc"
    model.save(path)
    loaded = densenetc.load(path, threads=2)
    assert loaded.input_shape == model.input_shape
    assert loaded.output_shape == model.output_shape
    x = _input(model)
    np.testing.assert_array_equal(loaded(x), model(x))
    # Saving a loaded model copies its file.
    again = tmp_path / "again.dnc"
    loaded.save(again)
    assert again.read_bytes() == path.read_bytes()


def test_progress_callback():
    seen = []
    densenetc.compile_random(SMALL, progress=lambda stage, msg: seen.append(stage))
    assert "codegen" in seen and "artefact" in seen


def test_errors(tmp_path):
    with pytest.raises(NotImplementedError, match="bogus"):
        densenetc.compile_random(SMALL, head="bogus")
    with pytest.raises(ValueError, match="arch="):
        densenetc.compile({"features.conv0.weight": np.zeros((1, 3, 3, 3), np.float32)})
    with pytest.raises(ValueError):
        densenetc.compile_random("no-such-net")
    with pytest.raises(RuntimeError):
        densenetc.load(tmp_path / "missing.dnc")
    with pytest.raises(ValueError, match="device"):
        densenetc.load(tmp_path / "missing.dnc", device="tpu")


def test_gil_released_while_running():
    """Calls overlap (so the GIL is not held while running): concurrent callers need more than
    one session, which a call holding the GIL throughout would never do."""
    m = densenetc.compile_random("densenet-bc-100", batch=1, threads=1)
    x = np.zeros(m.input_shape, np.float32)
    for _ in range(3):  # a heavily loaded machine may serialise one attempt by chance
        barrier = threading.Barrier(4)

        def work():
            barrier.wait()
            for _ in range(5):
                m(x)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if m.sessions >= 2:
            break
    assert m.sessions >= 2


def _host_has_avx512_bf16():
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return False
    return {"avx512f", "avx512vl", "avx512bw", "avx512dq", "avx512_bf16"} <= set(flags)


def test_multi_cpu_and_bf16(model):
    # One variant per CPU, the best the host supports running; bf16 where the CPU has
    # AVX512_BF16 (x86-64-v4 gets it added), fp32 on x86-64-v3.
    both = densenetc.compile_random(SMALL, seed=7, batch=2, threads=1,
                                    cpu="x86-64-v3,x86-64-v4", precision="bf16")
    x = _input(model)
    want = model(x)
    rel = lambda y: np.abs(y - want).max() / np.abs(want).max()  # noqa: E731
    if _host_has_avx512_bf16():
        assert both.cpu_variant == "x86-64-v4"
        assert 1e-6 < rel(both(x)) <= 3e-2, rel(both(x))
    else:
        assert both.cpu_variant == "x86-64-v3"
        assert rel(both(x)) <= 1e-4
    with pytest.raises(RuntimeError, match="AVX512_BF16"):
        densenetc.compile_random(SMALL, cpu="x86-64-v3", precision="bf16")
