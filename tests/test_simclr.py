"""SimCLR: the loss against an explicit loop and closed forms; the script end to end, resumed, learning."""
import json
import math
import os

import pytest
import torch

import simclr
from conftest import TINY, assert_resume_is_exact, read_log, run_script



def nt_xent_loop(z1, z2, tau):
    """Paper eq. 1, one anchor at a time, in float64 Python arithmetic."""
    z = [v / v.norm() for v in torch.cat([z1, z2]).double()]
    n2, n = len(z), len(z1)
    total = 0.0
    for i in range(n2):
        partner = (i + n) % n2
        sims = {k: float(z[i] @ z[k]) / tau for k in range(n2) if k != i}  # 1 positive + 2N-2 negatives
        assert len(sims) == n2 - 1
        total += -sims[partner] + math.log(sum(math.exp(s) for s in sims.values()))
    return total / n2  # mean over all 2N anchors


@pytest.mark.parametrize("n,d,tau", [(2, 3, 0.5), (5, 8, 0.2), (16, 4, 0.07)])
def test_nt_xent_matches_per_anchor_loop(n, d, tau):
    torch.manual_seed(n)
    z1, z2 = torch.randn(n, d) * 3, torch.randn(n, d)  # unnormalised on purpose
    assert simclr.nt_xent_loss(z1, z2, tau)[0].item() == pytest.approx(nt_xent_loop(z1, z2, tau), rel=1e-5)


def test_nt_xent_closed_form_for_aligned_orthogonal_pairs():
    # z1 = z2 = one-hot rows: positive similarity 1, the 2N-2 negatives 0, so every anchor has
    # loss -1/tau + log(e^{1/tau} + 2N - 2)
    n, tau = 6, 0.5
    z = torch.eye(n, 10)
    expected = -1 / tau + math.log(math.exp(1 / tau) + 2 * n - 2)
    assert simclr.nt_xent_loss(z, z.clone(), tau)[0].item() == pytest.approx(expected, rel=1e-6)


def test_nt_xent_properties():
    torch.manual_seed(0)
    z1, z2 = torch.randn(8, 16), torch.randn(8, 16)
    loss, terms = simclr.nt_xent_loss(z1, z2, 0.5)
    assert terms == {}  # one term: the loss itself
    assert loss.item() == pytest.approx(simclr.nt_xent_loss(z2, z1, 0.5)[0].item(), rel=1e-6)  # symmetric
    assert loss.item() == pytest.approx(simclr.nt_xent_loss(5 * z1, z2, 0.5)[0].item(), rel=1e-6)  # scale-free
    # no overflow at a tiny temperature: log-sum-exp, not raw exp
    assert torch.isfinite(simclr.nt_xent_loss(z1, z2, 1e-4)[0])
    # matching views give a lower loss than random ones, and the gradient flows to both views
    z1.requires_grad_(True)
    simclr.nt_xent_loss(z1, z1.detach() + 0.01 * torch.randn(8, 16), 0.5)[0].backward()
    assert simclr.nt_xent_loss(z1, z1 + 0.01, 0.5)[0] < loss and z1.grad.abs().sum() > 0


@pytest.mark.parametrize("flags", [["--proj-layers", "1"], ["--projector", "linear"]])  # and the old spelling
def test_linear_projector_option(flags):
    args = simclr.get_args([*flags, "--proj-dim", "128", "--width", "4"])
    args.image_size = 32
    model = simclr.Model(args)
    assert isinstance(model.projector, torch.nn.Linear) and model.projector.bias is None
    assert model.projector.weight.shape == (128, 32)  # arXiv 2205.06926: 512 x 128 at width 64



@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory):
    """`python simclr.py` as the README's quick start runs it (the shapes CPU recipe, no recipe flag),
    plus a 1-epoch offline linear evaluation; several tests read this one run folder."""
    out = tmp_path_factory.mktemp("simclr")
    result = run_script("simclr.py", "--seed", "0", "--linear-epochs", "1", "--out", out, "--name", "recipe")
    return out / "recipe", result


def test_end_to_end_writes_the_run_folder(recipe_run):
    d, result = recipe_run
    assert {"args.json", "log.jsonl", "last.pt", "results.json", "simclr.py", "common.py"} <= set(os.listdir(d))
    assert result.stdout.startswith("recipe: simclr.py RECIPES['shapes'] on --dataset shapes")
    log = read_log(d)
    args = json.load(open(d / "args.json"))
    assert [row["epoch"] for row in log] == list(range(args["epochs"] + 1))  # epoch 0: the random-init baseline
    for row in log[1:]:
        for key in ("loss", "probe_loss", "lr", "seconds", "images_per_sec"):
            assert math.isfinite(row[key]), key
    assert {"knn_acc", "probe_acc"} <= set(log[-1])  # evaluated at the last epoch
    results = json.load(open(d / "results.json"))
    assert results["epochs"] == args["epochs"] and 0 <= results["knn_acc"] <= 1 and 0 <= results["linear_acc"] <= 1
    assert args["recipe"] == "shapes" and args["width"] == simclr.RECIPES["shapes"]["width"]  # final values
    ckpt = torch.load(d / "last.pt", weights_only=True)
    assert ckpt["epoch"] == args["epochs"] and {"model", "optimizer", "probe"} <= set(ckpt["state"])
    assert "results:" in result.stdout


def test_resume_is_exact(tmp_path):
    assert_resume_is_exact("simclr.py", [*TINY, "--epochs", "3"], tmp_path)  # results.json too


LEARN_MIN_MARGIN = 0.07  # about half the smallest kNN margin over seeds 0-2 in README Results


def test_simclr_learns_on_shapes(recipe_run):
    """kNN accuracy after the CPU recipe beats the same network (same seed) at random initialisation."""
    results = json.load(open(recipe_run[0] / "results.json"))
    margin = results["knn_acc"] - results["init_knn_acc"]
    print("kNN margin over random initialisation:", margin)
    assert margin > LEARN_MIN_MARGIN, results


def test_geometry_paper_command_in_the_docstring():
    """The Geometry paper's section 2: linear 512 x 128 projector, beta 2 (tau 0.5), LARS lr 4.0, wd 1e-6,
    CIFAR-100: the command the docstring gives sets every one of them."""
    doc = simclr.__doc__
    line = doc[doc.index("python simclr.py --dataset cifar100 --proj-layers 1"):]
    first, second = line.split("\n")[:2]
    flags = first.replace("python simclr.py", "").replace("\\", "").split() + second.split()
    args = simclr.get_args(flags)
    assert (args.dataset, args.proj_layers, args.proj_dim, args.temperature, args.lr, args.weight_decay,
            args.optimizer, args.width) == ("cifar100", 1, 128, 0.5, 4.0, 1e-6, "lars", 64)
