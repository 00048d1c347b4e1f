"""Time of one training step of each method, as a ratio to VICReg's, each through its own main(): same
backbone, batch and image size. Not run by CI (a test runs it tiny on the CPU).

    python benchmarks/step.py [--width 16] [--batch-size 256] [--image-size 32] [--steps 9] [--warmup 2]
                              [--rounds 1] [--device auto] [--threads N] [--methods ...]

Each method runs its own main() with its CIFAR-10 recipe (--recipe cifar10: projector sizes, optimizer,
loss constants), only --width, --image-size and --batch-size overridden for all of them (defaults: a
width-16 ResNet-18 (128-d features) at 32 px, batch 256 on the CPU; width 64 on a GPU). So a step is
exactly what the method's training loop does per batch: the forward of both views (bf16 autocast and
channels_last where main() uses them), the gather, the loss and its logged extras (embedding_std,
CorInfoMax's LDMI, SSLPM-SGD's inner loop), backward, the optimizer step, the online probe, the
learning-rate schedule and the epoch means. Left out, as every method does the same: augmentation
(common.Augment is replaced by two fixed random views) and the data (generated shapes images).
The printed projector and optimizer are the ones main() built. A step's time is the time between two
batches handed out by the loader (with a device sync); the first --warmup steps are dropped and the
median of the next --steps is reported. With --rounds R every method runs R times, the methods taking
turns, so that a noisy moment of a shared machine hits all of them.
AdaDim's alpha (effective rank of 10 augmented batches, once every --alpha-every epochs) is not in its
step (its first measurement is at the end of the first window); it is timed once and printed as a cost
per step of a CIFAR-10 run (50,000 / batch steps per epoch).
--threads (torch.set_num_threads) defaults to one per core; on a machine shared with other processes
use --threads 1: with more, every op waits for its slowest thread, and one descheduled thread stalls
the step.
"""
import argparse
import contextlib
import importlib
import io
import json
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402

# name: (method file, extra flags); at most 1.15x VICReg is the target for the marked ones (the
# AdaDim paper's Table 12 reports 1.33x for AdaDim, the CorInfoMax thesis Table 5.8 up to 1.14x)
METHODS = {"vicreg": ("vicreg", []), "barlow": ("barlow", []), "simclr": ("simclr", []),
           "corinfomax": ("corinfomax", []), "adadim": ("adadim", []),
           "sslpm-rr": ("sslpm", []), "sslpm-sgd": ("sslpm", ["--predictor", "mlp"])}
TARGET = {"corinfomax": 1.15, "adadim": 1.15, "sslpm-rr": 1.15}
CIFAR10_TRAIN = 50_000


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


class Timed:
    """What main() builds, instrumented from outside: the loader records when each batch is handed out,
    Augment returns two fixed views, make_optimizer keeps the model and optimizer it built."""
    def __init__(self, device):
        self.device, self.times, self.built = device, [], None
        timed = self

        class Loader(common.Loader):
            def __iter__(self):
                for batch in super().__iter__():
                    sync(device)
                    timed.times.append(time.perf_counter())
                    yield batch

        class FixedViews:
            def __init__(self, policy, data, size, **kwargs):
                self.views = None

            def __call__(self, x):
                if self.views is None:  # as common.Augment gives them: normalised float, channels_last there
                    last = common.channels_last(x.device, x.shape[-1])
                    layout = torch.channels_last if last else torch.contiguous_format
                    self.views = tuple(torch.randn(x.shape, device=x.device).contiguous(memory_format=layout)
                                       for _ in range(2))
                return self.views

        make_optimizer = common.make_optimizer

        def keep(model, args):
            optimizer = make_optimizer(model, args)
            self.built = model, optimizer
            return optimizer
        self.patches = {"Loader": Loader, "Augment": FixedViews, "make_optimizer": keep}

    @contextlib.contextmanager
    def patched(self, data):
        saved = {k: getattr(common, k) for k in [*self.patches, "load_data"]}
        for k, v in {**self.patches, "load_data": lambda args: (setattr(args, "image_size", data.image_size),
                                                                  data)[1]}.items():
            setattr(common, k, v)
        try:
            yield
        finally:
            for k, v in saved.items():
                setattr(common, k, v)


def shapes_data(n, size):
    """n shapes images (10 classes, the first 10,000 repeated) of size px; a 256-image test split."""
    x, y = common.make_shapes(min(n, 10_000), size, seed=0)
    reps = -(-n // len(x))
    train = (x.repeat(reps, 1, 1, 1)[:n], y.repeat(reps)[:n])
    data = common.Data(train, train, (train[0][:256], train[1][:256]), list(common.SHAPE_NAMES), (0.5,) * 3,
                       (0.25,) * 3)
    data.image_size = size
    return data


def run_method(name, a, data, timed, out):
    """One run of the method's main() over the generated data; returns its step times and log row."""
    file, extra = METHODS[name]
    argv = ["--dataset", "shapes", "--recipe", "cifar10", "--width", str(a.width),
            "--image-size", str(a.image_size), "--batch-size", str(a.batch_size), "--epochs", "2",
            "--stop-after", "1", "--eval-every", "1000",
            "--device", a.device, "--threads", str(a.threads), "--out", out,
            "--name", f"{name}-{time.time_ns()}",
            *extra]
    timed.times = []
    with timed.patched(data), contextlib.redirect_stdout(io.StringIO()):  # the method's own lines
        importlib.import_module(file).main(argv)
    log = [json.loads(line) for line in open(os.path.join(out, argv[argv.index("--name") + 1], "log.jsonl"))]
    steps = [t1 - t0 for t0, t1 in zip(timed.times, timed.times[1:])][a.warmup:]
    return steps, log[-1]


def alpha_seconds(a, device):
    """AdaDim's measure_alpha as its main() calls it (without momentum encoder), on random images."""
    adadim = importlib.import_module("adadim")
    with contextlib.redirect_stdout(io.StringIO()):
        args = adadim.get_args(["--dataset", "cifar10", "--width", str(a.width),
                                "--image-size", str(a.image_size),
                                "--batch-size", str(a.batch_size)])
    model = common.prepare_model(adadim.Model(args), args, device)
    images = torch.randint(0, 256, (4 * a.batch_size, 3, a.image_size, a.image_size), dtype=torch.uint8,
                           device=device)
    split = (images.cpu(), torch.zeros(len(images), dtype=torch.long))
    data = common.Data(split, split, split, list(range(10)), (0.5,) * 3, (0.25,) * 3)
    augment = common.Augment(args.policy, data, a.image_size)
    start = time.perf_counter()
    adadim.measure_alpha(model, images, augment, a.batch_size, args.alpha_batches, device)
    sync(device)
    return time.perf_counter() - start, args


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--width", type=int, help="ResNet-18 base width (default: 16 on the CPU, 64 on a GPU)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=9, help="timed steps per method and round (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first, in every run")
    p.add_argument("--rounds", type=int, default=1, help="runs of every method, taking turns")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads")
    p.add_argument("--no-alpha", action="store_true", help="skip timing AdaDim's alpha measurement")
    a = p.parse_args()
    device = common.get_device(a.device)
    a.width = a.width or (64 if device.type == "cuda" else 16)
    names = ["vicreg"] + [n for n in a.methods if n != "vicreg"]
    data = shapes_data(a.batch_size * (a.warmup + a.steps + 1), a.image_size)  # + 1: the last step's end
    timed, times, built, rows = Timed(device), {n: [] for n in names}, {}, {}
    print(f"torch {torch.__version__}, device {device}, {a.threads} threads, ResNet-18 width {a.width}, "
          f"{a.image_size} px, batch {a.batch_size}, median of {a.steps} steps after {a.warmup} warm-up "
          f"steps, {a.rounds} round(s), each method through its own main()")
    with tempfile.TemporaryDirectory() as out:
        for _ in range(a.rounds):
            for name in names:
                steps, rows[name] = run_method(name, a, data, timed, out)
                times[name] += steps
                built[name] = timed.built
    base = statistics.median(times["vicreg"])
    print(f"{'method':<12}{'s/step':>9}{'min-max':>13}{'x VICReg':>10}   {'projector':<24}"
          f"{'optimizer':<10}target")
    for name in names:
        t = statistics.median(times[name])
        target = TARGET.get(name)
        mark = f"<= {target:.2f}x: {'met' if t / base <= target else 'NOT met'}" if target else ""
        if name == "sslpm-sgd":
            mark = f"(expected slower; predictor steps per step: mean {rows[name]['predictor_steps']:.1f})"
        model, optimizer = built[name]
        dims = [m.out_features for m in model.projector.modules() if isinstance(m, torch.nn.Linear)]
        spread = f"{min(times[name]):.2f}-{max(times[name]):.2f}"
        print(f"{name:<12}{t:>9.3f}{spread:>13}{t / base:>9.2f}x   {'-'.join(map(str, dims)):<24}"
              f"{type(optimizer).__name__:<10}{mark}")
    if "adadim" in names and not a.no_alpha:
        seconds, args = alpha_seconds(a, device)
        per_epoch = CIFAR10_TRAIN // a.batch_size
        amortised = seconds / (args.alpha_every * per_epoch)
        print(f"adadim alpha measurement ({args.alpha_batches} batches incl. augmentation): {seconds:.2f} s "
              f"once every {args.alpha_every} epochs = {amortised * 1e3:.1f} ms per step of a CIFAR-10 "
              f"run ({per_epoch} steps per epoch); with it adadim is "
              f"{(statistics.median(times['adadim']) + amortised) / base:.2f}x VICReg")


if __name__ == "__main__":
    main()
