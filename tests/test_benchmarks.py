"""The benchmarks a GPU user runs first, tiny on the CPU: they run and print their table. No test asserts a
time (the machines are shared); benchmarks/ measure, tests only check that the commands work."""
import json
import os

import pytest

import common
from conftest import run_script


def test_epoch_benchmark_runs_every_method_on_the_cpu(tmp_path):
    out = tmp_path / "epoch.json"
    result = run_script("benchmarks/epoch.py", "--device", "cpu", "--width", "2", "--images", "512",
                        "--batch-size", "256", "--methods", "simclr", "corinfomax", "sslpm-sgd", "--json", out)
    table = json.load(open(out))
    assert [r["method"] for r in table["rows"]] == ["simclr", "corinfomax", "sslpm-sgd"]
    for row in table["rows"]:
        assert row["batch"] == 256 and row["seconds_per_epoch"] > 0 and row["images_per_sec"] > 0
        assert row["peak_memory_gb"] > 0
    assert "s/epoch" in result.stdout and "images/s" in result.stdout


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
