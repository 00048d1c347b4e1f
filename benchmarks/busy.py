"""The quick start on a machine that is doing something else: `python simclr.py` with 1 thread, with one
thread per core, and with the default (common.choose_threads: one per core that no other process is busy
with at startup), alone and beside --others CPU-bound processes (pure Python loops, as a notebook or a
browser tab can be), in one run. Prints wall seconds and slowdowns. Not run by CI.

    python benchmarks/busy.py                  # the whole quick start, 2 other processes
    python benchmarks/busy.py --epochs 3 --others 1

Why: every op of a multi-threaded CPU kernel waits for its slowest thread; a thread that shares its core
with another process is descheduled for whole time slices, and the op waits for it.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quick_start(threads, epochs, out):
    """Wall seconds of the quick start, and the threads it ran with (from its args.json)."""
    import json
    name = f"t{threads}-{time.time_ns()}"
    cmd = [sys.executable, os.path.join(ROOT, "simclr.py"), "--epochs", str(epochs), "--out", out,
           "--name", name]
    cmd += ["--threads", str(threads)] if threads else []
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    start = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    return time.time() - start, json.load(open(os.path.join(out, name, "args.json")))["threads"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=10, help="the quick start's 10, or fewer for a shorter run")
    p.add_argument("--others", type=int, default=os.cpu_count(), help="CPU-bound processes beside it")
    a = p.parse_args()
    cores = os.cpu_count()
    settings = [("1 thread", 1), (f"{cores} threads", cores), ("default", 0)]
    rows = {}
    with tempfile.TemporaryDirectory() as out:
        for busy in (False, True):
            spin = [sys.executable, "-c", "while True: pass"]
            spinners = [subprocess.Popen(spin) for _ in range(a.others if busy else 0)]
            time.sleep(1)
            try:
                for label, threads in settings:
                    rows[label, busy] = quick_start(threads, a.epochs, out)
                    where = f"beside {a.others} busy processes" if busy else "alone"
                    print(f"{label:10s} {where:28s} "
                          f"{rows[label, busy][0]:6.1f} s (ran with {rows[label, busy][1]} threads)",
                          flush=True)
            finally:
                for s in spinners:
                    s.kill()
    best_alone = min(rows[label, False][0] for label, _ in settings)
    print(f"\n`python simclr.py --epochs {a.epochs}` on {cores} cores, wall seconds (x the fastest alone):")
    print(f"{'threads':10s} {'alone':>14s} {'busy':>14s} {'busy / alone':>13s}")
    for label, _ in settings:
        alone, busy = rows[label, False][0], rows[label, True][0]
        print(f"{label:10s} {alone:7.1f} ({alone / best_alone:3.1f}x) {busy:7.1f} "
              f"({busy / best_alone:3.1f}x) {busy / alone:12.1f}x")


if __name__ == "__main__":
    main()
