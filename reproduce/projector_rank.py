"""The projector's rank ("Toward a Geometrical Understanding of Self-supervised Contrastive Learning",
Cosentino et al. 2022, arXiv 2205.06926, Figures 1, 3, 5 and 7): with stronger augmentation a linear projector
loses rank, the nearest negatives come closer, InfoNCE sits under its upper bound (eq. 3), and part of the
displacement between an image and its nearest negative falls outside the projector's column space (eq. 10).

    python reproduce/projector_rank.py           # 3 runs: about 2 minutes on 2 cores
    python reproduce/projector_rank.py --seeds 0 1 2   # mean and spread: about 6 minutes

Runs: simclr.py with a linear, bias-free projector (--projector linear --proj-dim 32) under the paper's
`small`, `moderate` and `large` augmentation (its Table 2), with the paper's optimiser (LARS lr 4.0, weight
decay 1e-6, tau 0.5) on the shapes CPU recipe's data (16 px, width 8, 4,000 images, 10 epochs), and
--track-every 1 (metrics.track each epoch: Rank_0.01 of the projector's weight and its effective rank,
the effective rank of Z, InfoNCE and its upper bound on two views of 1,000 test images with beta 2 as the
paper, the unexplained variance), epoch 0 being the random initialisation. The figure, each panel titled
with its verdict: (a) as Figure 1, the rank of the projector over training: Rank_0.01 (eq. 2, dashed)
and the effective rank (solid), its continuous counterpart; (b) Figure 1's other half, the kNN accuracy
per augmentation (dots: seeds; random-initialisation and raw-pixel lines); (c) as Figure 3, InfoNCE
and its upper bound over training (InfoNCE <= bound is an identity: the question is whether the bound
tracks InfoNCE); (d) as Figure 7, the unexplained variance. The table adds Figure 5's nearest-negative
distances.
"""
import os

import harness
import metrics

POLICIES = ("small", "moderate", "large")
# the paper's optimiser (section 2: LARS lr 4.0, weight decay 1e-6, beta 2 = tau 0.5), the CPU recipe's data
FLAGS = ["--projector", "linear", "--proj-dim", "32", "--optimizer", "lars", "--lr", "4.0",
         "--weight-decay", "1e-6",
         "--temperature", "0.5", "--epochs", "10", "--eval-every", "10", "--track-every", "1"]
QUICK = ["--projector", "linear", "--proj-dim", "16", "--width", "4", "--train-subset", "256",
         "--epochs", "3",
         "--eval-every", "3", "--warmup-epochs", "0", "--track-every", "1"]


def correlation(x, y):
    """Pearson correlation of two sequences; None when one is constant."""
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((u - mx) * (v - my) for u, v in zip(x, y))
    sx, sy = sum((u - mx) ** 2 for u in x) ** 0.5, sum((v - my) ** 2 for v in y) ** 0.5
    return sxy / (sx * sy) if sx and sy else None


def main(argv=None):
    a = harness.parser(__doc__, "projector_rank").parse_args(argv)
    logs, knn_seeds, rows = {}, {}, []
    for policy in POLICIES:
        ranks, eranks, knns, dist, unexplained, tracks = [], [], [], [], [], []
        for seed in a.seeds:
            folder = harness.train("simclr", f"{policy}-s{seed}",
                                   [*(QUICK if a.quick else FLAGS), "--policy", policy,
                                                                   "--seed", str(seed)], a)
            log = harness.log(folder)
            logs.setdefault(policy, log)  # the figure's curves: the first seed
            final = log[-1]
            tracked = [r for r in log if r.get("infonce") is not None]
            tracks.append(correlation([r["infonce"] for r in tracked], [r["infonce_upper"] for r in tracked]))
            (h1, h2, f1, f2), _, model = harness.features(folder, n=1000, views=True)
            nearest, d = metrics.nearest_negatives(h1, h2, f1, f2)
            ranks.append(final["projector_rank"])
            eranks.append(metrics.effective_rank(model.projector.weight.detach()))
            knns.append(harness.results(folder)["knn_acc"])
            dist.append(d.mean().item())
            unexplained.append(final.get("unexplained_variance"))
        knn_seeds[policy] = knns
        row = {"policy": policy}
        for key, values in (("projector_rank", ranks), ("effective_rank_W", eranks),
                            ("nearest_negative_distance", dist),
                            ("unexplained_variance", unexplained), ("knn_acc", knns)):
            harness.put_mean_spread(row, key, values)
        row["knn_acc_per_seed"] = knns
        init = logs[policy][0]  # epoch 0: the same measures at random initialisation
        row["unexplained_variance_epoch0_last"] = (f"{init.get('unexplained_variance', float('nan')):.3g} -> "
                                                   f"{logs[policy][-1]['unexplained_variance']:.3g}")
        row["infonce_epoch0_last"] = (f"{init.get('infonce', float('nan')):.3g} -> "
                                      f"{logs[policy][-1]['infonce']:.3g}")
        row["bound_tracks_infonce_r"] = ", ".join("-" if t is None else f"{t:.2f}" for t in tracks)
        rows.append(row)
    first = harness.log(os.path.join(a.out, f"small-s{a.seeds[0]}"))[0]["knn_acc"]
    pixels = harness.pixel_knn(os.path.join(a.out, f"small-s{a.seeds[0]}"))
    harness.table(rows, os.path.join(a.out, "projector_rank.json"),
                  f"SimCLR with a linear projector, shapes, seeds {a.seeds} (mean; _sd: spread); "
                  "projector_rank: Rank_0.01 of W (eq. 2); effective_rank_W: its continuous counterpart; "
                  "bound_tracks_infonce_r: "
                  "correlation over epochs 0-last of InfoNCE and its upper bound (eq. 3), per seed; "
                  f"kNN at random initialisation (seed {a.seeds[0]}) {first:.3g}, on raw pixels {pixels:.3g}")
    plt = harness.pyplot()
    if plt is None:
        return rows
    fig, axes = harness.figure(plt, 2, 2, width=12, height=9)
    dims = logs[POLICIES[0]][-1].get("projector_rank") or 32
    falls = (all(rows[i]["effective_rank_W"] > rows[i + 1]["effective_rank_W"] for i in range(len(rows) - 1))
             and rows[0]["effective_rank_W"] - rows[-1]["effective_rank_W"] > 1)  # by more than one dimension
    full = all(r["projector_rank"] == dims for r in rows)
    for j, policy in enumerate(POLICIES):
        c, m = harness.COLORS[j], harness.MARKERS[j]
        tracked = [r for r in logs[policy] if r.get("projector_rank") is not None]
        epochs = [r["epoch"] for r in tracked]
        axes[0].plot(epochs, [r["projector_effective_rank"] for r in tracked], marker=m, color=c,
                     label=f"{policy}: effective rank")
        axes[0].plot(epochs, [r["projector_rank"] for r in tracked], ls="--", color=c)
        harness.seed_dots(axes[1], j, knn_seeds[policy], c, m, label=policy)
        axes[2].plot(epochs, [r["infonce"] for r in tracked], marker=m, color=c, label=f"{policy}: InfoNCE")
        axes[2].plot(epochs, [r["infonce_upper"] for r in tracked], ls="--", color=c)
        axes[3].plot(epochs, [r["unexplained_variance"] for r in tracked], marker=m, color=c, label=policy)
    axes[0].plot([], [], ls="--", color="0.3", label="Rank_0.01 (dashed, all policies)")
    axes[0].set(xlabel="epoch (0: random initialisation)", ylabel=f"rank of the projector W (of {dims})",
                ylim=(0, dims + 2))
    harness.verdict(axes[0], "Figure 1: rank of W, stronger augmentation",
                    ("effective rank falls: held" if falls else "effective rank does not fall") +
                    ("; Rank_0.01 stays full: not at this scale" if full else ""))
    axes[0].legend(loc="lower left")
    harness.baseline(axes[1], first, "random initialisation")
    harness.baseline(axes[1], pixels, "raw pixels", color=harness.COLORS[4])
    axes[1].set_xticks(range(len(POLICIES)), POLICIES)
    axes[1].set(xlabel="augmentation strength", ylabel="kNN accuracy (test)")
    means = [sum(v) / len(v) for v in knn_seeds.values()]
    rises = all(x < y for x, y in zip(means, means[1:]))
    harness.verdict(axes[1], "Figure 1: accuracy, stronger augmentation",
                    "rises: held" if rises else "falls: reversed at this scale (crops lose a 16 px object)")
    axes[1].legend(loc="center right")
    r = [correlation([x["infonce"] for x in logs[p] if x.get("infonce") is not None],
                     [x["infonce_upper"] for x in logs[p] if x.get("infonce") is not None]) for p in POLICIES]
    axes[2].plot([], [], ls="--", color="0.3", label="upper bound, eq. 3 (dashed)")
    axes[2].set(xlabel="epoch (0: random initialisation)", ylabel="nats (1,000 test images)")
    tracks = "held" if all(v and v > 0.5 for v in r) else (
        "not at this scale" if all(v is not None and v < 0.5 for v in r) else "held partly")
    ends = [(logs[p][-1]["infonce"], logs[p][-1]["infonce_upper"]) for p in POLICIES]
    order = lambda k: sorted(range(len(ends)), key=lambda i: ends[i][k])
    same = order(0) == order(1)
    harness.verdict(axes[2], "Figure 3: InfoNCE <= its bound (an identity)",
                    f"bound tracks InfoNCE over epochs: {tracks}\n(r = " + ", ".join(
                        "-" if v is None else f"{v:.2f}" for v in r) + ")" + ("; across strengths: same order"
                                                                               if same else ""))
    axes[2].legend(loc="center right")
    drops = all(logs[p][-1]["unexplained_variance"] < logs[p][0].get("unexplained_variance",
                                                                     -1) for p in POLICIES)
    axes[3].set(xlabel="epoch (0: random initialisation)", ylabel="unexplained variance (fraction, 0 to 1)")
    harness.verdict(axes[3], "Figure 7: variance outside W's columns (eq. 10)",
                    "drops after initialisation: held" if drops
                    else "no drop after initialisation: not at this scale")
    axes[3].legend()
    for ax in (axes[0], axes[2], axes[3]):
        ax.xaxis.get_major_locator().set_params(integer=True)
    harness.save_figure(fig, os.path.join(a.out, "projector_rank.png"),
                        f"Geometry paper: SimCLR, linear projector (shapes, {harness.seeds_text(a.seeds)})")
    return rows


if __name__ == "__main__":
    main()
