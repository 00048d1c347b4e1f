"""Does a method's CPU recipe learn? kNN accuracy at random initialisation and after training, over
seeds, on `shapes` and on real images (scikit-learn's 1,797 handwritten digits, exported once as an
image folder), with the recipe a user gets (`--recipe shapes`, with --epochs raised so that the
network sees as many images as on shapes) and any extra flags to compare.

    pip install scikit-learn        # only for the digits; the repository itself does not need it
    python benchmarks/recipes.py simclr --seeds 0 1 2
    python benchmarks/recipes.py vicreg --seeds 0 1 2 -- --lr 0.01    # flags after -- go to the method

Prints one row per (data, seed) and the mean margin; results.json of each run stays in --out.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The shapes recipe shows the network 10 epochs x 4,000 = 40,000 images; the 1,437 training digits
# get the same budget in epochs, as the README tells users of small folders to do.
DIGITS_EPOCHS = 28


def export_digits(root):
    """scikit-learn's digits (8x8, 16 grey levels) as <root>/train|val/<digit>/<i>.png, 80/20 split
    by a fixed permutation; the image-folder loader resizes them to --image-size."""
    if os.path.isdir(os.path.join(root, "val")):
        return root
    import torchvision
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = torch.from_numpy(digits.images * (255 / 16)).round().to(torch.uint8)  # (1797, 8, 8)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    for rank, i in enumerate(order.tolist()):
        split = "train" if rank < 0.8 * len(images) else "val"
        folder = os.path.join(root, split, str(digits.target[i]))
        os.makedirs(folder, exist_ok=True)
        torchvision.io.write_png(images[i][None].expand(3, 8, 8).contiguous(), os.path.join(folder, f"{i}.png"))
    return root


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("method", help="simclr, vicreg, barlow, corinfomax, sslpm, adadim")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--data", nargs="+", default=["shapes", "digits"], choices=["shapes", "digits"])
    p.add_argument("--digits-dir", default=os.path.join(ROOT, "data", "digits"))
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "recipes"))
    args, extra = p.parse_known_args()
    extra = [a for a in extra if a != "--"]
    rows = []
    for data in args.data:
        where = (["--dataset", "shapes"] if data == "shapes" else
                 ["--dataset", "imagefolder", "--data-dir", export_digits(args.digits_dir), "--recipe", "shapes",
                  "--epochs", str(DIGITS_EPOCHS)])
        for seed in args.seeds:
            name = f"{args.method}-{data}-s{seed}-{time.strftime('%H%M%S')}"
            t0 = time.time()
            subprocess.run([sys.executable, os.path.join(ROOT, f"{args.method}.py"), *where, "--seed", str(seed),
                            "--out", args.out, "--name", name, *extra], check=True, cwd=ROOT,
                           stdout=subprocess.DEVNULL)
            r = json.load(open(os.path.join(args.out, name, "results.json")))
            rows.append((data, seed, r["init_knn_acc"], r["knn_acc"], r["probe_acc"], time.time() - t0))
            print(f"{data:7s} seed {seed}: kNN {r['init_knn_acc']:.3f} -> {r['knn_acc']:.3f} "
                  f"(margin {r['knn_acc'] - r['init_knn_acc']:+.3f}), probe {r['probe_acc']:.3f}, "
                  f"{time.time() - t0:.0f} s", flush=True)
    for data in args.data:
        m = [k - i for d, _, i, k, _, _ in rows if d == data]
        print(f"{data}: mean margin {sum(m) / len(m):+.3f}, min {min(m):+.3f} over {len(m)} seeds; "
              f"flags: {' '.join(extra) or '(recipe only)'}")


if __name__ == "__main__":
    main()
