"""Two-view augmentation throughput: common.Augment (batched, on the device) against the usual
torchvision per-image pipeline (transforms.v2 on uint8 tensors, one image at a time, as a DataLoader
worker would run it), same policy, same machine, one run. Not run by CI.

    python benchmarks/augment.py [--policy asymmetric] [--size 32] [--batch 512] [--device cpu]
"""
import argparse
import os
import sys
import time

import torch
import torchvision.transforms.v2 as T

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402


def torchvision_view(spec, size, mean, std):
    b, c, s, h = spec["jitter"]
    return T.Compose([
        T.RandomResizedCrop(size, scale=spec["crop_scale"], ratio=spec["crop_ratio"], antialias=True),
        T.RandomHorizontalFlip(spec["flip_p"]),
        T.RandomApply([T.ColorJitter(b, c, s, h)], p=spec["jitter_p"]),
        T.RandomGrayscale(spec["gray_p"]),
        T.RandomApply([T.GaussianBlur(common.blur_kernel_size(size), (0.1, 2.0))], p=spec["blur_p"]),
        T.RandomSolarize(128, p=spec["solarize_p"]),
        T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std)])


def images_per_second(fn, n, repeats):
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return n * repeats / (time.perf_counter() - start)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--policy", default="asymmetric", choices=[k for k in common.POLICIES if k != "linear"])
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    x, y = common.make_shapes(a.batch, a.size, seed=0)
    data = common.Data((x, y), (x, y), (x, y), 10, (0.5,) * 3, (0.25,) * 3)
    ours = common.Augment(a.policy, data, a.size)
    xd = x.to(a.device)
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    batched = images_per_second(lambda: (ours(xd), sync()), a.batch, a.repeats)
    views = [torchvision_view(spec, a.size, (0.5,) * 3, (0.25,) * 3) for spec in common.POLICIES[a.policy]]
    per_image = images_per_second(lambda: [[v(img) for v in views] for img in x], a.batch, a.repeats)
    print(f"policy {a.policy}, {a.size} px, batch {a.batch}, {torch.get_num_threads()} threads, device {a.device}")
    print(f"{'pipeline':<40}{'images/s (2 views)':>20}")
    print(f"{'torchvision v2, per image':<40}{per_image:>20.0f}")
    print(f"{'common.Augment, batched':<40}{batched:>20.0f}")
    print(f"ratio: {batched / per_image:.1f}x")


if __name__ == "__main__":
    main()
