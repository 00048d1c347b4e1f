"""The torchvision datasets (--dataset cifar10, cifar100, stl10, mnist, fashion-mnist) through torchvision's
dataset classes, from small files written here in torchvision's on-disk formats (no download: CIFAR's and
STL-10's md5 checks are patched; MNIST's IDX files are read without one), end to end: labels, splits and
class names as loaded, `python corinfomax.py --dataset cifar100` and `python simclr.py --dataset
fashion-mnist` run in-process."""
import gzip
import json
import pickle
import signal
import struct

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


@pytest.mark.parametrize("name,size,subset", [("cifar10", 32, 0), ("cifar10", 24, 60), ("stl10", 48, 0)])
def test_the_probe_set_is_the_training_images_themselves(tmp_path, no_md5, name, size, subset):
    # CIFAR's kNN bank and linear probe train on the training images: one tensor, resized once (no second copy
    # in memory or on the GPU), sampled as --train-subset samples them; STL-10's are its labelled part
    import argparse
    truth = write_stl10(tmp_path) if name == "stl10" else write_cifar(tmp_path, False)
    data = common.load_data(argparse.Namespace(dataset=name, data_dir=str(tmp_path), image_size=size,
                                               train_subset=subset))
    assert data.train_x.shape[1:] == (3, size, size)
    assert len(data.train_x) == (subset or (20 if name == "stl10" else 100))
    if name == "stl10":
        probe = common.resize_images(torch.from_numpy(truth["train"][0]), size)
        assert torch.equal(data.probe_x, probe) and data.probe_y.tolist() == truth["train"][1]
    else:
        keep = common.random_indices(100, subset or 100)
        assert data.probe_x is data.train_x and data.probe_y is data.train_y
        assert torch.equal(data.train_x, common.resize_images(torch.from_numpy(truth["train"][0])[keep], size))


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


# ------------------------------------------------------------------ MNIST and Fashion-MNIST: IDX files
def write_idx(path, array):
    """The IDX format of (Fashion-)MNIST: bytes 0, 0, 0x08 (unsigned byte), the number of dimensions, each
    dimension as a big-endian int32, then the values; gzipped when the name ends in .gz."""
    data = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape) + array.tobytes()
    (gzip.open if str(path).endswith(".gz") else open)(path, "wb").write(data)


def write_mnist(folder, gz=True, n=(40, 12)):
    """The 4 IDX files (train, t10k) of random 28 x 28 grey images and labels 0-9 into folder."""
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for split, count in zip(("train", "t10k"), n):
        x, y = RNG.integers(0, 256, (count, 28, 28), dtype=np.uint8), RNG.integers(0, 10, count, dtype=np.uint8)
        write_idx(folder / f"{split}-images-idx3-ubyte{'.gz' * gz}", x)
        write_idx(folder / f"{split}-labels-idx1-ubyte{'.gz' * gz}", y)
        truth[split] = (x, y.tolist())
    return truth


@pytest.mark.parametrize("name,cls", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
@pytest.mark.parametrize("layout", ["gzipped in --data-dir", "unpacked in --data-dir", "torchvision's raw/"])
def test_mnist_from_idx_files(tmp_path, name, cls, layout):
    """--data-dir holds the 4 IDX files gzipped (as Debian installs them: their md5 differs from torchvision's,
    so torchvision alone would download them again), unpacked, or in torchvision's <class>/raw/ layout."""
    folder = {"torchvision's raw/": tmp_path / cls / "raw"}.get(layout, tmp_path)
    truth = write_mnist(folder, gz=layout.startswith("gzipped"))
    files = sorted(tmp_path.rglob("*"))
    (train, probe, test), names = common.load_torchvision(name, str(tmp_path))
    assert sorted(tmp_path.rglob("*")) == files  # read as it is: nothing written there (Debian's is read-only)
    assert names == getattr(torchvision.datasets, cls).classes
    for (x, y), split in ((train, "train"), (probe, "train"), (test, "t10k")):
        grey = torch.from_numpy(truth[split][0])
        assert x.dtype == torch.uint8 and x.shape == (len(grey), 3, 28, 28) and y.tolist() == truth[split][1]
        assert all(torch.equal(x[:, c], grey) for c in range(3))  # grey -> 3 equal channels


def test_failed_mnist_download_says_what_to_fetch_and_where_and_the_advice_works(tmp_path, monkeypatch, capsys):
    for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):  # a dead proxy: no traffic leaves
        monkeypatch.setenv(proxy, "http://127.0.0.1:9")
    with pytest.raises(SystemExit) as e:
        common.load_torchvision("fashion-mnist", str(tmp_path / "data"))
    message = str(e.value)
    assert message.startswith("error: --dataset fashion-mnist:") and "\n" not in message
    assert "fashion-mnist.s3-website.eu-central-1.amazonaws.com/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz" in message
    assert message.endswith(f"by hand into {tmp_path / 'data'}/")
    write_mnist(tmp_path / "data")  # what the message says: the 4 files, as downloaded, in --data-dir
    (train, _, test), _ = common.load_torchvision("fashion-mnist", str(tmp_path / "data"))
    assert (len(train[0]), len(test[0])) == (40, 12)


def test_fashion_mnist_end_to_end_with_the_laptop_recipe(tmp_path, capsys):
    """`python simclr.py --dataset fashion-mnist --data-dir <the IDX files>`, shrunk to run here: the laptop
    recipe is chosen, the images are 28 px, and the raw-pixel kNN is printed, logged and in results.json."""
    import simclr
    write_mnist(tmp_path / "data", n=(64, 20))
    handler, threads = signal.getsignal(signal.SIGINT), torch.get_num_threads()
    try:
        simclr.main(["--dataset", "fashion-mnist", "--data-dir", str(tmp_path / "data"), "--width", "2",
                     "--epochs", "1", "--batch-size", "32", "--out", str(tmp_path / "runs"), "--name", "f"])
    finally:
        signal.signal(signal.SIGINT, handler)
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "RECIPES['laptop'] on --dataset fashion-mnist" in out and "64 training images" in out and "28 px" in out
    assert "(random initialisation) pixel_knn_acc=" in out
    results = json.load(open(tmp_path / "runs" / "f" / "results.json"))
    log0 = json.loads(open(tmp_path / "runs" / "f" / "log.jsonl").readline())
    assert results["pixel_knn_acc"] == log0["pixel_knn_acc"] and 0 <= results["pixel_knn_acc"] <= 1
