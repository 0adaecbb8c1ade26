"""Batch inference over a Ray Data dataset with a densenetc artefact.

Each actor of the pool loads the artefact once (``densenetc.load`` in the callable class's
constructor) and classifies the batches Ray hands it (read-only NumPy arrays, used in place:
densenetc does not copy a C-contiguous float32 input). The artefact's batch size need not
match Ray's: batches are cut into artefact-sized chunks, the last one zero-padded.

    pip install ./python "ray[data]"
    densenetc compile --arch densenet-bc-100 --random-weights 0 --batch 8 -o /tmp/bc100.dnc
    python examples/python/ray_batch_inference.py /tmp/bc100.dnc --images 512 --actors 2

The images are generated from their ids (a seeded normal distribution) so that a run can be
checked against a sequential one (``--check``).
"""

from __future__ import annotations

import argparse
import time
from typing import Dict, Sequence, Tuple

import numpy as np

import densenetc


def image(i: int, shape: Sequence[int]) -> np.ndarray:
    """The generated image with id ``i`` (C, H, W), float32."""
    return np.random.default_rng(int(i)).standard_normal(tuple(shape)).astype(np.float32)


def generate(batch: Dict[str, np.ndarray], shape: Tuple[int, ...]) -> Dict[str, np.ndarray]:
    ids = batch["id"]
    return {"id": ids, "image": np.stack([image(i, shape) for i in ids])}


def classify_all(model: densenetc.Model, images: np.ndarray) -> np.ndarray:
    """Runs ``images`` (n, C, H, W) through ``model`` in artefact-sized chunks."""
    b = model.input_shape[0]
    n = len(images)
    out = np.empty((n,) + tuple(model.output_shape[1:]), np.float32)
    for i in range(0, n, b):
        chunk = images[i : i + b]
        m = len(chunk)
        if m < b:
            padded = np.zeros((b,) + chunk.shape[1:], np.float32)
            padded[:m] = chunk
            chunk = padded
        out[i : i + m] = model(chunk)[:m]
    return out


class Classifier:
    """The callable class of ``map_batches``: one artefact load per actor."""

    def __init__(self, artefact: str, threads: int = 1) -> None:
        self.model = densenetc.load(artefact, threads=threads)

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        logits = classify_all(self.model, batch["image"])
        return {"id": batch["id"], "logits": logits, "top1": logits.argmax(axis=1)}


def run_ray(artefact: str, n: int, actors: int = 2, batch_size: int = 64, threads: int = 1):
    """(ids, logits) of ``n`` generated images classified by a pool of ``actors`` actors."""
    import ray

    shape = tuple(densenetc.load(artefact, threads=1).input_shape[1:])
    ds = ray.data.range(n).map_batches(generate, fn_kwargs={"shape": shape}, batch_size=batch_size)
    ds = ds.map_batches(
        Classifier,
        fn_constructor_kwargs={"artefact": artefact, "threads": threads},
        compute=ray.data.ActorPoolStrategy(size=actors),
        batch_size=batch_size,
        batch_format="numpy",
    )
    rows = ds.take_all()
    ids = np.array([r["id"] for r in rows])
    logits = np.stack([r["logits"] for r in rows])
    order = np.argsort(ids)
    return ids[order], logits[order]


def run_sequential(artefact: str, n: int) -> np.ndarray:
    model = densenetc.load(artefact, threads=1)
    shape = model.input_shape[1:]
    return classify_all(model, np.stack([image(i, shape) for i in range(n)]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("artefact")
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="worker threads per actor")
    p.add_argument("--check", action="store_true", help="compare with a sequential run")
    a = p.parse_args()

    import ray

    ray.init(num_cpus=max(a.actors, 1) * a.threads + 1, include_dashboard=False)
    t = time.perf_counter()
    ids, logits = run_ray(a.artefact, a.images, a.actors, a.batch_size, a.threads)
    dt = time.perf_counter() - t
    print(f"{len(ids)} images on {a.actors} actors in {dt:.2f} s ({len(ids) / dt:.1f} images/s)")
    print("top-1 of the first 8:", logits[:8].argmax(axis=1).tolist())
    if a.check:
        seq = run_sequential(a.artefact, a.images)
        np.testing.assert_array_equal(logits, seq)
        print("identical to the sequential run")
    ray.shutdown()


if __name__ == "__main__":
    main()
