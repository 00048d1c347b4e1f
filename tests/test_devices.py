"""What differs off the CPU, emulated on it: a second device (tensors tagged as living there: no op may mix
them with host tensors, and every host synchronisation of a training step is counted), a device without
float64 (MPS), and LARS's foreach form against the loop it replaced."""
import collections
import contextlib
import copy
import os
import importlib
import subprocess
import sys

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

import common
import metrics
from conftest import ROOT, TINY

FACTORIES = {"tensor", "as_tensor", "zeros", "ones", "empty", "full", "arange", "eye", "rand", "randn", "randint",
             "randperm", "linspace"}
SYNCS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "masked_select", "cpu", "numpy"}


class SecondDevice(TorchFunctionMode):
    """Every tensor is on 'the device' except those made on the host while the mode is on: by a factory
    without device=, by .cpu(), or from host tensors only. Counts host synchronisations (SYNCS and
    boolean-mask indexing of device tensors), blocking host-to-device copies, and ops that mix a host
    tensor (not a 0-d one) with device tensors, which a GPU refuses (indexing a device tensor with host
    indices aside)."""
    def __init__(self):
        super().__init__()
        self.syncs, self.mixed, self.copies = collections.Counter(), collections.Counter(), collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        tensors = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        host = [t for t in tensors if getattr(t, "_host", False)]
        device = [t for t in tensors if not getattr(t, "_host", False)]
        moves = name == "to" and any(isinstance(a, (torch.device, str)) for a in (*args[1:], kwargs.get("device")))
        if device:
            if name in SYNCS or (name == "__getitem__" and any(t.dtype == torch.bool for t in tensors[1:])):
                self.syncs[name] += 1
            if any(t.ndim > 0 for t in host) and not (name in ("__getitem__", "__setitem__") and device[0] is args[0]):
                self.mixed[name] += 1
        elif host and moves and not kwargs.get("non_blocking"):
            self.copies[name] += 1
        out = func(*args, **kwargs)
        on_host = ((name in FACTORIES and kwargs.get("device") is None) or name in ("cpu", "numpy")
                   or (tensors and not device and not moves))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and (on_host or moves):
                t._host = on_host  # .to(device) of a tensor already there returns it: now on the device
        return out


class NoFloat64(TorchFunctionMode):
    """Records every float64 tensor made, except inside common.on_cpu_without_float64 (the CPU's part)."""
    def __init__(self):
        super().__init__()
        self.made, self.paused = collections.Counter(), False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        made = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor) and t.dtype == torch.float64]
        if made and not self.paused:
            self.made[getattr(func, "__name__", str(func))] += 1
        return out


def one_step(method, monkeypatch, tmp_path, modes, extra=()):
    """Run method.main in this process on a tiny shapes run, with `modes` on during the first training step
    only (from the batch it gets to the end of the loop body): the evaluation is skipped."""
    monkeypatch.setattr(common, "evaluate", lambda *a, **k: {"knn_acc": 0.0})

    def progress(self, loader, epoch):
        class Steps(list):
            def set_postfix(self, **values):
                pass

            def __iter__(self):
                for i, batch in enumerate(loader):
                    if i > 0:
                        return
                    with contextlib.ExitStack() as stack:
                        for mode in modes:
                            stack.enter_context(mode)
                        yield batch
        return Steps()
    monkeypatch.setattr(common.Run, "progress", progress)
    module = importlib.import_module(method)
    module.main([*TINY, "--recipe", "shapes", "--train-subset", "64", "--batch-size", "32", "--epochs", "1",
                 "--threads", "1", "--out", str(tmp_path), "--name", method, *extra])


# The host synchronisations one training step of each method may issue, each with its reason; none else.
DECLARED = {"simclr": {}, "vicreg": {}, "barlow": {}, "corinfomax": {}, "adadim": {}, "sslpm": {}}
# (not run here) sslpm --ridge 0: one .item() per step, the singular X^T X check the method needs;
# sslpm --predictor mlp: one .item() per inner step, the early stop on the validation mask (section 3.4.1).


@pytest.mark.parametrize("method", list(DECLARED))
def test_a_training_step_does_not_wait_for_the_device(method, monkeypatch, tmp_path):
    # and, for the methods with float64 state or solves, makes no float64 tensor where the device has none
    # (MPS: the CPU is declared such a device), but in common.on_cpu_without_float64's CPU part
    device, no_float64 = SecondDevice(), NoFloat64()
    modes = [device]
    if method in ("corinfomax", "adadim", "sslpm"):
        monkeypatch.setattr(common, "NO_FLOAT64", ("cpu", "mps"))
        fallback, modes = common.on_cpu_without_float64, [device, no_float64]

        def paused(fn, x):
            no_float64.paused = True
            try:
                return fallback(fn, x)
            finally:
                no_float64.paused = False
        monkeypatch.setattr(common, "on_cpu_without_float64", paused)
    one_step(method, monkeypatch, tmp_path, modes, ["--alpha-every", "1"] if method == "adadim" else [])
    assert dict(device.syncs) == DECLARED[method]
    assert not device.mixed and not device.copies, (device.mixed, device.copies)
    assert not no_float64.made, no_float64.made


# options whose steps take other paths: a momentum encoder, LARS with clip, SGD, other projectors and targets
OPTIONS = [("adadim", ["--momentum", "0.99", "--alpha-mode", "cosine"]),
           ("vicreg", ["--optimizer", "lars", "--lars-clip"]),
           ("sslpm", ["--target", "masked", "--proj-layers", "0"]),
           ("barlow", ["--optimizer", "sgd", "--scale-loss", "0.1"]),
           ("simclr", ["--proj-layers", "1"]),
           ("corinfomax", ["--optimizer", "lars", "--proj-layers", "2"])]


@pytest.mark.parametrize("method,extra", OPTIONS)
def test_other_options_do_not_wait_for_the_device_either(method, extra, monkeypatch, tmp_path):
    device = SecondDevice()
    one_step(method, monkeypatch, tmp_path, [device], extra)
    assert dict(device.syncs) == DECLARED[method] and not device.mixed and not device.copies, (
        device.syncs, device.mixed, device.copies)


def features(n=64, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    return x, x[:, :8] @ torch.randn(8, 6, generator=g) + 0.1 * torch.randn(n, 6, generator=g)


def test_metrics_keep_to_the_device_of_their_inputs():
    # the crash of metrics.py on CUDA: nonlinear_redundancy's per_feature was made on the CPU
    r, z = features()
    views = (r, r + 0.1, z, z + 0.1)
    mode = SecondDevice()
    with mode:
        out = metrics.report(r, z, torch.arange(64, device=r.device) % 3, views=views, nlr_steps=2)
        metrics.nonlinear_redundancy(r, steps=2)
    assert not mode.mixed, mode.mixed
    assert "undefined" not in out, out.get("undefined")


def test_metrics_without_float64(monkeypatch):
    # every measure of report() runs, and makes no float64 tensor, where the device has none
    monkeypatch.setattr(common, "NO_FLOAT64", ("cpu", "mps"))
    r, z = features()
    mode = NoFloat64()
    with mode:
        out = metrics.report(r, z, torch.arange(64) % 3, views=(r, r + 0.1, z, z + 0.1), nlr_steps=2)
    assert not mode.made, mode.made
    assert "undefined" not in out, out.get("undefined")
    exact = metrics.report(r.double(), z.double(), torch.arange(64) % 3, nlr_steps=0)
    for key in ("effective_rank_R", "rankme_Z", "aac_R", "lr_R", "logdet_entropy_Z", "ldmi_RZ"):
        assert out[key] == pytest.approx(exact[key], rel=1e-3), key


def test_a_failing_measure_is_one_recorded_line():
    out = metrics.Measures()
    out.put("bad", lambda: torch.zeros(2, device="meta").item())
    out.put("undefined_one", metrics.covariance_eigenvalues, torch.zeros(1, 3))
    assert out["bad"] is None and out["undefined"]["bad"].startswith("failed (")
    assert "\n" not in out["undefined"]["bad"] and "at least 2" in out["undefined"]["undefined_one"]


class LoopLARS(torch.optim.Optimizer):
    """common.LARS as it was: a Python loop over parameters (the reference the foreach form must equal)."""
    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0, eta=0.02, clip=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta,
                                      clip=clip, lars_exclude=False))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if not group["lars_exclude"]:
                    update = update.add(p, alpha=group["weight_decay"])
                    w_norm, u_norm = torch.norm(p), torch.norm(update)
                    trust = torch.where((w_norm > 0) & (u_norm > 0), group["eta"] * w_norm / u_norm,
                                        torch.ones_like(w_norm))
                    if group["clip"]:
                        trust = (trust / group["lr"]).clamp(max=1.0)
                    update = update * trust
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                buf.mul_(group["momentum"]).add_(update)
                p.add_(buf, alpha=-group["lr"])


@pytest.mark.parametrize("clip", [False, True])
def test_lars_equals_the_loop_it_replaced(clip):
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    with torch.no_grad():
        a[3].weight.zero_()  # a zero weight: trust ratio 1
    b = copy.deepcopy(a)
    a[0].bias.requires_grad_(False)  # a parameter without gradient is skipped
    b[0].bias.requires_grad_(False)

    def make(model, cls):
        return cls([{"params": [p for p in model.parameters() if p.ndim > 1]},
                    {"params": [p for p in model.parameters() if p.ndim <= 1], "weight_decay": 0.0,
                     "lars_exclude": True}], lr=0.3, weight_decay=1e-4, clip=clip)
    optimizers = make(a, LoopLARS), make(b, common.LARS)
    for _ in range(4):
        x = torch.randn(32, 8)
        for model, optimizer in zip((a, b), optimizers):
            optimizer.zero_grad()
            model(x).pow(2).mean().backward()
            optimizer.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    for p, q in zip(a.parameters(), b.parameters()):
        if p.requires_grad:
            assert torch.equal(optimizers[0].state[p]["momentum_buffer"], optimizers[1].state[q]["momentum_buffer"])


def test_checkpoint_cadence(tmp_path, monkeypatch):
    # --save-every N: last.pt at every N-th epoch, at --stop-after and at the end; by default (0) whenever
    # writing has taken at most 2% of the training time so far
    import argparse
    import signal
    monkeypatch.setattr(signal, "signal", lambda *a: None)

    def saved_epochs(every, stop_after=None, epoch_seconds=1.0):
        args = argparse.Namespace(out=str(tmp_path), name=f"r{every}-{stop_after}-{epoch_seconds}", resume=None,
                                  epochs=10, stop_after=stop_after, save_every=every, batch_size=2, lr=0.1)
        run, saved = common.Run(args, __file__, torch.device("cpu")), []
        os.makedirs(run.dir, exist_ok=True)  # Run claimed it: made it
        for epoch in range(1, (stop_after or 10) + 1):
            run.seconds += epoch_seconds
            run.save(epoch, {"w": torch.nn.Linear(2, 2)})
            if run.saved == epoch:
                saved.append(epoch)
                run.save_seconds = 0.05 * len(saved)  # as if each write took 50 ms
        return saved
    assert saved_epochs(3) == [3, 6, 9, 10]
    assert saved_epochs(4, stop_after=5) == [4, 5]
    assert saved_epochs(0, epoch_seconds=10.0) == list(range(1, 11))     # 50 ms of 10 s epochs: every one
    assert saved_epochs(0, epoch_seconds=0.5) == [1, 5, 10]             # 50 ms of 0.5 s epochs: 2% at 2.5 s


def test_channels_last_backward_where_it_is_used():
    # oneDNN's channels_last backward crashed the process (segmentation fault) at 192-224 px for widths 4
    # and 8 (benchmarks: every width 4-64 from 32 to 128 px ran): one forward and backward of a batch of 2,
    # in a subprocess, at the largest sizes common.channels_last allows on the CPU
    code = """
import sys, torch
sys.path.insert(0, sys.argv[1])
import common
for size, width in ((63, 8), (128, 4), (128, 8)):  # the largest of each stem; the widths that crashed
    assert common.channels_last(torch.device("cpu"), size)
    model = common.backbone("resnet18", width, size).to(memory_format=torch.channels_last)
    model(torch.randn(2, 3, size, size).contiguous(memory_format=torch.channels_last)).sum().backward()
assert not common.channels_last(torch.device("cpu"), 129)
"""
    result = subprocess.run([sys.executable, "-c", code, ROOT], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])


def test_one_line_errors_of_gpus_and_torchrun(monkeypatch, capsys):
    import argparse
    args = argparse.Namespace(threads=1, device="cpu", batch_size=64, image_size=32, compile=True, name="x")
    # setup_device sets the process's threads and excepthook: keep both for the tests that run after this one
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(common, "WORLD_SIZE", 2)  # torchrun: --compile is refused before joining the group
    with pytest.raises(SystemExit, match="--compile: not under torchrun"):
        common.setup_device(args)
    monkeypatch.setattr(common, "WORLD_SIZE", 1)
    common.setup_device(args)
    sys.excepthook(torch.cuda.OutOfMemoryError, torch.cuda.OutOfMemoryError("CUDA out of memory. Tried ..."), None)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--batch-size (now 64)" in err and "--image-size (now 32)" in err


def test_fallback_computes_in_float64_on_the_cpu(monkeypatch):
    # AdaDim's alpha and CorInfoMax's eigenvalues_R1 on a device without float64 (MPS lacks eigvalsh and
    # svdvals too): computed on the CPU in float64, returned in the device's precise dtype
    import adadim
    z = torch.randn(32, 8) @ torch.randn(8, 16)
    monkeypatch.setattr(common, "NO_FLOAT64", ("cpu", "mps"))
    rank = common.on_cpu_without_float64(adadim.effective_rank, z)
    assert rank.dtype == torch.float32 and rank.item() == pytest.approx(adadim.effective_rank(z.double()).item(), rel=1e-6)
    eig = common.on_cpu_without_float64(torch.linalg.eigvalsh, z.T @ z)
    assert eig.dtype == torch.float32 and torch.allclose(eig.double(), torch.linalg.eigvalsh((z.T @ z).double()), rtol=1e-5)


class FakeGPU(TorchFunctionMode):
    """A CUDA device on the CPU: ops run on the CPU (or meta); a tensor made on or moved to "cuda" is tagged as
    living there (and what ops make of it too), and a move there is a copy, as a GPU's is: a new tensor, its
    source recorded in `copied` (a tensor already there is not copied again)."""
    def __init__(self):
        super().__init__()
        self.copied = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs, name = dict(kwargs or {}), getattr(func, "__name__", "")
        if getattr(func, "__self__", None) in (torch.Tensor.is_cuda, torch.Tensor.device):  # what a tag says
            there = getattr(args[0], "on_gpu", False)
            return there if func.__self__ is torch.Tensor.is_cuda else torch.device("cuda") if there else func(*args)
        gpu = lambda d: isinstance(d, (torch.device, str)) and torch.device(d).type == "cuda"
        made = name != "to" and gpu(kwargs.get("device"))
        moves = name == "to" and (gpu(kwargs.get("device")) or any(gpu(a) for a in args[1:]))
        if made:
            kwargs["device"] = "cpu"
        if moves:  # to where the tensor is (CPU or meta): the copy is made below
            args = (args[0], *(args[0].device if gpu(a) else a for a in args[1:]))
            kwargs = {k: args[0].device if k == "device" and gpu(v) else v for k, v in kwargs.items()}
        there = made or moves or any(getattr(t, "on_gpu", False) for t in tree_flatten((args, kwargs))[0]
                                     if isinstance(t, torch.Tensor))
        out = func(*args, **kwargs)
        if moves and not getattr(args[0], "on_gpu", False):
            self.copied.append(args[0])
            out = out.clone() if out is args[0] else out
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and there:
                t.on_gpu = True
        return out


def fake_gpu(monkeypatch, free_gb=79.5, capability=(9, 0)):
    """torch.cuda answering as a GPU with free_gb GB free and this compute capability would."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free_gb * 1e9, 80e9))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    return torch.device("cuda")


def resnet18_saved_bytes(size, width=64):
    """float32 bytes autograd keeps per image for ResNet-18's backward, counted by hand from the layer shapes:
    the stem keeps its input and its conv's and BN's outputs (ReLU in place), the ImageNet stem (64 px up) also
    its max-pool's output and int64 indices; each BasicBlock its conv1, bn1 (ReLU in place), conv2 outputs and
    its own output (bn2's, added to and ReLU'd in place), a downsampling block its 1x1 conv's output too."""
    s = size
    if size < 64:
        total = 4 * (3 * s * s + 2 * width * s * s)
    else:
        half, s = (s + 1) // 2, ((s + 1) // 2 + 1) // 2
        total = 4 * (3 * size * size + 2 * width * half * half + width * s * s) + 8 * width * s * s
    for i in range(4):
        s = s if i == 0 else (s + 1) // 2
        total += 4 * width * 2 ** i * s * s * (8 + (i > 0))  # two blocks a stage
    return total


@pytest.mark.parametrize("card,capability,gb,on_gpu", [
    (80, (9, 0), 19.6, True),    # ImageNet-100 at 224 px (19.6 GB) on an 80 GB H100: images and training fit
    (48, (8, 6), 19.6, False),   # a 48 GB card: under half its free memory (the old rule put them there), but
                                 # CorInfoMax's batch 1024 needs about 30 GB more: it ran out of memory
    (16, (8, 9), 19.6, False),   # a 16 GB card: not even the images fit
    (32, (7, 0), 19.6, False),   # a 32 GB V100: float32 (no native bf16), training alone needs more than that
    (48, (8, 6), 0.2, True),     # a small set (CIFAR-sized) with the same recipe on the 48 GB card
])
def test_where_the_data_lives_counts_the_training_memory(monkeypatch, capsys, card, capability, gb, on_gpu):
    import corinfomax
    device = fake_gpu(monkeypatch, card - 0.5, capability)
    args = corinfomax.get_args(["--dataset", "imagefolder", "--device", "cpu"])  # its ImageNet-100 recipe
    args.image_size, args.device = 224, "cuda"
    assert (args.arch, args.width, args.batch_size) == ("resnet18", 64, 1024)
    capsys.readouterr()  # the recipe line
    need = common.training_memory(args)  # 2 views of 1024 images, bf16 (half float32's) where native, +25% +2 GB
    kept = 2 * 1024 * resnet18_saved_bytes(224) * (0.5 if capability >= (8, 0) else 1)
    assert need == pytest.approx(kept * 1.25 + 2e9, rel=0.01)  # (the weights it also counts: 0.2%)
    n = round(gb * 1e9 / (3 * 224 * 224))
    images = torch.empty(n, 3, 224, 224, dtype=torch.uint8, device="meta")  # their size, not their memory
    with FakeGPU() as gpu:
        loader = common.Loader(images, torch.zeros(n, dtype=torch.long), 1024, device, need=need)
    assert (loader.images is not images) == on_gpu and sum(t is images for t in gpu.copied) == on_gpu
    assert getattr(loader.images, "on_gpu", False) == on_gpu
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and line.startswith(f"data: {gb:.1f} GB of images " +
                                                     ("on the GPU (" if on_gpu else "in CPU memory ("))
    assert f"({card - 0.5:.1f} GB free on the GPU, where training needs about {need / 1e9:.1f} GB" in line


def test_resnet_saved_bytes_by_hand_equal_the_meta_count():
    # the hand count above against the estimate's own count, at other sizes and widths (both stems)
    for size, width in ((16, 8), (32, 64), (64, 16), (96, 64)):
        with torch.device("meta"):
            model, kept = common.backbone("resnet18", width, size), {}
        counted = []
        for n in (1, 3):
            kept = {}
            with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.setdefault(id(t), t), lambda t: t):
                model(torch.empty(n, 3, size, size, device="meta"))
            counted.append(sum(t.nbytes for t in kept.values()))
        assert (counted[1] - counted[0]) / 2 == resnet18_saved_bytes(size, width), (size, width)


def test_images_already_on_the_device_are_neither_copied_nor_kept(monkeypatch, capsys):
    device = fake_gpu(monkeypatch)
    with FakeGPU() as gpu:
        x = torch.zeros(8, 3, 4, 4, dtype=torch.uint8).to(device)
        gpu.copied.clear()
        loader = common.Loader(x, torch.zeros(8, dtype=torch.long), 4, device)
        assert loader.images is x and not any(t is x for t in gpu.copied) and x not in common.Loader.placed
        assert sum(len(images) for images, _ in loader) == 8
    assert "GB of images on the GPU" in capsys.readouterr().out


def small_data(probe_is_train=True):
    """A Data of 16 px shapes: the probe set the training images themselves (shapes, CIFAR, image folders), or
    others (as STL-10's labelled part)."""
    (x, y), test = common.make_shapes(96, 16, seed=0), common.make_shapes(64, 16, seed=1)
    probe = (x, y) if probe_is_train else common.make_shapes(48, 16, seed=2)
    return common.Data((x, y), probe, test, common.SHAPE_NAMES, (0.5,) * 3, (0.25,) * 3, track=8)


@pytest.mark.parametrize("probe_is_train,free_gb", [(True, 79.5), (False, 79.5), (True, 0.0)])
def test_linear_eval_makes_no_second_copy_of_the_images(monkeypatch, probe_is_train, free_gb):
    # the training's Loader put the images on the GPU (free_gb 79.5) or kept them in CPU memory (0.0): the
    # linear evaluation copies no set the GPU already holds (other probe images: once; CPU ones: batch by batch)
    device, data = fake_gpu(monkeypatch, free_gb, capability=(7, 5)), small_data(probe_is_train)
    with FakeGPU() as gpu:
        training = common.Loader(data.train_x, data.train_y, 32, device)
        assert (training.images is not data.train_x) == (free_gb > 0)
        backbone = common.backbone("resnet18", 4, 16).to(device)
        gpu.copied.clear()
        common.linear_eval(backbone, data, 1, device, batch_size=32)
    whole = [t for t in gpu.copied if t is data.train_x or t is data.probe_x]
    assert [id(t) for t in whole] == ([] if probe_is_train or free_gb == 0 else [id(data.probe_x)])
    batches = sum(len(t) == 32 and t.dtype == torch.uint8 for t in gpu.copied)  # a batch of images copied
    assert batches == (len(data.probe_x) // 32 if free_gb == 0 else 0)


@pytest.mark.parametrize("capability,bf16", [((7, 0), False), ((7, 5), False), ((8, 0), True), ((9, 0), True)])
def test_precision_follows_the_compute_capability(monkeypatch, capability, bf16):
    # V100 (7.0) and T4 (7.5) only emulate bf16: float32 there; A100 (8.0) and H100 (9.0) compute it natively
    import warnings
    device = fake_gpu(monkeypatch, capability=capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # as on a T4
    assert common.bf16(device) == bf16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # this CPU build of torch disables a CUDA autocast, with a warning
        context = common.autocast(device)
    assert isinstance(context, torch.autocast) == bf16
    assert not bf16 or (context.device, context.fast_dtype) == ("cuda", torch.bfloat16)
    assert not common.bf16(torch.device("cpu")) and isinstance(common.autocast(torch.device("cpu")),
                                                                contextlib.nullcontext)
