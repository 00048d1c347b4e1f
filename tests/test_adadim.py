"""AdaDim: each loss term against loops and closed forms, alpha/beta and the momentum encoder, the
script end to end (with and without momentum), exact resume, learning on shapes."""
import argparse
import json
import math
import os

import pytest
import torch

import adadim
from conftest import TINY, assert_same_runs, read_log, run_script, run_straight_and_split



# ------------------------------------------------------------------- independent references
def vicreg_loop(z1, z2):
    """VICReg with the official conventions, one dimension / entry at a time, float64."""
    z1, z2 = z1.double(), z2.double()
    n, d = z1.shape
    invariance = sum(float(z1[i, j] - z2[i, j]) ** 2 for i in range(n) for j in range(d)) / (n * d)
    variance, covariance = 0.0, 0.0
    for z in (z1, z2):
        mean = [sum(float(z[i, j]) for i in range(n)) / n for j in range(d)]
        c = [[sum((float(z[i, a]) - mean[a]) * (float(z[i, b]) - mean[b]) for i in range(n)) / (n - 1)
              for b in range(d)] for a in range(d)]
        variance += sum(max(0.0, 1 - math.sqrt(c[j][j] + 1e-4)) for j in range(d)) / d / 2
        covariance += sum(c[a][b] ** 2 for a in range(d) for b in range(d) if a != b) / d
    return 25 * invariance + 25 * variance + covariance


def nce_loop(z1, z2, tau):
    z = [v / v.norm() for v in torch.cat([z1, z2]).double()]
    n2, n = len(z), len(z1)
    total = 0.0
    for i in range(n2):
        sims = {k: float(z[i] @ z[k]) / tau for k in range(n2) if k != i}
        total += -sims[(i + n) % n2] + math.log(sum(math.exp(s) for s in sims.values()))
    return total / n2


def entropy_eig(gram):
    """H_2 from the eigenvalues of the trace-1 matrix: -log sum lambda^2, float64."""
    lam = torch.linalg.eigvalsh(gram.double() / torch.trace(gram.double()))
    return -math.log(float((lam ** 2).sum()))


def mi_eig_tensor(r, z):
    """I(R; Z) through eigenvalues of the trace-1 Gram matrices, float64, differentiable."""
    def h(gram):
        lam = torch.linalg.eigvalsh(gram / torch.trace(gram))
        return -torch.log((lam ** 2).sum())
    r = r.double() / r.double().norm(dim=1, keepdim=True)
    z = z.double() / z.double().norm(dim=1, keepdim=True)
    a, b = r @ r.T, z @ z.T
    return h(a) + h(b) - h(a * b)


def mi_eig(r, z):
    return float(mi_eig_tensor(r, z))


# --------------------------------------------------------------------------------- the losses
@pytest.mark.parametrize("n,d", [(4, 3), (7, 5)])
def test_vicreg_and_nce_match_loops(n, d):
    torch.manual_seed(n)
    z1, z2 = torch.randn(n, d) * 0.5, torch.randn(n, d) * 2
    assert adadim.vicreg_loss(z1, z2)[0].item() == pytest.approx(vicreg_loop(z1, z2), rel=1e-5)
    assert adadim.nt_xent_loss(z1, z2, 0.1)[0].item() == pytest.approx(nce_loop(z1, z2, 0.1), rel=1e-5)


def test_renyi_entropy_closed_forms():
    n = 6
    assert adadim.renyi_entropy(torch.eye(n)).item() == pytest.approx(math.log(n), rel=1e-6)  # orthonormal rows
    v = torch.nn.functional.normalize(torch.randn(1, 5), dim=1).expand(n, 5)
    assert adadim.renyi_entropy(v @ v.T).item() == pytest.approx(0.0, abs=1e-6)              # rank one
    # k orthogonal clusters with proportions p: H_2 = -log sum p_c^2 (Renyi-2 entropy of p)
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    r = torch.eye(3)[labels]
    p = torch.bincount(labels).double() / len(labels)
    assert adadim.renyi_entropy(r @ r.T).item() == pytest.approx(-math.log(float((p ** 2).sum())), rel=1e-6)


@pytest.mark.parametrize("n,d", [(10, 3), (6, 40)])
def test_renyi_entropy_d_by_d_form_equals_n_by_n_form(n, d):
    torch.manual_seed(d)
    z = torch.nn.functional.normalize(torch.randn(n, d), dim=1)   # unit rows: tr(Z Z^T) = n
    d_form = -math.log(float(torch.linalg.matrix_norm(z.double().T @ z.double()) ** 2) / n ** 2)
    assert adadim.renyi_entropy(z @ z.T).item() == pytest.approx(d_form, rel=1e-5)
    assert adadim.renyi_entropy(z @ z.T).item() == pytest.approx(entropy_eig(z @ z.T), rel=1e-5)


def test_renyi_mutual_information():
    torch.manual_seed(0)
    r, z = torch.randn(12, 8), torch.randn(12, 20)
    mi = adadim.renyi_mutual_information(r, z).item()
    assert mi == pytest.approx(mi_eig(r, z), rel=1e-4, abs=1e-6)
    assert mi == pytest.approx(adadim.renyi_mutual_information(z, r).item(), rel=1e-6)       # symmetric
    assert mi == pytest.approx(adadim.renyi_mutual_information(3 * r, z).item(), rel=1e-5)   # rows normalised
    # with itself: equals its entropy where the Gram is 0/1 (orthogonal clusters), so A * A = A
    c = torch.eye(4)[torch.tensor([0, 1, 1, 2, 3, 3, 3, 0])] * 2.0
    h = adadim.renyi_entropy(torch.nn.functional.normalize(c, dim=1) @ torch.nn.functional.normalize(c, dim=1).T)
    assert adadim.renyi_mutual_information(c, c).item() == pytest.approx(h.item(), rel=1e-6)


def test_renyi_mutual_information_gradient():
    """Autograd through the float32 loss against autograd through the float64 eigenvalue form."""
    torch.manual_seed(3)
    r, z = torch.randn(9, 5, dtype=torch.float64), torch.randn(9, 7, dtype=torch.float64)
    r32, z32 = r.float().requires_grad_(True), z.float().requires_grad_(True)
    adadim.renyi_mutual_information(r32, z32).backward()
    r64, z64 = r.clone().requires_grad_(True), z.clone().requires_grad_(True)
    for mine, ref in zip((r32.grad, z32.grad), torch.autograd.grad(mi_eig_tensor(r64, z64), (r64, z64))):
        assert torch.allclose(mine.double(), ref, rtol=1e-3, atol=1e-5)


def test_effective_rank():
    q, _ = torch.linalg.qr(torch.randn(20, 6, dtype=torch.float64))                 # orthonormal columns
    assert adadim.effective_rank(q * 3).item() == pytest.approx(6, rel=1e-9)        # d, equal norms
    assert adadim.effective_rank(torch.randn(20, 1) @ torch.randn(1, 6)).item() == pytest.approx(1, rel=1e-5)
    torch.manual_seed(0)
    z = torch.randn(20, 6) * torch.tensor([5.0, 2, 1, 1, 0.5, 0.1])
    er = adadim.effective_rank(z).item()
    s = torch.linalg.eigvalsh(z.double().T @ z.double()).clamp_min(0).sqrt()       # singular values, another way
    p = s / s.sum()
    assert er == pytest.approx(math.exp(-float((p * p.log()).sum())), rel=1e-6) and 1 < er < 6
    alpha = er / min(z.shape)
    assert 0 <= alpha <= 1


def test_adadim_loss_weights():
    torch.manual_seed(1)
    z1, z2, r1, r2 = torch.randn(6, 5), torch.randn(6, 5), torch.randn(6, 4), torch.randn(6, 4)
    vic, nce = vicreg_loop(z1, z2), nce_loop(z1, z2, 0.1)
    mut = (mi_eig(r2, z1) + mi_eig(r1, z2)) / 2
    loss = lambda a, b: adadim.adadim_loss(z1, z2, r1, r2, a, b, 0.1)[0].item()
    assert loss(0.0, 0.0) == pytest.approx(vic, rel=1e-5)                 # alpha 0, gamma 0: VICReg
    assert loss(1.0, 0.0) == pytest.approx(nce, rel=1e-5)                 # alpha 1: InfoNCE
    a, b = 0.3, 0.2
    assert loss(a, b) == pytest.approx((1 - b) * ((1 - a) * vic + a * nce) - b * mut, rel=1e-5)  # eq. 5
    terms = adadim.adadim_loss(z1, z2, r1, r2, a, b)[1]
    assert terms["mutual_information"].item() == pytest.approx(mut, rel=1e-4)
    # the mutual-information term is the only path to r: gradient there only when beta > 0
    for beta, expect_grad in ((0.0, False), (0.5, True)):
        r = r1.clone().requires_grad_(True)
        adadim.adadim_loss(z1, z2, r, r2, a, beta)[0].backward()
        assert (r.grad is not None and r.grad.abs().sum() > 0) == expect_grad


def test_adadim_loss_with_momentum_pairs():
    torch.manual_seed(2)
    z1, z2, z1m, z2m = (torch.randn(5, 4) for _ in range(4))
    r1, r2, r1m, r2m = (torch.randn(5, 3) for _ in range(4))
    a, b = 0.4, 0.1
    loss, terms = adadim.adadim_loss(z1, z2, r1, r2, a, b, 0.1, momentum=(z1m, z2m, r1m, r2m))
    vic = (vicreg_loop(z1, z2m) + vicreg_loop(z1m, z2)) / 2              # appendix A.3 pseudocode
    nce = (nce_loop(z1, z2m, 0.1) + nce_loop(z1m, z2, 0.1)) / 2
    mut = (mi_eig(r2, z1) + mi_eig(r1, z2) + mi_eig(r2m, z1m) + mi_eig(r1m, z2m)) / 4
    assert terms["vicreg"].item() == pytest.approx(vic, rel=1e-5)
    assert loss.item() == pytest.approx((1 - b) * ((1 - a) * vic + a * nce) - b * mut, rel=1e-5)


# ----------------------------------------------------------------- alpha and the momentum encoder
def schedule(**kw):
    args = dict(alpha_mode="ada", alpha_every=20, epochs=60, gamma=1e-4, alpha=0.5, beta_mode="ada")
    return adadim.AlphaSchedule(argparse.Namespace(**{**args, **kw}))


def test_alpha_is_0_in_the_first_window_then_measured_at_its_end():
    """Section 4: alpha "will gradually transition from 0 to 1"; measured after every 20 epochs of training."""
    s, calls = schedule(), []
    for epoch in range(60):
        s.start_epoch(epoch, lambda: (calls.append(epoch), (10.0 + epoch, 0.1 + epoch / 100))[1])
        expected = 0.0 if epoch < 20 else 0.1 + (epoch // 20 * 20) / 100
        assert s.alpha == pytest.approx(expected) and s.beta == pytest.approx(1e-4 * s.alpha)
        assert s.effective_rank == (None if epoch < 20 else 10.0 + epoch // 20 * 20)
    assert calls == [20, 40]
    restored = schedule()
    restored.load_state_dict(s.state_dict())
    assert restored.state_dict() == {"alpha": s.alpha, "beta": s.beta, "effective_rank": 50.0}


def test_measure_alpha_is_the_mean_effective_rank_of_one_view_over_min_b_f(monkeypatch):
    """ER(Z) / min(b, F) of view 1's embeddings (b, F), averaged over the batches, as section 4's text; Z in
    float32, never under bf16 autocast (whose rounding raises a low effective rank: 3.98 -> 4.65 measured)."""
    monkeypatch.setattr(adadim.common, "autocast", lambda device: pytest.fail("alpha measured under autocast"))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5))
    wrapped = type("M", (torch.nn.Module,), {"forward": lambda self, x: (x, model(x))})()
    wrapped.add_module("inner", model)
    images = torch.randint(0, 256, (40, 3, 2, 2), dtype=torch.uint8)
    views = []
    augment = lambda x: (views.append(x.float()), (x.float(), None))[1]  # view 1 as it is, recorded
    torch.manual_seed(1)
    rank, ratio = adadim.measure_alpha(wrapped, images, augment, batch_size=8, batches=3, device=torch.device("cpu"))
    with torch.no_grad():
        expected = [adadim.effective_rank(model(v)).item() for v in views]
    assert len(views) == 3 and rank == pytest.approx(sum(expected) / 3, rel=1e-9)
    assert ratio == pytest.approx(rank / min(8, 5), rel=1e-9)


@pytest.mark.parametrize("mode,at_0,at_mid,at_end", [("fixed", 0.5, 0.5, 0.5), ("linear", 0, 0.5, 1),
                                                      ("cosine", 0, 0.5, 1)])
def test_alpha_alternatives(mode, at_0, at_mid, at_end):
    s = schedule(alpha_mode=mode, epochs=11, beta_mode="fixed")
    values = []
    for epoch in range(11):
        s.start_epoch(epoch, lambda: (3.0, 0.9))
        values.append(s.alpha)
        assert s.beta == 1e-4  # fixed beta = gamma
    assert values[0] == pytest.approx(at_0) and values[5] == pytest.approx(at_mid) and values[10] == pytest.approx(at_end)
    if mode == "cosine":
        assert values[2] == pytest.approx((1 - math.cos(0.2 * math.pi)) / 2)  # 0.095: slower than linear early


def test_momentum_encoder_update_is_the_ema_formula():
    torch.manual_seed(0)
    online = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = adadim.MomentumEncoder(online, 0.9)
    assert ema.tau(0, 100) == pytest.approx(0.9) and ema.tau(100, 100) == pytest.approx(1.0)
    before = [p.clone() for p in ema.model.parameters()]
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    ema.update(online, 30, 100)
    tau = 1 - 0.1 * (math.cos(math.pi * 0.3) + 1) / 2
    for m, old, p in zip(ema.model.parameters(), before, online.parameters()):
        assert torch.allclose(m, tau * old + (1 - tau) * p, atol=1e-7) and not m.requires_grad
        assert torch.equal(m, old.mul(tau).add_(p, alpha=1 - tau))  # the per-parameter loop it replaced, bitwise


# ----------------------------------------------------------------------------- the script

LEARN_MIN_MARGIN = 0.06  # about half the smallest kNN margin over seeds 0-2 in README Results


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("adadim")
    run_script("adadim.py", "--seed", 0, "--out", out, "--name", "recipe")
    return out / "recipe"


def test_recipe_run_writes_the_run_folder(recipe_run):
    assert {"args.json", "log.jsonl", "last.pt", "results.json", "adadim.py", "common.py"} <= set(os.listdir(recipe_run))
    log = read_log(recipe_run)
    assert [row["epoch"] for row in log] == list(range(11))
    for row in log[1:]:
        for key in ("loss", "vicreg", "nce", "mutual_information", "alpha", "beta", "probe_loss", "lr"):
            assert math.isfinite(row[key]), key
        assert 0 <= row["alpha"] <= 1 and row["beta"] == pytest.approx(1e-4 * row["alpha"], rel=1e-5)
    assert log[1]["alpha"] == 0 and "effective_rank" not in log[1]  # the first window: VICReg, nothing measured
    assert all(1 <= row["effective_rank"] <= 64 for row in log[2:])  # then ER(Z) of batches of 64
    ckpt = torch.load(recipe_run / "last.pt", weights_only=True)
    assert {"model", "optimizer", "probe", "alpha"} <= set(ckpt["state"]) and "momentum" not in ckpt["state"]
    assert ckpt["state"]["alpha"]["alpha"] == pytest.approx(log[-1]["alpha"], rel=1e-5)


def test_recipe_learns_on_shapes(recipe_run):
    r = json.load(open(recipe_run / "results.json"))
    print("kNN", r["init_knn_acc"], "->", r["knn_acc"])
    assert r["knn_acc"] - r["init_knn_acc"] > LEARN_MIN_MARGIN, r


def test_alpha_trajectory(recipe_run):
    """Recorded over the recipe's run (alpha every epoch): 0 in the first window (VICReg), then rising, as
    section 4 says ("will gradually transition from 0 to 1") and Figure 5c shows. The bounds are about half
    the rise measured at seed 0 (README Results)."""
    alphas = [row["alpha"] for row in read_log(recipe_run)[1:]]
    print("alpha per epoch:", [round(a, 3) for a in alphas])
    assert alphas[0] == 0 and all(0 < a <= 1 for a in alphas[1:])
    assert alphas[-1] > alphas[1] + 0.18                       # the rise of Figure 5c
    assert sum(b > a for a, b in zip(alphas[1:], alphas[2:])) >= 5  # mostly step by step


@pytest.fixture(scope="module")
def momentum_runs(tmp_path_factory):
    """Tiny runs with the momentum encoder and alpha every 2 epochs: straight, and split after epoch 1."""
    out = tmp_path_factory.mktemp("adadim-momentum")
    run_straight_and_split("adadim.py", [*TINY, "--epochs", "4", "--alpha-every", "2", "--momentum", "0.996"], out)
    return out


def test_momentum_run_and_alpha_schedule(momentum_runs):
    d = momentum_runs / "straight"
    ckpt = torch.load(d / "last.pt", weights_only=True)
    assert {"model", "alpha", "momentum"} <= set(ckpt["state"])
    online, ema = ckpt["state"]["model"], ckpt["state"]["momentum"]
    assert set(online) == set(ema)
    assert not torch.equal(online["projector.0.weight"], ema["projector.0.weight"])  # an average, not a copy
    alphas = [row["alpha"] for row in read_log(d)[1:]]
    assert alphas[0] == alphas[1] == 0 and alphas[2] == alphas[3] > 0  # 0 in the first window; measured at epoch 2
    assert all(math.isfinite(row["mutual_information"]) for row in read_log(d)[1:])


def test_resume_is_exact_with_alpha_and_momentum(momentum_runs):
    a, _ = assert_same_runs(momentum_runs / "straight", momentum_runs / "split")  # every part, log, results
    assert {"model", "momentum", "alpha", "probe"} <= set(a["state"])


def test_table_9_recipes():
    """AdaDim paper Table 9, baseline rows: CIFAR-10/100 ResNet-18 1000 epochs gamma 1e-4; STL10 ResNet-50,
    400 epochs, gamma 1e-2; ImageNet100 ResNet-18, 400 epochs, gamma -0.1; all LARS lr 0.4, batch 256."""
    for dataset, expected in (("cifar10", ("resnet18", 1000, 1e-4)), ("cifar100", ("resnet18", 1000, 1e-4)),
                              ("stl10", ("resnet50", 400, 1e-2)), ("imagefolder", ("resnet18", 400, -0.1))):
        a = adadim.get_args(["--dataset", dataset])
        assert (a.arch, a.epochs, a.gamma) == expected, dataset
        assert (a.lr, a.batch_size, a.optimizer, a.temperature, a.alpha_every) == (0.4, 256, "lars", 0.1, 20)
