"""The first command to run on a GPU: every path a CUDA user takes, offline, on generated data, in under 10
minutes, with one report (JSON and text). Nothing here has run on a GPU yet.

    python benchmarks/gpu_check.py                 # CUDA: writes gpu_check.json and gpu_check.txt here
    python benchmarks/gpu_check.py --cpu-smoke     # the same checks, tiny, on the CPU in seconds (tested)

Checks (the report's sections), each recorded as ok, skipped (and why) or its one-line error, with its seconds:
  run/<method>     every method end to end on shapes at CIFAR shape (32 px): bf16 autocast where native,
                   --track-every 1, --linear-epochs 1, --stop-after 1 then --resume to the end
  data-on-cpu      the first method with the images kept in CPU memory (the Loader's choice for sets that do
                   not fit)
  metrics          python metrics.py on the first method's checkpoint (its main(), in this process)
  compile          the first method with --compile (CUDA only: on the CPU torch.compile needs a C++ compiler
                   and minutes)
  peak/corinfomax  peak GPU memory of CorInfoMax's ImageNet-100 recipe (ResNet-18, batch 1024, 224 px), a few
                   steps (torch.cuda.max_memory_allocated), next to the estimate the Loader places the data by
                   (common.training_memory); on the CPU the same steps, tiny, and no memory figure
  epoch            benchmarks/epoch.py: a CIFAR-10 epoch of every method (seconds, images/s, peak memory)
On the CPU (--cpu-smoke, the default without CUDA) every check is tiny: width 2, 16 px, 32 training images and
256 test images (shapes' test split is cut from 2,000 while the checks run); epoch: simclr on 256 images.
"""
import argparse
import contextlib
import importlib.util
import io
import json
import os
import sys
import tempfile
import time
import traceback

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import common  # noqa: E402

METHODS = ["simclr", "vicreg", "barlow", "corinfomax", "sslpm", "adadim"]
SECTIONS = ["data-on-cpu", "metrics", "compile", "peak/corinfomax", "epoch"]  # after each method's run/<method>


def check(report, name, fn):
    """Run fn(), record ok (with what it returns), skipped (fn returned {"skipped": why}) or its error in one
    line, and the seconds it took."""
    start = time.time()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            result = fn() or {}
        result = {"ok": None, **result} if "skipped" in result else {"ok": True, **result}
    except BaseException as e:  # a method's one-line SystemExit included
        if isinstance(e, KeyboardInterrupt):
            raise
        text = str(e).strip().splitlines()[-1] if str(e).strip() else traceback.format_exc().splitlines()[-1]
        result = {"ok": False, "error": f"{e.__class__.__name__}: {text}"[:300]}
    report["checks"][name] = {**result, "seconds": round(time.time() - start, 2)}
    if torch.cuda.is_available():  # what this check cached is free for the next (the Loader asks what is free)
        torch.cuda.empty_cache()
    status = {True: "ok", None: "skipped", False: "FAILED"}[result["ok"]]
    print(f"{name:18s} {status}  {report['checks'][name]}", flush=True)


def outcome(c):
    return "ok" if c["ok"] else f"skipped: {c['skipped']}" if c["ok"] is None else c["error"]


def train(method, argv):
    common.WORLD_SIZE = 1
    importlib.import_module(method).main(argv)


def peak(device, smoke):
    """A few steps of CorInfoMax's ImageNet-100 recipe (tiny on the CPU): the peak memory, and the estimate."""
    import corinfomax
    args = corinfomax.get_args(["--dataset", "imagefolder", "--device", device.type] +
                               (["--batch-size", "4", "--width", "2"] if smoke else []))
    args.image_size = 64 if smoke else 224  # 64 px: the ImageNet stem, as at 224
    model = common.prepare_model(corinfomax.Model(args), args, device)
    loss = corinfomax.CorInfoMaxLoss(model.dim, args.alpha, dtype=common.precise_dtype(device)).to(device)
    optimizer = common.make_optimizer(model, args)
    layout = torch.channels_last if common.channels_last(device, args.image_size) else torch.contiguous_format
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    x = x.contiguous(memory_format=layout)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(3):
        with common.autocast(device):
            z1, z2 = model(x)[1], model(x.flip(-1))[1]
        optimizer.zero_grad(set_to_none=True)
        loss(z1, z2)[0].backward()
        optimizer.step()
    if device.type != "cuda":
        return {"batch": args.batch_size, "image_size": args.image_size}
    return {"batch": args.batch_size, "peak_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2),
            "estimate_gb": round(common.training_memory(args) / 1e9, 2),
            "total_gb": round(torch.cuda.get_device_properties(device).total_memory / 1e9, 2)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpu-smoke", action="store_true", help="tiny, on the CPU (the default without CUDA)")
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    p.add_argument("--out", default="gpu_check", help="report path without extension (.json and .txt)")
    a = p.parse_args(argv)
    smoke = a.cpu_smoke or not torch.cuda.is_available()
    device = torch.device("cpu" if smoke else "cuda")
    tiny = ["--width", "2", "--train-subset", "32", "--batch-size", "16", "--image-size", "16"] if smoke else \
           ["--width", "64", "--train-subset", "10000", "--batch-size", "512", "--image-size", "32"]
    report = {"device": torch.cuda.get_device_name() if not smoke else "cpu (--cpu-smoke)",
              "torch": torch.__version__, "smoke": smoke, "checks": {}}
    work = tempfile.mkdtemp(prefix="gpu_check-")
    base = ["--dataset", "shapes", "--recipe", "shapes", "--device", device.type, "--eval-every", "1",
            "--out", work, *tiny]
    make_shapes = common.make_shapes
    if smoke:  # shapes' test split (2,000 images: kNN, tracking, metrics) cut to 256
        common.make_shapes = lambda n, size=32, seed=0: make_shapes(min(n, 256), size, seed)
    try:
        for method in a.methods:
            def run(method=method):
                train(method, [*base, "--name", method, "--epochs", "2", "--stop-after", "1",
                               "--track-every", "1", "--linear-epochs", "1"])
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

        def measures():
            import metrics
            metrics.main([os.path.join(work, method, "last.pt"), "--device", device.type, "--nlr-steps", "5",
                          "--max-samples", "200", "--json", os.path.join(work, "metrics.json")])
            return json.load(open(os.path.join(work, "metrics.json")))
        check(report, "metrics", measures)
        check(report, "compile", lambda: {"skipped": "CUDA only (on the CPU: a C++ compiler and minutes)"}
              if smoke else train(method, [*base, "--name", "compile", "--epochs", "1", "--compile"]))
        check(report, "peak/corinfomax", lambda: peak(device, smoke))

        def epoch():  # benchmarks/epoch.py's main(), in this process
            spec = importlib.util.spec_from_file_location("epoch", os.path.join(ROOT, "benchmarks", "epoch.py"))
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            small = ["--device", "cpu", "--width", "2", "--images", "256", "--batch-size", "128",
                     "--methods", "simclr"]
            return {"rows": module.main(small if smoke else [])}
        check(report, "epoch", epoch)
    finally:
        common.make_shapes = make_shapes
    report["passed"] = sum(c["ok"] is True for c in report["checks"].values())
    report["failed"] = [k for k, c in report["checks"].items() if c["ok"] is False]
    common.atomic_write(a.out + ".json", common.to_json(report, indent=1))
    common.atomic_write(a.out + ".txt", "".join(f"{k}: {outcome(c)} ({c['seconds']} s)\n"
                                                 for k, c in report["checks"].items()))
    skipped = len(report["checks"]) - report["passed"] - len(report["failed"])
    print(f"{report['passed']} of {len(report['checks'])} checks passed, {skipped} skipped, "
          f"{len(report['failed'])} failed; {a.out}.json and {a.out}.txt")
    return report


if __name__ == "__main__":
    main()
