"""The benchmarks a GPU user runs first, tiny on the CPU: they run and print their table. No test asserts a
time (the machines are shared); benchmarks/ measure, tests only check that the commands work."""
import importlib.util
import json
import os
import signal
import sys

import pytest

import common
from conftest import ROOT, run_script


@pytest.fixture
def script(monkeypatch):
    """A benchmark script's module, to run its main() in this process (no second interpreter to start): the
    signal handler and excepthook that the methods' main() set are given back after the test."""
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    handler = signal.getsignal(signal.SIGINT)
    def load(name):  # by its path: benchmarks/metrics.py must not stand for metrics.py on sys.path
        path = os.path.join(ROOT, "benchmarks", f"{name}.py")
        spec = importlib.util.spec_from_file_location(f"benchmark_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    yield load
    signal.signal(signal.SIGINT, handler)


def test_epoch_benchmark_runs_every_method_on_the_cpu(tmp_path, script, capsys):
    out = tmp_path / "epoch.json"
    script("epoch").main(["--device", "cpu", "--width", "2", "--images", "256", "--batch-size", "128",
                             "--methods", "simclr", "corinfomax", "sslpm-sgd", "--json", str(out)])
    table = json.load(open(out))
    assert [r["method"] for r in table["rows"]] == ["simclr", "corinfomax", "sslpm-sgd"]
    for row in table["rows"]:
        assert row["batch"] == 128 and row["seconds_per_epoch"] > 0 and row["images_per_sec"] > 0
        assert row["peak_memory_gb"] > 0
    printed = capsys.readouterr().out
    assert "s/epoch" in printed and "images/s" in printed


def test_gpu_check_writes_every_section_of_its_report_on_the_cpu(tmp_path, script):
    # the first command on a GPU, tiny on the CPU: every method end to end, the data kept in CPU memory,
    # metrics.py, CorInfoMax's ImageNet-100 steps, the epoch table; --compile is CUDA's only
    gpu_check = script("gpu_check")
    gpu_check.main(["--cpu-smoke", "--out", str(tmp_path / "report")])
    report = json.load(open(tmp_path / "report.json"))
    sections = [f"run/{m}" for m in gpu_check.METHODS] + gpu_check.SECTIONS
    assert list(report["checks"]) == sections and report["failed"] == [], report["checks"]
    assert report["passed"] == len(sections) - 1 and report["checks"]["compile"]["ok"] is None
    lines = (tmp_path / "report.txt").read_text().splitlines()
    assert [line.split(": ")[0] for line in lines] == sections
    assert all(line.split(": ")[1].startswith("ok (") for line in lines if not line.startswith("compile"))
    assert lines[sections.index("compile")].startswith("compile: skipped: CUDA only")
    for method in gpu_check.METHODS:  # stopped after epoch 1, resumed to the end, linear evaluation included
        run = report["checks"][f"run/{method}"]
        assert run["epochs"] == 2 and 0 <= run["knn_acc"] <= 1 and 0 <= run["linear_acc"] <= 1
    assert report["checks"]["metrics"]["n_samples"] == 200 and "rankme_R" in report["checks"]["metrics"]
    assert [r["method"] for r in report["checks"]["epoch"]["rows"]] == ["simclr"]
    assert report["checks"]["peak/corinfomax"]["image_size"] == 64


def test_step_benchmark_times_the_methods_own_main_on_the_cpu():
    result = run_script("benchmarks/step.py", "--device", "cpu", "--width", "2", "--batch-size", "64", "--image-size",
                        "16", "--steps", "1", "--warmup", "0", "--threads", "1", "--methods", "corinfomax", "--no-alpha")
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[2:]}
    assert set(rows) == {"vicreg", "corinfomax"}  # VICReg, the baseline, always runs
    assert rows["corinfomax"][4:6] == ["2048-2048-64", "SGD"]  # what its main() built from its CIFAR-10 recipe
    assert float(rows["vicreg"][1]) > 0 and rows["vicreg"][3] == "1.00x"


@pytest.mark.parametrize("busy,expected", [(0, 2), (1, 1), (2, 1), (5, 1)])
def test_default_threads_leave_the_busy_cores_alone(monkeypatch, busy, expected):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(common.torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(common, "busy_cores", lambda: busy)
    assert common.choose_threads() == expected
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's own setting wins
    assert common.choose_threads() == 2


def test_busy_cores_counts_other_running_processes():
    import subprocess
    import sys
    import time
    if not os.path.exists("/proc/stat"):  # not Linux: nothing to count, one thread per core
        assert common.busy_cores() == 0
        return
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        time.sleep(0.5)
        assert common.busy_cores() >= 1  # at least one of the two is running at any moment on 2 cores
    finally:
        for s in spinners:
            s.kill()
