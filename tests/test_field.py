"""Faults that users of other tools reported, each fixed as a kind and tested on several members: two runs in
one run folder, link cycles in an image folder, names that are not UTF-8, a data path that means something
else later, two results in one file, and messages that are untrue in some branch or give advice the program
refuses. Inputs (folders, links, byte names, processes started together) are built here."""
import argparse
import errno
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import common
import metrics
import simclr
from conftest import ROOT

# a run of a second or two in this process: 8 px images, a width-2 ResNet-18
SMALL = ["--recipe", "shapes", "--width", "2", "--image-size", "8", "--batch-size", "8",
         "--warmup-epochs", "0", "--eval-every", "1", "--threads", "1"]
RNG = np.random.default_rng(28)


def call(main, *argv):
    """main(argv) in this process (no interpreter start), its SIGINT handler and thread count put back."""
    handler, threads = signal.getsignal(signal.SIGINT), torch.get_num_threads()
    try:
        return main([str(a) for a in argv])
    finally:
        signal.signal(signal.SIGINT, handler)
        torch.set_num_threads(threads)


def refused(excinfo, *needles):
    """A one-line refusal holding every needle."""
    message = str(excinfo.value)
    assert "\n" not in message and message.startswith("error: "), message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


def images(root, layout):
    """layout {"train/a": 4, ...} (str or bytes paths) -> that many random 8 x 8 PNGs per folder."""
    for sub, n in layout.items():
        folder = os.path.join(os.fsencode(root), os.fsencode(sub))
        os.makedirs(folder, exist_ok=True)
        for i in range(n):
            image = Image.fromarray(RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8))
            image.save(os.fsdecode(folder + b"/%d.png" % i))
    return str(root)


# ------------------------------------------------------------------ 1. two runs, one run folder
def run_args(tmp_path, **kw):
    return argparse.Namespace(**{"out": str(tmp_path), "name": None, "resume": None, "method": "simclr",
                                 "dataset": "shapes", "epochs": 1, "batch_size": 8, "lr": 0.1, "save_every": 0,
                                 "stop_after": None, **kw})


def test_default_names_of_one_second_are_made_unique_by_the_claim(tmp_path, monkeypatch):
    monkeypatch.setattr(common.time, "strftime", lambda _: "20260101-120000")  # three runs in the same second
    names = []
    for _ in range(3):
        args = run_args(tmp_path)
        assert common.claim(args) is None
        names.append(args.name)
    assert names == ["simclr-shapes-20260101-120000", "simclr-shapes-20260101-120000-2",
                     "simclr-shapes-20260101-120000-3"]
    for name in names:
        common.release(str(tmp_path / name))


def test_a_folder_held_by_a_live_run_is_refused_and_freed_when_that_run_is_killed(tmp_path):
    folder = tmp_path / "r"
    folder.mkdir()
    torch.save({"epoch": 1, "args": {}, "state": {}}, folder / "last.pt")
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time\n"  # holds the claim as a run does
                               "f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX)\n"
                               "f.write(str(os.getpid())); "
                               "f.flush(); print('held', flush=True); time.sleep(120)", str(folder / ".lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        handler = signal.getsignal(signal.SIGINT)
        with pytest.raises(SystemExit) as e:  # a second run into it, by --name
            common.Run(run_args(tmp_path, name="r"), __file__, torch.device("cpu"))
        refused(e, "--name", str(folder), f"in use by another run (process {holder.pid})", "choose another --name")
        with pytest.raises(SystemExit) as e:  # a second resume of it
            common.Run(run_args(tmp_path, name="r", resume=str(folder)), __file__, torch.device("cpu"))
        refused(e, "--resume", f"process {holder.pid}", "once that has ended")
        signal.signal(signal.SIGINT, handler)
    finally:
        holder.kill()  # SIGKILL: no code of it runs; the kernel drops its lock
        holder.wait()
    args = run_args(tmp_path, name="r", resume=str(folder))
    assert common.claim(args) is None  # a killed run's claim does not outlive it
    assert open(folder / ".lock").read().strip() == str(os.getpid())
    common.release(str(folder))


def test_two_runs_started_together_each_keep_their_folder(tmp_path):
    """The reported case: a seed sweep started with & (default names, one --out). Both finish, in two folders,
    each with its own complete log, checkpoint and results."""
    cmd = [sys.executable, os.path.join(ROOT, "simclr.py"), "--width", "2", "--image-size", "8",
           "--train-subset", "32", "--batch-size", "16", "--epochs", "1", "--warmup-epochs", "0", "--threads", "1",
           "--out", str(tmp_path)]
    procs = [subprocess.Popen([*cmd, "--seed", str(s)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for s in (0, 1)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    folders = sorted(os.listdir(tmp_path))
    assert len(folders) == 2, folders
    seeds = set()
    for f in folders:
        log = [json.loads(line)["epoch"] for line in open(tmp_path / f / "log.jsonl")]
        assert log == [0, 1] and (tmp_path / f / "results.json").exists()
        seeds.add(torch.load(tmp_path / f / "last.pt", weights_only=True)["args"]["seed"])
    assert seeds == {0, 1}


# ------------------------------------------------------------------ 2. link cycles in an image folder
def test_links_never_list_a_file_twice_nor_under_another_class(tmp_path, capsys):
    root = images(tmp_path / "data", {"train/c0": 3, "train/c1": 2, "train/c1/sub": 1, "train/c2": 2,
                                      "val/c0": 1, "val/c1": 1, "val/c2": 1})
    outside = images(tmp_path / "elsewhere", {"cats": 2, "one": 1})
    train = tmp_path / "data" / "train"
    os.symlink(".", train / "c0" / "loop")                                  # a cycle
    os.symlink("..", train / "c1" / "up")                                   # all of train/ again, as c1
    os.symlink("sub", train / "c1" / "again")                               # a second way into one folder
    os.symlink("../c0", train / "c2" / "other")                             # another class's folder
    os.symlink(os.path.join(outside, "one", "0.png"), train / "c2" / "x.png")  # a file out of the split
    os.symlink("../c0/0.png", train / "c2" / "y.png")                       # another class's file
    os.symlink("nowhere.png", train / "c0" / "z.png")                       # a link to nothing
    os.symlink(os.path.join(outside, "cats"), train / "c3")                 # a class folder kept elsewhere
    os.symlink("c1", train / "c4")                                          # a class that is another class
    files, names, left_out = common.list_image_folder(root)
    real = [os.path.realpath(p) for p, _ in files["train"]]
    assert len(real) == len(set(real)) == 3 + 3 + 2 + 2                     # each real file once
    assert names == ["c0", "c1", "c2", "c3"]
    for (path, label), r in zip(files["train"], real):                      # under its own class
        own = "c3" if r.startswith(outside) else os.path.relpath(r, os.path.realpath(train)).split(os.sep)[0]
        assert names[label] == own
    seen, others, links = set(), {}, []
    for c in sorted(os.listdir(train)):
        common.walk_class(str(train / c), seen, others, links)
    assert sorted(links) == ["c0/loop", "c0/z.png", "c1/again", "c1/up", "c2/other", "c2/x.png", "c2/y.png", "c4"]
    (_, _, _, summary, _), err = common.load_imagefolder(root, 8), capsys.readouterr().err
    assert "left out: 8 links in train/" in summary and "c0/loop" in summary and "c4" not in err


# ------------------------------------------------------------------ 3. names that are not UTF-8
def test_names_that_are_not_utf8_print_escaped_and_round_trip(tmp_path, capsys):
    """A class folder caf\\xe9 (Latin-1, as unzipped from a Windows archive), such bytes in --data-dir and --out,
    an empty class and an undecodable image with such names: every line prints (\\xe9 escapes) on a strict
    UTF-8 terminal, never a traceback, and args.json gives back the exact bytes of the path."""
    data = os.fsdecode(os.fsencode(str(tmp_path)) + b"/donn\xe9es")
    images(data, {b"train/caf\xe9": 4, "train/tea": 4, b"val/caf\xe9": 2, "val/tea": 2, b"train/vid\xe9": 0})
    open(os.fsencode(data) + b"/train/tea/cass\xe9.png", "wb").write(b"not a png")
    out = os.fsdecode(os.fsencode(str(tmp_path)) + b"/runs\xe9")
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "LC_ALL": "C.UTF-8", "PYTHONUNBUFFERED": "1"}  # strict
    cmd = [sys.executable, os.path.join(ROOT, "simclr.py"), "--dataset", "imagefolder", "--data-dir", data, *SMALL,
           "--epochs", "1", "--out", out, "--name", "r"]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, errors="surrogateescape",
                            timeout=300)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "caf\\xe9 4/2" in result.stdout and "donn\\xe9es" in result.stdout and "runs\\xe9/r" in result.stdout
    assert "vid\\xe9" in result.stderr and "cass\\xe9.png" in result.stderr
    saved = json.load(open(os.path.join(out, "r", "args.json")))
    assert os.fsencode(saved["data_dir"]) == os.fsencode(data)              # the exact bytes, to find it again
    call(metrics.main, os.path.join(out, "r", "last.pt"), "--nlr-steps", "0", "--max-samples", "20")
    assert "runs\\xe9/r/metrics-last.json" in capsys.readouterr().out    # capsys is a strict UTF-8 stream too
    with pytest.raises(SystemExit) as e:
        call(simclr.main, "--resume", os.path.join(out, "nothing\udce9"))
    refused(e, "nothing\\xe9")


# ------------------------------------------------------------------ 4. a path that means something else later
def test_the_data_a_run_was_trained_on_is_found_again_or_refused(tmp_path, monkeypatch, capsys):
    images(tmp_path / "projA" / "data", {"train/a": 4, "train/b": 4, "val/a": 2, "val/b": 2})
    images(tmp_path / "projB" / "data", {"train/a": 4, "train/b": 4, "train/c": 4, "val/a": 2, "val/b": 2})
    runs, run = tmp_path / "runs", tmp_path / "runs" / "r"
    monkeypatch.chdir(tmp_path / "projA")
    call(simclr.main, "--dataset", "imagefolder", "--data-dir", "data", *SMALL, "--epochs", "3", "--stop-after", "1",
         "--out", runs, "--name", "r")
    saved = json.load(open(run / "args.json"))
    assert saved["data_dir"] == str(tmp_path / "projA" / "data")
    assert saved["data_fingerprint"].startswith("imagefolder")
    monkeypatch.chdir(tmp_path / "projB")  # another project, with a data/ of its own
    with pytest.raises(SystemExit) as e:
        call(simclr.main, "--resume", run, "--data-dir", "data")
    refused(e, f"--data-dir {tmp_path / 'projB' / 'data'}", "not the data the run was trained on", "3 classes",
            "2 classes", "give --data-dir")
    capsys.readouterr()
    call(simclr.main, "--resume", run, "--stop-after", "2")  # no flag: the recorded folder, not ./data
    assert f"imagefolder {tmp_path / 'projA' / 'data'}:" in capsys.readouterr().out
    os.rename(tmp_path / "projA" / "data", tmp_path / "moved")
    call(simclr.main, "--resume", run, "--data-dir", tmp_path / "moved")  # the advice: --data-dir where it is now
    assert json.load(open(run / "results.json"))["epochs"] == 3
    assert json.load(open(run / "args.json"))["data_dir"] == str(tmp_path / "moved")
    with pytest.raises(SystemExit) as e:
        call(metrics.main, run / "last.pt", "--data-dir", tmp_path / "projB" / "data", "--nlr-steps", "0")
    refused(e, "--data-dir", "not the data the run was trained on")
    call(metrics.main, run / "last.pt", "--nlr-steps", "0", "--max-samples", "20")  # the recorded folder


# ------------------------------------------------------------------ 5. two results, one file
def test_every_checkpoint_gets_its_own_results_file_and_column(tmp_path, capsys):
    call(simclr.main, *SMALL, "--train-subset", "32", "--epochs", "1", "--out", tmp_path, "--name", "a")
    (tmp_path / "a" / "epoch1.pt").write_bytes((tmp_path / "a" / "last.pt").read_bytes())
    capsys.readouterr()
    call(metrics.main, "--compare", tmp_path / "a" / "epoch1.pt", tmp_path / "a" / "last.pt", "--nlr-steps", "0",
         "--max-samples", "20")
    header = next(line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("measure"))
    assert header[1:3] == ["epoch1.pt", "last.pt"]
    assert {f for f in os.listdir(tmp_path / "a") if f.startswith("metrics")} == {"metrics-epoch1.json",
                                                                                   "metrics-last.json"}
    assert metrics.column_names(["runs/a/last.pt", "runs/b/last.pt"]) == ["a", "b"]
    assert metrics.column_names(["x/r/last.pt", "y/r/last.pt"]) == ["x", "y"]
    assert metrics.column_names(["runs/a/last.pt", "runs/a/epoch1.pt", "runs/b/last.pt"]) == [
        "a/last.pt", "a/epoch1.pt", "b/last.pt"]
    assert metrics.column_names(["runs/a/last.pt"]) == ["a"]


# ------------------------------------------------------------------ 6. true messages, advice that works
def test_an_unreadable_cache_says_so_and_is_made_again(tmp_path, capsys):
    root = images(tmp_path, {"train/a": 3, "train/b": 3, "val/a": 1, "val/b": 1})
    common.load_imagefolder(root, 8)
    cache = tmp_path / "cache-8px.pt"
    cache.write_bytes(cache.read_bytes()[:200])  # cut short, as by a full disk
    summary = common.load_imagefolder(root, 8)[3]
    assert "the old one could not be read" in summary and "version" not in summary
    assert "read " in common.load_imagefolder(root, 8)[3]  # made again correctly: read back as it is


def test_a_failed_first_checkpoint_says_that_none_was_written(tmp_path, monkeypatch):
    handler = signal.getsignal(signal.SIGINT)
    run = common.Run(run_args(tmp_path, name="r"), __file__, torch.device("cpu"))
    signal.signal(signal.SIGINT, handler)

    def full_disk(obj, f):
        raise OSError(errno.ENOSPC, "No space left on device")
    state = {"model": torch.nn.Linear(2, 2)}
    real_save = torch.save
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(SystemExit) as e:
        run.save(1, state)
    message = refused(e, "No space left", "no checkpoint was written")
    assert "untouched" not in message and not (tmp_path / "r" / "last.pt").exists()
    with pytest.raises(SystemExit) as e:
        common.atomic_write(str(tmp_path / "results.json.pt"), {"x": 1})
    assert "no file was written" in refused(e)
    monkeypatch.setattr(torch, "save", real_save)
    run.save(1, state)
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(SystemExit) as e:
        run.save(2, state)
    refused(e, f"{tmp_path / 'r' / 'last.pt'} holds epoch 1", f"--resume {tmp_path / 'r'}")
    common.release(run.dir)


def advised(message, flag):
    return int(message.split(f"{flag} ")[-1].split()[0].rstrip(",;"))


@pytest.mark.parametrize("subset,batch,flag", [("1", "2", "--train-subset"), ("3", "4", "--batch-size"),
                                               ("5", "64", "--batch-size")])
def test_batch_advice_is_accepted(tmp_path, subset, batch, flag):
    argv = [*SMALL, "--train-subset", subset, "--batch-size", batch, "--epochs", "1", "--out", tmp_path]
    with pytest.raises(SystemExit) as e:
        call(simclr.main, *argv, "--name", "refused")
    value = advised(refused(e, f"--batch-size {batch}"), flag)
    i = len(argv) - 1 - argv[::-1].index(flag)  # the flag as given here, not in SMALL
    call(simclr.main, *argv[:i + 1], value, *argv[i + 2:], "--name", "advised")  # the advice runs
    assert (tmp_path / "advised" / "results.json").exists()


@pytest.mark.parametrize("world,n,batch,needle", [(2, 3, 4, "--batch-size 2"), (4, 3, 4, "--train-subset 4"),
                                                  (3, 7, 9, "--batch-size 6"), (1, 1, 2, "--train-subset 2")])
def test_batch_advice_under_torchrun_is_a_multiple_of_the_processes(monkeypatch, world, n, batch, needle):
    monkeypatch.setattr(common, "WORLD_SIZE", world)
    with pytest.raises(SystemExit) as e:
        common.Loader(torch.zeros(n, 3, 8, 8, dtype=torch.uint8), torch.zeros(n), batch, torch.device("cpu"))
    message = refused(e, needle)
    if "--batch-size" in needle:
        value = advised(message, "--batch-size")
        assert value % world == 0 and 2 <= value <= n
