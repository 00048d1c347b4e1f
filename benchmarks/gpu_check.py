"""The first command to run on a GPU: every path a CUDA user takes, offline, on generated data, in under 10
minutes, with one report (JSON and text). Nothing here has run on a GPU yet.

    python benchmarks/gpu_check.py                 # CUDA: writes gpu_check.json and gpu_check.txt here
    python benchmarks/gpu_check.py --cpu-smoke     # the same checks at reduced sizes on the CPU (a test runs it)

Checks, each recorded as ok or its error (one line), with its seconds:
  run/<method>     every method end to end on shapes at CIFAR shape (32 px): bf16 autocast where native,
                   --track-every 1, --linear-epochs 1, --stop-after 1 then --resume to the end
  data-on-cpu      vicreg with the images kept in CPU memory (the Loader's fallback for sets that do not fit)
  metrics          python metrics.py on the vicreg checkpoint
  compile          vicreg with --compile
  peak/corinfomax  peak GPU memory of CorInfoMax's ImageNet-100 recipe (ResNet-18, batch 1024, 224 px), a few
                   steps (torch.cuda.max_memory_allocated)
  epoch            benchmarks/epoch.py: a CIFAR-10 epoch of every method (seconds, images/s, peak memory)
"""
import argparse
import contextlib
import importlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import common  # noqa: E402

METHODS = ["simclr", "vicreg", "barlow", "corinfomax", "sslpm", "adadim"]


def check(report, name, fn):
    """Run fn(), record ok (with what it returns) or its error in one line, and the seconds it took."""
    start = time.time()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            result = {"ok": True, **(fn() or {})}
    except BaseException as e:  # a method's one-line SystemExit included
        if isinstance(e, KeyboardInterrupt):
            raise
        text = str(e).strip().splitlines()[-1] if str(e).strip() else traceback.format_exc().splitlines()[-1]
        result = {"ok": False, "error": f"{e.__class__.__name__}: {text}"[:300]}
    report["checks"][name] = {**result, "seconds": round(time.time() - start, 2)}
    print(f"{name:18s} {'ok' if result['ok'] else 'FAILED'}  {report['checks'][name]}", flush=True)


def train(method, argv):
    common.WORLD_SIZE = 1
    importlib.import_module(method).main(argv)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpu-smoke", action="store_true", help="reduced sizes on the CPU (the default without CUDA)")
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    p.add_argument("--out", default="gpu_check", help="report path without extension (.json and .txt)")
    a = p.parse_args(argv)
    smoke = a.cpu_smoke or not torch.cuda.is_available()
    device = "cpu" if smoke else "cuda"
    tiny = ["--width", "4", "--train-subset", "64", "--batch-size", "32", "--image-size", "16"] if smoke else \
           ["--width", "64", "--train-subset", "10000", "--batch-size", "512", "--image-size", "32"]
    report = {"device": torch.cuda.get_device_name() if not smoke else "cpu (--cpu-smoke)",
              "torch": torch.__version__, "smoke": smoke, "checks": {}}
    work = tempfile.mkdtemp(prefix="gpu_check-")
    base = ["--dataset", "shapes", "--recipe", "shapes", "--device", device, "--eval-every", "1", "--out", work, *tiny]
    for method in a.methods:
        def run(method=method):
            train(method, [*base, "--name", method, "--epochs", "2", "--stop-after", "1", "--track-every", "1",
                           "--linear-epochs", "1"])
            train(method, ["--resume", os.path.join(work, method)])
            return json.load(open(os.path.join(work, method, "results.json")))
        check(report, f"run/{method}", run)
    method = a.methods[0]

    def data_on_cpu():  # the Loader sees no free GPU memory: the images stay in CPU memory
        free = torch.cuda.mem_get_info
        torch.cuda.mem_get_info = lambda *_: (0, 0)
        try:
            train(method, [*base, "--name", "data-on-cpu", "--epochs", "1"])
        finally:
            torch.cuda.mem_get_info = free
    check(report, "data-on-cpu", data_on_cpu)
    check(report, "metrics", lambda: subprocess.run(
        [sys.executable, os.path.join(ROOT, "metrics.py"), os.path.join(work, method, "last.pt"), "--device", device,
         "--nlr-steps", "5", "--max-samples", "200", "--json", os.path.join(work, "metrics.json")],
        check=True, capture_output=True, text=True, cwd=ROOT) and json.load(open(os.path.join(work, "metrics.json"))))
    if not smoke:
        check(report, "compile", lambda: train(method, [*base, "--name", "compile", "--epochs", "1", "--compile"]))

        def peak():
            import corinfomax
            args = corinfomax.get_args(["--dataset", "imagefolder", "--device", "cuda"])
            args.image_size = 224
            model = common.prepare_model(corinfomax.Model(args), args, torch.device("cuda"))
            loss = corinfomax.CorInfoMaxLoss(model.dim, args.alpha).cuda()
            optimizer = common.make_optimizer(model, args)
            x = torch.randn(args.batch_size, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)
            torch.cuda.reset_peak_memory_stats()
            for _ in range(3):
                with common.autocast(torch.device("cuda")):
                    z1, z2 = model(x)[1], model(x.flip(-1))[1]
                optimizer.zero_grad(set_to_none=True)
                loss(z1, z2)[0].backward()
                optimizer.step()
            return {"batch": args.batch_size, "peak_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2),
                    "total_gb": round(torch.cuda.get_device_properties(0).total_memory / 1e9, 2)}
        check(report, "peak/corinfomax", peak)
        check(report, "epoch", lambda: subprocess.run(
            [sys.executable, os.path.join(ROOT, "benchmarks", "epoch.py"), "--json", os.path.join(work, "epoch.json")],
            check=True, capture_output=True, text=True, cwd=ROOT) and json.load(open(os.path.join(work, "epoch.json"))))
    report["passed"] = sum(c["ok"] for c in report["checks"].values())
    report["failed"] = [k for k, c in report["checks"].items() if not c["ok"]]
    common.atomic_write(a.out + ".json", common.to_json(report, indent=1))
    common.atomic_write(a.out + ".txt", "".join(f"{k}: {'ok' if c['ok'] else c['error']} ({c['seconds']} s)\n"
                                                 for k, c in report["checks"].items()))
    print(f"{report['passed']} of {len(report['checks'])} checks passed; {a.out}.json and {a.out}.txt")
    return report


if __name__ == "__main__":
    main()
