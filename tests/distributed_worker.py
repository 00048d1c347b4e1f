"""Started by tests/test_distributed.py under `torchrun --nproc_per_node=2`: runs each method's main()
one after the other in the same process group, with the tiny arguments of RUNS (2 training steps of a
global batch of 32 on shapes, plain SGD so that an update is a gradient). The test runs the same
arguments in one process and compares. Usage: torchrun ... distributed_worker.py OUT NAME[,NAME...]
A name `fail-rank1:<method>` gives rank 1 a missing --data-dir: one process fails, the others must stop."""
import importlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = ["--dataset", "shapes", "--train-subset", "64", "--batch-size", "32", "--epochs", "1",
        "--optimizer", "sgd", "--lr", "0.05", "--warmup-epochs", "0", "--eval-every", "1"]
RUNS = {  # run name -> (method file, its flags)
    "simclr": ("simclr", []),
    "vicreg": ("vicreg", []),
    "barlow": ("barlow", []),
    "corinfomax": ("corinfomax", []),
    "sslpm": ("sslpm", []),
    "sslpm-mlp": ("sslpm", ["--predictor", "mlp"]),
    "adadim": ("adadim", []),
    "adadim-momentum": ("adadim", ["--momentum", "0.99"]),
}


def argv(name, out):
    method, flags = RUNS[name]
    return method, [*FLAGS, *flags, "--out", out, "--name", name]


if __name__ == "__main__":
    out, names = sys.argv[1], sys.argv[2].split(",")
    for name in names:
        if name.startswith("fail-rank1:"):
            method, args = argv(name.split(":")[1], out)
            if int(os.environ["RANK"]) == 1:  # this process's machine lacks the data
                args += ["--dataset", "imagefolder", "--data-dir", os.path.join(out, "missing")]
        else:
            method, args = argv(name, out)
        importlib.import_module(method).main(args)
