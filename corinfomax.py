r"""CorInfoMax: Self-Supervised Learning with an Information Maximization Criterion (Ozsoy et al. 2022,
arXiv 2209.07999; its thesis version, Ozsoy 2022, Koc University: chapters 3-4, appendices A-C).

Two augmented views of each image go through the backbone and projector; the loss maximises the
log-determinant entropy of each view's projections (the "big-bang" factor, which spreads them over all
dimensions) while pulling the two projections of each image together (the attraction factor). As in the
official code (and appendix A.2 pseudocode), with projections z1, z2 of shape (N, D):
    L = alpha * attraction - (logdet1 + logdet2) / D
    attraction = mse(z1, z2) = 1/(N D) sum_n ||z1_n - z2_n||^2
    logdet_q   = log det(R_q + eps I)
where R_q and mu_q are running estimates across batches (eqs. 4.3-4.5), forgetting factor la:
    mu_q = la_mu * mu_q(old) + (1 - la_mu) * mean_n z_q,n                          (4.5)
    R_q  = la_R * R_q(old) + (1 - la_R) * 1/N sum_n (z_q,n - mu_q)(z_q,n - mu_q)^T   (4.3, 4.4)
The old estimates are constants (detached); the gradient flows through the current batch, the new mean
included. R starts at I, mu at 0, both kept in float64 (common.precise_dtype) and saved in the checkpoint.

Tracking (thesis 5.4-5.5): per epoch, `ldmi` is the mean over the epoch's steps of the training LDMI
from the loss's own running estimates, with the cross-covariance R12 kept the same way (eq. 4.6), in
the thesis' convention, equation 3.6, in nats (the Gaussian mutual information when eps -> 0):
    LDMI = 1/4 [logdet(R1 + eps I) + logdet(R2 + eps I) - logdet(Re12 + eps I) - logdet(Re21 + eps I)]
    Re12 = R1 - R12 (R2 + eps I)^-1 R12^T,  Re21 = R2 - R12^T (R1 + eps I)^-1 R12
(the official extras/ldmi_plot code logs 4/D times this value). At the end the sorted eigenvalues of
R1 (largest first) go into results.json as `eigenvalues_R1` (Figure 5.3).

Run:        python corinfomax.py                       (shapes, the CPU recipe: about 30 s on 2 cores)
            python corinfomax.py --dataset cifar100    (thesis B.2.2: ResNet-18, 1000 epochs, GPU)
            python corinfomax.py --dataset cifar10     (thesis B.2.1)
            python corinfomax.py --dataset imagefolder --data-dir tiny-imagenet --arch resnet50 \
                --image-size 64 --epochs 800 --lr 0.5 --min-lr 1e-6 --la-R 0.1 --la-mu 0.1   (B.2.3)
            torchrun --standalone --nproc_per_node=4 corinfomax.py --dataset cifar100  (4 GPUs, global batch)
Expected:   thesis Table 5.1 (offline linear, 1000 epochs): CIFAR-10 93.18%, CIFAR-100 71.61%;
            Tiny-ImageNet 54.86%, ImageNet-100 (ResNet-18) 80.48%. This repository's CPU recipe: see
            README Results.
Deviations:
- The learning-rate schedule is stepped every iteration (warmup then cosine); the official
  LinearWarmupCosineAnnealingLR is stepped once per epoch.
- Weight decay skips biases (common.make_optimizer); the official SGD decays every parameter.
- The backbone is common.py's ResNet (torchvision init); the official one uses zero_init_residual=True.
- alpha multiplies the MSE averaged over N*D entries and the log-dets are divided by D (official code
  and A.2 pseudocode), so the thesis' eq. 4.2 with 2/(eps N) replaced by alpha is D times this loss
  with alpha/N for alpha: the thesis' alpha values are the code's, which this file uses.
- imagefolder: ImageNet-100 ResNet-18 as the official README command (la 0.01); thesis 5.2.5 says la 0.1
  for ImageNet-100 and Tiny-ImageNet, so pass --la-R 0.1 --la-mu 0.1 for those. stl10 has no thesis
  setting: it gets the ImageNet-style alpha and projector, the rest as CIFAR.
- Augmentation: common.py's `asymmetric` policy (thesis Table B.1). The thesis reports offline linear
  accuracy (--linear-epochs 100), not the online probe's.
- Shared by every method, each written once in common.py where the code is: the stem's padding (ResNet),
  bilinear crops (resized_crop), the 13-tap blur (blur_kernel_size), LARS's trust ratio (LARS) and the
  online probe (OnlineProbe).
- The projector runs in float32 outside bf16 autocast: R1, R2 and their log-dets are read off its outputs.
- On MPS (no float64) R, mu and the log-dets are float32 (common.precise_dtype). Measured on the CPU against
  float64 over 300 steps: log-dets within 5e-6 (relative) for full-rank projections, within 4e-3 (5 nats of
  2,100) when 112 of 128 dimensions have collapsed to the eps floor.
"""
import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import common

RECIPES = {
    # every dataset: thesis section 5.2 and appendix B.2, official README "Commands for original runs"
    "all": dict(
        epochs=1000,          # thesis 5.2.5 / B.2.1-B.2.2 (CIFAR)
        batch_size=512,       # thesis 5.2.5
        optimizer="sgd",      # SGD momentum 0.9 (thesis 5.2.5); common.make_optimizer's sgd has momentum 0.9
        lr=0.5,               # thesis 5.2.5 / B.2.2, official --learning_rate 0.5
        weight_decay=1e-4,    # thesis 5.2.5, official --w_decay 1e-4
        warmup_epochs=10,     # thesis B.2.2 "linear warm-up for 10 epochs"
        warmup_lr=0.003,      # thesis B.2.2 "learning rate start value is 0.003"
        min_lr=1e-6,          # thesis B.2.2, official --min_lr 1e-6
        policy="asymmetric",  # thesis Table B.1
        alpha=1000.0,         # thesis 5.2.5 (CIFAR-100)
        proj_layers=3, proj_hidden=4096, proj_dim=128,  # 4096-4096-128: thesis 5.2.4 / B.2.2
        la_R=0.01, la_mu=0.01,      # thesis 5.2.5 / B.2, official --la_R 0.01 --la_mu 0.01
        eps=1e-8,             # thesis 5.2.5, official --R_eps_weight 1e-8
    ),
    # the CPU recipe, about half a minute on 2 cores: chosen by measurement (benchmarks/recipes.py)
    "shapes": dict(image_size=16, width=8, train_subset=4000, epochs=10, batch_size=64, eval_every=10,
                   optimizer="adamw", lr=5e-3, weight_decay=1e-4, warmup_epochs=1, warmup_lr=0.0, min_lr=0.0,
                   policy="small", proj_hidden=256, proj_dim=32, alpha=250.0),
    # real images on a laptop CPU (--dataset fashion-mnist or mnist; your own folder with --recipe laptop):
    # 28 px, about 300,000 images seen whatever the set's size (--images), chosen by measurement on
    # Fashion-MNIST (benchmarks/recipes.py); a 512-512-64 projector (the shapes recipe's 256-256-32 gave
    # 1.4 points less), the rest as the shapes recipe
    "laptop": dict(image_size=28, width=8, images=300_000, batch_size=64, eval_every=50,
                   optimizer="adamw", weight_decay=1e-4, warmup_epochs=0.2, policy="objects",
                   lr=5e-3, warmup_lr=0.0, min_lr=0.0, proj_hidden=512, proj_dim=64, alpha=250.0),
    "cifar10": dict(alpha=250.0, proj_hidden=2048, proj_dim=64),  # thesis 5.2.4-5.2.5, B.2.1; official README
    "cifar100": dict(),                                           # thesis 5.2.4-5.2.5, B.2.2; official README
    # no thesis setting: ImageNet-style alpha and projector (thesis 5.2.4-5.2.5), the rest as CIFAR
    "stl10": dict(alpha=500.0),
    # ImageNet-100, ResNet-18: thesis B.2.4, official README (alpha 500, batch 1024, lr 1.0, min lr 5e-3)
    "imagefolder": dict(alpha=500.0, epochs=400, batch_size=1024, lr=1.0, min_lr=5e-3),
}


def projector_dims(text):
    """argparse type for the old --projector: sizes joined by '-', e.g. 4096-4096-128, hidden ones equal."""
    try:
        dims = [int(d) for d in text.split("-")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes joined by '-' such as 4096-4096-128, got {text!r}")
    if not all(d > 0 for d in dims):
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text}")
    if len(set(dims[:-1])) > 1:
        raise argparse.ArgumentTypeError(f"hidden sizes must be equal (--proj-hidden), got {text}")
    return text


def get_args(argv=None):
    parser = common.get_parser("corinfomax", __doc__, RECIPES)
    flags = parser.add_argument_group("CorInfoMax (this file's flags)")
    forgetting = common.checked(float, lambda v: 0 <= v < 1, "in [0, 1)")
    flags.add_argument("--alpha", type=common.positive(float), help="attraction coefficient (thesis 5.2.5)")
    flags.add_argument("--la-R", type=forgetting, help="forgetting factor of the covariances (eq. 4.3)")
    flags.add_argument("--la-mu", type=forgetting, help="forgetting factor of the means (eq. 4.5)")
    flags.add_argument("--eps", type=common.nonnegative(float), help="diagonal perturbation in the log-dets")
    flags.add_argument("--proj-layers", type=common.positive(int), help="projector Linear layers")
    flags.add_argument("--proj-hidden", type=common.positive(int), help="projector hidden width")
    flags.add_argument("--proj-dim", type=common.positive(int), help="projector output size D")
    flags.add_argument("--projector", type=projector_dims, metavar="SIZES",
                       help="the old spelling of the three above: 4096-4096-128 = --proj-layers 3 "
                            "--proj-hidden 4096 --proj-dim 128")
    return old_spellings(common.parse_args(parser, argv))


def old_spellings(args):
    """The old --projector A-A-B as the three --proj-* flags, for old scripts and saved runs (metrics.py)."""
    if getattr(args, "projector", None):
        dims = [int(d) for d in args.projector.split("-")]
        args.proj_layers, args.proj_hidden, args.proj_dim = len(dims), dims[0], dims[-1]
    vars(args).pop("projector", None)
    return args


# ---------------------------------------------------------------------------------------- loss
def ldmi(R1, R2, R12, eps=1e-8):
    """Log-determinant mutual information, thesis eq. 3.6 (nats), from auto-covariances R1, R2 (D, D)
    and the cross-covariance R12 = E[(z1 - mu1)(z2 - mu2)^T] (D, D)."""
    eye = eps * torch.eye(len(R1), dtype=R1.dtype, device=R1.device)
    # solve_ex: no error check, which would wait for the device every training step (a singular system: NaN)
    error12 = R1 - R12 @ torch.linalg.solve_ex(R2 + eye, R12.T)[0]   # error of z1 estimated from z2 (3.4)
    error21 = R2 - R12.T @ torch.linalg.solve_ex(R1 + eye, R12)[0]   # and of z2 from z1
    return 0.25 * (torch.logdet(R1 + eye) + torch.logdet(R2 + eye)
                   - torch.logdet(error12 + eye) - torch.logdet(error21 + eye))


class CorInfoMaxLoss(nn.Module):
    """L = alpha * mse(z1, z2) - (logdet(R1 + eps I) + logdet(R2 + eps I)) / D with running means and
    covariances (eqs. 4.3-4.5) kept as float64 buffers; also keeps the cross-covariance R12 (eq. 4.6)
    for LDMI tracking. forward(z1, z2) -> (loss, {attraction, logdet1, logdet2}) and updates the state."""
    def __init__(self, dim, alpha, la_R=0.01, la_mu=0.01, eps=1e-8, dtype=torch.float64):  # float32 on MPS
        super().__init__()
        self.dim, self.alpha, self.la_R, self.la_mu, self.eps = dim, alpha, la_R, la_mu, eps
        for q in (1, 2):
            self.register_buffer(f"R{q}", torch.eye(dim, dtype=dtype))   # thesis B.2: R[0] = I
            self.register_buffer(f"mu{q}", torch.zeros(dim, dtype=dtype))  # mu[0] = 0
        self.register_buffer("R12", torch.zeros(dim, dim, dtype=dtype))   # R12[0] = 0

    def forward(self, z1, z2):
        n, d = z1.shape
        eye = self.eps * torch.eye(d, dtype=self.R1.dtype, device=z1.device)
        z1d, z2d = z1.to(self.R1.dtype), z2.to(self.R1.dtype)                       # (N, D) float64
        mu1 = self.la_mu * self.mu1 + (1 - self.la_mu) * z1d.mean(0)                # (D,) eq. 4.5
        mu2 = self.la_mu * self.mu2 + (1 - self.la_mu) * z2d.mean(0)
        centred1, centred2 = z1d - mu1, z2d - mu2                                    # (N, D) eq. 4.4
        R1 = self.la_R * self.R1 + (1 - self.la_R) * centred1.T @ centred1 / n      # (D, D) eq. 4.3
        R2 = self.la_R * self.R2 + (1 - self.la_R) * centred2.T @ centred2 / n
        logdet1, logdet2 = torch.logdet(R1 + eye), torch.logdet(R2 + eye)           # big-bang factor
        attraction = F.mse_loss(z1.float(), z2.float())                              # mean over N*D entries
        loss = self.alpha * attraction - (logdet1 + logdet2).float() / d
        with torch.no_grad():  # the new state, a constant for the next step
            self.R12 = self.la_R * self.R12 + (1 - self.la_R) * centred1.T @ centred2 / n  # eq. 4.6
            self.R1, self.R2, self.mu1, self.mu2 = R1.detach(), R2.detach(), mu1.detach(), mu2.detach()
        return loss, dict(attraction=attraction.detach(), logdet1=logdet1.detach(), logdet2=logdet2.detach())

    @torch.no_grad()
    def ldmi(self):
        """Training LDMI (eq. 3.6, nats) of the current running estimates."""
        return ldmi(self.R1, self.R2, self.R12, self.eps)


# --------------------------------------------------------------------------------------- model
class Model(nn.Module):
    """CorInfoMax: backbone + projector (Linear-ReLU without BatchNorm, last Linear without bias,
    output L2-normalised: thesis 5.2.4, official model_base_resnet.py)."""
    def __init__(self, args):
        super().__init__()
        self.backbone = common.backbone(args.arch, args.width, args.image_size)
        dims = [self.backbone.out_dim] + [args.proj_hidden] * (args.proj_layers - 1) + [args.proj_dim]
        self.projector = common.projector(dims, batchnorm=False, last_bias=False, normalize=True)
        self.dim = dims[-1]             # D, the size of the projections (and of the covariances R1, R2)

    def forward(self, x):
        h = self.backbone(x)            # (N, F) representation used downstream
        with torch.autocast(x.device.type, enabled=False):  # float32: the covariances and log-dets read it
            return h, self.projector(h.float())  # (N, D) unit-norm projection used by the loss


# ------------------------------------------------------------------------------------ training
def main(argv=None):
    args = get_args(argv)
    device = common.setup_device(args)        # cuda, mps or cpu; under torchrun also joins the process group
    run = common.Run(args, __file__, device)  # the run folder (on --resume: its last.pt)
    common.seed_everything(args.seed)
    data = common.load_data(args)
    loader = common.Loader(data.train_x, data.train_y, args.batch_size, device, common.training_memory(args))
    augment = common.Augment(args.policy, data, args.image_size)
    model = common.prepare_model(Model(args), args, device)
    criterion = CorInfoMaxLoss(model.dim, args.alpha, args.la_R, args.la_mu, args.eps,
                               dtype=common.precise_dtype(device)).to(device)
    probe = common.OnlineProbe(model.backbone.out_dim, data.classes, device)
    optimizer = common.make_optimizer(model, args)
    net = common.ddp(model)  # DistributedDataParallel under torchrun (averages gradients), else model
    state = dict(model=model, optimizer=optimizer, probe=probe, loss=criterion)  # what last.pt holds
    start = run.start(data, model.backbone, state)  # 0, or the epoch last.pt holds on --resume
    if args.track_every and start == 0:  # the same measures at random initialisation, in the epoch-0 row
        import metrics  # analysis measures, only for --track-every: training never needs metrics.py
        run.log_init(metrics.track(model.backbone, model.projector, data.track_x, data, device, args.policy))
    steps, warmup = args.epochs * len(loader), int(args.warmup_epochs * len(loader))

    for epoch in range(start, args.epochs):
        common.seed_epoch(args.seed, epoch)
        model.train()
        meter, t0 = common.Meter(), time.time()
        bar = run.progress(loader, epoch)
        for i, (images, labels) in enumerate(bar):
            step = epoch * len(loader) + i
            lr = common.set_lr(optimizer, common.lr_at(step, steps, warmup, args.lr,
                                                       args.warmup_lr, args.min_lr))
            x1, x2 = augment(images)                                            # 2 x (N, 3, S, S)
            with common.autocast(device):
                h1, z1 = net(x1)
                _, z2 = net(x2)
            z1, z2 = common.gather(z1.float()), common.gather(z2.float())       # global batch (N, D) each
            loss, terms = criterion(z1, z2)  # every process updates the same R, mu from the global batch
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            probe_loss = probe.step(h1, labels)
            meter.add(loss=loss, **terms, ldmi=criterion.ldmi(), probe_loss=probe_loss)
            if i % 20 == 0:
                bar.set_postfix(img_s=f"{(i + 1) * len(images) / (time.time() - t0):.0f}")
        # end of the epoch: check, evaluate when due, track when asked, log, save, stop when asked
        seconds = time.time() - t0
        row = {"epoch": epoch + 1, **meter.means(), "lr": lr, "seconds": seconds,
               "images_per_sec": len(loader) * args.batch_size / seconds,
               "world_size": common.WORLD_SIZE, "global_batch": args.batch_size}
        run.check_finite(row, state)  # a NaN or inf in the losses or the state stops here, in one line
        if (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs:
            row.update(common.evaluate(model.backbone, probe, data, device))
        if args.track_every and (epoch + 1) % args.track_every == 0:
            import metrics  # analysis measures, only for --track-every: training never needs metrics.py
            row.update(metrics.track(model.backbone, model.projector, data.track_x, data, device,
                                     args.policy))
        run.log(row)                 # log.jsonl, and one printed line
        run.save(epoch + 1, state)   # last.pt, atomically
        if args.stop_after and epoch + 1 >= args.stop_after:
            return run.stopped(epoch + 1)
    # Figure 5.3: the spectrum of the projector covariance R1, largest first
    eigenvalues = common.on_cpu_without_float64(torch.linalg.eigvalsh, criterion.R1).flip(0).tolist()
    run.finish(model.backbone, data, extra={"eigenvalues_R1": eigenvalues})
    common.print0(f"smallest eigenvalue of R1: {eigenvalues[-1]:.3g}")


if __name__ == "__main__":
    main()
