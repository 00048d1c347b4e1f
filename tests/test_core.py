"""Loader, backbones, projector, LARS, schedule, kNN, raw-pixel kNN, shapes, image folders and the gather,
against hand computations."""
import math
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

import common


# ------------------------------------------------------------------------------------------- loader
def test_loader_every_index_once_per_epoch_and_drop_last():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 2, 2).contiguous()
    labels = torch.arange(10)
    loader = common.Loader(images, labels, 3, torch.device("cpu"))
    assert len(loader) == 3  # 10 // 3, the last partial batch dropped
    torch.manual_seed(0)
    seen_epochs = []
    for _ in range(2):
        batches = list(loader)
        assert [len(y) for _, y in batches] == [3, 3, 3]
        seen = torch.cat([y for _, y in batches])
        assert len(set(seen.tolist())) == 9  # no index twice within an epoch
        for x, y in batches:  # images travel with their labels
            assert torch.equal(x[:, 0, 0, 0].long(), y)
            assert x.dtype == torch.uint8 and x.device.type == "cpu"
        seen_epochs.append(seen.tolist())
    assert seen_epochs[0] != seen_epochs[1]  # reshuffled each epoch


def test_loader_rejects_batch_larger_than_dataset():
    with pytest.raises(SystemExit, match="--batch-size 8 is larger than the training set"):
        common.Loader(torch.zeros(5, 3, 2, 2, dtype=torch.uint8), torch.arange(5), 8, torch.device("cpu"))


# -------------------------------------------------------------------------- backbones and projector
@pytest.mark.parametrize("arch,width,size,dim", [("resnet18", 64, 32, 512), ("resnet18", 8, 32, 64),
                                                 ("resnet50", 64, 32, 2048), ("resnet50", 4, 32, 128),
                                                 ("resnet18", 8, 64, 64), ("resnet18", 4, 96, 32)])
def test_backbone_output_size(arch, width, size, dim):
    net = common.backbone(arch, width, size).eval()
    assert net.out_dim == dim
    with torch.no_grad():
        assert net(torch.randn(2, 3, size, size)).shape == (2, dim)


def test_backbone_stems():
    cifar, imagenet = common.backbone("resnet18", 8, 32), common.backbone("resnet18", 8, 64)
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert isinstance(cifar.maxpool, nn.Identity)
    assert imagenet.conv1.kernel_size == (7, 7) and imagenet.conv1.stride == (2, 2)
    assert isinstance(imagenet.maxpool, nn.MaxPool2d)
    # the CIFAR stem keeps full resolution into layer1: 32 px -> 4 px before pooling
    feats = {}
    cifar.layer4.register_forward_hook(lambda m, i, o: feats.update(l4=o.shape))
    cifar.eval()(torch.randn(1, 3, 32, 32))
    assert feats["l4"][-2:] == (4, 4)


def test_standard_resnet18_parameter_count():
    # torchvision's resnet18 without its fc layer, with the CIFAR stem's 3x3 conv instead of 7x7
    ref = sum(p.numel() for n, p in torchvision_resnet18().named_parameters() if not n.startswith("fc"))
    ours = sum(p.numel() for p in common.backbone("resnet18", 64, 32).parameters())
    assert ours == ref - 64 * 3 * (7 * 7 - 3 * 3)


def torchvision_resnet18():
    import torchvision
    return torchvision.models.resnet18()


def test_projector_layers():
    p = common.projector([16, 32, 8], batchnorm=True, last_bias=False)
    kinds = [type(m).__name__ for m in p]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert p[0].bias is None and p[3].bias is None  # bias before BN is redundant; last: asked for none
    q = common.projector([16, 32, 32, 8], batchnorm=False, normalize=True)
    assert [type(m).__name__ for m in q] == ["Linear", "ReLU", "Linear", "ReLU", "Linear", "L2Normalize"]
    assert q[0].bias is not None and q[4].bias is not None
    out = q(torch.randn(5, 16))
    assert out.shape == (5, 8) and torch.allclose(out.norm(dim=1), torch.ones(5), atol=1e-6)


# --------------------------------------------------------------------------- optimiser and schedule
def test_lars_one_step_by_hand():
    w = nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ||w|| = 5
    b = nn.Parameter(torch.tensor([1.0]))
    w.grad, b.grad = torch.tensor([[1.0, 0.0]]), torch.tensor([0.5])
    lr, wd, eta, momentum = 0.1, 0.5, 0.02, 0.9
    opt = common.LARS([{"params": [w]}, {"params": [b], "weight_decay": 0.0, "lars_exclude": True}],
                      lr=lr, momentum=momentum, weight_decay=wd, eta=eta)
    opt.step()
    # w: update = g + wd w = (1 + 1.5, 2) = (2.5, 2); ||update|| = sqrt(10.25); trust = eta * 5 / ||update||
    u = [2.5, 2.0]
    trust = eta * 5 / math.sqrt(2.5 ** 2 + 2.0 ** 2)
    expected_w = [3.0 - lr * trust * u[0], 4.0 - lr * trust * u[1]]
    assert torch.allclose(w.data, torch.tensor([expected_w]), atol=1e-7)
    assert torch.allclose(b.data, torch.tensor([1.0 - lr * 0.5]))  # excluded: plain SGD, no decay
    # second step: the momentum buffer carries the first (scaled) update
    w_before = w.data.clone()
    w.grad, b.grad = torch.tensor([[0.0, 1.0]]), torch.tensor([0.0])
    opt.step()
    u2 = [0.0 + wd * w_before[0, 0].item(), 1.0 + wd * w_before[0, 1].item()]
    trust2 = eta * w_before.norm().item() / math.hypot(*u2)
    buf = [momentum * trust * u[k] + trust2 * u2[k] for k in range(2)]
    assert torch.allclose(w.data, w_before - lr * torch.tensor([buf]), atol=1e-7)
    assert torch.allclose(b.data, torch.tensor([1.0 - lr * 0.5 - lr * momentum * 0.5]))


def test_lars_clip_caps_the_step_at_lr():
    # clip (solo-learn clip_lr): step = min(eta * ||w|| / ||u||, lr) * u
    for lr, grad in ((0.1, [[100.0, 0.0]]), (0.1, [[1e-3, 0.0]])):
        w = nn.Parameter(torch.tensor([[3.0, 4.0]]))
        w.grad = torch.tensor(grad)
        common.LARS([w], lr=lr, momentum=0.9, weight_decay=0.0, eta=0.02, clip=True).step()
        g = grad[0][0]
        step = min(0.02 * 5 / g, lr) * g
        assert torch.allclose(w.data, torch.tensor([[3.0 - step, 4.0]]), atol=1e-7)


def test_make_optimizer_excludes_biases_and_norms():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    args = type("A", (), dict(optimizer="lars", lr=0.1, weight_decay=1e-4, lars_clip=True))()
    opt = common.make_optimizer(model, args)
    decay, no_decay = opt.param_groups
    assert [p.shape for p in decay["params"]] == [(4, 4)] and decay["weight_decay"] == 1e-4
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0 and no_decay["lars_exclude"]
    assert decay["clip"] and isinstance(opt, common.LARS)
    for name, cls in (("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)):
        args.optimizer = name
        assert isinstance(common.make_optimizer(model, args), cls)


def test_schedule_warmup_then_cosine():
    total, warmup, base, start, final = 1000, 100, 0.4, 0.003, 1e-6
    lr = lambda s: common.lr_at(s, total, warmup, base, start, final)
    assert lr(0) == pytest.approx(start)
    assert lr(50) == pytest.approx(start + (base - start) * 0.5)
    assert lr(warmup) == pytest.approx(base)              # warmup ends at the peak
    assert lr(warmup + (total - 1 - warmup) / 2) == pytest.approx((base + final) / 2)  # cosine midpoint
    assert lr(total - 1) == pytest.approx(final)          # last step reaches the floor
    values = [lr(s) for s in range(warmup, total)]
    assert all(a >= b for a, b in zip(values, values[1:]))


# ---------------------------------------------------------------------------------------------- kNN
def test_knn_matches_explicit_loop():
    torch.manual_seed(0)
    train_f, test_f = torch.randn(60, 5), torch.randn(25, 5)
    train_y, test_y = torch.randint(0, 4, (60,)), torch.randint(0, 4, (25,))
    train_y[:3] = -1  # unlabelled rows never vote
    k, T = 7, 0.1
    correct = 0
    for f, y in zip(test_f, test_y):
        sims = [(float(f @ g / (f.norm() * g.norm())), int(c)) for g, c in zip(train_f, train_y) if c >= 0]
        votes = [0.0] * 4
        for s, c in sorted(sims, reverse=True)[:k]:
            votes[c] += math.exp(s / T)
        correct += int(max(range(4), key=votes.__getitem__) == int(y))
    assert common.knn_accuracy(train_f, train_y, test_f, test_y, 4, k=k, temperature=T, chunk=4) == correct / 25
    # features of another dtype vote in that dtype (float64 from metrics, bf16 from autocast): no dtype clash
    double = common.knn_accuracy(train_f.double(), train_y, test_f.double(), test_y, 4, k=k, temperature=T)
    assert double == correct / 25
    common.knn_accuracy(train_f.bfloat16(), train_y, test_f.bfloat16(), test_y, 4, k=k, temperature=T)


def test_knn_perfect_on_separated_clusters():
    centers = torch.eye(3) * 10
    train_y, test_y = torch.arange(3).repeat(20), torch.arange(3).repeat(5)
    train_f, test_f = centers[train_y] + torch.randn(60, 3), centers[test_y] + torch.randn(15, 3)
    assert common.knn_accuracy(train_f, train_y, test_f, test_y, 3, k=200) == 1.0


# ------------------------------------------------------------------------------------------- shapes
def test_shapes_deterministic_balanced_and_varied():
    x, y = common.make_shapes(200, 32, seed=3)
    x2, y2 = common.make_shapes(200, 32, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert x.shape == (200, 3, 32, 32) and x.dtype == torch.uint8
    assert torch.equal(y.bincount(), torch.full((10,), 20))
    assert not torch.equal(common.make_shapes(200, 32, seed=4)[0], x)
    # colour carries no class information: per-class mean colours (200 images each, s.e. ~5) stay
    # close to the global mean, and a nearest-class-mean-colour classifier is near chance
    x, y = common.make_shapes(2000, 32, seed=5)
    colour = x.float().mean((2, 3))                                      # (N, 3)
    means = torch.stack([colour[y == c].mean(0) for c in range(10)])     # (10, 3)
    assert (means - colour.mean(0)).abs().max() < 20
    assert ((torch.cdist(colour, means).argmin(1) == y).float().mean() < 0.2)
    assert common.make_shapes(10, 64, seed=0)[0].shape == (10, 3, 64, 64)


# ------------------------------------------------------------------------------------ image folders
def test_imagefolder_is_decoded_resized_and_cached(tmp_path):
    import argparse

    from PIL import Image
    for split, n in (("train", 3), ("val", 2)):
        for c, colour in (("cats", 200), ("dogs", 50)):
            os.makedirs(tmp_path / split / c)
            for i in range(n):  # non-square, not at the target size
                Image.new("RGB", (30, 20 + i), (colour,) * 3).save(tmp_path / split / c / f"{i}.png")
    (tmp_path / "train" / "cats" / "notes.txt").write_text("not an image")  # skipped with a warning
    args = argparse.Namespace(dataset="imagefolder", data_dir=str(tmp_path), image_size=16, train_subset=None)
    data = common.load_data(args)
    assert data.train_x.shape == (6, 3, 16, 16) and data.test_x.shape == (4, 3, 16, 16)
    assert data.train_y.tolist() == [0, 0, 0, 1, 1, 1] and data.classes == 2
    assert data.train_x[0].float().mean().item() == pytest.approx(200) and data.train_x[3].max() == 50
    assert (tmp_path / "cache-16px.pt").exists()
    again = common.load_data(args)  # from the cache
    assert torch.equal(again.train_x, data.train_x) and torch.equal(again.test_y, data.test_y)


# -------------------------------------------------------------------------------- several processes
def test_gather_is_the_identity_on_one_process():
    x = torch.randn(4, 3, requires_grad=True)
    y = common.gather(x)
    assert y is x  # no process group: losses see the local batch, gradients untouched


# ------------------------------------------------------------------------------ raw-pixel kNN
def numpy_pixel_knn(bank, bank_y, test, test_y, k=200, temperature=0.1):
    """Raw-pixel kNN computed here with numpy alone: each pixel standardised over the bank (its std, with
    n - 1, at least 1 grey level), cosine similarity, the k nearest vote with exp(sim / T), ties to the
    lowest class."""
    bank, test = (x.reshape(len(x), -1).astype(np.float64) for x in (bank, test))
    mean, std = bank.mean(0), np.maximum(bank.std(0, ddof=1), 1.0)
    unit = lambda x: (x - mean) / std / np.linalg.norm((x - mean) / std, axis=1, keepdims=True)
    sim = unit(test) @ unit(bank).T                                           # (test, bank)
    correct = 0
    for s, y in zip(sim, test_y):
        near = np.argsort(-s, kind="stable")[:k]
        votes = np.bincount(bank_y[near], weights=np.exp(s[near] / temperature), minlength=bank_y.max() + 1)
        correct += int(votes.argmax() == y)
    return correct / len(test)


@pytest.mark.parametrize("grey", [False, True])
def test_pixel_knn_matches_numpy(grey):
    """300 bank and 80 test images of 4 noisy class prototypes (k = 200 of 300 vote), a band of pixels
    constant over the bank (its std floored), colour or grey (3 equal channels: computed from one)."""
    rng = np.random.default_rng(1)
    prototypes = rng.integers(0, 256, (4, 1 if grey else 3, 6, 6))
    def images(n):
        y = rng.integers(0, 4, n)
        x = np.clip(prototypes[y] + rng.normal(0, 90, (n, 1 if grey else 3, 6, 6)), 0, 255).astype(np.uint8)
        return np.repeat(x, 3, axis=1) if grey else x, y
    (bank, bank_y), (test, test_y) = images(300), images(80)
    bank[:, :, 0], test[:5, :, 0] = 7, 200  # row 0 is 7 in every bank image (std 0); some test images differ there
    bank_split, test_split = (torch.from_numpy(bank), torch.from_numpy(bank_y)), (torch.from_numpy(test), torch.from_numpy(test_y))
    data = common.Data(bank_split, bank_split, test_split, list("abcd"), (0.5,) * 3, (0.2,) * 3, track=10)
    expected = numpy_pixel_knn(bank, bank_y, test, test_y)
    assert 0.3 < expected < 1  # neither chance nor trivial
    assert common.pixel_knn_accuracy(data, torch.device("cpu")) == expected
