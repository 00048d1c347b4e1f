"""The projector's rank ("Toward a Geometrical Understanding of Self-supervised Contrastive Learning", Cosentino
et al. 2022, arXiv 2205.06926, Figures 1, 3, 5 and 7): with stronger augmentation a linear projector
loses rank, the nearest negatives come closer, InfoNCE sits under its upper bound (eq. 3), and part of the
displacement between an image and its nearest negative falls outside the projector's column space (eq. 10).

    python reproduce/projector_rank.py           # 3 runs: about 2 minutes on 2 cores
    python reproduce/projector_rank.py --seeds 0 1 2   # mean and spread: about 6 minutes

Runs: simclr.py with a linear, bias-free projector (--projector linear --proj-dim 32) under the paper's
`small`, `moderate` and `large` augmentation (its Table 2), with the paper's optimiser (LARS lr 4.0, weight
decay 1e-6, tau 0.5) on the shapes CPU recipe's data (16 px, width 8, 4,000 images, 10 epochs), and
--track-every 1 (metrics.track each epoch: Rank_0.01 of the projector's weight and its effective rank,
the effective rank of Z, InfoNCE and its upper bound on two views of 1,000 test images with beta 2 as the
paper, the unexplained variance). The figure: (a) as Figure 1, the rank of the projector over training:
Rank_0.01 (eq. 2, dashed) and the effective rank (solid), its continuous counterpart; (b) as
Figure 5, the distance of each test image to its nearest negative at the end (normalised vectors); (c) as
Figure 3, InfoNCE and its upper bound over training; (d) as Figure 7, the unexplained variance.
"""
import os

import harness
import metrics

POLICIES = ("small", "moderate", "large")
# the paper's optimiser (section 2: LARS lr 4.0, weight decay 1e-6, beta 2 = tau 0.5), the CPU recipe's data
FLAGS = ["--projector", "linear", "--proj-dim", "32", "--optimizer", "lars", "--lr", "4.0", "--weight-decay", "1e-6",
         "--temperature", "0.5", "--epochs", "10", "--eval-every", "10", "--track-every", "1"]
QUICK = ["--projector", "linear", "--proj-dim", "16", "--width", "4", "--train-subset", "256", "--epochs", "3",
         "--eval-every", "3", "--warmup-epochs", "0", "--track-every", "1"]


def main(argv=None):
    a = harness.parser(__doc__, "projector_rank").parse_args(argv)
    logs, distances, rows = {}, {}, []
    for policy in POLICIES:
        ranks, eranks, knns, dist, unexplained, bound_holds = [], [], [], [], [], []
        for seed in a.seeds:
            folder = harness.train("simclr", f"{policy}-s{seed}", [*(QUICK if a.quick else FLAGS), "--policy", policy,
                                                                   "--seed", str(seed)], a)
            log = harness.log(folder)
            logs.setdefault(policy, log)  # the figure's curves: the first seed
            final = log[-1]
            bound_holds.append(all(r["infonce"] <= r["infonce_upper"] for r in log[1:] if "infonce" in r))
            (h1, h2, f1, f2), _, model = harness.features(folder, n=1000, views=True)
            nearest, d = metrics.nearest_negatives(h1, h2, f1, f2)
            distances.setdefault(policy, d.tolist())
            ranks.append(final["projector_rank"])
            eranks.append(metrics.effective_rank(model.projector.weight.detach()))
            knns.append(harness.results(folder)["knn_acc"])
            dist.append(d.mean().item())
            unexplained.append(final.get("unexplained_variance"))
        row = {"policy": policy}
        for key, values in (("projector_rank", ranks), ("effective_rank_W", eranks), ("nearest_negative_distance", dist),
                            ("unexplained_variance", unexplained), ("knn_acc", knns)):
            harness.put_mean_spread(row, key, values)
        first = next(r for r in logs[policy][1:] if "infonce" in r)
        row["infonce_first_last"] = f"{first['infonce']:.3g} -> {logs[policy][-1]['infonce']:.3g}"
        row["upper_bound_holds"] = f"{sum(bound_holds)}/{len(bound_holds)}"  # runs with InfoNCE <= bound every epoch
        rows.append(row)
    harness.table(rows, os.path.join(a.out, "projector_rank.json"),
                  f"SimCLR with a linear projector, shapes, seeds {a.seeds} (mean; _sd: spread); projector_rank: "
                  "Rank_0.01 of W (eq. 2); effective_rank_W: its continuous counterpart")
    plt = harness.pyplot()
    if plt is None:
        return rows
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for policy in POLICIES:
        tracked = [r for r in logs[policy][1:] if "projector_rank" in r]
        epochs = [r["epoch"] for r in tracked]
        line, = axes[0].plot(epochs, [r["projector_effective_rank"] for r in tracked], marker="o", label=policy)
        axes[0].plot(epochs, [r["projector_rank"] for r in tracked], ls="--", color=line.get_color())
        axes[1].hist(distances[policy], bins=30, alpha=0.5, label=policy)
        line, = axes[2].plot(epochs, [r["infonce"] for r in tracked], label=f"{policy}: InfoNCE")
        axes[2].plot(epochs, [r["infonce_upper"] for r in tracked], ls="--", color=line.get_color(),
                     label=f"{policy}: upper bound")
        axes[3].plot(epochs, [r["unexplained_variance"] for r in tracked], marker="o", label=policy)
    axes[0].set(xlabel="epoch", ylabel="effective (solid), Rank_0.01 (dashed)",
                title="as Figure 1: projector rank")
    axes[1].set(xlabel="distance to the nearest negative", ylabel="test images", title="as Figure 5 (end of training)")
    axes[2].set(xlabel="epoch", ylabel="nats", title="as Figure 3: InfoNCE and its upper bound (eq. 3)")
    axes[3].set(xlabel="epoch", ylabel="fraction", title="as Figure 7: unexplained variance (eq. 10)")
    for ax in axes:
        ax.legend(fontsize=7)
    for ax in (axes[0], axes[2], axes[3]):
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(f"Geometry paper: SimCLR with a linear projector under small / moderate / large augmentation "
                 f"(shapes, seed {a.seeds[0]})", fontsize=9)
    harness.save_figure(fig, os.path.join(a.out, "projector_rank.png"))
    return rows


if __name__ == "__main__":
    main()
