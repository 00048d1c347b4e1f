"""SSLPM: Self-Supervised Learning with Predictability Minimization ("Beyond Pairwise Correlations:
Higher-Order Redundancies in Self-Supervised Representation Learning", section 3.4, appendices B, C, E;
an anonymous submission under review, no arXiv id).

Barlow Twins' invariance term plus a predictor that tries to guess masked embedding entries from the
visible ones; the encoder makes that guess as hard as possible (predictability minimisation,
Schmidhuber et al. 1996). Each view's projections are standardised per dimension over the batch and
stacked: e = [Z_A; Z_B], shape (2N, D). A Bernoulli mask M (1 = hidden, --mask-fraction 0.5) hides
entries; the predictor sees X = (1 - M) * e and is scored on the hidden entries only:
    L_pred = 1/|M| sum_ij M_ij (R(X)_ij - e_ij)^2                      (eq. 11, second term)
    C = Z_A^T Z_B / N          L_invariance = sum_i (1 - C_ii)^2        (eq. 11, first term)
SSLPM-RR (--predictor ridge, the paper's best): R(X) = X W with the ridge closed form (eq. 13)
    W = (X^T X + mu I)^-1 X^T e  (--target full, eq. 15)  or  (...)^-1 X^T (M * e)  (--target masked, eq. 17)
    L = L_invariance - lambda * D * L_pred                   (official code's scaling of eq. 11)
SSLPM-SGD (--predictor mlp, section 3.4.1, appendix E): an MLP R_theta trained in an inner loop
(AdamW, a fresh mask per step, early stop on a validation mask M_V), then
    L = L_invariance - lambda * log(min(L_pred(M_V), 1))
The predictor wins by predicting well; the encoder wins by leaving nothing predictable, so its loss
subtracts L_pred. W is NOT detached: the encoder gets gradient through the closed form, as officially.

Run:        python sslpm.py                              (CPU recipe on shapes: about 30 s on 2 cores)
            python sslpm.py --dataset cifar100           (paper recipe: ResNet-18, 1000 epochs, GPU)
            python sslpm.py --predictor mlp --predictor-layers 1     (SSLPM-SGD 1l)
            torchrun --standalone --nproc_per_node=4 sslpm.py --dataset cifar100  (4 GPUs, same global batch)
Expected:   paper Table 1 (online probe, 1000 epochs): SSLPM-RR 92.70 (CIFAR-10) / 70.46 (CIFAR-100);
            SSLPM-SGD 1l 90.39 / 67.74, 3l 86.69 / 47.65; --lambda 0: 77.71 / 34.05 (Table 2). Ours: README.
Deviations:
- Loss scaling as the official code (cl_lin_pred_min.py): C divides by N with unbiased-std standardisation
  (so C_ii <= (N-1)/N), and L_pred is multiplied by D (--proj-dim) as well as lambda: lambda_paper = lambda D.
- Standardisation over the global batch (common.gather); official: per GPU, C all-reduced (same on 1 GPU).
- The mask is Bernoulli(--mask-fraction) per entry; official: rand < int(D * f) / D (the same for D = 128).
- The ridge system is solved by Cholesky in float64 (float32 on MPS), not an explicit inverse (official:
  torch.linalg.solve, float32). At --ridge 0 a singular system (more dimensions than the 2N rows, or one
  hidden in every row) stops with a one-line error naming --ridge (appendix C.3: a small batch needs mu > 0).
- --target full is the default (official HEAD: mask_regression_target False); --target masked is appendix
  B's W_0. At --ridge 0 both give the same loss: X^T e = X^T X + X^T (M * e), so X W_full = X + X W_0, and
  X is 0 on the hidden entries the loss scores. Table 3's "no difference" is this algebra; mu > 0 differs.
- SSLPM-SGD follows official cl_non_lin_pred_minv6.py where the paper is silent: a predictor that persists
  across steps (weights, AdamW state and lr in last.pt: --resume is exact), input [X, M], hidden width 128,
  patience 1, and an lr adapted after each inner loop (x1.005 after more than 25 steps, else /1.005, within
  [1e-5, 0.1]; appendix E: a fixed 25-batch warm-up). Unlike official: no BatchNorm in it (the paper lists
  ReLU only), unbiased std (official: BatchNorm1d, biased), the encoder term on M_V only (paper 3.4.1;
  official: 10 masks, M_V first). Batch 512 on the paper recipes (appendix E: "to increase numerical
  stability"; official v6 configs), 256 for ridge; a given --batch-size wins.
- lambda per variant (LAMBDA): official 0.15 (ridge), 64 (mlp, 1 layer), 0.5 (mlp, 3 layers); on shapes ridge
  uses 1.0: at 0.15 L_pred fell towards 0 (no learning), at 1.0 it stays near Table 3's 0.65 (measured).
- CIFAR augmentation: the shared `asymmetric` policy (official cifar/asymmetric.yaml has no blur).
- --proj-layers 0 (official proj_size, varied in Figures 6 and 15) feeds the backbone features to the loss.
- The paper's online numbers (Table 1) come from solo-learn's probe, not this one: compare loosely.
- imagefolder is the official ImageNet-100 config (400 epochs, lambda 0.125); the rest as CIFAR.
- bf16 autocast on CUDA (official CIFAR configs: fp32); losses in float32/float64.
- Shared by every method, each written once in common.py where the code is: the stem's padding (ResNet),
  bilinear crops (resized_crop), the 13-tap blur (blur_kernel_size), LARS's trust ratio (LARS) and the
  online probe (OnlineProbe).
"""
import time

import torch
import torch.nn as nn

import common

RECIPES = {
    # every dataset: official scripts/pretrain/cifar/cl_lin_pred_min.yaml unless noted
    "all": dict(
        epochs=1000,
        batch_size=256,
        lr=0.3,               # LARS; the fork undoes solo-learn's batch scaling (main_pretrain.py)
        weight_decay=1e-4,
        optimizer="lars",
        lars_clip=True,       # clip_lr: True, eta 0.02 (common.LARS default)
        warmup_epochs=10,     # solo-learn warmup_cosine default
        warmup_lr=3e-5,       # solo-learn scheduler.warmup_start_lr default
        policy="asymmetric",  # augmentations: asymmetric.yaml
        proj_layers=3, proj_hidden=2048, proj_dim=128,  # proj_size 3: Linear-BN-ReLU-Linear-BN-ReLU-Linear
        predictor="ridge",    # SSLPM-RR, the paper's best (Table 1)
        ridge=0.0,            # ridge_lambd: 0 (2N = 512 rows >= D = 128)
        target="full",        # mask_regression_target: False (official HEAD); appendix B's W_0: masked
        mask_fraction=0.5,    # mask_fraction: 0.5
        predictor_layers=1,   # SSLPM-SGD 1l (cl_non_lin_pred_minv6_1layer.yaml)
        predictor_steps=500,  # most inner steps per encoder step (appendix E)
    ),
    # the CPU recipe, about half a minute on 2 cores: chosen by measurement (benchmarks/recipes.py)
    "shapes": dict(image_size=16, width=8, train_subset=4000, epochs=10, batch_size=64, eval_every=10,
                   optimizer="adamw", lr=5e-3, weight_decay=1e-4, warmup_epochs=1, policy="small",
                   proj_hidden=256, proj_dim=32, ridge=8.0, predictor_steps=50),  # mlp: for CPU time
    # real images on a laptop CPU (--dataset fashion-mnist or mnist; your own folder with --recipe laptop):
    # 28 px, about 300,000 images seen whatever the set's size (--images), chosen by measurement on
    # Fashion-MNIST (benchmarks/recipes.py); the method's values as in its shapes recipe
    "laptop": dict(image_size=28, width=8, images=300_000, batch_size=64, eval_every=50,
                   optimizer="adamw", weight_decay=1e-4, warmup_epochs=0.2, policy="objects",
                   lr=5e-3, proj_hidden=256, proj_dim=32, ridge=8.0, predictor_steps=50),
    "cifar10": dict(),
    "cifar100": dict(),
    "stl10": dict(),      # the paper has no STL-10 run; 96 px images get the ImageNet stem
    "imagefolder": dict(epochs=400),  # official imagenet-100/cl_lin_pred_min.yaml (its lambda: LAMBDA below)
}
# --lambda when not given, per variant (it weighs D L_pred for ridge, log L_pred for mlp): official lamb 0.15
# (cl_lin_pred_min.yaml), pred_lamb 64 / 0.5 (cl_non_lin_pred_minv6_1layer / _minv6.yaml); shapes: measured
LAMBDA = {"paper": {"ridge": 0.15, "mlp1": 64.0, "mlp3": 0.5},
          "imagefolder": {"ridge": 0.125, "mlp1": 64.0, "mlp3": 0.5},   # imagenet-100/cl_lin_pred_min.yaml
          "shapes": {"ridge": 1.0, "mlp1": 64.0, "mlp3": 0.5}}


def get_args(argv=None):
    parser = common.get_parser("sslpm", __doc__, RECIPES)
    flags = parser.add_argument_group("SSLPM (this file's flags)")
    flags.add_argument("--lambd", "--lambda", dest="lambd", metavar="LAMBDA", type=common.nonnegative(float),
                       help="weight of the prediction term; 0 = Table 2 ablation (default: per recipe and "
                            f"variant, LAMBDA: {LAMBDA})")
    flags.add_argument("--predictor", choices=["ridge", "mlp"],
                       help="ridge: SSLPM-RR closed form (section 3.4.2); mlp: SSLPM-SGD (section 3.4.1)")
    flags.add_argument("--ridge", type=common.nonnegative(float), help="ridge penalty mu (eq. 12)")
    flags.add_argument("--target", choices=["full", "masked"], help="ridge target e (eq. 15), M * e (17)")
    flags.add_argument("--mask-fraction", type=common.checked(float, lambda v: 0 < v < 1, "in (0, 1)"),
                       help="probability that an entry is hidden (paper: 1/2)")
    flags.add_argument("--predictor-layers", type=int, choices=[1, 3],
                       help="mlp: 1 = one linear layer (SSLPM-SGD 1l), 3 = two hidden layers of 128 (3l)")
    flags.add_argument("--predictor-steps", type=common.positive(int), help="mlp: most inner steps (app. E)")
    flags.add_argument("--proj-layers", type=int, choices=[0, 1, 2, 3], help="projector Linear layers: "
                       "0 = none (the loss sees backbone features), 2-3 = Linear-BN-ReLU blocks + Linear")
    flags.add_argument("--proj-hidden", type=common.positive(int), help="projector hidden width")
    flags.add_argument("--proj-dim", type=common.positive(int), help="projector output size D")
    args = common.parse_args(parser, argv)
    if args.lambd is None:
        variant = "ridge" if args.predictor == "ridge" else f"mlp{args.predictor_layers}"
        args.lambd = LAMBDA.get(args.recipe, LAMBDA["paper"])[variant]
    if (args.predictor == "mlp" and not args.resume and args.recipe != "shapes"
            and "batch_size" not in parser.given and args.batch_size != 512):
        args.batch_size = 512  # appendix E, official v6 configs: "to increase numerical stability"
        common.print0("sslpm.py: --predictor mlp trains at --batch-size 512 (SSLPM paper appendix E)")
    dim = args.proj_dim if args.proj_layers else 8 * args.width * (4 if args.arch == "resnet50" else 1)
    if args.predictor == "ridge" and args.ridge == 0 and dim > 2 * args.batch_size:
        parser.error(f"argument --ridge: 0 needs at least D = {dim} rows, but the regression has 2 x "
                     f"--batch-size = {2 * args.batch_size}; use --ridge > 0 (paper appendix C.3)")
    return args


# ---------------------------------------------------------------------------------------- loss
def standardize(z):
    """Each dimension to mean 0, unbiased std 1 over the batch; z: (N, D)."""
    return (z - z.mean(0)) / z.std(0)


def invariance_loss(z1, z2):
    """sum_i (1 - C_ii)^2, C = Z_A^T Z_B / N of the standardised views (eq. 11, official scaling)."""
    a, b = standardize(z1.float()), standardize(z2.float())                    # (N, D) each
    c_diag = (a * b).sum(0) / a.shape[0]                                        # (D,) diagonal of C
    return ((1 - c_diag) ** 2).sum()


def random_mask(n, d, fraction, device):
    """M: (n, d) bool, True = hidden from the predictor (Bernoulli(fraction) per entry)."""
    return torch.rand(n, d, device=device) < fraction


def ridge_weights(x, y, ridge):
    """W = (X^T X + mu I)^-1 X^T Y (eq. 13) by Cholesky; x, y (R, D). ValueError if mu = 0, X^T X singular."""
    gram = x.T @ x + ridge * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)  # (D, D)
    chol, info = torch.linalg.cholesky_ex(gram)
    if ridge == 0 and info.item() != 0:  # mu > 0 makes gram positive definite: no check (no sync) needed
        raise ValueError(f"the ridge system X^T X ({x.shape[1]} x {x.shape[1]}, from {x.shape[0]} rows) is "
                         "singular; use a ridge penalty > 0 (paper appendix C.3)")
    return torch.cholesky_solve(x.T @ y, chol)                                  # (D, D)


def ridge_predictability_loss(e, mask, ridge, target="full", precise=torch.float64):
    """L_pred of SSLPM-RR: the ridge prediction's MSE over the hidden entries; gradient flows through W.
    e: (2N, D) standardised embeddings; mask: (2N, D) bool, True = hidden; solved in `precise`."""
    dtype, e = e.dtype, e.to(precise)
    x = e.masked_fill(mask, 0.0)                                                # (2N, D) X = (1 - M) * e
    y = e if target == "full" else e.masked_fill(~mask, 0.0)                    # eq. 15 or eq. 17 target
    w = ridge_weights(x, y, ridge)                                              # (D, D)
    return (((x @ w - e) ** 2 * mask).sum() / mask.sum()).to(dtype)            # 1/|M| sum M (XW - e)^2


def sslpm_loss(z1, z2, mask, lambd=0.15, ridge=0.0, target="full", precise=torch.float64):
    """SSLPM-RR: (invariance - lambd * D * prediction, unweighted terms). z1, z2: (N, D) projections of the
    two views; mask: (2N, D) bool; precise: the dtype of the ridge solve (float64; float32 on MPS)."""
    e = torch.cat([standardize(z1.float()), standardize(z2.float())])            # (2N, D)
    invariance = invariance_loss(z1, z2)
    prediction = ridge_predictability_loss(e, mask, ridge, target, precise)
    return invariance - lambd * e.shape[1] * prediction, dict(invariance=invariance, prediction=prediction)


def sslpm_sgd_loss(z1, z2, val_mask, predictor, lambd):
    """SSLPM-SGD (section 3.4.1, appendix E): fits the MLPPredictor on the detached embeddings, then
    (invariance - lambd * log(min(L_pred(M_V), 1)), terms). z1, z2: (N, D); val_mask M_V: (2N, D) bool."""
    e = torch.cat([standardize(z1.float()), standardize(z2.float())])            # (2N, D)
    steps = torch.tensor(float(predictor.fit(e, val_mask)))
    invariance, prediction = invariance_loss(z1, z2), predictor.encoder_error(e, val_mask)
    loss = invariance - lambd * torch.log(prediction.clamp(max=1.0))            # appendix E
    return loss, dict(invariance=invariance, prediction=prediction, predictor_steps=steps)


class MLPPredictor:
    """SSLPM-SGD's predictor R_theta (section 3.4.1): an MLP on [X, M] (2D inputs) -> D with its own AdamW
    (lr 1e-3, weight decay 1e-6; appendix E), persisting across encoder steps (in last.pt via state_dict)."""
    PATIENCE, STEPS_TARGET, LR_FACTOR, LR_RANGE = 1, 25, 1.005, (1e-5, 0.1)  # official v6 config

    def __init__(self, dim, layers, device, max_steps=500, mask_fraction=0.5, hidden=128):
        self.net = common.projector([2 * dim] + [hidden] * (layers - 1) + [dim], batchnorm=False).to(device)
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=1e-3, weight_decay=1e-6)
        self.max_steps, self.mask_fraction = max_steps, mask_fraction

    def error(self, e, mask):
        """Masked MSE of R_theta([(1 - M) * e, M]) against e, over hidden entries (eq. 9 / |M|)."""
        prediction = self.net(torch.cat([e.masked_fill(mask, 0.0), mask.float()], 1))  # (2N, D)
        return ((prediction - e) ** 2 * mask).sum() / mask.sum()  # a product, not mask indexing: no host sync

    def fit(self, e, val_mask):
        """Inner loop on e.detach(): a fresh mask per step, early stop on val_mask. Returns the steps."""
        e = e.detach()
        with torch.no_grad():
            best = self.error(e, val_mask).item()
        steps = bad = 0
        while steps < self.max_steps and bad <= self.PATIENCE:
            steps += 1
            loss = self.error(e, random_mask(*e.shape, self.mask_fraction, e.device))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            with torch.no_grad():
                val = self.error(e, val_mask).item()
            bad, best = (bad + 1, best) if val > best else (0, val)
        self.optimizer.zero_grad(set_to_none=True)  # nothing of the inner loop is left behind
        for group in self.optimizer.param_groups:  # official lr controller: aim at ~25 steps per loop
            lr = group["lr"] * (self.LR_FACTOR if steps > self.STEPS_TARGET else 1 / self.LR_FACTOR)
            group["lr"] = min(max(lr, self.LR_RANGE[0]), self.LR_RANGE[1])
        return steps

    def encoder_error(self, e, val_mask):
        """L_pred(M_V) with gradient to e only: the encoder's optimizer never moves the predictor."""
        self.net.requires_grad_(False)
        try:
            return self.error(e.float(), val_mask)
        finally:
            self.net.requires_grad_(True)

    def state_dict(self):
        return {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state):
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])


# --------------------------------------------------------------------------------------- model
class Model(nn.Module):
    """SSLPM: backbone + projector of --proj-layers Linear layers (official proj_size; 0: none)."""
    def __init__(self, args):
        super().__init__()
        self.backbone = common.backbone(args.arch, args.width, args.image_size)
        dims = [self.backbone.out_dim] + [args.proj_hidden] * (args.proj_layers - 1) + [args.proj_dim]
        self.projector = common.projector(dims, batchnorm=True) if args.proj_layers else nn.Identity()
        self.dim = dims[-1] if args.proj_layers else self.backbone.out_dim   # D

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
    if args.predictor == "mlp":
        state["predictor"] = predictor = MLPPredictor(model.dim, args.predictor_layers, device,
                                                         args.predictor_steps, args.mask_fraction)
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
            mask = random_mask(2 * len(z1), z1.shape[1], args.mask_fraction, device)  # (2N, D)
            if args.predictor == "ridge":
                try:
                    loss, terms = sslpm_loss(z1, z2, mask, args.lambd, args.ridge, args.target,
                                             common.precise_dtype(device))
                except ValueError as e:
                    common.fail(f"--ridge {args.ridge}: {e}")
            else:  # mask is the validation mask M_V of section 3.4.1
                loss, terms = sslpm_sgd_loss(z1, z2, mask, predictor, args.lambd)
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
