"""Two-view augmentation throughput: common.Augment (batched, on the device) against the torchvision
pipelines people train with, same policy, same images, same machine, one run. Not run by CI.

    python benchmarks/augment.py [--policy asymmetric] [--policies asymmetric symmetric large]
                                 [--sizes 32 96] [--batch 256] [--n 2048] [--rounds 5] [--device cpu]

Three figures per policy and image size, in images per second (each image gives both views):
- batched: common.Augment on batches of --batch uint8 images on --device (what the training loops run),
  with --threads threads (default: one per core), --n images;
- DataLoader: the same policy written with torchvision.transforms.v2 on uint8 tensors, applied image by
  image in a torch.utils.data.DataLoader with one worker per core (os.cpu_count(), one thread each),
  persistent workers, batches of --batch. The workers are started and have produced a first batch
  before the clock starts; then a whole pass over --n images is timed, every batch of it counted;
- per image: the same torchvision pipeline one image at a time in this process, no workers, for
  reference (what each DataLoader worker runs).
Then batched / DataLoader and batched / per image. The first ratio printed is batched / DataLoader at
the first size for --policy. The images are `shapes` at each size (datasets are stored at the training
size, so crops are upsampled, as in training).

The machine this runs on may be shared (on this project's, a pipeline's speed drifts by 30% from one
second to the next): the three are measured in turn, --rounds times, the first two on the same --n
images, and each figure is its best round. The batched path waits at every op for all its threads:
with other processes running, use --threads 1 --workers 1 for a like-for-like comparison on one core.

Why common.py's augmentation is written as it is (each choice measured with this script on the CPU; the
values are torchvision's, tests/test_augment.py):
- every op runs only on the samples it applies to, gathered with index_select: x[idx] fancy indexing is
  several times slower than index_select, and torch.where with a per-sample mask computes the op for
  every sample of the batch;
- the resized crop is two matrix products per sample, rows then columns, with the channels folded into
  the inner dimension: much faster than gathers, and than broadcasting the interpolation matrices over
  the channels (C times as many small products);
- the hue rotation uses arithmetic masks (1 - sign(d) of differences d >= 0) and y - m floor(y / m) for
  y mod m: comparisons, torch.where, fmod and remainder are several times slower on the CPU, and
  x.max(1) slower than elementwise maximum; before these changes hue took 25-50% of the pipeline.
"""
import argparse
import os
import sys
import time

import torch
import torchvision.transforms.v2 as T

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402

MEAN, STD = (0.5,) * 3, (0.25,) * 3


def torchvision_view(spec, size, mean, std):
    b, c, s, h = spec["jitter"]
    return T.Compose([
        T.RandomResizedCrop(size, scale=spec["crop_scale"], ratio=spec["crop_ratio"], antialias=True),
        T.RandomHorizontalFlip(spec["flip_p"]),
        T.RandomApply([T.ColorJitter(b, c, s, h)], p=spec["jitter_p"]),
        T.RandomGrayscale(spec["gray_p"]),
        T.RandomApply([T.GaussianBlur(common.blur_kernel_size(), (0.1, 2.0))], p=spec["blur_p"]),
        T.RandomSolarize(128, p=spec["solarize_p"]),
        T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std)])


class TwoViews(torch.utils.data.Dataset):
    """uint8 images -> (view 1, view 2), one image at a time, as a torchvision training set does."""
    def __init__(self, images, views):
        self.images, self.views = images, views

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return tuple(v(self.images[i]) for v in self.views)


def batched_images_per_second(augment, batch, n, device):
    start = time.perf_counter()
    for _ in range(max(1, n // len(batch))):
        augment(batch)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return max(1, n // len(batch)) * len(batch) / (time.perf_counter() - start)


def per_image_images_per_second(views, images):
    start = time.perf_counter()
    for img in images:
        for v in views:
            v(img)
    return len(images) / (time.perf_counter() - start)


def dataloader_images_per_second(loader):
    batches = iter(loader)  # persistent workers: drains what is still in flight, then starts this pass
    start = time.perf_counter()
    n = sum(len(views[0]) for views in batches)
    return n / (time.perf_counter() - start)


def measure(policy, size, a):
    """(batched, DataLoader, per image) images/s, each the best of a.rounds rounds."""
    # a few hundred distinct images, repeated to --n: make_shapes takes seconds at 96 px
    x, y = common.make_shapes(min(a.n, 512), size, seed=0)
    x = x.repeat((a.n + len(x) - 1) // len(x), 1, 1, 1)[:a.n]
    data = common.Data((x, y), (x, y), (x, y), list(range(10)), MEAN, STD)  # only its mean and std are used
    ours = common.Augment(policy, data, size)
    batch = x[:a.batch].to(a.device)
    ours(batch)  # warm-up
    views = [torchvision_view(spec, size, MEAN, STD) for spec in common.POLICIES[policy]]
    loader = torch.utils.data.DataLoader(TwoViews(x, views), batch_size=a.batch, shuffle=True,
                                         num_workers=a.workers, persistent_workers=True, drop_last=True)
    for _ in loader:  # starts the workers and waits for a first batch; the rest of this pass is
        break         # drained when the first timed pass starts, before its clock starts
    best = [0.0, 0.0, 0.0]
    for _ in range(a.rounds):
        figures = (batched_images_per_second(ours, batch, a.n, a.device),
                   dataloader_images_per_second(loader),
                   per_image_images_per_second(views, x[:a.per_image_n]))
        best = [max(b, f) for b, f in zip(best, figures)]
    del loader  # stops its workers before the next measurement
    return best


def main():
    policies = [k for k in common.POLICIES if k != "linear"]
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--policy", default="asymmetric", choices=policies, help="measured first")
    p.add_argument("--policies", nargs="+", default=["asymmetric", "symmetric", "large"], choices=policies,
                   help="then these")
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 96])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--n", type=int, default=2048, help="images per round (batched, DataLoader)")
    p.add_argument("--per-image-n", type=int, default=256, help="images timed one by one in this process")
    p.add_argument("--rounds", type=int, default=5, help="each figure is the best of this many rounds")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="DataLoader workers")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads of the batched path")
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {os.cpu_count()} cores; batched: {torch.get_num_threads()} threads on "
          f"{a.device}; DataLoader: {a.workers} workers x 1 thread, torchvision v2 on uint8 tensors; "
          f"batch {a.batch}, {a.n} images per pass, best of {a.rounds} rounds")
    print(f"{'policy':<12}{'px':>5}{'batched':>10}{'DataLoader':>12}{'per image':>11}"
          f"{'batched/DataLoader':>20}{'batched/per image':>19}   (images/s, 2 views each)")
    for policy in [a.policy] + [q for q in a.policies if q != a.policy]:
        for size in a.sizes:
            batched, loaded, per_image = measure(policy, size, a)
            print(f"{policy:<12}{size:>5}{batched:>10.0f}{loaded:>12.0f}{per_image:>11.0f}"
                  f"{batched / loaded:>19.1f}x{batched / per_image:>18.1f}x", flush=True)


if __name__ == "__main__":
    main()
