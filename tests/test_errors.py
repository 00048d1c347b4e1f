"""Bad input: one clear line on stderr naming the flag and what is allowed, a non-zero exit, and an
existing last.pt never overwritten. Sections: 1. bad input, 2. what is on disk, 3. non-finite values,
4. signals, 5. fuzzing the command line, 6. --help, 7. progress when the output is piped."""
import hashlib
import os

import pytest
import torch

from conftest import TINY

ONE_EPOCH = [*TINY, "--train-subset", "128", "--epochs", "1", "--warmup-epochs", "0"]


# -------------------------------------- 1. bad input: one line that names the flag, nothing written
def one_line_error(result, *needles):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.mark.parametrize("flag,value,needles", [
    ("--dataset", "imagenet", ["--dataset", "invalid choice", "cifar100"]),
    ("--policy", "strong", ["--policy", "invalid choice", "asymmetric"]),
    ("--optimizer", "adam", ["--optimizer", "invalid choice", "lars"]),
    ("--arch", "vit", ["--arch", "invalid choice", "resnet18"]),
    ("--batch-size", "1", ["--batch-size", "at least 2"]),
    ("--lr", "nan", ["--lr", "must be positive", "nan"]),
    ("--weight-decay", "-1", ["--weight-decay", "0 or more"]),
    ("--lr", "fast", ["--lr", "expected a float"]),
    ("--device", "tpu", ["--device", "cpu"]),
    ("--linear-epochs", "-1", ["--linear-epochs"]),
])
def test_bad_flag_values(run, tmp_path, flag, value, needles):
    one_line_error(run("simclr.py", *ONE_EPOCH, "--out", tmp_path, flag, value, check=False), *needles)
    assert not os.listdir(tmp_path)  # nothing written


def test_missing_imagefolder_dir(run, tmp_path):
    result = run("simclr.py", "--dataset", "imagefolder", "--data-dir", tmp_path / "nowhere", "--out", tmp_path,
                 check=False)
    one_line_error(result, "--data-dir", "train/ and val/")


def test_failed_download_says_what_to_fetch_and_where(run, tmp_path):
    # a dead local proxy makes the real torchvision download fail at once, with no traffic leaving
    dead = "http://127.0.0.1:9"
    result = run("simclr.py", "--dataset", "cifar10", "--data-dir", tmp_path / "data", "--out", tmp_path, check=False,
                 env={"http_proxy": dead, "https_proxy": dead, "HTTP_PROXY": dead, "HTTPS_PROXY": dead})
    one_line_error(result, "--dataset cifar10", "cifar-10-python.tar.gz", str(tmp_path / "data"))


def test_batch_larger_than_dataset(run, tmp_path):
    result = run("simclr.py", *ONE_EPOCH, "--batch-size", "512", "--out", tmp_path, check=False)
    one_line_error(result, "--batch-size 512", "128 images")


# ----------------------------------------------------------------- 2. what is on disk is never lost
def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_existing_run_is_never_overwritten(run, tmp_path):
    run("simclr.py", *ONE_EPOCH, "--out", tmp_path, "--name", "r")
    ckpt = tmp_path / "r" / "last.pt"
    before = digest(ckpt)
    # a new run pointed at the same folder
    one_line_error(run("simclr.py", *ONE_EPOCH, "--out", tmp_path, "--name", "r", check=False), "--name", "--resume")
    # a resume that contradicts the saved arguments
    one_line_error(run("simclr.py", "--resume", tmp_path / "r", "--lr", "9", check=False), "--lr", "saved")
    # a resume of a folder with no checkpoint
    one_line_error(run("simclr.py", "--resume", tmp_path / "nothing", check=False), "--resume")
    assert digest(ckpt) == before


def test_corrupt_checkpoint(run, tmp_path):
    run("simclr.py", *ONE_EPOCH, "--out", tmp_path, "--name", "r")
    ckpt = tmp_path / "r" / "last.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])  # truncated, as by a full disk
    before = digest(ckpt)
    one_line_error(run("simclr.py", "--resume", tmp_path / "r", check=False), "--resume", "corrupt")
    assert digest(ckpt) == before


def test_unwritable_out_folder(run, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    one_line_error(run("simclr.py", *ONE_EPOCH, "--out", blocker / "runs", check=False), "--out", "cannot create")


def test_disk_full_while_saving_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    import errno

    import torch

    import common
    path = tmp_path / "last.pt"
    common.atomic_write(str(path), {"epoch": 1})
    before = digest(path)

    def full_disk(obj, f):  # writes part of the file, then the disk is full
        open(f, "wb").write(b"PK\x03\x04 partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(SystemExit) as e:
        common.atomic_write(str(path), {"epoch": 2})
    assert "No space left" in str(e.value) and "\n" not in str(e.value)
    assert digest(path) == before and os.listdir(tmp_path) == ["last.pt"]  # no temp file left


def test_short_write_is_caught_by_the_read_back(tmp_path, monkeypatch):
    import torch

    import common
    path = tmp_path / "last.pt"
    common.atomic_write(str(path), {"epoch": 1})
    before = digest(path)
    real_save = torch.save

    def truncated(obj, f):  # "succeeds" but the file is cut short, as a full disk can do silently
        real_save(obj, f)
        data = open(f, "rb").read()
        open(f, "wb").write(data[: len(data) // 2])
    monkeypatch.setattr(torch, "save", truncated)
    with pytest.raises(SystemExit, match="could not write"):
        common.atomic_write(str(path), {"epoch": 2, "x": torch.zeros(1000)})
    assert digest(path) == before and os.listdir(tmp_path) == ["last.pt"]


def test_resume_of_a_finished_run_says_so(run, tmp_path):
    run("simclr.py", *ONE_EPOCH, "--out", tmp_path, "--name", "r")
    before = digest(tmp_path / "r" / "last.pt")
    result = run("simclr.py", "--resume", tmp_path / "r")
    assert "finished all its 1 epochs" in result.stdout and "--epochs" in result.stdout
    assert digest(tmp_path / "r" / "last.pt") == before


# ------------------------------------------------------------ 3. nothing non-finite is ever written
def test_nan_loss_stops_without_touching_the_checkpoint(run, tmp_path):
    run("simclr.py", *ONE_EPOCH, "--epochs", "2", "--stop-after", "1", "--out", tmp_path, "--name", "r")
    ckpt = tmp_path / "r" / "last.pt"
    before = digest(ckpt)
    # epoch 2 with an absurd learning rate: written into the saved args to keep the resume honest
    import json
    args = json.load(open(tmp_path / "r" / "args.json"))
    args["lr"] = 1e30
    json.dump(args, open(tmp_path / "r" / "args.json", "w"))
    result = run("simclr.py", "--resume", tmp_path / "r", check=False)
    one_line_error(result, "epoch 2", "nan", f"{tmp_path / 'r' / 'last.pt'} holds epoch 1", "--lr")
    assert digest(ckpt) == before


def test_weights_broken_by_the_last_update_of_an_epoch_are_not_saved(run, tmp_path):
    """The reported case: epoch 1's mean loss is finite, but its last updates made weights and optimizer
    state NaN. Nothing of the epoch is saved, and the message says that no checkpoint exists."""
    flags = ["--width", "4", "--image-size", "16", "--train-subset", "256", "--batch-size", "64", "--epochs", "4",
             "--warmup-epochs", "0", "--optimizer", "sgd", "--lr", "0.3", "--device", "cpu", "--out", tmp_path,
             "--name", "r"]
    result = run("vicreg.py", *flags, check=False)
    one_line_error(result, "epoch 1", "not finite", "model:", "optimizer:", "no checkpoint was written", "--lr")
    assert not (tmp_path / "r" / "last.pt").exists()


class State:  # an object with a state_dict, as main() puts in its `state`
    def __init__(self, values):
        self.values = values

    def state_dict(self):
        return self.values


@pytest.mark.parametrize("part,values,needle", [
    ("model", {"w": torch.tensor([1.0, float("nan")]), "steps": torch.tensor(3)}, "model: 1 of 2 values (e.g. w)"),
    ("optimizer", {"state": {0: {"momentum_buffer": torch.tensor([float("inf")])}}, "param_groups": [{"lr": 0.1}]},
     "optimizer: 1 of 2 values (e.g. state.0.momentum_buffer)"),
    ("loss", {"R1": torch.eye(2, dtype=torch.float64) * float("nan")}, "loss: 1 of 1 values (e.g. R1)"),
    ("alpha", {"alpha": float("nan"), "beta": 0.0}, "alpha: 1 of 2 values (e.g. alpha)"),
])
def test_every_part_of_the_state_is_checked_and_the_message_says_what_is_on_disk(tmp_path, part, values, needle):
    import argparse

    import common
    import signal
    args = argparse.Namespace(out=str(tmp_path), name="r", resume=None, epochs=5, batch_size=8, lr=0.3,
                              save_every=0, stop_after=None)
    handler = signal.getsignal(signal.SIGINT)
    run = common.Run(args, __file__, torch.device("cpu"))
    signal.signal(signal.SIGINT, handler)
    os.makedirs(run.dir, exist_ok=True)  # Run claimed it: made it, with its .lock
    good = {"model": State({"w": torch.ones(2)})}
    row = {"epoch": 1, "loss": 1.0}
    run.check_finite(row, good)  # finite: nothing happens
    with pytest.raises(SystemExit) as e:
        run.check_finite(row, {**good, part: State(values)})
    assert needle in str(e.value) and "no checkpoint was written" in str(e.value)
    run.save(1, good)
    with pytest.raises(SystemExit) as e:
        run.check_finite({"epoch": 2, "loss": float("nan")}, good)
    assert "loss = nan" in str(e.value) and f"{tmp_path / 'r' / 'last.pt'} holds epoch 1" in str(e.value)


def test_metrics_refuses_a_checkpoint_with_non_finite_weights(tmp_path, capsys):
    import metrics
    run_dir = tmp_path / "r"
    import simclr
    import signal
    handler, threads = signal.getsignal(signal.SIGINT), torch.get_num_threads()
    try:
        simclr.main([*ONE_EPOCH, "--width", "2", "--train-subset", "64", "--batch-size", "32", "--out", str(tmp_path),
                     "--name", "r"])
    finally:
        signal.signal(signal.SIGINT, handler)
        torch.set_num_threads(threads)
    ckpt = torch.load(run_dir / "last.pt", weights_only=True)
    ckpt["state"]["model"]["backbone.conv1.weight"][0] = float("nan")
    torch.save(ckpt, run_dir / "nan.pt")
    with pytest.raises(SystemExit) as e:
        metrics.main([str(run_dir / "nan.pt"), "--nlr-steps", "0"])
    assert "non-finite weights" in str(e.value) and "backbone.conv1.weight" in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------- 4. signals: Ctrl-C and SIGKILL
def test_ctrl_c_stops_cleanly_and_resumes(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT
    cmd = [sys.executable, os.path.join(ROOT, "simclr.py"), *ONE_EPOCH, "--epochs", "20", "--out", str(tmp_path),
           "--name", "r"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (tmp_path / "r" / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "interrupted" in lines[0] and f"--resume {tmp_path / 'r'}" in lines[0], err
    import torch
    done = torch.load(tmp_path / "r" / "last.pt", weights_only=True)["epoch"]
    assert done >= 1 and not [f for f in os.listdir(tmp_path / "r") if ".tmp" in f]
    from conftest import run_script  # the resume command the message gives finishes the run
    run_script("simclr.py", "--resume", tmp_path / "r")
    assert torch.load(tmp_path / "r" / "last.pt", weights_only=True)["epoch"] == 20
    assert (tmp_path / "r" / "results.json").exists()


def test_ctrl_c_while_the_data_loads_is_one_line(tmp_path):
    """SIGINT during the decoding of an image folder: one line on stderr, no traceback, no cache left."""
    import signal
    import subprocess
    import sys

    from conftest import ROOT
    from PIL import Image
    for split in ("train", "val"):
        for c in ("a", "b"):
            os.makedirs(tmp_path / "data" / split / c)
            for i in range(20):
                Image.new("RGB", (12, 12), (i, 2 * i, 3 * i)).save(tmp_path / "data" / split / c / f"{i}.png")
    slow = (f"import sys, time; sys.path.insert(0, {ROOT!r}); import common, simclr\n"
            "decode = common.decode_image\n"
            "common.decode_image = lambda *a: (time.sleep(0.2), decode(*a))[1]\n"
            "common.PROGRESS_SECONDS = 0\n"
            f"simclr.main(['--dataset', 'imagefolder', '--data-dir', {str(tmp_path / 'data')!r}, '--recipe', 'shapes',"
            f" '--threads', '1', '--out', {str(tmp_path / 'runs')!r}, '--name', 'r'])\n")
    proc = subprocess.Popen([sys.executable, "-c", slow], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    while "decoding" not in proc.stdout.readline():  # the progress lines of the decoding have started
        assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and err.strip().splitlines() == ["error: interrupted (Ctrl-C); no checkpoint was "
                                                               "written, nothing to resume"], err
    assert not [f for f in os.listdir(tmp_path / "data") if f.startswith("cache")]


def test_sigkill_at_random_moments_then_resume_is_exact(run, tmp_path):
    """SIGKILL a run several times at random moments (mid-epoch, mid-save, mid-log), resume it each
    time, and compare with an uninterrupted run: same weights, same log, no temporary files."""
    import json
    import random
    import signal
    import subprocess
    import sys
    import time

    import torch

    from conftest import ROOT
    tiny = [*ONE_EPOCH, "--epochs", "12", "--eval-every", "1", "--out", str(tmp_path)]
    run("simclr.py", *tiny, "--name", "straight")
    rng, kills, d = random.Random(0), 0, tmp_path / "killed"
    lines = lambda: len(open(d / "log.jsonl").readlines()) if (d / "log.jsonl").exists() else 0

    def next_line(proc, after):  # wait until the log has more than `after` lines; the time it happened
        deadline = time.time() + 300
        while lines() <= after and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        return time.time()
    for attempt in range(12):
        cmd = ["--resume", str(d)] if (d / "last.pt").exists() else [*tiny, "--name", "killed"]
        proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "simclr.py"), *cmd], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if kills < 3:  # time one epoch of this run (log line to log line), then kill within the next one:
            t0 = next_line(proc, lines())  # mid-epoch, mid-evaluation or mid-save, wherever it lands
            t1 = next_line(proc, lines())
            time.sleep(rng.uniform(0.0, t1 - t0))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
        proc.wait()
        if (d / "results.json").exists():
            break
    assert kills >= 2 and (d / "results.json").exists(), (kills, attempt)
    a, b = (torch.load(tmp_path / n / "last.pt", weights_only=True) for n in ("straight", "killed"))
    for key, value in a["state"]["model"].items():
        assert torch.equal(value, b["state"]["model"][key]), key
    strip = lambda n: [{k: v for k, v in json.loads(l).items() if k not in ("seconds", "images_per_sec")}
                       for l in open(tmp_path / n / "log.jsonl")]
    assert strip("straight") == strip("killed")
    assert not [f for f in os.listdir(d) if ".tmp" in f]


# ---------------------------------------------------------------------- 5. fuzzing the command line
# Every numeric flag of the shared parser with values it must refuse (exit 2, one line naming the flag).
REFUSED = {
    "--image-size": ["0", "7", "nan", "16.5", "x"], "--train-subset": ["-1", "-3", "inf"],
    "--width": ["0", "-1", "2.5"], "--epochs": ["0", "-1", "nan"], "--batch-size": ["1", "0", "-64", "1e3"],
    "--lr": ["0", "-0.1", "nan", "inf", "-inf", "fast"], "--min-lr": ["-1e-6", "nan", "inf"],
    "--warmup-lr": ["-0.003", "nan"], "--weight-decay": ["-1", "nan", "inf"], "--warmup-epochs": ["-1", "nan", "inf"],
    "--seed": ["-1", "1.5"], "--stop-after": ["0", "-2"], "--eval-every": ["0", "nan"],
    "--linear-epochs": ["-1", "0.5"], "--track-every": ["-1", "x"],
}


@pytest.mark.parametrize("flag,value", [(f, v) for f, values in REFUSED.items() for v in values])
def test_shared_parser_refuses_out_of_range_values(flag, value, capsys):
    import simclr
    with pytest.raises(SystemExit) as e:
        simclr.get_args([f"{flag}={value}"])  # the = form: argparse reads "-inf" after a space as a flag
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0] and value in lines[0], lines


def test_random_valid_combinations_parse():
    import random

    import simclr
    valid = {"--image-size": ["8", "16", "32"], "--train-subset": ["2", "500"], "--width": ["1", "4", "64"],
             "--epochs": ["1", "7"], "--batch-size": ["2", "3", "256"], "--lr": ["1e-4", "0.3", "5"],
             "--min-lr": ["0", "1e-6"], "--warmup-lr": ["0", "0.003"], "--weight-decay": ["0", "1e-4"],
             "--warmup-epochs": ["0", "0.5", "10"], "--seed": ["0", "123456"], "--eval-every": ["1", "5"],
             "--linear-epochs": ["0", "3"], "--track-every": ["0", "2"]}
    rng = random.Random(0)
    for _ in range(30):
        chosen = rng.sample(sorted(valid), k=rng.randint(1, len(valid)))
        argv = [x for f in chosen for x in (f, rng.choice(valid[f]))]
        args = simclr.get_args(argv)
        for f in chosen:
            value = argv[argv.index(f) + 1]
            assert getattr(args, f[2:].replace("-", "_")) == type(getattr(args, f[2:].replace("-", "_")))(float(value))


def test_cli_fuzz(tmp_path, capsys):
    """A few dozen random flag sets, valid and invalid values mixed (fixed seed), each a tiny shapes run
    in this process: it either finishes with a results.json or stops with a non-zero exit and at most
    two lines on stderr, never a traceback; a run folder holding a last.pt is never changed."""
    import random
    import signal

    import simclr
    pool = {"--width": ["2", "4", "0", "-4"], "--batch-size": ["2", "16", "64", "1", "999"],
            "--train-subset": ["64", "128", "0"], "--epochs": ["1", "2", "0", "nan"],
            "--lr": ["1e-3", "0.5", "0", "inf", "x"], "--optimizer": ["adamw", "sgd", "lars", "adam"],
            "--policy": ["small", "moderate", "asymmetric", "vicreg", "strong"],
            "--image-size": ["8", "12", "16", "7"], "--warmup-epochs": ["0", "0.5", "-1"],
            "--weight-decay": ["0", "1e-4", "-1"], "--eval-every": ["1", "0"], "--arch": ["resnet18", "vit"],
            "--temperature": ["0.1", "0.5", "0", "-1"], "--projector": ["mlp", "linear", "conv"],
            "--track-every": ["0", "1", "-2"], "--recipe": ["shapes", "cifar10", "mnist"]}
    base = ["--dataset", "shapes", "--width", "2", "--train-subset", "64", "--batch-size", "32", "--epochs", "1",
            "--out", str(tmp_path)]
    simclr.main([*base, "--name", "kept"])
    kept = digest(tmp_path / "kept" / "last.pt")
    rng, outcomes = random.Random(0), {"finished": 0, "refused": 0}
    handler = signal.getsignal(signal.SIGINT)
    for i in range(36):
        flags = rng.sample(sorted(pool), k=rng.randint(1, 5))
        argv = [*base, *[x for f in flags for x in (f, rng.choice(pool[f]))],
                "--name", "kept" if i % 6 == 0 else f"f{i}"]  # every 6th tries to start over a finished run
        capsys.readouterr()
        try:
            simclr.main(argv)
            code = 0
        except SystemExit as e:
            code, message = e.code, e.code if isinstance(e.code, str) else ""
        finally:
            signal.signal(signal.SIGINT, handler)
        err = capsys.readouterr().err.strip().splitlines()
        if code == 0:
            assert (tmp_path / f"f{i}" / "results.json").exists(), argv
            outcomes["finished"] += 1
        else:
            lines = err + ([message] if message else [])
            assert code != 0 and 1 <= len(lines) <= 2 and "Traceback" not in "\n".join(lines), (argv, lines)
            outcomes["refused"] += 1
    print(outcomes)
    assert outcomes["finished"] >= 5 and outcomes["refused"] >= 5  # both kinds were exercised
    assert digest(tmp_path / "kept" / "last.pt") == kept


# ---------------------------------------------------------------------------------------- 6. --help
def test_help_shows_every_flag_with_its_default(run):
    out = run("simclr.py", "--help").stdout
    options = out.split("\noptions:")[1]  # past the usage block
    lr = " ".join(options.split("\n  --lr ")[1].split("\n  --")[0].split())
    assert "(default: 0.4; shapes: 0.002" in lr  # the method's value, RECIPES['all'], then each dataset's
    for flag in ("--dataset", "--epochs", "--batch-size", "--lr", "--seed", "--out", "--policy", "--arch",
                 "--weight-decay", "--threads"):
        line = options.split(f"\n  {flag} ", 1)[1].split("\n  --")[0]
        assert len(line.split()) > 2, flag  # a help text, not just the flag


# ------------------------------------------------------------- 7. progress when the output is piped
def test_progress_lines_when_the_output_is_piped(tmp_path, capsys, monkeypatch):
    """With the output going to a file there is no progress bar, so a plain line appears every
    PROGRESS_SECONDS (0 here: every step) with the step count and the speed."""
    import signal

    import common
    import simclr
    monkeypatch.setattr(common, "PROGRESS_SECONDS", 0)
    handler, threads = signal.getsignal(signal.SIGINT), torch.get_num_threads()
    try:
        simclr.main(["--width", "2", "--train-subset", "128", "--batch-size", "32", "--epochs", "1",
                     "--out", str(tmp_path), "--name", "r"])
    finally:
        signal.signal(signal.SIGINT, handler)
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "epoch 1/1: 1/4 steps" in out and "epoch 1/1: 3/4 steps" in out and "steps/s" in out
