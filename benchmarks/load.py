"""Image-folder loading speed: common.load_imagefolder (decoding in a pool of threads, PIL, JPEG draft mode,
one preallocated tensor) against a plain PIL loop in one process (open, convert, resize, centre crop: what
torchvision's ImageFolder with Resize + CenterCrop does image by image), on the same generated JPEGs, in
one run. Prints files per second, the ratio, the memory used, and the time ImageNet-100 would take. Not
run by CI.

    python benchmarks/load.py                        # 720 JPEGs of 500 x 375 at --image-size 224
    python benchmarks/load.py --sizes 224 64 --files 1440
"""
import argparse
import os
import resource
import shutil
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402

IMAGENET100 = 126_689 + 5_000  # training and validation images


def make_folder(root, files, classes=10, size=(500, 375)):
    """JPEGs of smooth random colour fields with noise (realistic JPEG sizes), train/ and val/ 5:1."""
    rng = np.random.default_rng(0)
    for i in range(files):
        split = "val" if (i // classes) % 6 == 5 else "train"
        folder = os.path.join(root, split, f"class{i % classes}")
        os.makedirs(folder, exist_ok=True)
        low = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
        pixels = np.asarray(low).astype(np.int16) + rng.integers(-12, 12, (size[1], size[0], 3))
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(os.path.join(folder, f"{i}.jpg"),
                                                                   quality=90)


def plain_loop(root, size):
    """One process, one image at a time: PIL open, RGB, shorter side to size (bilinear), centre crop."""
    out = []
    for split in ("train", "val"):
        for cls in sorted(os.listdir(os.path.join(root, split))):
            for f in sorted(os.listdir(os.path.join(root, split, cls))):
                with Image.open(os.path.join(root, split, cls, f)) as img:
                    img = img.convert("RGB")
                    w, h = img.size
                    s = size / min(w, h)
                    img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BILINEAR)
                    left, top = (img.width - size) // 2, (img.height - size) // 2
                    out.append(np.asarray(img.crop((left, top, left + size, top + size))))
    return len(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--files", type=int, default=720)
    p.add_argument("--sizes", type=int, nargs="+", default=[224])
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="decoding threads (common)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    root = tempfile.mkdtemp()
    try:
        make_folder(root, a.files)
        megabytes = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs) / 1e6
        print(f"{a.files} JPEGs of 500 x 375 ({megabytes:.0f} MB), {os.cpu_count()} cores, "
              f"{a.threads} decoding threads")
        print(f"{'size':>5s} {'this repository':>16s} {'plain PIL loop':>15s} {'ratio':>6s} "
              f"{'ImageNet-100':>13s}")
        for size in a.sizes:
            start = time.time()
            common.load_imagefolder(root, size)
            ours = a.files / (time.time() - start)
            os.remove(os.path.join(root, f"cache-{size}px.pt"))
            start = time.time()
            plain_loop(root, size)
            plain = a.files / (time.time() - start)
            print(f"{size:5d} {ours:11.0f} f/s {plain:10.0f} f/s {ours / plain:5.2f}x "
                  f"{IMAGENET100 / ours / 60:8.1f} min", flush=True)
        decoded = 3 * max(a.sizes) ** 2 * a.files / 1e6
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
        print(f"peak memory of this process: {peak:.0f} MB "
              f"(the decoded images at {max(a.sizes)} px: {decoded:.0f} MB; ImageNet-100 at 224 px: "
              f"{3 * 224 * 224 * IMAGENET100 / 1e9:.1f} GB)")
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
