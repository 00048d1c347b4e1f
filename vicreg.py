"""VICReg: Variance-Invariance-Covariance Regularization (Bardes, Ponce & LeCun 2021, arXiv 2105.04906).

Two augmented views of each image go through the backbone f and the expander (projector) g; the
embeddings z1, z2 (N x D) are pulled together while each view's batch statistics are regularised, so
no negatives, momentum encoder or predictor are needed (VICReg paper eq. 1-6; "Preventing Collapses
in Non-Contrastive Self-Supervised Learning" eq. 2-5):
    invariance = 1/(N D) sum_{n,d} (z1_nd - z2_nd)^2                     mean squared error
    variance   = 1/2 sum_{v=1,2} 1/D sum_d relu(1 - sqrt(Var_n(zv_nd) + 1e-4))    hinge on each std
    covariance = sum_{v=1,2} 1/D sum_{i != j} Cov(zv)_ij^2,  Cov(z) = (z - mean)^T (z - mean) / (N - 1)
    L = 25 * invariance + 25 * variance + 1 * covariance
Without the variance term the embeddings collapse to a constant (total collapse); without the
covariance term the dimensions become correlated (dimensional collapse): "Preventing Collapses"
section 4.1, Figure 8. Both ablations are flags: --std-coeff 0, --cov-coeff 0. Every epoch logs embedding_std,
the mean over dimensions of the per-dimension standard deviation of the projector output on the
training batches (it falls to 0 under total collapse).

Run:        python vicreg.py --dataset cifar100                 (ResNet-18, 1000 epochs, GPU)
            python vicreg.py                                    (shapes, CPU recipe, about half a minute)
            python vicreg.py --std-coeff 0                      (ablation: total collapse)
            python vicreg.py --cov-coeff 0                      (ablation: dimensional collapse)
            torchrun --standalone --nproc_per_node=4 vicreg.py --dataset cifar100  (4 GPUs, same global batch)
Expected:   solo-learn's README reports 68.54% (CIFAR-100) / 92.07% (CIFAR-10) top-1 for its
            cifar/vicreg.yaml at 1000 epochs (one README version labels the column online). This
            repository's CPU recipe and its two ablations: see README Results.
Deviations:
- Loss conventions follow the official code (facebookresearch/vicreg): the variance term is
  the mean over the two views (divided by 2), the invariance MSE is averaged over the N*D entries
  (the paper's eq. 5 and 6 have neither the 1/D nor the 1/2); variance and covariance use the gathered
  global batch. Under torchrun the invariance is over the global batch too (official: per GPU; the
  gradient is the same, and the logged loss is then the global one). solo-learn sums the two
  views' variance terms (2x ours), so its var_loss_weight 25 equals --std-coeff 50 here; the recipe
  keeps the paper's 25/25/1.
- Projector Linear-BN-ReLU-Linear-BN-ReLU-Linear. No bias on the last layer (official; solo-learn's is
  cancelled by z1 - z2 and by the centring); none on the hidden ones either (official and solo-learn
  have them, cancelled by the BatchNorm that follows).
- The `vicreg` policy is solo-learn's CIFAR block (no blur); solo-learn's ImageNet-100 config also blurs
  with p 0.5, which this file's imagefolder recipe (its other values) does not.
- Shared by every method, each written once in common.py where the code is: the stem's padding (ResNet),
  bilinear crops (resized_crop), the 13-tap blur (blur_kernel_size), LARS's trust ratio (LARS) and the
  online probe (OnlineProbe).
- The CPU recipe (shapes) uses AdamW (LARS at these sizes made real-image features worse) and the
  `small` augmentation (crop 0.9-1, weak jitter): stronger ones lowered kNN accuracy (benchmarks/recipes.py).
"""
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import common

RECIPES = {
    # every dataset: solo-learn scripts/pretrain/cifar/vicreg.yaml unless noted
    "all": dict(
        epochs=1000,
        batch_size=256,
        lr=0.3,               # LARS, at batch 256
        weight_decay=1e-4,
        optimizer="lars",
        lars_clip=True,       # clip_lr: True (eta 0.02 is common.LARS's default)
        warmup_epochs=10,     # solo-learn warmup_cosine default
        policy="vicreg",      # its augmentation block: crop 0.2-1, no blur, solarize 0.1 (common.POLICIES)
        proj_hidden=2048,     # proj_hidden_dim
        proj_dim=2048,        # proj_output_dim
        sim_coeff=25.0,       # sim_loss_weight (also VICReg paper section 4.2)
        std_coeff=25.0,       # var_loss_weight
        cov_coeff=1.0,        # cov_loss_weight
    ),
    # the CPU recipe, about half a minute on 2 cores: chosen by measurement (benchmarks/recipes.py)
    "shapes": dict(image_size=16, width=8, train_subset=4000, epochs=10, batch_size=64, eval_every=10,
                   optimizer="adamw", lr=2e-3, weight_decay=1e-4, warmup_epochs=1, policy="small",
                   proj_hidden=512, proj_dim=128),
    # real images on a laptop CPU (--dataset fashion-mnist or mnist; your own folder with --recipe laptop):
    # 28 px, about 300,000 images seen whatever the set's size (--images), chosen by measurement on
    # Fashion-MNIST (benchmarks/recipes.py); the method's values as in its shapes recipe
    "laptop": dict(image_size=28, width=8, images=300_000, batch_size=64, eval_every=50,
                   optimizer="adamw", weight_decay=1e-4, warmup_epochs=0.2, policy="objects",
                   lr=2e-3, proj_hidden=512, proj_dim=128),
    "cifar10": dict(),
    "cifar100": dict(),
    "stl10": dict(),      # solo-learn has no STL-10 config; 96 px images get the ImageNet stem
    "imagefolder": dict(epochs=400),  # solo-learn imagenet-100/vicreg.yaml (see Deviations for its blur)
}


def get_args(argv=None):
    parser = common.get_parser("vicreg", __doc__, RECIPES)
    flags = parser.add_argument_group("VICReg (this file's flags)")
    flags.add_argument("--sim-coeff", type=common.nonnegative(float), help="invariance weight")
    flags.add_argument("--std-coeff", type=common.nonnegative(float),
                       help="variance weight (0: the no-variance ablation, total collapse)")
    flags.add_argument("--cov-coeff", type=common.nonnegative(float),
                       help="covariance weight (0: the no-covariance ablation, dimensional collapse)")
    flags.add_argument("--proj-hidden", type=common.positive(int), help="projector hidden width")
    flags.add_argument("--proj-dim", type=common.positive(int), help="projector output size D")
    return common.parse_args(parser, argv)


# ---------------------------------------------------------------------------------------- loss
def off_diagonal(m):
    """The D * (D - 1) off-diagonal entries of a square (D, D) matrix, flattened."""
    d = m.shape[0]
    return m.flatten()[1:].view(d - 1, d + 1)[:, :-1].flatten()                # no mask: no host sync


def vicreg_loss(z1, z2, sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0):
    """VICReg loss of two views' embeddings z1, z2: (N, D), row i of each from image i (the whole
    batch: under torchrun the caller gathers it). Returns (loss, terms) with the unweighted terms
    {"invariance", "variance", "covariance"}."""
    z1, z2 = z1.float(), z2.float()                                        # (N, D) each, float32
    invariance = F.mse_loss(z1, z2)                                        # VICReg eq. 5, here also / D
    variance, covariance = 0.0, 0.0
    for z in (z1, z2):
        n, d = z.shape
        z = z - z.mean(dim=0)                                              # (N, D) centred
        std = torch.sqrt(z.var(dim=0) + 1e-4)                              # (D,) VICReg eq. 2, epsilon 1e-4
        variance = variance + F.relu(1 - std).mean() / 2                   # eq. 1, gamma 1; / 2: official
        cov = z.T @ z / (n - 1)                                            # (D, D) eq. 3
        covariance = covariance + off_diagonal(cov).pow(2).sum() / d       # eq. 4, summed over the 2 views
    loss = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance   # eq. 6
    return loss, {"invariance": invariance, "variance": variance, "covariance": covariance}


@torch.no_grad()
def embedding_std(z1, z2):
    """Mean over dimensions of the per-dimension std of the embeddings z1, z2 (N, D), averaged over
    the 2 views: about 1 when spread, 0 under total collapse."""
    return sum(z.float().std(dim=0).mean() for z in (z1, z2)) / 2


# --------------------------------------------------------------------------------------- model
class Model(nn.Module):
    """VICReg: backbone + expander (Linear-BN-ReLU, Linear-BN-ReLU, Linear without bias)."""
    def __init__(self, args):
        super().__init__()
        self.backbone = common.backbone(args.arch, args.width, args.image_size)
        dim = self.backbone.out_dim
        self.projector = common.projector([dim, args.proj_hidden, args.proj_hidden, args.proj_dim],
                                          batchnorm=True, last_bias=False)

    def forward(self, x):
        h = self.backbone(x)            # (N, F) representation used downstream
        return h, self.projector(h)     # (N, D) embedding used by the loss


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
    probe = common.OnlineProbe(model.backbone.out_dim, data.classes, device)
    optimizer = common.make_optimizer(model, args)
    net = common.ddp(model)  # DistributedDataParallel under torchrun (averages gradients), else model
    state = dict(model=model, optimizer=optimizer, probe=probe)  # what last.pt holds
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
            loss, terms = vicreg_loss(z1, z2, args.sim_coeff, args.std_coeff, args.cov_coeff)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            probe_loss = probe.step(h1, labels)
            meter.add(loss=loss, **terms, embedding_std=embedding_std(z1, z2), probe_loss=probe_loss)
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
    run.finish(model.backbone, data)


if __name__ == "__main__":
    main()
