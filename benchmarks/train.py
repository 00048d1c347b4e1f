"""Training speed as a user meets it: the same SimCLR training (model, loss, optimizer, augmentation policy,
batch, online probe) driven by this repository's loop (uint8 tensors on the device, common.Augment batched)
and written the way peer tools and tutorials write it (torchvision transforms.v2 applied image by image in
a torch.utils.data.DataLoader with one worker per core, as lightly's and solo-learn's examples), in training
images per second, side by side, in one run. Not run by CI.

    python benchmarks/train.py                       # both settings, 2 threads / 2 workers on 2 cores
    python benchmarks/train.py --settings quick --steps 40

Settings: `quick` is `python simclr.py`'s (shapes at 16 px, width-8 ResNet-18, batch 64, the `small`
policy, AdamW); `cifar` is CIFAR-shaped (32 px, width 16, batch 256, the `symmetric` policy of the CIFAR
recipe, LARS). Each round times --steps steps of each loop (after a warm-up, DataLoader workers started),
the two loops in turn; each figure is its best of --rounds rounds.
"""
import argparse
import contextlib
import io
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import simclr  # noqa: E402
from augment import torchvision_view  # noqa: E402  (the same policy in transforms.v2)

SETTINGS = {"quick": dict(size=16, width=8, batch=64, policy="small", optimizer="adamw", lr=2e-3),
            "cifar": dict(size=32, width=16, batch=256, policy="symmetric", optimizer="lars", lr=0.4)}


class TwoViewsAndLabel(torch.utils.data.Dataset):
    def __init__(self, images, labels, views):
        self.images, self.labels, self.views = images, labels, views

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return (*(v(self.images[i]) for v in self.views), self.labels[i])


def make(setting, data):
    with contextlib.redirect_stdout(io.StringIO()):  # its "recipe: ..." line
        args = simclr.get_args(["--width", str(setting["width"]), "--image-size", str(setting["size"]),
                                "--optimizer", setting["optimizer"], "--lr", str(setting["lr"]),
                                "--policy", setting["policy"]])
    torch.manual_seed(0)
    model = simclr.Model(args)
    return args, model, common.make_optimizer(model, args), common.OnlineProbe(model.backbone.out_dim, 10,
                                                                               torch.device("cpu"))


def train_step(model, optimizer, probe, x1, x2, labels, temperature):
    h1, z1 = model(x1)
    _, z2 = model(x2)
    loss, _ = simclr.nt_xent_loss(z1, z2, temperature)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    probe.step(h1, labels)


def ours(setting, data, steps):
    args, model, optimizer, probe = make(setting, data)
    loader = common.Loader(data.train_x, data.train_y, setting["batch"], torch.device("cpu"))
    augment = common.Augment(setting["policy"], data, setting["size"])
    batches = iter(loader)

    def run(n):
        nonlocal batches
        for _ in range(n):
            try:
                images, labels = next(batches)
            except StopIteration:
                batches = iter(loader)
                images, labels = next(batches)
            train_step(model, optimizer, probe, *augment(images), labels, args.temperature)
    return run


def peer(setting, data, steps, workers):
    args, model, optimizer, probe = make(setting, data)
    views = [torchvision_view(spec, setting["size"], data.mean.tolist(), data.std.tolist())
             for spec in common.POLICIES[setting["policy"]]]
    loader = torch.utils.data.DataLoader(TwoViewsAndLabel(data.train_x, data.train_y, views),
                                         batch_size=setting["batch"], shuffle=True, num_workers=workers,
                                         persistent_workers=True, drop_last=True)
    batches = iter(loader)

    def run(n):
        nonlocal batches
        for _ in range(n):
            try:
                x1, x2, labels = next(batches)
            except StopIteration:
                batches = iter(loader)
                x1, x2, labels = next(batches)
            train_step(model, optimizer, probe, x1, x2, labels, args.temperature)
    return run, loader


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--steps", type=int, default=30, help="training steps per loop per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="torch threads of the training process")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="DataLoader workers of the peer loop")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, {a.threads} threads; "
          f"DataLoader: {a.workers} workers")
    print(f"{'setting':8s} {'this repository':>16s} {'DataLoader':>11s} {'ratio':>6s}   (training images/s)")
    for name in a.settings:
        setting = SETTINGS[name]
        x, y = common.make_shapes(4000, setting["size"], seed=0)  # the quick start's 4,000 training images
        data = common.Data((x, y), (x, y), (x[:10], y[:10]), list(common.SHAPE_NAMES),
                           *common.channel_stats(x))
        runs = {"ours": ours(setting, data, a.steps)}
        runs["peer"], loader = peer(setting, data, a.steps, a.workers)
        for run in runs.values():
            run(3)  # warm-up; the DataLoader's workers start here
        best = {k: 0.0 for k in runs}
        for _ in range(a.rounds):
            for k, run in runs.items():
                start = time.perf_counter()
                run(a.steps)
                best[k] = max(best[k], a.steps * setting["batch"] / (time.perf_counter() - start))
        del loader
        print(f"{name:8s} {best['ours']:16.0f} {best['peer']:11.0f} {best['ours'] / best['peer']:5.2f}x",
              flush=True)


if __name__ == "__main__":
    main()
