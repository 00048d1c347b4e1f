"""The paper datasets (--dataset cifar10, cifar100, stl10) through torchvision's dataset classes, from small
files written here in torchvision's on-disk formats (no download: their md5 checks are patched), end to end:
labels, splits and class names as loaded, and `python corinfomax.py --dataset cifar100` run in-process."""
import json
import pickle
import signal

import numpy as np
import pytest
import torch
import torchvision

import common

RNG = np.random.default_rng(0)


def write_cifar(root, hundred, n_train=20, n_test=10):
    """CIFAR-10's cifar-10-batches-py/ (5 train batches, test_batch, batches.meta) or CIFAR-100's
    cifar-100-python/ (train, test, meta): pickled dicts, images as rows of 3072 bytes (R, G, B planes)."""
    classes = 100 if hundred else 10
    label_key = "fine_labels" if hundred else "labels"
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    truth = {}
    files = {"train": ["train"], "test": ["test"]} if hundred else {
        "train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    for split, names in files.items():
        images, labels = [], []
        for name in names:
            x = RNG.integers(0, 256, (n_train if split == "train" else n_test, 3072), dtype=np.uint8)
            y = RNG.integers(0, classes, len(x)).tolist()
            pickle.dump({"data": x, label_key: y}, open(folder / name, "wb"))
            images.append(x)
            labels += y
        truth[split] = (np.concatenate(images).reshape(-1, 3, 32, 32), labels)
    meta = {"fine_label_names": [f"c{k}" for k in range(100)]} if hundred else {"label_names": [f"c{k}" for k in range(10)]}
    pickle.dump(meta, open(folder / ("meta" if hundred else "batches.meta"), "wb"))
    return truth


def write_stl10(root, n=(8, 6, 12)):
    """stl10_binary/: train_X.bin / test_X.bin / unlabeled_X.bin hold (N, 3, 96, 96) uint8 in column-major
    order per channel, train_y.bin / test_y.bin the labels 1..10; class_names.txt one name per line."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    truth = {}
    for split, count in zip(("train", "test", "unlabeled"), n):
        x = RNG.integers(0, 256, (count, 3, 96, 96), dtype=np.uint8)
        np.ascontiguousarray(x.transpose(0, 1, 3, 2)).tofile(folder / f"{split}_X.bin")  # as the files store it
        truth[split] = [x, None]
        if split != "unlabeled":
            y = RNG.integers(1, 11, count, dtype=np.uint8)
            y.tofile(folder / f"{split}_y.bin")
            truth[split][1] = (y.astype(int) - 1).tolist()
    (folder / "class_names.txt").write_text("\n".join(f"s{k}" for k in range(10)) + "\n")
    return truth


@pytest.fixture
def no_md5(monkeypatch):
    for cls in (torchvision.datasets.CIFAR10, torchvision.datasets.CIFAR100, torchvision.datasets.STL10):
        monkeypatch.setattr(cls, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)  # its metadata file


@pytest.mark.parametrize("hundred", [False, True])
def test_cifar_splits_labels_and_classes(tmp_path, no_md5, hundred):
    truth = write_cifar(tmp_path, hundred)
    (train, probe, test), names = common.load_torchvision("cifar100" if hundred else "cifar10", str(tmp_path))
    assert names == [f"c{k}" for k in range(100 if hundred else 10)]
    assert torch.equal(train[0], torch.from_numpy(truth["train"][0])) and train[1].tolist() == truth["train"][1]
    assert torch.equal(probe[0], train[0]) and torch.equal(test[0], torch.from_numpy(truth["test"][0]))
    assert test[1].tolist() == truth["test"][1] and train[0].dtype == torch.uint8 and len(train[0]) == (20 if hundred else 100)


def test_stl10_splits_labels_and_classes(tmp_path, no_md5):
    truth = write_stl10(tmp_path)
    (train, probe, test), names = common.load_torchvision("stl10", str(tmp_path))
    assert names == [f"s{k}" for k in range(10)]
    # pretraining on train + unlabeled (labels -1), the kNN bank and probe on train, tests on test
    assert torch.equal(train[0], torch.from_numpy(np.concatenate([truth["train"][0], truth["unlabeled"][0]])))
    assert train[1].tolist() == truth["train"][1] + [-1] * 12
    assert torch.equal(probe[0], torch.from_numpy(truth["train"][0])) and probe[1].tolist() == truth["train"][1]
    assert torch.equal(test[0], torch.from_numpy(truth["test"][0])) and test[1].tolist() == truth["test"][1]


def test_corinfomax_on_cifar100_end_to_end(tmp_path, no_md5, capsys):
    """`python corinfomax.py --dataset cifar100` with its paper recipe, shrunk to run here (width 2, one
    epoch of 64 of the 100 images, 16 px): the data path of the headline command, labels and splits."""
    import corinfomax
    write_cifar(tmp_path / "data", hundred=True, n_train=100)
    handler, threads = signal.getsignal(signal.SIGINT), torch.get_num_threads()
    try:
        corinfomax.main(["--dataset", "cifar100", "--data-dir", str(tmp_path / "data"), "--width", "2",
                         "--image-size", "16", "--epochs", "1", "--batch-size", "32", "--train-subset", "64",
                         "--projector", "64-64-16", "--out", str(tmp_path / "runs"), "--name", "c"])
    finally:
        signal.signal(signal.SIGINT, handler)
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "cifar100: 64 training images (a random sample, seed 0, of 100)" in out and "100 classes" in out
    args = json.load(open(tmp_path / "runs" / "c" / "args.json"))
    assert (args["alpha"], args["la_R"], args["optimizer"]) == (1000.0, 0.01, "sgd")  # the thesis recipe
    results = json.load(open(tmp_path / "runs" / "c" / "results.json"))
    assert 0 <= results["knn_acc"] <= 1 and len(results["eigenvalues_R1"]) == 16
