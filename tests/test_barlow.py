"""Barlow Twins: the loss against explicit loops and its stated properties; the script end to end,
resumed, learning."""
import json
import math
import os

import pytest
import torch

import barlow
from conftest import TINY, assert_resume_is_exact, read_log, run_script



def barlow_loop(z1, z2, lambd):
    """Paper eq. 1-2, one dimension pair at a time, float64 (autograd flows through)."""
    z1, z2 = z1.double(), z2.double()
    n, d = z1.shape

    def standardized(z, k):  # column k: (z - mean) / sqrt(biased variance + 1e-5), as BatchNorm1d
        mean = sum(z[i, k] for i in range(n)) / n
        var = sum((z[i, k] - mean) ** 2 for i in range(n)) / n
        return [(z[i, k] - mean) / torch.sqrt(var + 1e-5) for i in range(n)]
    a = [standardized(z1, k) for k in range(d)]
    b = [standardized(z2, k) for k in range(d)]
    c = [[sum(a[p][i] * b[q][i] for i in range(n)) / n for q in range(d)] for p in range(d)]
    on = sum((1 - c[p][p]) ** 2 for p in range(d))
    off = sum(c[p][q] ** 2 for p in range(d) for q in range(d) if p != q)
    return on + lambd * off, {"on_diagonal": on, "off_diagonal": off}


@pytest.mark.parametrize("n,d,lambd", [(4, 3, 0.0051), (9, 5, 0.5), (16, 2, 1.0)])
def test_barlow_matches_loops_values_and_gradients(n, d, lambd):
    torch.manual_seed(n)
    z1 = (torch.randn(n, d) * 2 + 1).double().requires_grad_(True)
    z2 = (0.5 * z1.detach() + torch.randn(n, d)).requires_grad_(True)  # correlated views
    loss, terms = barlow.barlow_twins_loss(z1, z2, lambd)
    r1, r2 = z1.detach().clone().requires_grad_(True), z2.detach().clone().requires_grad_(True)
    ref, ref_terms = barlow_loop(r1, r2, lambd)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    for k in ("on_diagonal", "off_diagonal"):
        assert terms[k].item() == pytest.approx(ref_terms[k].item(), rel=1e-6), k
    loss.backward()
    ref.backward()
    assert torch.allclose(z1.grad, r1.grad, rtol=1e-5, atol=1e-8)
    assert torch.allclose(z2.grad, r2.grad, rtol=1e-5, atol=1e-8)


def test_barlow_invariant_to_per_dimension_affine_maps():
    torch.manual_seed(0)
    z1, z2 = torch.randn(32, 6, dtype=torch.float64), torch.randn(32, 6, dtype=torch.float64)
    loss = barlow.barlow_twins_loss(z1, z2)[0].item()
    scale, shift = torch.rand(6, dtype=torch.float64) * 4 + 0.5, torch.randn(6, dtype=torch.float64) * 10
    for a, b in ((z1 * scale + shift, z2), (z1, z2 * scale - shift), (z1 * scale, z2 * scale.flip(0) + shift)):
        # exact up to the 1e-5 inside the square root (BatchNorm's eps)
        assert barlow.barlow_twins_loss(a, b)[0].item() == pytest.approx(loss, rel=1e-4)


def test_barlow_zero_for_identical_standardised_uncorrelated_views():
    h = torch.tensor([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], dtype=torch.float)
    z = torch.cat([h, -h])[:, 1:]  # 8 x 3: each column mean 0, biased variance 1, columns orthogonal
    loss, terms = barlow.barlow_twins_loss(z, z.clone())
    assert loss.item() == pytest.approx(0.0, abs=1e-8)  # C = I / (1 + 1e-5)
    assert terms["off_diagonal"].item() == 0.0
    # and the largest it gets on the diagonal: anti-correlated views give C_ii = -1, (1 - (-1))^2 = 4
    assert barlow.barlow_twins_loss(z, -z)[1]["on_diagonal"].item() == pytest.approx(4 * 3, rel=1e-4)


def test_barlow_flags_and_recipes():
    assert barlow.get_args(["--dataset", "cifar100"]).scale_loss == 0.1  # solo-learn cifar/barlow.yaml
    args = barlow.get_args(["--dataset", "cifar10", "--scale-loss", "1"])
    assert (args.scale_loss, args.lambd, args.optimizer, args.lr, args.proj_dim, args.policy) == (
        1.0, 0.0051, "lars", 0.3, 2048, "asymmetric")
    assert barlow.get_args(["--lambda", "0.1"]).lambd == barlow.get_args(["--lambd", "0.1"]).lambd == 0.1
    for bad in (["--scale-loss", "0"], ["--lambd", "-0.1"], ["--lambd", "inf"], ["--lambda", "nan"]):
        with pytest.raises(SystemExit):
            barlow.get_args(bad)



@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory):
    """The shapes recipe, run once (seed 0); several tests read its folder."""
    out = tmp_path_factory.mktemp("barlow")
    result = run_script("barlow.py", "--seed", 0, "--out", out, "--name", "recipe")
    return out / "recipe", result


def test_end_to_end_writes_the_run_folder(recipe_run):
    d, result = recipe_run
    assert {"args.json", "log.jsonl", "last.pt", "results.json", "barlow.py", "common.py"} <= set(os.listdir(d))
    log = read_log(d)
    args = json.load(open(d / "args.json"))
    assert [row["epoch"] for row in log] == list(range(args["epochs"] + 1))
    for row in log[1:]:
        for key in ("loss", "on_diagonal", "off_diagonal", "embedding_std", "probe_loss", "lr", "seconds",
                    "images_per_sec"):
            assert math.isfinite(row[key]), key
    assert math.isfinite(log[-1]["knn_acc"]) and math.isfinite(log[-1]["probe_acc"])
    results = json.load(open(d / "results.json"))
    assert results["epochs"] == args["epochs"] and 0 <= results["knn_acc"] <= 1
    ckpt = torch.load(d / "last.pt", weights_only=True)
    assert {"model", "optimizer", "probe"} <= set(ckpt["state"])
    assert "results:" in result.stdout


LEARN_MIN_MARGIN = 0.017  # about half the smallest kNN margin over seeds 0-2 in README Results


def test_barlow_learns_on_shapes(recipe_run):
    results = json.load(open(recipe_run[0] / "results.json"))
    margin = results["knn_acc"] - results["init_knn_acc"]
    print("kNN margin over random initialisation:", margin)
    assert margin > LEARN_MIN_MARGIN, results


def test_resume_is_exact(tmp_path):
    assert_resume_is_exact("barlow.py", [*TINY, "--epochs", "3"], tmp_path)