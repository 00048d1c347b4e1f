"""Barlow Twins: Self-Supervised Learning via Redundancy Reduction (Zbontar et al. 2021, arXiv 2103.03230).

Two augmented views of each image go through the backbone f and the projector g; each view's
embeddings are standardised per dimension over the batch, and the cross-correlation matrix of the two
views is pushed towards the identity (Barlow Twins paper eq. 1-2; "Preventing Collapses in
Non-Contrastive Self-Supervised Learning" eq. 1):
    z1n, z2n   = (z - mean_n(z)) / sqrt(Var_n(z) + 1e-5)          per dimension, batch statistics
    C          = z1n^T z2n / N                                     (D, D) cross-correlation
    on_diagonal  = sum_i (1 - C_ii)^2                              invariance
    off_diagonal = sum_{i != j} C_ij^2                             redundancy reduction
    L = scale_loss * (on_diagonal + 0.0051 * off_diagonal)
No negatives, momentum encoder or predictor: the standardisation and the off-diagonal term prevent
collapse. Every epoch logs embedding_std, the mean over dimensions of the per-dimension standard
deviation of the projector output on the training batches (the loss itself is blind to the scale of
z, so here it only shows that z did not collapse to a constant).

Run:        python barlow.py --dataset cifar100                 (ResNet-18, 1000 epochs, GPU)
            python barlow.py                                    (shapes, CPU recipe, about half a minute)
            torchrun --standalone --nproc_per_node=4 barlow.py --dataset cifar100  (4 GPUs, same global batch)
Expected:   solo-learn's README reports 70.90% (CIFAR-100) / 92.10% (CIFAR-10) top-1 for its
            cifar/barlow.yaml at 1000 epochs (one README version labels the column online). This
            repository's CPU recipe: see README Results.
Deviations:
- lambda 0.0051 and no global scale (scale_loss 1) are the official defaults (facebookresearch/
  barlowtwins). The CIFAR recipe uses solo-learn's scale_loss 0.1 (cifar/barlow.yaml),
  because its lr, weight decay and LARS settings were tuned with it: LARS's trust ratio cancels most
  of a global scale for weights, but not its balance against weight decay, nor the plain-SGD steps
  of biases and BatchNorm. --scale-loss 1 gives the official loss.
- Standardisation uses the biased batch variance plus 1e-5 (official: BatchNorm1d(affine=False) in
  training mode), over the gathered global batch (official: SyncBatchNorm and an all-reduce of C).
- Augmentation: the "asymmetric" policy (thesis Table B.1), which keeps the Gaussian blur that
  solo-learn's cifar/augmentations/asymmetric.yaml drops (view 1 blur 1.0, view 2 blur 0.1).
- Projector Linear-BN-ReLU-Linear-BN-ReLU-Linear, no biases (official); solo-learn gives every Linear
  a bias (cancelled by BatchNorm and by the standardisation).
- Shared by every method, each written once in common.py where the code is: the stem's padding (ResNet),
  bilinear crops (resized_crop), the 13-tap blur (blur_kernel_size), LARS's trust ratio (LARS) and the
  online probe (OnlineProbe).
- The CPU recipe (shapes) uses AdamW (LARS at these sizes made real-image features worse) and the
  `small` augmentation (crop 0.9-1, weak jitter): stronger ones lowered kNN accuracy (benchmarks/recipes.py).
  The laptop recipe (real images) uses lambda 0.02 with a 512-d projector: the paper's 0.0051 is set for
  8192 dimensions; with the 128-d projector it gave 1.3 points less on Fashion-MNIST (0.05 collapsed).
"""
import time

import torch
import torch.nn as nn

import common

RECIPES = {
    # every dataset: solo-learn scripts/pretrain/cifar/barlow.yaml unless noted
    "all": dict(
        epochs=1000,
        batch_size=256,
        lr=0.3,               # LARS, at batch 256
        weight_decay=1e-4,
        optimizer="lars",
        lars_clip=True,       # clip_lr: True (eta 0.02 is common.LARS's default)
        warmup_epochs=10,     # solo-learn warmup_cosine default
        policy="asymmetric",  # augmentations: asymmetric.yaml (ours keeps the blur: see Deviations)
        proj_hidden=2048,     # proj_hidden_dim
        proj_dim=2048,        # proj_output_dim
        lambd=0.0051,         # solo-learn's default lamb (barlow_twins.py), the official value
        scale_loss=0.1,       # scale_loss (official: 1; see Deviations)
    ),
    # the CPU recipe, about half a minute on 2 cores: chosen by measurement (benchmarks/recipes.py)
    "shapes": dict(image_size=16, width=8, train_subset=4000, epochs=10, batch_size=64, eval_every=10,
                   optimizer="adamw", lr=2e-3, weight_decay=1e-4, warmup_epochs=1, policy="small",
                   proj_hidden=512, proj_dim=128),
    # real images on a laptop CPU (--dataset fashion-mnist or mnist; your own folder with --recipe laptop):
    # 28 px, about 300,000 images seen whatever the set's size (--images), chosen by measurement on
    # Fashion-MNIST (benchmarks/recipes.py); a 512-d projector with lambda 0.02 (the shapes recipe's 128-d
    # and the paper's 0.0051, tuned for 8192-d, gave 1.3 points less; lambda 0.05 collapsed)
    "laptop": dict(image_size=28, width=8, images=300_000, batch_size=64, eval_every=50,
                   optimizer="adamw", weight_decay=1e-4, warmup_epochs=0.2, policy="objects",
                   lr=2e-3, proj_hidden=512, proj_dim=512, lambd=0.02),
    "cifar10": dict(),
    "cifar100": dict(),
    "stl10": dict(),      # solo-learn has no STL-10 config; 96 px images get the ImageNet stem
    "imagefolder": dict(epochs=400),  # solo-learn imagenet-100/barlow.yaml
}


def get_args(argv=None):
    parser = common.get_parser("barlow", __doc__, RECIPES)
    flags = parser.add_argument_group("Barlow Twins (this file's flags)")
    flags.add_argument("--lambd", "--lambda", dest="lambd", metavar="LAMBDA", type=common.nonnegative(float),
                       help="off-diagonal weight lambda (--lambd: the official code's spelling)")
    flags.add_argument("--scale-loss", type=common.positive(float),
                       help="global loss scale (official: 1; solo-learn's CIFAR recipe: 0.1)")
    flags.add_argument("--proj-hidden", type=common.positive(int), help="projector hidden width")
    flags.add_argument("--proj-dim", type=common.positive(int), help="projector output size D")
    return common.parse_args(parser, argv)


# ---------------------------------------------------------------------------------------- loss
def off_diagonal(m):
    """The D * (D - 1) off-diagonal entries of a square (D, D) matrix, flattened."""
    d = m.shape[0]
    return m.flatten()[1:].view(d - 1, d + 1)[:, :-1].flatten()                # no mask: no host sync


def batchnorm_standardize(z):
    """Per-dimension standardisation with batch statistics, as BatchNorm1d(affine=False) in training:
    (z - mean) / sqrt(biased variance + 1e-5). z: (N, D)."""
    return (z - z.mean(dim=0)) / torch.sqrt(z.var(dim=0, unbiased=False) + 1e-5)


def barlow_twins_loss(z1, z2, lambd=0.0051):
    """Barlow Twins loss of two views' embeddings z1, z2: (N, D), row i of each from image i (the whole
    batch: under torchrun the caller gathers it). Returns (loss, terms) with the unweighted terms
    {"on_diagonal", "off_diagonal"}."""
    z1, z2 = z1.float(), z2.float()                                        # (N, D) each, float32
    c = batchnorm_standardize(z1).T @ batchnorm_standardize(z2) / z1.shape[0]  # (D, D) paper eq. 2
    on_diagonal = (1 - torch.diagonal(c)).pow(2).sum()                     # invariance, eq. 1
    off_diag = off_diagonal(c).pow(2).sum()                                # redundancy reduction, eq. 1
    loss = on_diagonal + lambd * off_diag                                  # eq. 1
    return loss, {"on_diagonal": on_diagonal, "off_diagonal": off_diag}


@torch.no_grad()
def embedding_std(z1, z2):
    """Mean over dimensions of the per-dimension std of the embeddings z1, z2 (N, D), averaged over
    the 2 views: about 1 when spread, 0 under total collapse."""
    return sum(z.float().std(dim=0).mean() for z in (z1, z2)) / 2


# --------------------------------------------------------------------------------------- model
class Model(nn.Module):
    """Barlow Twins: backbone + projector (Linear-BN-ReLU, Linear-BN-ReLU, Linear without bias)."""
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
            loss, terms = barlow_twins_loss(z1, z2, args.lambd)
            loss = args.scale_loss * loss
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
