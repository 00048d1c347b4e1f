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


THREADS = torch.get_num_threads()  # the suite's (OMP_NUM_THREADS above)


@pytest.fixture(autouse=True)
def keep_threads():
    """A main() run in this process sets torch's threads (setup_device): every test starts and ends with
    the suite's, so that in-process runs do not depend on which tests ran before them."""
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(THREADS)


@pytest.fixture
def run():
    return run_script


def read_log(run_dir):
    """A run folder's log.jsonl as a list of dicts, one per epoch (epoch 0: the random-init baseline)."""
    return [json.loads(line) for line in open(os.path.join(run_dir, "log.jsonl"))]


def flatten(obj, prefix=""):
    """A nested state (dicts, lists, tuples) as {"a.b.0": leaf}."""
    if isinstance(obj, dict):
        return {k: v for key, value in obj.items() for k, v in flatten(value, f"{prefix}{key}.").items()}
    if isinstance(obj, (list, tuple)):
        return {k: v for i, value in enumerate(obj) for k, v in flatten(value, f"{prefix}{i}.").items()}
    return {prefix: obj}


def run_straight_and_split(script, args, out):
    """Runs `script args` straight (out/straight), and split (out/split: --stop-after 1, then --resume)."""
    run_script(script, *args, "--out", out, "--name", "straight")
    run_script(script, *args, "--out", out, "--name", "split", "--stop-after", "1")
    assert not (out / "split" / "results.json").exists()
    run_script(script, "--resume", out / "split")


def assert_same_runs(a_dir, b_dir):
    """Every part of the two runs' last.pt state is equal (model, optimizer, probe, and what a method adds:
    CorInfoMax's running estimates, SSLPM-SGD's predictor, AdaDim's alpha and momentum encoder), and so are
    their logs and results (timing aside). Returns both checkpoints for method checks."""
    a, b = (torch.load(d / "last.pt", weights_only=True) for d in (a_dir, b_dir))
    assert a["epoch"] == b["epoch"] and set(a["state"]) == set(b["state"])
    for part in a["state"]:
        flat_a, flat_b = flatten(a["state"][part]), flatten(b["state"][part])
        assert flat_a.keys() == flat_b.keys(), part
        for key, value in flat_a.items():
            same = torch.equal(value, flat_b[key]) if torch.is_tensor(value) else value == flat_b[key]
            assert same, (part, key)
    timing = ("seconds", "images_per_sec")
    strip = lambda rows: [{k: v for k, v in row.items() if k not in timing} for row in rows]
    assert strip(read_log(a_dir)) == strip(read_log(b_dir))
    results = strip([json.load(open(d / "results.json")) for d in (a_dir, b_dir)])
    assert results[0] == results[1]
    return a, b


def assert_resume_is_exact(script, args, tmp_path):
    """Runs `script args` straight, and split (--stop-after 1, then --resume): the same run (assert_same_runs),
    for every method. Returns both checkpoints for method checks."""
    run_straight_and_split(script, args, tmp_path)
    return assert_same_runs(tmp_path / "straight", tmp_path / "split")
