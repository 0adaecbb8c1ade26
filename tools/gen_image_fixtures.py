"""Image preprocessing fixtures: small PNGs (and one JPEG) and what torchvision's ImageNet eval
transform makes of them, computed with Pillow and NumPy only.

    python3 -m venv /tmp/pilenv && /tmp/pilenv/bin/pip install pillow numpy
    /tmp/pilenv/bin/python tools/gen_image_fixtures.py

writes tests/fixtures/images/:
    <name>.png | .jpg        the input images (deterministic patterns plus noise)
    <name>_<S>.npy           float32 [1, 3, S, S]: Resize(round(S*256/224)), CenterCrop(S),
                             ToTensor, Normalize(ImageNet mean/std), of Image.open(f).convert("RGB")
    manifest.json            the cases, the Pillow and NumPy versions

The transform is written out with the PIL calls torchvision makes for a PIL image
(torchvision.transforms.functional: _compute_resized_output_size, resize -> Image.resize with
BILINEAR, center_crop -> Image.crop with int(round(...)) offsets, to_tensor, normalize), so
torch is not needed. runtime/tests/preprocess.rs compares the runtime with these files.
"""

import json
import os
import struct
import zlib

import numpy as np
import PIL
from PIL import Image

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "images")
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def resize_for_crop(crop):
    return int(round(crop * 256 / 224))


def tv_resize(img, size):
    """torchvision Resize(size) with an int size: shorter side to `size`, aspect kept."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) == (w, h):
        return img
    return img.resize((new_w, new_h), Image.BILINEAR)


def tv_center_crop(img, size):
    """torchvision CenterCrop(size) for a PIL image no smaller than the crop."""
    w, h = img.size
    assert w >= size and h >= size
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def tv_to_tensor_normalize(img):
    a = np.array(img, dtype=np.uint8, copy=True).astype(np.float32)
    a = a.transpose(2, 0, 1) / np.float32(255)
    mean = np.array(MEAN, dtype=np.float32)[:, None, None]
    std = np.array(STD, dtype=np.float32)[:, None, None]
    return ((a - mean) / std)[None].astype(np.float32)


def transform(path, crop):
    img = Image.open(path).convert("RGB")
    return tv_to_tensor_normalize(tv_center_crop(tv_resize(img, resize_for_crop(crop)), crop))


def pattern(rng, w, h, channels, noise=40):
    """Gradients, a few sinusoids and noise: edges and texture that resampling must get right."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    planes = []
    for c in range(channels):
        fx, fy = rng.uniform(0.05, 0.6, size=2)
        base = 128 + 90 * np.sin(fx * x + c) * np.cos(fy * y - c) + 30 * (x / w - y / h)
        base[(x // 9 + y // 7 + c) % 5 == 0] = 255 * (c % 2)  # hard edges
        planes.append(base + rng.normal(0, noise, size=(h, w)))
    a = np.clip(np.stack(planes, axis=-1), 0, 255).round().astype(np.uint8)
    return a


def write_png16(path, a):
    """A 16-bit PNG (grey+alpha or RGB) written directly: Pillow cannot save these modes, but
    it reads them (keeping the high byte of each sample)."""
    h, w, c = a.shape
    color_type = {2: 4, 3: 2}[c]
    raw = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)))
        f.write(chunk(b"IDAT", zlib.compress(raw, 9)))
        f.write(chunk(b"IEND", b""))


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.RandomState(20260123)
    images = {}

    images["rgb_landscape.png"] = Image.fromarray(pattern(rng, 131, 77, 3), "RGB")
    images["rgb_portrait.png"] = Image.fromarray(pattern(rng, 63, 149, 3), "RGB")
    # Larger than Resize(256): the antialiased downscale, and a crop offset of 38.5 -> 38.
    images["rgb_large.png"] = Image.fromarray(pattern(rng, 320, 272, 3, noise=2), "RGB")
    images["grey.png"] = Image.fromarray(pattern(rng, 90, 67, 1)[:, :, 0], "L")
    images["rgba.png"] = Image.fromarray(pattern(rng, 75, 88, 4), "RGBA")
    pal = Image.fromarray(pattern(rng, 101, 55, 3), "RGB").quantize(colors=37)
    pal.info["transparency"] = 3
    images["palette.png"] = pal
    grey16 = (pattern(rng, 47, 40, 1)[:, :, 0].astype(np.int32) * 3).astype(np.uint16)
    images["grey16.png"] = Image.fromarray(grey16)  # mode I;16

    def deep(w, h, c):
        lo = rng.randint(0, 256, size=(h, w, c))
        return pattern(rng, w, h, c).astype(np.uint16) * 256 + lo.astype(np.uint16)

    sixteen = {"rgb16.png": deep(41, 53, 3), "la16.png": deep(50, 39, 2)}

    cases = []
    for name, a in sixteen.items():
        write_png16(os.path.join(OUT, name), a)
    for name, img in list(images.items()) + [(n, None) for n in sixteen]:
        path = os.path.join(OUT, name)
        if img is None:
            pass  # written above
        elif name == "palette.png":
            img.save(path, transparency=3)
        else:
            img.save(path)
        with Image.open(path) as check:
            mode = check.mode
        crops = [32, 57] if name != "rgb_large.png" else [224, 45]
        for crop in crops:
            out = transform(path, crop)
            stem = os.path.splitext(name)[0]
            np.save(os.path.join(OUT, f"{stem}_{crop}.npy"), out)
            cases.append({"image": name, "pil_mode": mode, "crop": crop,
                          "resize": resize_for_crop(crop), "expected": f"{stem}_{crop}.npy"})

    # JPEG: decoders differ (libjpeg here, zune-jpeg in the runtime), so only closeness is tested.
    jpg = os.path.join(OUT, "rgb_landscape.jpg")
    images["rgb_landscape.png"].save(jpg, quality=92)
    np.save(os.path.join(OUT, "rgb_landscape_jpg_32.npy"), transform(jpg, 32))
    cases.append({"image": "rgb_landscape.jpg", "pil_mode": "RGB", "crop": 32, "resize": 37,
                  "expected": "rgb_landscape_jpg_32.npy", "exact": False})

    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump({"generator": "tools/gen_image_fixtures.py", "pillow": PIL.__version__,
                   "numpy": np.__version__, "cases": cases}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
