"""Whole training epochs at CIFAR shape, for every method with its CIFAR-10 recipe, on any device: the
headline figures in one command. Not run by CI (a test runs it tiny on the CPU).

    python benchmarks/epoch.py                          # GPU: ResNet-18 at full width, 50,000 images
    python benchmarks/epoch.py --compile                # the same with torch.compile (--compile)
    python benchmarks/epoch.py --device cpu --width 8 --images 4096 --methods simclr vicreg

Each method runs its own main() (its model, loss, optimizer, augmentation and online probe, nothing
left out) on 50,000 generated 32 px images of 10 classes (`shapes`, repeated: no download, so it runs
on an offline GPU machine), with its CIFAR-10 recipe (--recipe cifar10: ResNet-18, its batch size and
projector) and --epochs 3 --stop-after 2, so that the two timed epochs train only. The first epoch
includes the warm-up (cuDNN autotuning, compilation); the figures are the second epoch's, from the
run's own log.jsonl: seconds, images per second, and the peak memory of the process (CUDA: the
allocator's peak; CPU: the peak resident set size, which grows, so later methods inherit it).
"""
import argparse
import contextlib
import importlib
import io
import json
import os
import resource
import sys
import tempfile
import time
from unittest import mock

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402

METHODS = {"simclr": ("simclr", []), "vicreg": ("vicreg", []), "barlow": ("barlow", []),
           "corinfomax": ("corinfomax", []), "sslpm-rr": ("sslpm", []),
           "sslpm-sgd": ("sslpm", ["--predictor", "mlp"]),
           "adadim": ("adadim", [])}


def cifar_shaped(n, size=32):
    """n uint8 images (size px) of shapes' 10 classes, the 10,000 generated ones repeated, and a test split of
    2,000 (fewer for fewer images: it serves only the kNN before training)."""
    x, y = common.make_shapes(min(n, 10_000), size, seed=0)
    reps = -(-n // len(x))
    train = (x.repeat(reps, 1, 1, 1)[:n], y.repeat(reps)[:n])
    test = common.make_shapes(min(2_000, n), size, seed=1)
    return common.Data(train, train, test, list(common.SHAPE_NAMES), (0.5,) * 3, (0.25,) * 3)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--device", default="auto")
    p.add_argument("--width", type=int, default=64, help="ResNet width (64: the recipe's; less on a CPU)")
    p.add_argument("--images", type=int, default=50_000, help="training images per epoch (CIFAR: 50,000)")
    p.add_argument("--batch-size", type=int,
                   help="override the recipes' batch sizes (default: each recipe's)")
    p.add_argument("--compile", action="store_true", help="pass --compile to the methods")
    p.add_argument("--json", help="also write the table here")
    a = p.parse_args(argv)
    data = cifar_shaped(a.images)
    load = lambda args: (setattr(args, "image_size", 32), data)[1]  # the methods load this instead
    device = common.get_device(a.device)
    rows = []
    compiled = ", --compile" if a.compile else ""
    print(f"{a.images:,} images of 32 px, ResNet-18 width {a.width}, {device}{compiled}; "
          "the second epoch of each method")
    print(f"{'method':12s} {'batch':>6s} {'s/epoch':>8s} {'images/s':>9s} {'peak memory':>12s}")
    with tempfile.TemporaryDirectory() as out, mock.patch.object(common, "load_data", load):
        for name in a.methods:
            file, extra = METHODS[name]
            argv = ["--dataset", "shapes", "--recipe", "cifar10", "--width", str(a.width), "--epochs", "3",
                    "--stop-after", "2", "--eval-every", "1000", "--device", a.device, "--out", out,
                    "--name", name,
                    *extra, *(["--batch-size", str(a.batch_size)] if a.batch_size else []),
                    *(["--compile"] if a.compile else [])]
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            start = time.time()
            with contextlib.redirect_stdout(io.StringIO()):  # the method's own lines: the table is the output
                importlib.import_module(file).main(argv)
            log = [json.loads(line) for line in open(os.path.join(out, name, "log.jsonl"))]
            peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
                    else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
            row = {"method": name, "batch": log[-1]["global_batch"], "seconds_per_epoch": log[-1]["seconds"],
                   "images_per_sec": log[-1]["images_per_sec"], "peak_memory_gb": peak / 1e9,
                   "total_seconds": time.time() - start}
            rows.append(row)
            print(f"{name:12s} {row['batch']:6d} {row['seconds_per_epoch']:8.1f} "
                  f"{row['images_per_sec']:9.0f} {row['peak_memory_gb']:9.2f} GB", flush=True)
    if a.json:
        json.dump({"device": str(device), "width": a.width, "images": a.images, "compile": a.compile,
                   "rows": rows},
                  open(a.json, "w"), indent=1)
    return rows


if __name__ == "__main__":
    main()
