"""Time of one training step of each method, as a ratio to VICReg's: same backbone, batch and image
size, one run. Not run by CI.

    python benchmarks/step.py [--width 16] [--batch-size 256] [--image-size 32] [--steps 9]
                              [--device auto] [--threads N]

Each method gets its own Model(args), loss and optimizer with its CIFAR-10 recipe
(`get_args(["--dataset", "cifar10", ...])`: projector sizes, optimizer, loss constants), only
--width, --image-size and --batch-size overridden for all of them (defaults: a width-16 ResNet-18
(128-d features) at 32 px, batch 256 on the CPU; width 64 on a GPU, with bf16 autocast and channels_last
as the training loops). So the steps differ by what the methods differ by (the output prints each
projector and optimizer as read from the recipes):
    simclr      projector 2048-256, NT-Xent, LARS
    vicreg      projector 2048-2048-2048, VICReg, LARS
    barlow      projector 2048-2048-2048, Barlow Twins, LARS
    corinfomax  projector 2048-2048-64 (L2-normalised), float64 running covariances and log-dets, SGD
    adadim      projector 2048-2048-2048, VICReg + InfoNCE + Renyi I(R;Z), LARS, no momentum encoder
    sslpm-rr    projector 2048-2048-128, invariance + float64 ridge regression (Cholesky), LARS
    sslpm-sgd   the same, with the 1-layer MLP predictor: its inner loop (up to 500 steps, early stopped)
A step is what the method's training loop (main()) does per batch once the views are augmented: the
forward of both views, the loss, backward, the optimizer step and the method's own logged extras
(embedding_std, CorInfoMax's LDMI, SSLPM-SGD's inner loop). Left out, as every method does the same:
augmentation (the views are fixed random tensors), the online probe, the learning-rate schedule.
AdaDim's alpha (effective rank of 10 augmented batches, once every --alpha-every epochs) is not in its
step; it is timed once and printed as a cost per step of a CIFAR-10 run (50,000 / batch steps per epoch).
Every method runs --warmup steps first; then the methods take turns, one step each, --steps times
(so a noisy moment of a shared machine hits all of them), and the median step is reported.
--threads (torch.set_num_threads) defaults to one per core; on a machine shared with other processes
use --threads 1: with more, every op waits for its slowest thread, and one descheduled thread stalls
the step.
"""
import argparse
import contextlib
import importlib
import io
import os
import statistics
import sys
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


class Method:
    """One method's model, optimizer and step, built as its main() builds them."""
    def __init__(self, name, a, device):
        self.name, file, extra = name, *METHODS[name]
        self.module = m = importlib.import_module(file)
        argv = ["--dataset", "cifar10", "--width", str(a.width), "--image-size", str(a.image_size),
                "--batch-size", str(a.batch_size), "--device", str(device)] + extra
        with contextlib.redirect_stdout(io.StringIO()):  # get_args prints the recipe line
            self.args = args = m.get_args(argv)
        self.model = common.prepare_model(m.Model(args), args, device)
        self.optimizer = common.make_optimizer(self.model, args)
        self.device = device
        if file == "corinfomax":
            self.criterion = m.CorInfoMaxLoss(int(args.projector.split("-")[-1]), args.alpha, args.la_R,
                                              args.la_mu, args.eps).to(device)
        if name == "sslpm-sgd":
            self.predictor = m.MLPPredictor(args.proj_dim, args.predictor_layers, device, args.predictor_steps,
                                            args.mask_fraction)
            self.inner_steps = []
        if file == "adadim":  # alpha is measured every --alpha-every epochs; any value costs the same
            self.alpha, self.beta = 0.5, args.gamma * 0.5

    def loss(self, h1, z1, h2, z2):
        """The method's loss and logged extras, as in its main()."""
        m, args, g = self.module, self.args, lambda x: common.gather(x.float())
        if self.name == "vicreg":
            loss, _ = m.vicreg_loss(z1, z2, args.sim_coeff, args.std_coeff, args.cov_coeff)
            m.embedding_std(z1, z2)
        elif self.name == "barlow":
            loss, _ = m.barlow_twins_loss(z1, z2, args.lambd)
            loss = args.scale_loss * loss
            m.embedding_std(z1, z2)
        elif self.name == "simclr":
            loss = m.nt_xent_loss(g(z1), g(z2), args.temperature)
        elif self.name == "corinfomax":
            loss, _ = self.criterion(g(z1), g(z2))
            self.criterion.ldmi()
        elif self.name == "adadim":
            loss, _ = m.adadim_loss(g(z1), g(z2), g(h1), g(h2), self.alpha, self.beta, args.temperature, None)
        else:
            z1, z2 = g(z1), g(z2)
            mask = m.random_mask(2 * len(z1), z1.shape[1], args.mask_fraction, self.device)  # (2N, D)
            if self.name == "sslpm-rr":
                loss, _, _ = m.sslpm_loss(z1, z2, mask, args.lambd, args.ridge, args.target)
            else:
                e = torch.cat([m.standardize(z1), m.standardize(z2)])           # (2N, D)
                self.inner_steps.append(self.predictor.fit(e, mask))
                invariance, prediction = m.invariance_loss(z1, z2), self.predictor.encoder_error(e, mask)
                loss = invariance - args.lambd * torch.log(prediction.clamp(max=1.0))
        return loss

    def step(self, x1, x2):
        self.model.train()
        with common.autocast(self.device):
            h1, z1 = self.model(x1)
            h2, z2 = self.model(x2)
        loss = self.loss(h1, z1, h2, z2)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss

    def alpha_seconds(self, a):
        """AdaDim's measure_alpha as its main() calls it (without momentum encoder), on random images."""
        images = torch.randint(0, 256, (4 * a.batch_size, 3, a.image_size, a.image_size), dtype=torch.uint8,
                               device=self.device)
        split = (images.cpu(), torch.zeros(len(images), dtype=torch.long))
        data = common.Data(split, split, split, list(range(10)), (0.5,) * 3, (0.25,) * 3)
        augment = common.Augment(self.args.policy, data, a.image_size)
        start = time.perf_counter()
        self.module.measure_alpha(self.model, images, augment, a.batch_size, self.args.alpha_batches, self.device)
        sync(self.device)
        return time.perf_counter() - start


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--width", type=int, help="ResNet-18 base width (default: 16 on the CPU, 64 on a GPU)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=9, help="timed steps per method (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per method first")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads")
    p.add_argument("--no-alpha", action="store_true", help="skip timing AdaDim's alpha measurement")
    a = p.parse_args()
    device = common.get_device(a.device)
    a.width = a.width or (64 if device.type == "cuda" else 16)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    methods = [Method(name, a, device) for name in ["vicreg"] + [n for n in a.methods if n != "vicreg"]]
    x1, x2 = (torch.randn(a.batch_size, 3, a.image_size, a.image_size, device=device) for _ in range(2))
    if common.channels_last(device, a.image_size):  # as common.Augment gives the training loops their views
        x1, x2 = (x.contiguous(memory_format=torch.channels_last) for x in (x1, x2))
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, ResNet-18 width "
          f"{a.width} ({methods[0].model.backbone.out_dim}-d features), {a.image_size} px, batch {a.batch_size}, "
          f"median of {a.steps} steps after {a.warmup} warm-up steps, methods interleaved")
    for method in methods:
        for _ in range(a.warmup):
            method.step(x1, x2)
    times = {method.name: [] for method in methods}
    for _ in range(a.steps):
        for method in methods:
            sync(device)
            start = time.perf_counter()
            method.step(x1, x2)
            sync(device)
            times[method.name].append(time.perf_counter() - start)
    base = statistics.median(times["vicreg"])
    print(f"{'method':<12}{'s/step':>9}{'min-max':>13}{'x VICReg':>10}   {'projector':<24}{'optimizer':<10}target")
    for method in methods:
        t = statistics.median(times[method.name])
        target = TARGET.get(method.name)
        mark = f"<= {target:.2f}x: {'met' if t / base <= target else 'NOT met'}" if target else ""
        if method.name == "sslpm-sgd":
            steps = method.inner_steps[a.warmup:]
            mark = f"(expected slower; inner predictor steps per step: mean {sum(steps) / len(steps):.1f})"
        dims = [layer.out_features for layer in method.model.projector.modules() if isinstance(layer, torch.nn.Linear)]
        spread = f"{min(times[method.name]):.2f}-{max(times[method.name]):.2f}"
        print(f"{method.name:<12}{t:>9.3f}{spread:>13}{t / base:>9.2f}x   {'-'.join(map(str, dims)):<24}"
              f"{type(method.optimizer).__name__:<10}{mark}")
    adadim = next((m for m in methods if m.name == "adadim"), None)
    if adadim and not a.no_alpha:
        seconds = adadim.alpha_seconds(a)
        per_epoch = CIFAR10_TRAIN // a.batch_size
        amortised = seconds / (adadim.args.alpha_every * per_epoch)
        print(f"adadim alpha measurement ({adadim.args.alpha_batches} batches incl. augmentation): {seconds:.2f} s "
              f"once every {adadim.args.alpha_every} epochs = {amortised * 1e3:.1f} ms per step of a CIFAR-10 "
              f"run ({per_epoch} steps per epoch); with it adadim is "
              f"{(statistics.median(times['adadim']) + amortised) / base:.2f}x VICReg")


if __name__ == "__main__":
    main()
