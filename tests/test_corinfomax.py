"""CorInfoMax: the running estimates against eqs. 4.3-4.6 written as loops, the gradients against closed
forms, LDMI against Gaussian closed forms; the script end to end, resumed exactly (loss state included),
learning, and the projector spectrum of Figure 5.3 against SimCLR's."""
import argparse
import json
import math
import os

import pytest
import torch
from conftest import TINY, assert_resume_is_exact, read_log, run_script

import corinfomax
import simclr


# ------------------------------------------------------------------------- the running estimates
def running_estimates_loop(batches, la_R, la_mu):
    """Eqs. 4.3-4.6 for a list of (z1, z2) batches, one sample and one matrix entry at a time, in float64
    Python arithmetic. Returns mu1, mu2, R1, R2, R12 after the last batch."""
    d = len(batches[0][0][0])
    mu = [[0.0] * d, [0.0] * d]
    R = [[[float(i == j) for j in range(d)] for i in range(d)] for _ in range(2)]  # R[0] = I
    R12 = [[0.0] * d for _ in range(d)]
    for z1, z2 in batches:
        z = [z1.double().tolist(), z2.double().tolist()]
        n = len(z[0])
        for q in range(2):  # eq. 4.5
            mu[q] = [la_mu * mu[q][i] + (1 - la_mu) * sum(z[q][k][i] for k in range(n)) / n for i in range(d)]
        centred = [[[z[q][k][i] - mu[q][i] for i in range(d)] for k in range(n)] for q in range(2)]  # eq. 4.4
        for q in range(2):  # eq. 4.3
            R[q] = [[la_R * R[q][i][j] + (1 - la_R) * sum(centred[q][k][i] * centred[q][k][j] for k in range(n)) / n
                     for j in range(d)] for i in range(d)]
        R12 = [[la_R * R12[i][j] + (1 - la_R) * sum(centred[0][k][i] * centred[1][k][j] for k in range(n)) / n
                for j in range(d)] for i in range(d)]  # eq. 4.6
    return [torch.tensor(x, dtype=torch.float64) for x in (mu[0], mu[1], R[0], R[1], R12)]


def test_state_update_matches_equations_4_3_to_4_6():
    torch.manual_seed(0)
    d, la_R, la_mu = 4, 0.3, 0.2
    batches = [(torch.randn(6, d), torch.randn(6, d) + 1.0) for _ in range(3)]  # hand-made, non-zero means
    criterion = corinfomax.CorInfoMaxLoss(d, alpha=7.0, la_R=la_R, la_mu=la_mu, eps=1e-8)
    assert torch.equal(criterion.R1, torch.eye(d, dtype=torch.float64)) and not criterion.mu2.any()
    for z1, z2 in batches:
        loss, terms = criterion(z1, z2)
    mu1, mu2, R1, R2, R12 = running_estimates_loop(batches, la_R, la_mu)
    for name, expected in dict(mu1=mu1, mu2=mu2, R1=R1, R2=R2, R12=R12).items():
        value = getattr(criterion, name)
        assert value.dtype == torch.float64, name
        assert torch.allclose(value, expected, rtol=1e-12, atol=1e-12), name
    # the loss of the last batch: log-dets as sums of log-eigenvalues, MSE as an explicit mean
    z1, z2 = batches[-1]
    logdet = lambda R: sum(math.log(e) for e in torch.linalg.eigvalsh(R + 1e-8 * torch.eye(d, dtype=torch.float64)).tolist())
    mse = sum((a - b) ** 2 for a, b in zip(z1.flatten().tolist(), z2.flatten().tolist())) / z1.numel()
    assert terms["logdet1"].item() == pytest.approx(logdet(R1), rel=1e-10)
    assert terms["logdet2"].item() == pytest.approx(logdet(R2), rel=1e-10)
    assert terms["attraction"].item() == pytest.approx(mse, rel=1e-6)
    assert loss.item() == pytest.approx(7.0 * mse - (logdet(R1) + logdet(R2)) / d, rel=1e-6)


def test_old_state_carries_no_gradient_and_stays_float64():
    torch.manual_seed(1)
    criterion = corinfomax.CorInfoMaxLoss(3, alpha=1.0)
    first = torch.randn(8, 3, requires_grad=True)
    criterion(first, torch.randn(8, 3))
    for name in ("R1", "R2", "mu1", "mu2", "R12"):
        buffer = getattr(criterion, name)
        assert not buffer.requires_grad and buffer.grad_fn is None and buffer.dtype == torch.float64, name
    second = torch.randn(8, 3, requires_grad=True)
    loss, _ = criterion(second, torch.randn(8, 3))
    loss.backward()
    assert first.grad is None and second.grad is not None  # no path back to the earlier batch
    assert {"R1", "R2", "mu1", "mu2", "R12"} <= set(criterion.state_dict())  # goes into the checkpoint


# ------------------------------------------------------------------------------------ gradients
def test_logdet_gradient_closed_form():
    """The gradient of the big-bang term with respect to one sample z_n of view 1.

    With A = R + eps I, R = la_R R0 + (1 - la_R)/N sum_k (z_k - mu)(z_k - mu)^T and
    mu = la_mu mu0 + (1 - la_mu) zbar (zbar = batch mean; R0, mu0 constants), move z_n by dz:
      dmu = (1 - la_mu)/N dz
      dR  = (1 - la_R)/N sum_k [(dz_k - dmu)(z_k - mu)^T + (z_k - mu)(dz_k - dmu)^T],  dz_k = [k = n] dz
          = (1 - la_R)/N [dz (z_n - mu)^T - dmu N (zbar - mu)^T + transpose]
      d logdet A = tr(A^-1 dR) = 2 (1 - la_R)/N [(z_n - mu) - (1 - la_mu)(zbar - mu)]^T A^-1 dz   (A symmetric)
    so  grad_{z_n} logdet A = 2 (1 - la_R)/N A^-1 [(z_n - mu) - (1 - la_mu)(zbar - mu)].
    Equation A.1 of the thesis, (1 - la)/N A^-1 (z_n - mu), drops the factor 2 of the quadratic form
    and the second term, which comes from the new mean depending on the batch (zbar - mu = la_mu (zbar - mu0)).
    The loss is -(logdet1 + logdet2)/D with alpha = 0, and logdet2 does not depend on z1."""
    torch.manual_seed(2)
    n, d, la_R, la_mu = 7, 3, 0.3, 0.4
    criterion = corinfomax.CorInfoMaxLoss(d, alpha=0.0, la_R=la_R, la_mu=la_mu, eps=1e-3)
    criterion(torch.randn(n, d) + 2.0, torch.randn(n, d))  # a non-trivial old state R0, mu0
    R0, mu0 = criterion.R1.clone(), criterion.mu1.clone()
    z1 = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    loss, _ = criterion(z1, torch.randn(n, d, dtype=torch.float64))
    loss.backward()
    z = z1.detach()
    mu = la_mu * mu0 + (1 - la_mu) * z.mean(0)
    R = la_R * R0 + (1 - la_R) * sum(torch.outer(z[k] - mu, z[k] - mu) for k in range(n)) / n
    A_inv = torch.linalg.inv(R + 1e-3 * torch.eye(d, dtype=torch.float64))
    for i in range(n):
        grad_logdet = 2 * (1 - la_R) / n * A_inv @ ((z[i] - mu) - (1 - la_mu) * (z.mean(0) - mu))
        assert torch.allclose(z1.grad[i], -grad_logdet / d, rtol=1e-6, atol=1e-10), i
        equation_A1 = (1 - la_R) / n * A_inv @ (z[i] - mu)
        assert not torch.allclose(z1.grad[i], -equation_A1 / d, rtol=1e-2)


def test_attraction_gradient_is_equation_A2_with_alpha():
    """alpha * mse(z1, z2) = alpha/(N D) ||Z1 - Z2||_F^2; A.2 says grad_{z1_n} c ||Z1 - Z2||_F^2 =
    2 c (z1_n - z2_n) (with c = 2/(eps N) there), so here 2 alpha/(N D) (z1_n - z2_n). The big-bang part
    is removed by differentiating the same loss with alpha = 0 (the state is reset between the two)."""
    torch.manual_seed(3)
    n, d, alpha = 5, 4, 250.0
    z1, z2 = torch.randn(n, d, requires_grad=True), torch.randn(n, d)
    grads = []
    for a in (alpha, 0.0):
        z1.grad = None
        corinfomax.CorInfoMaxLoss(d, alpha=a)(z1, z2)[0].backward()
        grads.append(z1.grad.clone())
    assert torch.allclose(grads[0] - grads[1], 2 * alpha / (n * d) * (z1 - z2).detach(), rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------------- LDMI
def gaussian_pairs(n, rhos, seed):
    """n samples of D pairs (x_i, y_i) of unit-variance Gaussians with correlation rho_i."""
    g = torch.Generator().manual_seed(seed)
    rhos = torch.tensor(rhos, dtype=torch.float64)
    x = torch.randn(n, len(rhos), generator=g, dtype=torch.float64)
    y = rhos * x + (1 - rhos ** 2).sqrt() * torch.randn(n, len(rhos), generator=g, dtype=torch.float64)
    return x, y


def test_ldmi_gaussian_closed_form():
    # exact covariances: R1 = R2 = I, R12 = diag(rho) -> -1/2 sum log(1 - rho_i^2)
    rhos = [0.0, 0.3, 0.6, 0.9]
    expected = -0.5 * sum(math.log(1 - r ** 2) for r in rhos)
    eye = torch.eye(4, dtype=torch.float64)
    R12 = torch.diag(torch.tensor(rhos, dtype=torch.float64))
    assert corinfomax.ldmi(eye, eye, R12, eps=1e-12).item() == pytest.approx(expected, rel=1e-8)
    assert corinfomax.ldmi(eye, eye, torch.zeros(4, 4, dtype=torch.float64), eps=1e-12).item() == pytest.approx(0, abs=1e-10)
    # from samples, through the loss's own running estimates (la = 0: the batch estimate)
    x, y = gaussian_pairs(100_000, rhos, seed=0)
    criterion = corinfomax.CorInfoMaxLoss(4, alpha=1.0, la_R=0.0, la_mu=0.0)
    criterion(x, 3 * y - 1)  # LDMI is invariant to scaling and shifting a view
    assert criterion.ldmi().item() == pytest.approx(expected, abs=0.02)
    x, y = gaussian_pairs(100_000, [0.0] * 4, seed=1)  # independent views
    criterion(x, y)
    assert abs(criterion.ldmi().item()) < 0.01
    x, y = gaussian_pairs(100_000, [0.5] * 4, seed=2)  # correlated views
    criterion(x, y)
    assert criterion.ldmi().item() > 0.5


def test_ldmi_equals_gaussian_mutual_information_of_a_joint_covariance():
    """For eps -> 0, eq. 3.6 is the Gaussian mutual information 1/2 [logdet R1 + logdet R2 - logdet R],
    R the joint covariance of (z1, z2): computed here from a random joint covariance, not via eq. 3.4."""
    torch.manual_seed(4)
    m = torch.randn(10, 10, dtype=torch.float64)
    joint = m @ m.T + 0.5 * torch.eye(10, dtype=torch.float64)
    R1, R2, R12 = joint[:5, :5], joint[5:, 5:], joint[:5, 5:]
    expected = 0.5 * (torch.logdet(R1) + torch.logdet(R2) - torch.logdet(joint)).item()
    assert corinfomax.ldmi(R1, R2, R12, eps=1e-12).item() == pytest.approx(expected, rel=1e-8)
    assert corinfomax.ldmi(R2, R1, R12.T, eps=1e-12).item() == pytest.approx(expected, rel=1e-8)  # symmetric


# ----------------------------------------------------------------------------- recipes and model
def test_paper_recipes_resolve_from_the_dataset_alone():
    a = corinfomax.get_args(["--dataset", "cifar100"])
    assert (a.alpha, a.batch_size, a.optimizer, a.lr, a.weight_decay) == (1000, 512, "sgd", 0.5, 1e-4)
    assert (a.proj_layers, a.proj_hidden, a.proj_dim) == (3, 4096, 128)  # 4096-4096-128
    assert (a.warmup_epochs, a.warmup_lr, a.min_lr, a.epochs, a.policy) == (10, 0.003, 1e-6, 1000, "asymmetric")
    assert (a.la_R, a.la_mu, a.eps, a.arch, a.width) == (0.01, 0.01, 1e-8, "resnet18", 64)
    b = corinfomax.get_args(["--dataset", "cifar10"])
    assert (b.alpha, b.proj_layers, b.proj_hidden, b.proj_dim, b.batch_size, b.lr, b.epochs) == (
        250, 3, 2048, 64, 512, 0.5, 1000)
    c = corinfomax.get_args(["--dataset", "imagefolder", "--la-R", "0.1", "--la-mu", "0.1"])
    assert (c.alpha, c.proj_hidden, c.proj_dim, c.la_R, c.la_mu) == (500, 4096, 128, 0.1, 0.1)
    assert corinfomax.get_args(["--dataset", "cifar100", "--alpha", "500"]).alpha == 500  # flags win


@pytest.mark.parametrize("flag,value", [("--la-R", "1"), ("--la-mu", "-0.1"), ("--alpha", "0"),
                                        ("--projector", "64-x"), ("--projector", "64-0"), ("--projector", "64-32-8"),
                                        ("--proj-dim", "0"), ("--eps", "nan")])
def test_bad_flags_are_refused(flag, value):
    with pytest.raises(SystemExit):
        corinfomax.get_args([flag, value])


@pytest.mark.parametrize("flags", [["--proj-layers", "3", "--proj-hidden", "16", "--proj-dim", "8"],
                                   ["--projector", "16-16-8"]])  # and the old spelling
def test_projector_has_no_batchnorm_no_last_bias_and_unit_outputs(flags):
    args = corinfomax.get_args(["--width", "4", *flags])
    args.image_size = 16
    model = corinfomax.Model(args)
    linears = [m for m in model.projector if isinstance(m, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(32, 16), (16, 16), (16, 8)]
    assert linears[0].bias is not None and linears[-1].bias is None
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in model.projector)
    h, z = model(torch.randn(5, 3, 16, 16))
    assert h.shape == (5, 32) and torch.allclose(z.norm(dim=1), torch.ones(5), atol=1e-5)


# ------------------------------------------------------------------------------ the script itself



@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory):
    """The shapes recipe exactly as `python corinfomax.py` runs it, seed 0."""
    out = tmp_path_factory.mktemp("corinfomax")
    result = run_script("corinfomax.py", "--seed", 0, "--out", out, "--name", "recipe")
    return out / "recipe", result


def test_end_to_end_writes_the_run_folder(recipe_run):
    d, result = recipe_run
    assert {"args.json", "log.jsonl", "last.pt", "results.json", "corinfomax.py", "common.py"} <= set(os.listdir(d))
    log = read_log(d)
    assert [row["epoch"] for row in log] == list(range(11))  # epoch 0: the random-initialisation baseline
    for row in log[1:]:
        for key in ("loss", "attraction", "logdet1", "logdet2", "ldmi", "probe_loss", "lr", "seconds"):
            assert math.isfinite(row[key]), key
    results = json.load(open(d / "results.json"))
    eigenvalues = results["eigenvalues_R1"]
    args = json.load(open(d / "args.json"))
    assert len(eigenvalues) == args["proj_dim"] and eigenvalues == sorted(eigenvalues, reverse=True)
    ckpt = torch.load(d / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 10 and {"model", "optimizer", "probe", "loss"} <= set(ckpt["state"])
    R1 = ckpt["state"]["loss"]["R1"]
    assert R1.dtype == torch.float64
    assert torch.allclose(torch.linalg.eigvalsh(R1).flip(0), torch.tensor(eigenvalues, dtype=torch.float64))
    assert "recipe: corinfomax.py RECIPES['shapes']" in result.stdout and "results:" in result.stdout


def test_resume_is_exact_including_the_loss_state(tmp_path):
    """A run stopped after epoch 1 and resumed ends with the same weights, R1, R2, mu1, mu2 (and R12)
    and the same log as an uninterrupted one."""
    a, _ = assert_resume_is_exact("corinfomax.py", [*TINY, "--epochs", "3"], tmp_path)  # results.json too
    assert set(a["state"]["loss"]) == {"R1", "R2", "mu1", "mu2", "R12"}
    for key, value in a["state"]["loss"].items():
        assert not torch.equal(value, torch.eye(len(value), dtype=value.dtype)) and value.any(), key  # it moved
    assert "eigenvalues_R1" in json.load(open(tmp_path / "split" / "results.json"))


LEARN_MIN_MARGIN = 0.045  # about half the smallest kNN margin over seeds 0-2 in README Results


def test_corinfomax_learns_on_shapes(recipe_run):
    """kNN accuracy after the shapes recipe beats the same network (same seed) at random initialisation."""
    results = json.load(open(recipe_run[0] / "results.json"))
    margin = results["knn_acc"] - results["init_knn_acc"]
    print("kNN margin over random initialisation:", margin)
    assert margin > LEARN_MIN_MARGIN, results


def projection_spectrum(run_dir, module):
    """Sorted eigenvalues (largest first) of the covariance of the L2-normalised projector outputs of the
    2,000 un-augmented shapes test images, for the model saved in run_dir/last.pt, in float64."""
    ckpt = torch.load(run_dir / "last.pt", weights_only=True)
    args = argparse.Namespace(**ckpt["args"])
    model = module.Model(args)
    model.load_state_dict(ckpt["state"]["model"])
    model.eval()
    data = corinfomax.common.load_data(argparse.Namespace(**ckpt["args"]))
    with torch.no_grad():
        z = torch.nn.functional.normalize(model(data.normalize(data.test_x))[1].double(), dim=1)  # (N, D)
    centred = z - z.mean(0)
    return torch.linalg.eigvalsh(centred.T @ centred / len(z)).flip(0)


def test_no_dimensional_collapse_where_simclr_has_a_collapsed_tail(recipe_run, tmp_path):
    """CorInfoMax thesis Figure 5.3 at small scale: the projector covariance of CorInfoMax keeps every
    eigenvalue well above zero; SimCLR with the same hidden width and output dimension (256 -> 32) and
    the same augmentation has a collapsed tail. Both run their shapes recipes with the `moderate` policy:
    contrastive learning's dimensional collapse comes with strong augmentation (Jing et al. 2022), and
    with the recipes' weak `small` policy SimCLR's tail does not collapse. The bounds are about 3.5x and 5x
    looser than the ratios at this setting (reproduce/corinfomax_spectrum.py, seeds 0-2: 0.177 and 0.0040)."""
    strong = ["--seed", 0, "--policy", "moderate", "--out", tmp_path]
    run_script("simclr.py", *strong, "--proj-hidden", 256, "--proj-dim", 32, "--name", "simclr")
    run_script("corinfomax.py", *strong, "--name", "corinfomax")
    corinfomax_eigs = projection_spectrum(tmp_path / "corinfomax", corinfomax)
    simclr_eigs = projection_spectrum(tmp_path / "simclr", simclr)
    assert len(corinfomax_eigs) == len(simclr_eigs) == 32
    corinfomax_tail, simclr_tail = (e[-1] / e.mean() for e in (corinfomax_eigs, simclr_eigs))
    print(f"smallest / mean eigenvalue: CorInfoMax {corinfomax_tail:.4f}, SimCLR {simclr_tail:.4f}")
    assert corinfomax_tail > 0.05 and simclr_tail < 0.02
    R1 = torch.tensor(json.load(open(recipe_run[0] / "results.json"))["eigenvalues_R1"])
    assert R1[-1] > 1e-4 and R1[-1] / R1.mean() > 0.01  # far above eps = 1e-8
