"""What the scripts of reproduce/ share: train a run through a method file's main() (or resume it, or skip it
when it has finished: a second call only redraws), read its log, rebuild its model through metrics.py,
print and save a table, and draw a figure with matplotlib, the one optional extra (without it: the tables,
and a one-line hint). No training loop here: every run is a method file's own."""
import argparse
import contextlib
import importlib
import io
import json
import os
import signal
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

import common  # noqa: E402
import metrics  # noqa: E402


def parser(doc, name, seeds=(0,)):
    p = argparse.ArgumentParser(description=doc.split("\n")[0], epilog="Runs are kept under --out; "
                                "a second call reuses them (finished ones) or resumes them, and only redraws.")
    p.add_argument("--quick", action="store_true", help="tiny runs of well under a minute (what the tests use); "
                   "they show the machinery, not the claim")
    p.add_argument("--seeds", type=int, nargs="+", default=list(seeds), help="seeds of every run (mean and spread)")
    p.add_argument("--out", default=os.path.join(ROOT, "reproduce", "runs", name), help="where the runs, the "
                   "table (JSON) and the figure (PNG) go")
    p.add_argument("--device", default="cpu", help="device of the runs (cpu: what the figures were made with)")
    return p


def train(method, name, flags, args):
    """Folder of the run `name` under args.out: method.main(flags) trains it, unless it has finished
    (results.json) or can be resumed (last.pt). The method's output goes to <run>/stdout.txt."""
    folder = os.path.join(args.out, name)
    if os.path.exists(os.path.join(folder, "results.json")):
        return folder
    argv = (["--resume", folder] if os.path.exists(os.path.join(folder, "last.pt"))
            else [*flags, "--device", args.device, "--out", args.out, "--name", name])
    os.makedirs(args.out, exist_ok=True)
    print(f"training {name}: python {method}.py {' '.join(argv)}", flush=True)
    start, handler, threads = time.time(), signal.getsignal(signal.SIGINT), torch.get_num_threads()
    try:
        with open(os.path.join(args.out, f"{name}.stdout.txt"), "a") as out, contextlib.redirect_stdout(out):
            importlib.import_module(method).main(argv)
    finally:
        signal.signal(signal.SIGINT, handler)  # main() installs its own
        torch.set_num_threads(threads)
    print(f"  done in {time.time() - start:.0f} s", flush=True)
    return folder


def log(folder):
    """The run's log.jsonl as a list of dicts (row 0: the random-initialisation kNN)."""
    return [json.loads(line) for line in open(os.path.join(folder, "log.jsonl"))]


def results(folder):
    return json.load(open(os.path.join(folder, "results.json")))


def features(folder, images="test", n=2000, views=False):
    """Backbone features R and projector features Z (float32) of a run's final model on a fixed random
    sample of n test images (with views=True, of two augmented views: (h1, h2, f1, f2)), and the labels."""
    with contextlib.redirect_stdout(io.StringIO()):  # load_data's summary line
        ckpt, args, model, data = metrics.load_run(os.path.join(folder, "last.pt"), torch.device("cpu"))
    keep = common.random_indices(len(data.test_x), n)
    x, y = data.test_x[keep], data.test_y[keep]
    augment = common.Augment(args.policy, data, args.image_size, shard=False) if views else None
    common.seed_everything(0)
    return metrics.extract(model.backbone, model.projector, x, data, torch.device("cpu"), augment=augment), y, model


def mean_spread(values):
    """(mean, standard deviation over seeds; 0 for one seed)."""
    values = [v for v in values if v is not None]
    m = sum(values) / len(values)
    return m, (sum((v - m) ** 2 for v in values) / max(1, len(values) - 1)) ** 0.5


def put_mean_spread(row, key, values):
    """row[key] = the mean of values (one per seed, None left out); row[key + "_sd"] = their standard
    deviation when there are several seeds."""
    row[key], spread = mean_spread(values)
    if len(values) > 1:
        row[key + "_sd"] = spread


def table(rows, path, title):
    """Print rows (a list of dicts, the same keys) aligned, and write them with the title to path (JSON)."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    fmt = lambda v: "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)
    cells = [keys] + [[fmt(r.get(k)) for k in keys] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(keys))]
    print(title)
    for c in cells:
        print("  ".join(x.rjust(w) for x, w in zip(c, widths)))
    with open(path, "w") as f:
        f.write(common.to_json({"title": title, "rows": rows}, indent=1))


def pyplot():
    """matplotlib.pyplot (non-interactive), or None with a one-line hint when it is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        print("pip install matplotlib to get the figure; the table above is saved as JSON")
        return None


def save_figure(fig, path):
    fig.tight_layout(rect=(0, 0, 1, 0.94))  # room for the title above the panels
    fig.savefig(path, dpi=80)
    print(f"figure: {path}")
