import json
import os
import subprocess
import sys

# A fixed number of CPU threads for every run of the suite (runs would otherwise choose theirs from the
# load of the moment, common.choose_threads): results then depend on the code only, and kill-and-resume
# comparisons stay exact.
os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# A run of a few seconds on shapes: a width-4 ResNet-18, 256 training images, kNN and probe every epoch.
TINY = ["--dataset", "shapes", "--width", "4", "--batch-size", "64", "--train-subset", "256",
        "--warmup-epochs", "1", "--eval-every", "1"]


def run_script(script, *args, env=None, check=True):
    """Run `python <script> args...` from the repository root as a user would; returns the result."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    result = subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)], cwd=ROOT,
                            capture_output=True, text=True, env=full_env, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{script} {' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture
def run():
    return run_script


def read_log(run_dir):
    """A run folder's log.jsonl as a list of dicts, one per epoch (epoch 0: the random-init baseline)."""
    return [json.loads(line) for line in open(os.path.join(run_dir, "log.jsonl"))]


def assert_resume_is_exact(script, args, tmp_path):
    """Runs `script args` straight, and split (--stop-after 1, then --resume); the model and probe
    weights and the logs (timing aside) must be equal. Returns both checkpoints for method checks."""
    run_script(script, *args, "--out", tmp_path, "--name", "straight")
    run_script(script, *args, "--out", tmp_path, "--name", "split", "--stop-after", "1")
    assert not (tmp_path / "split" / "results.json").exists()
    run_script(script, "--resume", tmp_path / "split")
    a, b = (torch.load(tmp_path / n / "last.pt", weights_only=True) for n in ("straight", "split"))
    for key, value in a["state"]["model"].items():
        assert torch.equal(value, b["state"]["model"][key]), key
    assert torch.equal(a["state"]["probe"]["linear"]["weight"], b["state"]["probe"]["linear"]["weight"])
    strip = lambda log: [{k: v for k, v in row.items() if k not in ("seconds", "images_per_sec")} for row in log]
    assert strip(read_log(tmp_path / "straight")) == strip(read_log(tmp_path / "split"))
    return a, b
