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
    epilog = ("Runs are kept under --out; a second call reuses them (finished ones) or resumes them, and "
              "only redraws.")
    p = argparse.ArgumentParser(description=doc.split("\n")[0], epilog=epilog)
    p.add_argument("--quick", action="store_true",
                   help="tiny runs of well under a minute (what the tests use); "
                   "they show the machinery, not the claim")
    p.add_argument("--seeds", type=int, nargs="+", default=list(seeds),
                   help="seeds of every run (mean and spread)")
    p.add_argument("--out", default=os.path.join(ROOT, "reproduce", "runs", name), help="where the runs, the "
                   "table (JSON) and the figure (PNG) go")
    p.add_argument("--device", default="cpu",
                   help="device of the runs (cpu: what the figures were made with)")
    p.add_argument("--threads", type=int, help="CPU threads of each run (default: the method's choice)")
    return p


def train(method, name, flags, args):
    """Folder of the run `name` under args.out: method.main(flags) trains it, unless it has finished
    (results.json) or can be resumed (last.pt). The method's output goes to <run>/stdout.txt."""
    folder = os.path.join(args.out, name)
    if os.path.exists(os.path.join(folder, "results.json")):
        return folder
    argv = (["--resume", folder] if os.path.exists(os.path.join(folder, "last.pt"))
            else [*flags, "--device", args.device, "--out", args.out, "--name", name])
    argv += ["--threads", str(args.threads)] if args.threads else []
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
    return metrics.extract(model.backbone, model.projector, x, data, torch.device("cpu"),
                           augment=augment), y, model


_PIXELS = {}


def pixel_knn(folder):
    """kNN accuracy on the raw pixels of the run's data, the baseline a learned representation has to beat
    on real images: the same rule as the runs' kNN (cosine, k = 200, T = 0.1) on pixels standardised per
    pixel and channel over the kNN bank. Read from results.json when the run wrote it (pixel_knn_acc),
    else computed once per dataset setting."""
    saved = results(folder).get("pixel_knn_acc")
    if saved is not None:
        return saved
    args = json.load(open(os.path.join(folder, "args.json")))
    key = tuple(str(args.get(k)) for k in ("dataset", "data_dir", "image_size", "train_subset"))
    if key not in _PIXELS:
        with contextlib.redirect_stdout(io.StringIO()):
            data = common.load_data(argparse.Namespace(**args))
        bank = data.probe_x.flatten(1).float()
        mean, std = bank.mean(0), bank.std(0).clamp_min(1e-6)
        standard = lambda x: (x.flatten(1).float() - mean) / std                # (N, 3 S S)
        _PIXELS[key] = common.knn_accuracy(standard(data.probe_x), data.probe_y, standard(data.test_x),
                                           data.test_y,
                                           data.classes)
    return _PIXELS[key]


def mean_spread(values):
    """(mean, standard deviation over seeds; 0 for one seed)."""
    values = [v for v in values if v is not None]
    m = sum(values) / len(values)
    return m, (sum((v - m) ** 2 for v in values) / max(1, len(values) - 1)) ** 0.5


def spearman(x, y):
    """Spearman's rank correlation of two sequences (ties broken by order; 0 when x is constant)."""
    rank = lambda v: [sorted(v).index(e) for e in v]
    rx, ry, m = rank(x), rank(y), (len(x) - 1) / 2
    var = sum((a - m) ** 2 for a in rx)
    return sum((a - m) * (b - m) for a, b in zip(rx, ry)) / var if var else 0.0


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


# Okabe & Ito's colour-blind-safe palette (blue, vermilion, green, purple, orange, sky blue, black), and a
# marker per series, so that no series is told apart by colour alone
COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
STYLE = {"font.size": 12, "axes.titlesize": 12, "axes.labelsize": 12, "legend.fontsize": 10,
         "xtick.labelsize": 11,
         "ytick.labelsize": 11, "figure.titlesize": 14, "legend.framealpha": 0.85, "axes.grid": True,
         "grid.alpha": 0.3, "axes.prop_cycle": None, "lines.linewidth": 2, "lines.markersize": 6}


def pyplot():
    """matplotlib.pyplot (non-interactive, with this folder's style: fonts legible at the README's width,
    a grid, the colour-blind-safe colours), or None with a one-line hint when it is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("pip install matplotlib to get the figure; the table above is saved as JSON")
        return None
    plt.rcParams.update({**STYLE, "axes.prop_cycle": matplotlib.cycler(color=COLORS)})
    return plt


def figure(plt, rows, cols, width=11, height=None):
    """A figure of rows x cols panels (a flat list of axes), about 5.5 x 4 inches per panel."""
    fig, axes = plt.subplots(rows, cols, figsize=(width, height or 4 * rows), squeeze=False)
    return fig, [ax for row in axes for ax in row]


def baseline(ax, y, label, color="0.35"):
    """A labelled horizontal reference line (random initialisation, raw pixels, a maximum)."""
    ax.axhline(y, color=color, ls=":", lw=1.8, label=label, zorder=1)


def seed_dots(ax, x, values, color, marker="o", label=None):
    """One small dot per seed at x and the mean as a larger marker: n = 3 shows its own spread."""
    ax.scatter([x] * len(values), values, s=14, color=color, alpha=0.6, zorder=3)
    ax.scatter([x], [sum(values) / len(values)], s=60, color=color, marker=marker, label=label, zorder=4,
               edgecolor="white")


def verdict(ax, title, held):
    """A panel title that states its verdict: "held", "held partly" or "not at this scale"."""
    ax.set_title(f"{title}\n{held}", fontsize=12)


def seed_list(seeds):
    """"seed 0" or "seeds 0, 1, 2"."""
    return f"seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))}"


def seeds_text(seeds, curves="curves", dots="dots"):
    """How a figure title names its seeds: "seed 0", or "curves seed 0, dots seeds 0, 1, 2"."""
    if len(seeds) == 1:
        return seed_list(seeds)
    return f"{curves} seed {seeds[0]}, {dots} {seed_list(seeds)}"


def save_figure(fig, path, title=None, rect=(0, 0, 1, 1)):
    """Save at 150 dpi with `title` above the panels (larger than theirs); rect: the part of the figure the
    panels fill (room for a figure legend)."""
    if title:
        fig.suptitle(title, fontweight="bold")
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=150)
    with contextlib.suppress(ImportError):  # 256 colours: a third of the size, the same picture (Pillow,
        # which torchvision brings)
        from PIL import Image
        image = Image.open(path).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
        image.save(path, optimize=True)
    import matplotlib.pyplot as plt  # installed: fig is one of its figures
    plt.close(fig)  # pyplot keeps every figure until it is closed (a test draws dozens in one process)
    print(f"figure: {path}")
