"""Several processes (torchrun, gloo on CPU): N processes with per-process batch B train exactly like
one process with batch N x B on the same samples.

How BatchNorm is handled: under torchrun every BatchNorm becomes a synchronised one (torch's
SyncBatchNorm on CUDA; on CPU, where torch's refuses to run, common.CPUSyncBatchNorm), so the 2-process
runs here normalise over the global batch like the 1-process runs, and the comparison is exact up to
float summation order. Every process draws the augmentation parameters of the whole global batch and
keeps its slice, so both runs see the same views; the test compares losses, parameter updates,
BatchNorm statistics and evaluations."""
import importlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, read_log
import common
import distributed_worker as worker

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def torchrun(*args, timeout=300):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([*TORCHRUN, *map(str, args)], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every RUNS entry of distributed_worker, once under torchrun with 2 processes (in the background)
    and once in this process; returns (folder of 2-process runs, folder of 1-process runs)."""
    two, one = tmp_path_factory.mktemp("two"), tmp_path_factory.mktemp("one")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*TORCHRUN, "tests/distributed_worker.py", str(two), ",".join(worker.RUNS)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    handler = signal.getsignal(signal.SIGINT)
    try:
        for name in worker.RUNS:
            method, args = worker.argv(name, str(one))
            importlib.import_module(method).main(args)
    finally:
        signal.signal(signal.SIGINT, handler)
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, output[-3000:]
    return two, one


def initial_model(name):
    """The model main() builds before training: seeded with --seed right before Model(args)."""
    method, args = worker.argv(name, "unused")
    module = importlib.import_module(method)
    common.seed_everything(0)
    return module.Model(module.get_args(args))


@pytest.mark.parametrize("name", list(worker.RUNS))
def test_two_processes_train_like_one_with_the_global_batch(runs, name):
    two, one = runs
    log2, log1 = read_log(two / name), read_log(one / name)
    assert [r["world_size"] for r in log2[1:]] == [2] and [r["world_size"] for r in log1[1:]] == [1]
    assert log2[1]["global_batch"] == log1[1]["global_batch"] == 32
    for key, value in log1[1].items():  # every loss term (means over both steps) and the evaluations
        if key in ("knn_acc", "probe_acc"):  # float noise in the weights may flip a test image or two
            assert log2[1][key] == pytest.approx(value, abs=2.5 / 2000), key  # two images
        elif key not in ("seconds", "images_per_sec", "world_size"):
            assert log2[1][key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
    assert log2[0]["knn_acc"] == log1[0]["knn_acc"]  # the same random initialisation
    state2, state1 = (torch.load(d / name / "last.pt", weights_only=True)["state"] for d in (two, one))
    init = initial_model(name).state_dict()
    worst = 0.0
    for key, start in init.items():
        if not start.is_floating_point():
            assert torch.equal(state2["model"][key], state1["model"][key]), key
            continue
        update1, update2 = state1["model"][key] - start, state2["model"][key] - start  # SGD: -lr * gradient
        scale = update1.abs().max().item()
        assert scale > 0, f"{key} did not change"
        difference = (update2 - update1).abs().max().item()
        assert difference <= 1e-3 * scale + 1e-6, f"{key}: updates differ by {difference:.2g} (update {scale:.2g})"
        if scale > 1e-5:  # (a bias that the loss cancels gets a near-zero, noisy update)
            worst = max(worst, difference / scale)
    print(f"{name}: largest update difference {worst:.2g} of the update")  # quoted in the closing note
    probe2, probe1 = state2["probe"]["linear"]["weight"], state1["probe"]["linear"]["weight"]
    assert torch.allclose(probe2, probe1, atol=1e-5)


def test_evaluation_of_a_two_process_run_equals_a_one_process_evaluation_of_its_weights(runs):
    two, _ = runs
    method, args = worker.argv("vicreg", "unused")
    module = importlib.import_module(method)
    margs = module.get_args(args)
    model = module.Model(margs)
    checkpoint = torch.load(two / "vicreg" / "last.pt", weights_only=True)
    model.load_state_dict(checkpoint["state"]["model"])
    probe = common.OnlineProbe(model.backbone.out_dim, 10, torch.device("cpu"))
    probe.load_state_dict(checkpoint["state"]["probe"])
    here = common.evaluate(model.backbone, probe, common.load_data(margs), torch.device("cpu"))
    logged = read_log(two / "vicreg")[-1]
    assert here == {"knn_acc": logged["knn_acc"], "probe_acc": logged["probe_acc"]}


def test_torchrun_run_and_resume_write_one_run_folder(tmp_path):
    flags = ["--train-subset", 64, "--batch-size", 32, "--epochs", 2, "--out", tmp_path, "--name", "run"]
    first = torchrun("simclr.py", *flags, "--stop-after", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("epoch=1 ") == 1 and "2 processes x 16 images = global batch 32" in first.stdout
    second = torchrun("simclr.py", "--resume", tmp_path / "run")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming" in second.stdout and second.stdout.count("epoch=2 ") == 1  # printed by one process
    assert sorted(os.listdir(tmp_path)) == ["run"]
    log = read_log(tmp_path / "run")
    assert [row["epoch"] for row in log] == [0, 1, 2]
    assert [(row["world_size"], row["global_batch"]) for row in log[1:]] == [(2, 32), (2, 32)]
    saved = json.load(open(tmp_path / "run" / "args.json"))
    assert (saved["world_size"], saved["batch_size"]) == (2, 32)
    assert json.load(open(tmp_path / "run" / "results.json"))["epochs"] == 2
    assert not [f for f in os.listdir(tmp_path / "run") if ".tmp" in f]


def our_lines(result):
    """The workers' own error lines (torchrun adds its own failure report after them)."""
    return [line for line in result.stderr.splitlines() if line.startswith(("error:", "simclr.py: error:"))]


@pytest.mark.parametrize("case", ["bad flag", "missing data", "one process lacks the data"])
def test_a_failing_process_stops_the_job_with_a_one_line_error(tmp_path, case):
    start = time.time()
    if case == "one process lacks the data":  # rank 1 fails after the process group is up; rank 0 waits on it
        result = torchrun("tests/distributed_worker.py", tmp_path, "fail-rank1:simclr", timeout=120)
        expected = "error: --data-dir"
    else:
        flags = ["--lr=-1"] if case == "bad flag" else ["--dataset", "imagefolder", "--data-dir", tmp_path / "none"]
        result = torchrun("simclr.py", *worker.FLAGS, *flags, "--out", tmp_path, timeout=120)
        expected = "argument --lr: must be positive" if case == "bad flag" else "error: --data-dir"
    assert result.returncode != 0 and time.time() - start < 120
    lines = our_lines(result)
    assert lines and all(expected in line or "another process of the job failed" in line for line in lines), lines
    assert any(expected in line for line in lines)
    assert "Traceback" not in "".join(line for line in result.stderr.splitlines() if line.startswith("[rank"))
    assert not os.path.exists(tmp_path / "run")
