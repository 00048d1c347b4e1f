"""SSLPM: the losses against explicit loops, lstsq and closed forms; both predictors' gradients; bad
ridge input; the script end to end, resumed exactly, learning, and Table 2's lambda = 0 ablation."""
import argparse
import json
import math
import os

import pytest
import torch

import common
import sslpm
from conftest import TINY, assert_resume_is_exact, read_log, run_script


# -------------------------------------------------------------------------------------- 1. the math
def test_standardize_is_per_dimension_over_the_batch():
    torch.manual_seed(0)
    z = torch.randn(10, 4, dtype=torch.float64) * torch.tensor([1.0, 5.0, 0.1, 30.0]) + 7
    s = sslpm.standardize(z)
    for j in range(4):
        col = [float(v) for v in z[:, j]]
        mean = sum(col) / len(col)
        std = math.sqrt(sum((v - mean) ** 2 for v in col) / (len(col) - 1))  # unbiased
        for i in range(10):
            assert float(s[i, j]) == pytest.approx((col[i] - mean) / std, rel=1e-9, abs=1e-12)
    # one sample's value moves only its own dimension's statistics
    z2 = z.clone()
    z2[0, 1] += 100
    changed = (sslpm.standardize(z2) - s).abs().amax(0) > 1e-12
    assert changed.tolist() == [False, True, False, False]


def test_invariance_loss_matches_loop():
    torch.manual_seed(1)
    n, d = 12, 5
    z1, z2 = torch.randn(n, d, dtype=torch.float64), torch.randn(n, d, dtype=torch.float64)
    z2 = z2 + 2 * z1  # correlated views
    a, b = sslpm.standardize(z1), sslpm.standardize(z2)
    expected = sum((1 - sum(float(a[k, i] * b[k, i]) for k in range(n)) / n) ** 2 for i in range(d))
    assert sslpm.invariance_loss(z1, z2).item() == pytest.approx(expected, rel=1e-5)
    # identical views: C_ii = (N - 1) / N with unbiased std and 1/N (official scaling)
    assert sslpm.invariance_loss(z1, z1).item() == pytest.approx(d * (1 / n) ** 2, rel=1e-4)


@pytest.mark.parametrize("rows,d,ridge", [(40, 6, 0.0), (40, 6, 3.0), (8, 12, 0.5)])
def test_ridge_weights_match_lstsq_of_augmented_system(rows, d, ridge):
    torch.manual_seed(rows + d)
    x, y = torch.randn(rows, d, dtype=torch.float64), torch.randn(rows, d, dtype=torch.float64)
    # min ||X W - Y||^2 + mu ||W||^2  ==  least squares of [X; sqrt(mu) I] W = [Y; 0]
    xa = torch.cat([x, math.sqrt(ridge) * torch.eye(d, dtype=torch.float64)])
    ya = torch.cat([y, torch.zeros(d, d, dtype=torch.float64)])
    expected = torch.linalg.lstsq(xa, ya, driver="gelsd").solution
    assert torch.allclose(sslpm.ridge_weights(x, y, ridge), expected, atol=1e-9)


def prediction_loss_loop(e, mask, ridge, target):
    """Equations 13/15/17 with lstsq on the augmented system, then the masked mean by explicit loops."""
    e = e.double()
    n, d = e.shape
    x = e * (~mask)
    y = e if target == "full" else e * mask
    xa = torch.cat([x, math.sqrt(ridge) * torch.eye(d, dtype=torch.float64)])
    w = torch.linalg.lstsq(xa, torch.cat([y, torch.zeros(d, d, dtype=torch.float64)]), driver="gelsd").solution
    total, count = 0.0, 0
    for i in range(n):
        for j in range(d):
            if mask[i, j]:
                pred = sum(float(x[i, k] * w[k, j]) for k in range(d))
                total += (pred - float(e[i, j])) ** 2
                count += 1
    return total / count


@pytest.mark.parametrize("target", ["full", "masked"])
@pytest.mark.parametrize("ridge", [0.0, 2.0])
def test_prediction_loss_counts_only_masked_entries(target, ridge):
    torch.manual_seed(3)
    n, d = 30, 6
    base = torch.randn(n, 2, dtype=torch.float64)
    e = base @ torch.randn(2, d, dtype=torch.float64) + 0.3 * torch.randn(n, d, dtype=torch.float64)  # redundant
    mask = sslpm.random_mask(n, d, 0.5, "cpu")
    got = sslpm.ridge_predictability_loss(e, mask, ridge, target).item()
    assert got == pytest.approx(prediction_loss_loop(e, mask, ridge, target), rel=1e-5)
    assert got < 0.9  # redundant dimensions are predictable


def test_redundant_embeddings_are_predictable_and_independent_ones_are_not():
    torch.manual_seed(4)
    n, d = 1024, 64
    copied = sslpm.standardize(torch.randn(n, 1).expand(n, d))  # one dimension copied across all
    mask = sslpm.random_mask(n, d, 0.5, "cpu")
    assert sslpm.ridge_predictability_loss(copied, mask, 1e-3).item() < 0.05  # about 1/D (count noise)
    independent = sslpm.standardize(torch.randn(4096, 16))
    mask = sslpm.random_mask(4096, 16, 0.5, "cpu")
    assert sslpm.ridge_predictability_loss(independent, mask, 1e-3).item() == pytest.approx(1.0, abs=0.03)


def test_sslpm_loss_combines_the_terms_with_official_scaling():
    torch.manual_seed(5)
    z1, z2 = torch.randn(16, 8), torch.randn(16, 8)
    mask = sslpm.random_mask(32, 8, 0.5, "cpu")
    loss, terms = sslpm.sslpm_loss(z1, z2, mask, lambd=0.3, ridge=1.0)
    invariance, prediction = terms["invariance"], terms["prediction"]
    e = torch.cat([sslpm.standardize(z1), sslpm.standardize(z2)])
    assert invariance.item() == pytest.approx(sslpm.invariance_loss(z1, z2).item(), rel=1e-6)
    assert prediction.item() == pytest.approx(sslpm.ridge_predictability_loss(e, mask, 1.0).item(), rel=1e-6)
    assert loss.item() == pytest.approx(invariance.item() - 0.3 * 8 * prediction.item(), rel=1e-6)


def test_ridge_gradient_flows_through_the_closed_form():
    """The encoder gets gradient through W (not detached, as the official code): autograd equals finite
    differences of the full loss, and differs from the gradient with W held fixed."""
    torch.manual_seed(6)
    e = torch.randn(24, 5, dtype=torch.float64, requires_grad=True)
    mask = sslpm.random_mask(24, 5, 0.5, "cpu")
    sslpm.ridge_predictability_loss(e, mask, 0.5).backward()
    grad = e.grad.clone()
    for (i, j) in [(0, 0), (3, 2), (17, 4)]:
        step = torch.zeros_like(e)
        step[i, j] = 1e-6
        with torch.no_grad():
            f = lambda v: sslpm.ridge_predictability_loss(v, mask, 0.5).double().item()
            numeric = (f(e + step) - f(e - step)) / 2e-6
        assert grad[i, j].item() == pytest.approx(numeric, rel=1e-4, abs=1e-8)
    x = e.detach().masked_fill(mask, 0.0)
    w_fixed = sslpm.ridge_weights(x, e.detach(), 0.5)  # W detached
    e2 = e.detach().clone().requires_grad_(True)
    ((e2.masked_fill(mask, 0.0) @ w_fixed - e2) ** 2)[mask].mean().backward()
    assert (e2.grad - grad).abs().max() > 1e-4


def test_masked_and_full_targets_give_the_same_loss_at_ridge_0():
    """W_full = I + W_0 at mu = 0, and X W_full - X W_0 = X is 0 on the hidden entries: equal losses."""
    torch.manual_seed(11)
    e = sslpm.standardize(torch.randn(64, 6) @ torch.randn(6, 6)).double()
    mask = sslpm.random_mask(64, 6, 0.5, "cpu")
    full, masked = (sslpm.ridge_predictability_loss(e, mask, 0.0, t).item() for t in ("full", "masked"))
    assert full == pytest.approx(masked, rel=1e-9)
    full, masked = (sslpm.ridge_predictability_loss(e, mask, 5.0, t).item() for t in ("full", "masked"))
    assert abs(full - masked) > 1e-6  # with a ridge they differ


# ------------------------------------------------------------------------------------- 2. bad input
def test_singular_ridge_system_raises_a_clear_error():
    torch.manual_seed(7)
    e = sslpm.standardize(torch.randn(8, 32))  # 8 rows, 32 dimensions: X^T X has rank <= 8
    mask = sslpm.random_mask(8, 32, 0.5, "cpu")
    with pytest.raises(ValueError, match="singular; use a ridge penalty > 0"):
        sslpm.ridge_predictability_loss(e, mask, 0.0)
    e = sslpm.standardize(torch.randn(64, 4))
    mask = sslpm.random_mask(64, 4, 0.5, "cpu")
    mask[:, 2] = True  # one dimension hidden in every row: its column of X is zero
    with pytest.raises(ValueError, match="singular"):
        sslpm.ridge_predictability_loss(e, mask, 0.0)
    assert torch.isfinite(sslpm.ridge_predictability_loss(e, mask, 1e-3))  # a ridge fixes both


def test_bad_ridge_input_from_the_command_line(tmp_path):
    # parse time: --ridge 0 with more dimensions than rows (2 x batch)
    out = run_script("sslpm.py", *TINY, "--batch-size", "8", "--proj-dim", "32", "--ridge", "0",
                     "--out", tmp_path, "--name", "a", check=False)
    assert out.returncode != 0 and "--ridge" in out.stderr and "appendix C.3" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not (tmp_path / "a").exists()
    # run time: a singular system (a dimension hidden in all 32 rows) stops before anything is saved
    out = run_script("sslpm.py", *TINY, "--batch-size", "16", "--proj-dim", "32", "--ridge", "0",
                     "--mask-fraction", "0.99", "--epochs", "1", "--out", tmp_path, "--name", "b", check=False)
    assert out.returncode == 1 and out.stderr.strip().startswith("error: --ridge 0.0:") and "singular" in out.stderr
    assert not (tmp_path / "b" / "last.pt").exists()


@pytest.mark.parametrize("flag,value", [("--mask-fraction", "0"), ("--mask-fraction", "1"), ("--ridge", "-1"),
                                        ("--lambda", "nan"), ("--predictor-layers", "2")])
def test_bad_flag_values_are_refused(flag, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        sslpm.get_args([flag, value])
    assert exit_info.value.code == 2 and flag in capsys.readouterr().err


# ----------------------------------------------------------------- 3. the MLP predictor (SSLPM-SGD)
def test_mlp_predictor_trains_on_detached_embeddings_and_is_frozen_for_the_encoder():
    torch.manual_seed(8)
    z = torch.randn(64, 8, requires_grad=True)
    e = torch.cat([sslpm.standardize(z[:32]), sslpm.standardize(z[32:] + z[:32])])  # (64, 8), redundant
    predictor = sslpm.MLPPredictor(8, 3, "cpu", max_steps=40)
    val_mask = sslpm.random_mask(64, 8, 0.5, "cpu")
    before = predictor.error(e.detach(), val_mask).item()
    weights = [p.detach().clone() for p in predictor.net.parameters()]
    steps = predictor.fit(e, val_mask)
    assert 1 <= steps <= 40 and z.grad is None  # the inner loop never reaches the encoder
    assert any(not torch.equal(a, b) for a, b in zip(weights, predictor.net.parameters()))
    assert predictor.error(e.detach(), val_mask).item() < before
    lr = predictor.optimizer.param_groups[0]["lr"]
    assert lr == pytest.approx(1e-3 * (1.005 if steps > 25 else 1 / 1.005))
    # the encoder's term: gradient into z only, none into the predictor's weights
    loss = -torch.log(predictor.encoder_error(e, val_mask).clamp(max=1.0))
    loss.backward()
    assert z.grad.abs().sum() > 0
    assert all(p.grad is None for p in predictor.net.parameters())
    assert all(p.requires_grad for p in predictor.net.parameters())  # unfrozen again for its next fit


def test_mlp_early_stopping_and_state():
    torch.manual_seed(9)
    e = sslpm.standardize(torch.randn(32, 4))  # independent: nothing to learn, validation stalls
    predictor = sslpm.MLPPredictor(4, 1, "cpu", max_steps=500)
    assert predictor.fit(e, sslpm.random_mask(32, 4, 0.5, "cpu")) < 500
    assert predictor.net[0].in_features == 8  # input [X, M]
    other = sslpm.MLPPredictor(4, 1, "cpu")
    other.load_state_dict(predictor.state_dict())
    assert torch.equal(other.net[0].weight, predictor.net[0].weight)
    assert other.optimizer.param_groups[0]["lr"] == predictor.optimizer.param_groups[0]["lr"]


# ----------------------------------------------------------------------------- 4. recipes and model
def test_lambda_defaults_per_variant_and_recipe():
    assert sslpm.get_args([]).lambd == sslpm.LAMBDA["shapes"]["ridge"]
    assert sslpm.get_args(["--dataset", "cifar10"]).lambd == 0.15
    assert sslpm.get_args(["--dataset", "cifar10", "--predictor", "mlp"]).lambd == 64.0
    assert sslpm.get_args(["--dataset", "cifar10", "--predictor", "mlp", "--predictor-layers", "3"]).lambd == 0.5
    assert sslpm.get_args(["--lambda", "0"]).lambd == 0.0
    args = sslpm.get_args(["--dataset", "cifar100"])
    assert (args.lr, args.batch_size, args.proj_hidden, args.proj_dim, args.ridge) == (0.3, 256, 2048, 128, 0.0)


def test_sourced_recipes_hold_their_values():
    """SSLPM paper appendix E and the official configs: SSLPM-SGD at batch 512 (lambda 64 for one layer,
    0.5 for three), SSLPM-RR at 256 with lambda 0.15; ImageNet-100 (imagefolder): 400 epochs, lambda 0.125."""
    sgd1 = sslpm.get_args(["--dataset", "cifar100", "--predictor", "mlp"])
    sgd3 = sslpm.get_args(["--dataset", "cifar10", "--predictor", "mlp", "--predictor-layers", "3"])
    rr = sslpm.get_args(["--dataset", "cifar100"])
    assert (sgd1.batch_size, sgd1.lambd, sgd1.lr, sgd1.epochs) == (512, 64.0, 0.3, 1000)
    assert (sgd3.batch_size, sgd3.lambd) == (512, 0.5) and (rr.batch_size, rr.lambd) == (256, 0.15)
    assert sslpm.get_args(["--dataset", "cifar100", "--predictor", "mlp", "--batch-size", "128"]).batch_size == 128
    assert sslpm.get_args(["--predictor", "mlp"]).batch_size == sslpm.RECIPES["shapes"]["batch_size"]  # CPU recipe
    imagenet = sslpm.get_args(["--dataset", "imagefolder"])
    assert (imagenet.epochs, imagenet.lambd) == (400, 0.125)


@pytest.mark.parametrize("layers,kinds", [(0, ["Identity"]), (1, ["Linear"]), (2, ["Linear", "BatchNorm1d", "ReLU", "Linear"]),
                                          (3, ["Linear", "BatchNorm1d", "ReLU"] * 2 + ["Linear"])])
def test_projector_depth(layers, kinds):
    args = sslpm.get_args(["--width", "2", "--proj-layers", str(layers), "--proj-hidden", "8", "--proj-dim", "4",
                           "--ridge", "1"])
    args.image_size = 16
    model = sslpm.Model(args)
    modules = [type(m).__name__ for m in model.projector] if layers else [type(model.projector).__name__]
    assert modules == kinds
    h, z = model(torch.randn(6, 3, 16, 16))
    assert z.shape == (6, model.dim) and model.dim == (16 if layers == 0 else 4)  # 0: the backbone's 8 * width


# ------------------------------------------------------------------------------------ 5. end to end
LEARN_MIN_MARGIN = 0.038  # about half the smallest kNN margin over seeds 0-2 in README Results


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sslpm")
    run_script("sslpm.py", "--seed", "0", "--out", out, "--name", "recipe")
    return out / "recipe"


def test_end_to_end_writes_the_run_folder(recipe_run):
    assert {"args.json", "log.jsonl", "last.pt", "results.json", "sslpm.py", "common.py"} <= set(os.listdir(recipe_run))
    log = read_log(recipe_run)
    assert [row["epoch"] for row in log] == list(range(11))
    for row in log[1:]:
        for key in ("loss", "invariance", "prediction", "probe_loss", "lr", "seconds"):
            assert math.isfinite(row[key]), key
        assert 0 < row["prediction"] < 1.5 and row["invariance"] >= 0
    assert log[-1]["prediction"] > log[1]["prediction"]  # the encoder makes its entries less predictable
    ckpt = torch.load(recipe_run / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 10 and {"model", "optimizer", "probe"} <= set(ckpt["state"])
    assert ckpt["args"]["lambd"] == sslpm.LAMBDA["shapes"]["ridge"]


def test_ridge_variant_learns_on_shapes(recipe_run):
    results = json.load(open(recipe_run / "results.json"))
    margin = results["knn_acc"] - results["init_knn_acc"]
    print("kNN margin over random initialisation:", margin)
    assert margin > LEARN_MIN_MARGIN, results


@pytest.mark.parametrize("variant", [["--predictor", "ridge"], ["--predictor", "mlp", "--predictor-steps", "3"]])
def test_resume_is_exact(tmp_path, variant):
    # model, optimizer, probe (and the mlp predictor: weights, AdamW state, lr), log and results
    a, _ = assert_resume_is_exact("sslpm.py", [*TINY, *variant, "--epochs", "3"], tmp_path)
    if "mlp" in variant:
        assert "predictor" in a["state"] and all(0 < row["predictor_steps"] <= 3 for row in read_log(tmp_path / "split")[1:])


def embedding_aac(run_dir):
    """Average absolute correlation (SSLPM paper Definition 3.1: mean |C_ij|, i != j) of the projector
    outputs z of the shapes test images, in eval mode."""
    ckpt = torch.load(run_dir / "last.pt", weights_only=True)
    args = argparse.Namespace(**ckpt["args"])
    model = sslpm.Model(args)
    model.load_state_dict(ckpt["state"]["model"])
    model.eval()
    data = common.load_data(args)
    with torch.no_grad():
        z = model(data.normalize(data.test_x))[1].double()
    c = torch.corrcoef(z.T)
    off = ~torch.eye(len(c), dtype=torch.bool)
    return c[off].abs().mean().item()


# Table 2 at small scale: lambda = 0 leaves only the invariance term, whose optimum is perfectly
# redundant dimensions. Bound: half the smallest AAC gap measured at this setting, seeds 0-1 (0.30).
def test_table2_lambda_zero_leaves_redundant_embeddings(tmp_path):
    aac = {}
    for name, flags in (("default", []), ("lambda0", ["--lambda", "0"])):
        run_script("sslpm.py", *TINY, "--epochs", "5", "--eval-every", "5", *flags, "--out", tmp_path, "--name", name)
        aac[name] = embedding_aac(tmp_path / name)
    print("AAC of projector outputs:", aac)
    assert aac["lambda0"] > aac["default"] + 0.15, aac
