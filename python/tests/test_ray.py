"""examples/python/ray_batch_inference.py on a local Ray with 2 actors (needs ray[data])."""

import importlib.util
import pathlib

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed")
pytest.importorskip("ray.data", reason="Ray Data is not installed")

import densenetc  # noqa: E402

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "python" / "ray_batch_inference.py"


def load_example():
    spec = importlib.util.spec_from_file_location("ray_batch_inference", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def local_ray():
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_batch_inference_matches_sequential(local_ray, tmp_path):
    ex = load_example()
    model = densenetc.compile_random({"arch": "densenet-bc-100", "block_config": [2, 2, 2]}, batch=8)
    artefact = str(tmp_path / "small.dnc")
    model.save(artefact)
    n = 300
    ids, logits = ex.run_ray(artefact, n, actors=2, batch_size=64)
    assert ids.tolist() == list(range(n))
    np.testing.assert_array_equal(logits, ex.run_sequential(artefact, n))
