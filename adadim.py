"""AdaDim: Dimensionality Adaptation for SSL Representational Dynamics (anonymous ICLR submission under
review, no arXiv id; no official code).

VICReg (feature decorrelation) dominates while the embedding space is low-dimensional, InfoNCE
(sample uniformity) takes over as its effective rank grows, and a small term keeps the mutual
information between the backbone's representation R and the projector's embedding Z up (eq. 5):
    L = (1 - beta) * [(1 - alpha) * L_VICReg + alpha * L_NCE] - beta * L_mut
    alpha = ER(Z) / min(b, F)              mean over 10 random training batches, every 20 epochs;
                                           0 in the first 20 epochs, before it is first measured
    beta  = gamma * alpha                  gamma = 1e-4
    L_VICReg = 25 * invariance + 25 * variance + 1 * covariance      (VICReg's official conventions)
    L_NCE    = InfoNCE of SimCLR on L2-normalised embeddings, temperature 0.1, mean over 2N anchors
    L_mut    = (I(R'; Z) + I(R; Z')) / 2   order-2 Renyi matrix mutual information of opposite views:
               K = Gram of the L2-normalised rows / n (trace 1), H_2(K) = -log tr(K^2),
               I(A; B) = H_2(A) + H_2(B) - H_2(A * B / tr(A * B))   (* = Hadamard product)

Run:        python adadim.py                                     (CPU recipe on shapes, minutes on 2 cores)
            python adadim.py --dataset cifar100                  (ResNet-18, 1000 epochs, GPU)
            python adadim.py --dataset cifar100 --momentum 0.996 (with the momentum encoder, A.3)
            python adadim.py --alpha-mode fixed --alpha 0.5 --gamma 0    (Table 2 / Table 16 rows)
            torchrun --standalone --nproc_per_node=4 adadim.py --dataset cifar100  (4 GPUs, same global batch)
Expected:   paper Table 4 (ResNet-18, 1000 epochs, batch 256): 92.81% CIFAR-10 / 71.20% CIFAR-100 for
            this baseline setting (online linear, A.4.1), 93.61% / 74.31% with a momentum encoder in the
            expanded setting (offline linear, A.4.2). Ours, and alpha's trajectory: README Results.
Deviations:
- Loss weights as equation 5 and the text (VICReg early, InfoNCE late, Figure 5c); the appendix A.3
  pseudocode swaps alpha and 1 - alpha and tests `alpha_epoch % current_epoch`: both slips.
- Alpha follows section 4's text: ER(Z) of one view's embeddings over min(b, F), 0 until it is first
  measured at the end of the first window (alpha "will gradually transition from 0 to 1"); the
  pseudocode's ER(cat(z1, z2)) / min(2b, F) from epoch 0, on the random network, starts a run mostly
  InfoNCE (alpha about 0.7). Measured at the start of epochs e, 2e, ... (e = --alpha-every), in float32
  even where training runs in bf16 (whose rounding raises the effective rank of a collapsed Z).
- H_2 is the order-2 Renyi entropy of appendix A.6 (-log tr K^2); section 4 prints a factor 1/2.
  Gram matrices are divided by their trace (= n for unit rows), so the Hadamard one is trace 1 too.
- Momentum encoder (A.3): EMA of backbone + projector, momentum 0.996 rising to 1 on a cosine (BYOL),
  in train mode without gradient. As the pseudocode: VICReg and InfoNCE averaged over (z1, z2m) and
  (z1m, z2), L_mut over four pairs / 4 (the momentum pairs carry no gradient); alpha from the online z1.
- Table 7's expanded setting (SGD, ReSSL augmentation, 512-d output + BatchNorm, Table 8) is no recipe.
- VICReg as official code (variance term halved, invariance MSE over N * D entries); InfoNCE as
  simclr.py (mean over 2N anchors, log-sum-exp). LARS with clip_lr (--lars-clip), as solo-learn's VICReg.
- --alpha-mode linear/cosine rise from 0 to 1 per epoch (Table 2 does not give their form);
  --beta-mode fixed uses beta = gamma throughout (Table 2's "beta = 1" rows).
- The paper's online numbers (A.4.1) come from solo-learn's probe, not this one: compare them loosely.
- Table 9 rows: stl10 400 epochs, gamma 1e-2, ResNet-50; imagefolder (ImageNet100) 400 epochs, gamma
  -0.1, ResNet-18, batch 256 (Table 4's caption: 128).
- Shared by every method, each written once in common.py where the code is: the stem's padding (ResNet),
  bilinear crops (resized_crop), the 13-tap blur (blur_kernel_size), LARS's trust ratio (LARS) and the
  online probe (OnlineProbe).
"""
import copy
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import common

RECIPES = {
    # every dataset: the baseline setting, paper Table 7 and appendix A.4.1, unless noted
    "all": dict(
        epochs=1000, batch_size=256,  # Table 9: CIFAR-10/100 with ResNet-18 (ResNet-50 rows: 400 epochs)
        lr=0.4, weight_decay=1e-4, optimizer="lars", warmup_epochs=10,
        lars_clip=True,       # not in the paper; solo-learn cifar/vicreg.yaml (its VICReg baseline, Table 10)
        policy="asymmetric",  # Table 11, "the asymmetric augmentation scheme of (11)"
        temperature=0.1, gamma=1e-4,  # InfoNCE tau; beta = gamma * alpha (Table 7)
        alpha_mode="ada", alpha=0.5, beta_mode="ada",  # eq. 5; alpha 0.5: for --alpha-mode fixed only
        alpha_every=20, alpha_batches=10,              # section 4: every 20 epochs, over 10 batches
        momentum=0.0,         # the baseline setting has no momentum encoder (A.3, Table 8: 0.996)
        proj_hidden=2048,     # "3-layer MLP projector" with output 2048 (section 5); hidden 2048 as
        proj_dim=2048,        # solo-learn cifar/vicreg.yaml, the paper's VICReg comparison (Table 10)
    ),
    # the CPU recipe, a minute or two on 2 cores: chosen by measurement (benchmarks/recipes.py); alpha is
    # measured every epoch (the paper makes 20 measurements in 400 epochs; with 20 here there would be none)
    "shapes": dict(image_size=16, width=8, train_subset=4000, epochs=10, batch_size=64, eval_every=10,
                   optimizer="adamw", lr=5e-3, weight_decay=1e-4, warmup_epochs=1, policy="small",
                   proj_hidden=512, proj_dim=512, alpha_every=1),
    # real images on a laptop CPU (--dataset fashion-mnist or mnist; your own folder with --recipe laptop):
    # 28 px, about 300,000 images seen whatever the set's size (--images), chosen by measurement on
    # Fashion-MNIST (benchmarks/recipes.py); the method's values as in its shapes recipe
    "laptop": dict(image_size=28, width=8, images=300_000, batch_size=64, eval_every=50,
                   optimizer="adamw", weight_decay=1e-4, warmup_epochs=0.2, policy="objects",
                   lr=5e-3, proj_hidden=512, proj_dim=512, alpha_every=1),
    "cifar10": dict(),
    "cifar100": dict(),
    "stl10": dict(epochs=400, gamma=1e-2, arch="resnet50"),   # Table 9, STL10 baseline row
    "imagefolder": dict(epochs=400, gamma=-0.1),              # Table 9, ImageNet100 baseline row (ResNet-18)
}


def get_args(argv=None):
    parser = common.get_parser("adadim", __doc__, RECIPES)
    flags = parser.add_argument_group("AdaDim (this file's flags)")
    flags.add_argument("--temperature", type=common.positive(float), help="InfoNCE tau")
    flags.add_argument("--gamma", type=common.in_range(float, -1, 1), help="beta = gamma alpha; 0: no L_mut")
    flags.add_argument("--alpha-mode", choices=["ada", "fixed", "linear", "cosine"], help="ada: eq. 5")
    flags.add_argument("--alpha", type=common.in_range(float, 0, 1), help="for --alpha-mode fixed")
    flags.add_argument("--beta-mode", choices=["ada", "fixed"], help="fixed: beta = gamma")
    flags.add_argument("--alpha-every", type=common.positive(int), help="epochs between alpha updates")
    flags.add_argument("--alpha-batches", type=common.positive(int), help="batches per alpha update")
    flags.add_argument("--momentum", type=common.in_range(float, 0, 1), help="EMA encoder (A.3); 0: none")
    flags.add_argument("--proj-hidden", type=common.positive(int), help="projector hidden width")
    flags.add_argument("--proj-dim", type=common.positive(int), help="projector output size D")
    return common.parse_args(parser, argv)


# ---------------------------------------------------------------------------------------- loss
# VICReg and InfoNCE: letter for letter the functions of vicreg.py and simclr.py (a test compares the text)
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


def renyi_entropy(gram):
    """Order-2 Renyi matrix entropy (appendix A.6): H_2(K) = -log tr(K^2), K = gram / tr(gram)."""
    k = gram / torch.diagonal(gram).sum()                                       # (n, n), trace 1
    return -torch.log((k * k).sum())                                            # tr(K^2) = ||K||_F^2


def renyi_mutual_information(r, z):
    """I(R; Z) = H_2(A) + H_2(B) - H_2(A * B) (A.6), A, B: Gram matrices of the unit rows of r, z (n, d)."""
    r, z = F.normalize(r.float(), dim=1), F.normalize(z.float(), dim=1)
    a, b = r @ r.T, z @ z.T                                                     # (n, n) each
    return renyi_entropy(a) + renyi_entropy(b) - renyi_entropy(a * b)          # Hadamard product


def effective_rank(z):
    """Roy & Vetterli 2007, of z as it is: exp(entropy of its normalised singular values); 0 for z = 0."""
    s = torch.linalg.svdvals(z.double())
    if s.sum() == 0:
        return s.sum()
    p = s / s.sum()
    return torch.exp(-(p * torch.log(p.clamp_min(1e-300))).sum())             # 0 log 0 = 0


def adadim_loss(z1, z2, r1, r2, alpha, beta, temperature=0.1, momentum=None):
    """Equation 5: (loss, terms). z: projector outputs (N, D), r: backbone outputs (N, F) of views 1 and 2;
    momentum: (z1m, z2m, r1m, r2m) of the momentum encoder, paired as in appendix A.3."""
    if momentum is None:
        vicreg = vicreg_loss(z1, z2)[0]
        nce = nt_xent_loss(z1, z2, temperature)[0]
        mutual = (renyi_mutual_information(r2, z1) + renyi_mutual_information(r1, z2)) / 2
    else:
        z1m, z2m, r1m, r2m = momentum
        vicreg = (vicreg_loss(z1, z2m)[0] + vicreg_loss(z1m, z2)[0]) / 2
        nce = (nt_xent_loss(z1, z2m, temperature)[0] + nt_xent_loss(z1m, z2, temperature)[0]) / 2
        mutual = (renyi_mutual_information(r2, z1) + renyi_mutual_information(r1, z2) +
                  renyi_mutual_information(r2m, z1m) + renyi_mutual_information(r1m, z2m)) / 4
    loss = (1 - beta) * ((1 - alpha) * vicreg + alpha * nce) - beta * mutual
    return loss, dict(vicreg=vicreg, nce=nce, mutual_information=mutual)


# ------------------------------------------------------------------------------ alpha and beta
class AlphaSchedule:
    """alpha, beta and the effective rank alpha came from, measured "after every e_alpha epochs" (section 4;
    see Deviations). Saved in last.pt: a resumed run keeps its window's alpha."""
    def __init__(self, args):
        self.mode, self.beta_mode, self.fixed_alpha = args.alpha_mode, args.beta_mode, args.alpha
        self.every, self.epochs, self.gamma = args.alpha_every, args.epochs, args.gamma
        self.alpha, self.beta, self.effective_rank = 0.0, 0.0, None  # not measured yet

    def start_epoch(self, epoch, measure):  # measure() -> (effective rank, effective rank / min(b, F))
        if epoch > 0 and epoch % self.every == 0:  # measured in every mode, so that it is logged
            self.effective_rank, ratio = measure()
            if self.mode == "ada":
                self.alpha = ratio
        if self.mode != "ada":  # Table 2's alternatives
            t = epoch / max(1, self.epochs - 1)
            curves = {"fixed": self.fixed_alpha, "linear": t, "cosine": (1 - math.cos(math.pi * t)) / 2}
            self.alpha = curves[self.mode]
        self.beta = self.gamma * self.alpha if self.beta_mode == "ada" else self.gamma

    def state_dict(self):
        return {"alpha": self.alpha, "beta": self.beta, "effective_rank": self.effective_rank}

    def load_state_dict(self, state):
        self.alpha, self.beta, self.effective_rank = state["alpha"], state["beta"], state["effective_rank"]


@torch.no_grad()
def measure_alpha(model, images, augment, batch_size, batches, device):
    """Mean ER(Z) of view 1's embeddings Z (b, F) over `batches` random training batches, and of its ratio to
    min(b, F) (b: the global batch). In train mode, as a step; BatchNorm's running statistics put back."""
    saved = {k: v.clone() for k, v in model.named_buffers()}
    ranks = []
    for _ in range(batches):
        idx = common.shard(torch.randperm(len(images), device=images.device)[:batch_size])  # this slice
        x1, _ = augment(images[idx].to(device))  # float32, no autocast: bf16 outputs raise a low rank
        z = common.gather(model(x1)[1].float())                               # (b, F) global batch
        ranks.append(common.on_cpu_without_float64(effective_rank, z).item())  # MPS: float64 on the CPU
    for k, v in model.named_buffers():
        v.copy_(saved[k])
    return sum(ranks) / batches, sum(ranks) / batches / min(z.shape)  # z: (b, F), the same every batch


# --------------------------------------------------------------------------------------- model
class Model(nn.Module):
    """AdaDim: backbone + 3-layer MLP projector (Linear-BN-ReLU x 2, Linear), as VICReg's."""
    def __init__(self, args):
        super().__init__()
        self.backbone = common.backbone(args.arch, args.width, args.image_size)
        dims = [self.backbone.out_dim, args.proj_hidden, args.proj_hidden, args.proj_dim]
        self.projector = common.projector(dims)

    def forward(self, x):
        h = self.backbone(x)            # (N, F) representation R
        return h, self.projector(h)     # (N, D) embedding Z


class MomentumEncoder:
    """EMA copy (A.3, BYOL): m <- tau m + (1 - tau) theta, tau = 1 - (1 - base)(cos(pi k / K) + 1) / 2."""
    def __init__(self, model, base):
        self.model, self.base = copy.deepcopy(model).requires_grad_(False), base

    def tau(self, step, steps):
        return 1 - (1 - self.base) * (math.cos(math.pi * step / steps) + 1) / 2

    @torch.no_grad()
    def update(self, model, step, steps):  # two foreach ops over all parameters, not two small ops for each
        tau, ema = self.tau(step, steps), list(self.model.parameters())
        torch._foreach_mul_(ema, tau)
        torch._foreach_add_(ema, list(model.parameters()), alpha=1 - tau)


# ------------------------------------------------------------------------------------ training
def main(argv=None):
    args = get_args(argv)
    device = common.setup_device(args)        # cuda, mps or cpu; under torchrun also joins the process group
    run = common.Run(args, __file__, device)  # the run folder (on --resume: its last.pt)
    common.seed_everything(args.seed)
    data = common.load_data(args)
    loader = common.Loader(data.train_x, data.train_y, args.batch_size, device, common.training_memory(args))
    augment = common.Augment(args.policy, data, args.image_size)
    model = Model(args)
    momentum = MomentumEncoder(model, args.momentum) if args.momentum > 0 else None  # copied before compile
    model = common.prepare_model(model, args, device)
    if momentum:
        common.prepare_model(momentum.model, args, device)
    schedule = AlphaSchedule(args)
    probe = common.OnlineProbe(model.backbone.out_dim, data.classes, device)
    optimizer = common.make_optimizer(model, args)
    net = common.ddp(model)  # DistributedDataParallel under torchrun (averages gradients), else model
    state = dict(model=model, optimizer=optimizer, probe=probe, alpha=schedule)  # what last.pt holds
    if momentum:
        state["momentum"] = momentum.model
    start = run.start(data, model.backbone, state)  # 0, or the epoch last.pt holds on --resume
    if args.track_every and start == 0:  # the same measures at random initialisation, in the epoch-0 row
        import metrics  # analysis measures, only for --track-every: training never needs metrics.py
        run.log_init(metrics.track(model.backbone, model.projector, data.track_x, data, device, args.policy))
    steps, warmup = args.epochs * len(loader), int(args.warmup_epochs * len(loader))

    for epoch in range(start, args.epochs):
        common.seed_epoch(args.seed, epoch)
        model.train()
        schedule.start_epoch(epoch, lambda: measure_alpha(model, loader.images, augment, args.batch_size,
                                                          args.alpha_batches, device))
        alpha, beta = schedule.alpha, schedule.beta
        constants = {k: torch.tensor(v) for k, v in schedule.state_dict().items() if v is not None}  # logged
        meter, t0 = common.Meter(), time.time()
        bar = run.progress(loader, epoch)
        for i, (images, labels) in enumerate(bar):
            step = epoch * len(loader) + i
            lr = common.set_lr(optimizer, common.lr_at(step, steps, warmup, args.lr,
                                                       args.warmup_lr, args.min_lr))
            x1, x2 = augment(images)                                            # 2 x (N, 3, S, S)
            with common.autocast(device):
                h1, z1 = net(x1)
                h2, z2 = net(x2)
            z1, z2 = common.gather(z1.float()), common.gather(z2.float())       # global batch (N, D) each
            r1, r2 = common.gather(h1.float()), common.gather(h2.float())       # global batch (N, F) each
            pairs = None
            if momentum:
                with torch.no_grad(), common.autocast(device):
                    (h1m, z1m), (h2m, z2m) = momentum.model(x1), momentum.model(x2)
                pairs = tuple(common.gather(t.float()) for t in (z1m, z2m, h1m, h2m))  # global batch
            loss, terms = adadim_loss(z1, z2, r1, r2, alpha, beta, args.temperature, pairs)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if momentum:
                momentum.update(model, step, steps)
            probe_loss = probe.step(h1, labels)
            meter.add(loss=loss, **terms, probe_loss=probe_loss, **constants)
            if i % 20 == 0:
                bar.set_postfix(alpha=f"{alpha:.3f}",
                                img_s=f"{(i + 1) * len(images) / (time.time() - t0):.0f}")
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
