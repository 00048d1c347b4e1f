r"""SimCLR: A Simple Framework for Contrastive Learning (Chen et al. 2020, arXiv 2002.05709).

Two augmented views of each image go through the backbone f and projector g; each projection must
pick out its partner among the 2N - 1 other projections of the batch (NT-Xent / InfoNCE, paper eq. 1):
    l(i, j) = -log( exp(sim(z_i, z_j) / tau) / sum_{k != i} exp(sim(z_i, z_k) / tau) )
    L = 1/(2N) * sum over all 2N anchors i of l(i, partner(i))        sim = cosine similarity
Each anchor has 1 positive and 2N - 2 negatives in its denominator.

Run:        python simclr.py                                    (shapes, the CPU recipe: about half a minute)
            python simclr.py --dataset cifar100                 (ResNet-18, 1000 epochs, GPU)
            python simclr.py --dataset cifar100 --proj-layers 1 --proj-dim 128 --policy large \
                --temperature 0.5 --lr 4.0 --weight-decay 1e-6 --epochs 500
                                  (the linear projector of the Geometry paper, arXiv 2205.06926, section 2)
            torchrun --standalone --nproc_per_node=4 simclr.py --dataset cifar100  (4 GPUs, same global batch)
Expected:   solo-learn's README reports 65.8% (CIFAR-100) / 90.7% (CIFAR-10) linear accuracy for this
            recipe at 1000 epochs (its table does not say online or offline). This repository's CPU
            recipe: see README Results.
Deviations:
- The loss is the mean over all 2N anchors (paper); google-research's code sums the two halves (2x).
  Computed as a cross-entropy over logits (log-sum-exp), never with raw exp.
- Projector as solo-learn (Linear-ReLU-Linear, no BatchNorm); google-research's has BN on every layer.
- Shared by every method, each written once in common.py where the code is: the stem's padding (ResNet),
  bilinear crops (resized_crop), the 13-tap blur (blur_kernel_size), LARS's trust ratio (LARS) and the
  online probe (OnlineProbe).
- The linear-projector command follows the Geometry paper's section 2 (beta 2, i.e. tau 0.5; LARS lr 4.0,
  weight decay 1e-6; 512 x 128 bias-free projector; CIFAR-100); it gives no batch size (its Figure 3
  uses 128: this keeps 256) nor epoch count (Figure 6's caption speaks of 500). Its InfoNCE (eq. 1) is
  one-directional with the positive left out of the denominator; this file's loss is the symmetric
  NT-Xent (the paper: "in practice, this loss is often symmetrized").
- The CPU recipe (shapes) uses AdamW and the `small` augmentation of "Toward a Geometrical
  Understanding" (Table 2): LARS at these sizes made real-image features worse, and stronger crops of
  16 px images hurt (benchmarks/recipes.py tells how the recipe was chosen).
"""
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import common

RECIPES = {
    # every dataset: solo-learn scripts/pretrain/cifar/simclr.yaml unless noted
    "all": dict(
        epochs=1000,
        batch_size=256,
        lr=0.4,               # LARS, at batch 256
        weight_decay=1e-4,
        optimizer="lars",
        lars_clip=True,       # clip_lr: True
        warmup_epochs=10,     # solo-learn warmup_cosine default
        policy="symmetric",   # solo-learn cifar/augmentations/symmetric.yaml (SimCLR's s = 1 colour jitter)
        temperature=0.2,      # tau
        proj_layers=2,        # Linear-ReLU-Linear (1: one bias-free Linear, as the Geometry paper's)
        proj_hidden=2048,     # proj_hidden_dim
        proj_dim=256,         # proj_output_dim (the Geometry paper's linear projector: 128)
    ),
    # the CPU recipe, about half a minute on 2 cores: chosen by measurement (benchmarks/recipes.py)
    "shapes": dict(image_size=16, width=8, train_subset=4000, epochs=10, batch_size=64, eval_every=10,
                   optimizer="adamw", lr=2e-3, weight_decay=1e-4, warmup_epochs=1, policy="small"),
    # real images on a laptop CPU (--dataset fashion-mnist or mnist; your own folder with --recipe laptop):
    # 28 px, about 300,000 images seen whatever the set's size (--images), chosen by measurement on
    # Fashion-MNIST (benchmarks/recipes.py); the method's values as in its shapes recipe
    "laptop": dict(image_size=28, width=8, images=300_000, batch_size=64, eval_every=50,
                   optimizer="adamw", weight_decay=1e-4, warmup_epochs=0.2, policy="objects",
                   lr=2e-3),
    "cifar10": dict(),
    "cifar100": dict(),
    "stl10": dict(),      # solo-learn has no STL-10 config; 96 px images get the ImageNet stem
    # ImageNet-100: solo-learn imagenet-100/simclr.yaml (global batch 128 at lr 0.15 after its linear
    # scaling, the same lr per image as 0.3 at this recipe's 256)
    "imagefolder": dict(epochs=400, lr=0.3, proj_hidden=4096, proj_dim=512),
}


def get_args(argv=None):
    parser = common.get_parser("simclr", __doc__, RECIPES)
    flags = parser.add_argument_group("SimCLR (this file's flags)")
    flags.add_argument("--temperature", type=common.positive(float), help="tau of the softmax")
    flags.add_argument("--proj-layers", type=int, choices=[1, 2],
                       help="2: Linear-ReLU-Linear (solo-learn); 1: one bias-free matrix (arXiv 2205.06926)")
    flags.add_argument("--projector", choices=["mlp", "linear"], help="old spelling of --proj-layers 2 | 1")
    flags.add_argument("--proj-hidden", type=common.positive(int), help="projector hidden width")
    flags.add_argument("--proj-dim", type=common.positive(int), help="projector output size D")
    return old_spellings(common.parse_args(parser, argv))


def old_spellings(args):
    """The old --projector mlp|linear as --proj-layers 2|1, for old scripts and saved runs (metrics.py)."""
    if getattr(args, "projector", None):
        args.proj_layers = {"mlp": 2, "linear": 1}[args.projector]
    vars(args).pop("projector", None)
    return args


# ---------------------------------------------------------------------------------------- loss
def nt_xent_loss(z1, z2, temperature=0.2):
    """NT-Xent over the 2N projections of two views; z1, z2: (N, D), row i of each from image i.
    Returns (loss, terms): the mean over all 2N anchors of -log softmax(sim / tau)[partner], the softmax
    running over the 2N - 1 other projections (1 positive, 2N - 2 negatives); terms is empty (one term)."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)                         # (2N, D), unit rows
    logits = z @ z.T / temperature                                              # (2N, 2N) cosine / tau
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))                       # not its own negative
    partner = torch.arange(n, 3 * n, device=z.device) % (2 * n)                 # (2N,) n..2N-1, 0..n-1
    return F.cross_entropy(logits, partner), {}                                 # log-sum-exp, mean over 2N


# --------------------------------------------------------------------------------------- model
class Model(nn.Module):
    """SimCLR: backbone + projector."""
    def __init__(self, args):
        super().__init__()
        self.backbone = common.backbone(args.arch, args.width, args.image_size)
        dim = self.backbone.out_dim
        if args.proj_layers == 2:
            self.projector = common.projector([dim, args.proj_hidden, args.proj_dim], batchnorm=False)
        else:  # a linear projector, whose rank arXiv 2205.06926 tracks (section 3, Figure 1)
            self.projector = nn.Linear(dim, args.proj_dim, bias=False)

    def forward(self, x):
        h = self.backbone(x)            # (N, F) representation used downstream
        return h, self.projector(h)     # (N, D) projection used by the loss


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
            loss, terms = nt_xent_loss(z1, z2, args.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            probe_loss = probe.step(h1, labels)
            meter.add(loss=loss, **terms, probe_loss=probe_loss)
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
