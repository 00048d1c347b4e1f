"""Pictures that teach, each a PNG: what the network is asked to be invariant to, how training goes, what
the learned features look like, and what "near" means before and after training.

    python reproduce/pictures.py   # reuses the runs of redundancy.py and collapse.py (seed 0), or trains them

- views.png: one image of each of the ten `shapes` classes and two augmented views of it under every
  policy of the papers (`small`, `moderate`, `large`: the Geometry paper's Table 2; `asymmetric`: BYOL's,
  CorInfoMax's; `objects`: the laptop recipe's), at 16 px (the CPU recipes) and 32 px, and of Fashion-MNIST
  at 28 px when --fashion-dir has it. A `large` crop keeps 8% of the image: at 16 px a few pixels, often
  no part of the shape, which is why the CPU recipes use `small`.
- curves.png: every loss term and the kNN accuracy per epoch of the six methods' CPU recipes (seed 0),
  epoch 0 being the random initialisation, from their log.jsonl; and the kNN of VICReg without its
  variance or covariance term.
- embeddings.png: the first two principal components of features of 1,000 test images, coloured by class:
  raw pixels, a randomly initialised backbone, SimCLR's trained backbone; and VICReg's embeddings Z (the
  projector's output, where the loss acts), with the full loss, without its variance term (all points at
  one place: total collapse) and without its covariance term (along one line: dimensional collapse), the
  three on the same axes.
- neighbours.png: six test images and the five training images nearest to each (cosine of backbone
  features, what the kNN accuracy uses), with a randomly initialised backbone and after SimCLR.
"""
import contextlib
import io
import os
import types

import torch

import harness

import collapse
import common
import metrics
import redundancy

POLICIES = ("small", "objects", "moderate", "large", "asymmetric")


def method_runs(a):
    """Folders of the seed-0 runs this script shows, trained (as redundancy.py and collapse.py train them,
    in their folders under --runs) when missing."""
    runs = {}
    for script, names in ((redundancy, {m: (m, []) for m in redundancy.METHODS}),
                          (collapse, {label: ("vicreg", flags) for label, flags in collapse.RUNS.items()})):
        b = types.SimpleNamespace(**{**vars(a), "out": os.path.join(a.runs, script.__name__)})
        for label, (method, flags) in names.items():
            if script is redundancy:
                name, extra = f"{method}-s0", ["--eval-every", "1"]
            else:
                name, extra = f"{label.replace(' term', '').replace(' ', '-')}-s0", ["--track-every", "1"]
            quick = script.QUICK if a.quick else []
            runs[label] = harness.train(method, name, [*quick, *flags, "--seed", "0", *extra], b)
    return runs


def fashion_examples(root):
    """One Fashion-MNIST test image per class (uint8 (10, 3, 28, 28)) and the class names, if root holds its
    four IDX files (as the methods' --data-dir; nothing is downloaded here), else None."""
    files = [f"{s}-{kind}-ubyte" for s in ("train", "t10k") for kind in ("images-idx3", "labels-idx1")]
    places = (root, os.path.join(root, "FashionMNIST", "raw"))  # Debian's folder, or torchvision's download
    if not any(all(os.path.exists(os.path.join(d, f)) or os.path.exists(os.path.join(d, f + ".gz"))
                   for f in files) for d in places):
        return None
    (_, _, (x, y)), names = common.load_torchvision("fashion-mnist", root)
    return torch.stack([x[y == k][0] for k in range(10)]), names


def views(plt, path, fashion=None):
    """Two views of one image per class under each policy: shapes at 16 and 32 px, Fashion-MNIST at 28 px
    (the laptop recipe's `objects` policy) when its files were found."""
    panels = [(*common.make_shapes(200, size, seed=1), common.SHAPE_NAMES, f"shapes, {size} x {size} pixels")
              for size in (16, 32)]
    panels = [(torch.stack([x[y == k][0] for k in range(10)]), names, title) for x, y, names, title in panels]
    if fashion is not None:
        panels.append((*fashion, "Fashion-MNIST, 28 x 28 pixels"))
    fig, axes = plt.subplots(1, len(panels), figsize=(7.5 * len(panels), 7.6), squeeze=False)
    for ax, (x, names, title) in zip(axes[0], panels):                                  # x: (10, 3, S, S)
        size = x.shape[-1]
        rows, labels = [x.float() / 255], ["original"]
        plain = types.SimpleNamespace(normalize=lambda v: v)                         # views stay in [0, 1]
        for policy in POLICIES:
            common.seed_everything(0)
            rows += list(common.Augment(policy, plain, size, shard=False)(x))
            labels += [f"{policy}, view 1", "view 2"]
        grid = torch.cat([torch.cat(list(r.clamp(0, 1)), 2) for r in rows], 1)        # (3, rows S, 10 S)
        ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_yticks([(i + 0.5) * size for i in range(len(labels))], labels)
        ax.set_xticks([(i + 0.5) * size for i in range(10)], names, rotation=60)
        ax.grid(False)
        ax.set_title(title)
    harness.save_figure(fig, path,
                        "Two augmented views of each class under every policy: the network must map "
                        "both to the same point")


LOGGED = {"epoch", "lr", "seconds", "images_per_sec", "world_size", "global_batch", "knn_acc", "probe_acc",
          "probe_loss", "alpha", "beta"}


def curves(plt, runs, path):
    fig, axes = harness.figure(plt, 2, 4, width=20, height=9)
    for ax, method in zip(axes, redundancy.METHODS):
        log = harness.log(runs[method])
        terms = [k for k in log[1] if k not in LOGGED and isinstance(log[1][k], float)]
        for j, term in enumerate(terms):
            first = abs(log[1][term]) or 1.0
            ax.plot([r["epoch"] for r in log[1:]], [r[term] / first for r in log[1:]],
                    marker=harness.MARKERS[j % 7],
                    color=harness.COLORS[j % 7], label=f"{term} ({log[1][term]:.3g} at epoch 1)")
        ax.set(xlabel="epoch", ylabel="loss term / its value at epoch 1")
        ax.set_title(method)
        ax.legend(fontsize=9)
    for ax, names, title in ((axes[6], redundancy.METHODS, "kNN accuracy of the six methods"),
                             (axes[7], list(collapse.RUNS), "kNN accuracy, VICReg and its ablations")):
        for j, name in enumerate(names):
            log = [r for r in harness.log(runs[name]) if "knn_acc" in r]
            ax.plot([r["epoch"] for r in log], [r["knn_acc"] for r in log], marker=harness.MARKERS[j],
                    color=harness.COLORS[j], label=name)
        harness.baseline(ax, harness.pixel_knn(runs["simclr"]), "raw pixels", color=harness.COLORS[4])
        ax.set(xlabel="epoch (0: random initialisation)", ylabel="kNN accuracy (test)")
        ax.set_title(title)
        ax.legend(fontsize=9)
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
    harness.save_figure(fig, path, "Training curves of the CPU recipes (shapes, seed 0), from log.jsonl")


def pca2(x):
    """The first two principal components of x (n, d), float64, unscaled (a collapsed cloud stays small)."""
    x = x.double() - x.double().mean(0)
    return x @ torch.linalg.svd(x, full_matrices=False)[2][:2].T


def embeddings(plt, runs, path):
    (r, _), y, model = harness.features(runs["simclr"], n=1000)
    with contextlib.redirect_stdout(io.StringIO()):  # load_data's summary line
        _, args, _, data = metrics.load_run(os.path.join(runs["simclr"], "last.pt"), torch.device("cpu"))
    keep = common.random_indices(len(data.test_x), 1000)
    common.seed_everything(0)
    fresh = type(model)(args)                                                  # the same network, untrained
    init = common.extract_features(fresh.backbone, data.test_x[keep], data, torch.device("cpu"))
    pixels = data.test_x[keep].flatten(1).float()
    panels = [("raw pixels", pixels), ("random initialisation, backbone", init), ("SimCLR, backbone", r)]
    panels += [(f"VICReg, {label}: embeddings Z", harness.features(runs[label], n=1000)[0][1])
               for label in collapse.RUNS]
    fig, axes = harness.figure(plt, 2, 3, width=16, height=10.5)
    reference = None
    for k, (ax, (title, f)) in enumerate(zip(axes, panels)):
        p = pca2(f)
        for c in range(10):
            ax.scatter(p[y == c, 0], p[y == c, 1], s=7, alpha=0.7, color=plt.cm.tab10(c),
                       label=common.SHAPE_NAMES[c] if k == 0 else None)
        spread = p.std(0)
        ax.set_title(f"{title}\nstd along PC 1, 2: {spread[0]:.2g}, {spread[1]:.2g}", fontsize=12)
        ax.set(xlabel="principal component 1", ylabel="principal component 2")
        if k == 3:
            reference = (ax.get_xlim(), ax.get_ylim())
        elif k > 3:  # VICReg's three on one scale: the collapses are seen, not rescaled away
            ax.set(xlim=reference[0], ylim=reference[1])
    fig.legend(loc="lower center", ncol=10, markerscale=3, fontsize=10)
    harness.save_figure(fig, path, "Test images in the first two principal components, coloured by class",
                        rect=(0, 0.04, 1, 1))


def neighbours(plt, runs, path, queries=6, k=5):
    with contextlib.redirect_stdout(io.StringIO()):  # load_data's summary line
        _, args, model, data = metrics.load_run(os.path.join(runs["simclr"], "last.pt"), torch.device("cpu"))
    common.seed_everything(0)
    fresh = type(model)(args)
    q = common.random_indices(len(data.test_x), queries)
    fig, axes = plt.subplots(1, 2, figsize=(15, 6.2))
    cpu, unit = torch.device("cpu"), lambda f: torch.nn.functional.normalize(f, dim=1)
    for ax, title, backbone in zip(axes, ("random initialisation", "after SimCLR"),
                                   (fresh.backbone, model.backbone)):
        bank = unit(common.extract_features(backbone, data.probe_x, data, cpu))
        f = unit(common.extract_features(backbone, data.test_x[q], data, cpu))
        nearest = (f @ bank.T).topk(k, dim=1).indices                                   # (queries, k)
        rows, agree = [], 0
        for i in range(queries):
            pad = torch.full_like(data.test_x[q[i]], 255)
            rows.append(torch.cat([data.test_x[q[i]], pad, *data.probe_x[nearest[i]]], 2))
            agree += (data.probe_y[nearest[i]] == data.test_y[q[i]]).sum().item()
        grid = torch.cat(rows, 1)
        size = data.test_x.shape[-1]
        ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_xticks([size / 2] + [(j + 2.5) * size for j in range(k)],
                      ["query"] + [f"{j + 1}" for j in range(k)])
        ax.set_yticks([(i + 0.5) * size for i in range(queries)],
                      [common.SHAPE_NAMES[c] for c in data.test_y[q]])
        ax.grid(False)
        ax.set_title(f"{title}: {agree} of {queries * k} neighbours share the query's class")
    harness.save_figure(fig, path,
                        "Each test image and its 5 nearest training images (cosine of backbone features)")


def main(argv=None):
    p = harness.parser(__doc__, "pictures")
    p.add_argument("--runs", default=os.path.join(harness.ROOT, "reproduce", "runs"), help="the folder whose "
                   "redundancy/ and collapse/ hold (or will hold) the seed-0 runs shown")
    p.add_argument("--fashion-dir", default=os.path.join(harness.ROOT, "data"), help="a folder with "
                   "Fashion-MNIST's four IDX files (gzipped or not), e.g. /usr/share/datasets/fashion-mnist: "
                   "views.png then shows its ten classes too")
    a = p.parse_args(argv)
    runs = method_runs(a)
    os.makedirs(a.out, exist_ok=True)
    rows = [{"picture": "curves", "run": label, "folder": folder} for label, folder in runs.items()]
    harness.table(rows, os.path.join(a.out, "pictures.json"), "the runs the pictures show (seed 0)")
    plt = harness.pyplot()
    if plt is None:
        return rows
    fashion = fashion_examples(a.fashion_dir)
    if fashion is None:
        print(f"views.png: shapes only (no Fashion-MNIST IDX files in --fashion-dir {a.fashion_dir})")
    views(plt, os.path.join(a.out, "views.png"), fashion)
    curves(plt, runs, os.path.join(a.out, "curves.png"))
    embeddings(plt, runs, os.path.join(a.out, "embeddings.png"))
    neighbours(plt, runs, os.path.join(a.out, "neighbours.png"))
    return rows


if __name__ == "__main__":
    main()
