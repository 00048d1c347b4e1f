"""Everything the method files share that is not a method. Read top to bottom, or jump to a section:

    (top)            print0, fail, warn: output from the first process, one-line errors
    model            ResNet and backbone (ResNet-18/50, width multiplier, CIFAR or ImageNet stem), projector
    augmentation     POLICIES and Augment: two views per image, batched on the device, as torchvision's ops
    data             Data and load_data (shapes, cifar10/100, stl10, (fashion-)mnist, imagefolder) into uint8
                     tensors; image folders (load_imagefolder), shapes (make_shapes), the Loader
    evaluation       OnlineProbe, extract_features, knn_accuracy, pixel_knn_accuracy, evaluate, linear_eval
    optimisation     LARS, make_optimizer, lr_at (linear warmup, then cosine), set_lr
    training loop    seed_everything, seed_epoch, autocast, channels_last, prepare_model, Progress, Meter
    ------------------------- plumbing below: a method reader can skip it -------------------------
    several processes   setup_device (device, threads, one-line errors), join_processes (torchrun's
                        process group), shard, gather, CPUSyncBatchNorm, ddp
    command line        get_parser (the shared flags, in groups), parse_args: apply_recipe or resume_args
    run folder          to_json, atomic_write, claim; Run: args.json, log.jsonl, last.pt, results.json,
                        --resume, Ctrl-C

Data path ("CUDA data loading", as in airbench): each dataset is decoded once into a uint8 tensor
(N, 3, H, W) that lives on the training device; batches are index-selected from it and augmented there
with independent random parameters per sample and per view. No DataLoader, no PIL in the training loop.
No method logic lives here, and common.py imports nothing of this repository.
"""
import argparse
import atexit
import concurrent.futures
import contextlib
import datetime
import hashlib
import itertools
import json
import math
import os
import pickle
import random
import shutil
import signal
import sys
import tempfile
import time
import warnings
if os.name != "nt":  # POSIX; on Windows a run folder is claimed by mkdir only
    import fcntl

import numpy as np
import PIL.Image
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import torchvision
import torchvision.transforms.v2.functional as TF
from tqdm import tqdm

# Which process this is, set by torchrun (0, 1, 0 for `python x.py`): only process 0 prints and writes files.
RANK, WORLD_SIZE, LOCAL_RANK = (int(os.environ.get(k, d))
                                for k, d in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))

def printable(text):
    """Text that prints anywhere: non-UTF-8 bytes of a file name show as \\xe9, not a UnicodeEncodeError."""
    return os.fsencode(str(text)).decode("utf-8", "backslashreplace")

def print0(*a, **k):  # under torchrun only the first process prints progress; every message is printable
    if RANK == 0:
        print(*map(printable, a), **k)

def fail(message):
    """Stop with a one-line error on stderr and exit status 1. Nothing on disk is touched."""
    raise SystemExit(f"error: {printable(message)}")

def warn(message):  # one line on stderr, from the first process only
    print0(f"warning: {message}", file=sys.stderr)

# ---------------------------------------------------------------------------------------- model
class ResNet(torchvision.models.ResNet):
    """torchvision's ResNet with stage widths w, 2w, 4w, 8w, a CIFAR stem (3x3 stride-1 conv, no max-pool)
    under 64 px, no classifier. Deviation of every method: stem padding 1; solo-learn's CIFAR stem pads 2."""
    def __init__(self, block, layers, width=64, cifar_stem=True):
        nn.Module.__init__(self)  # torchvision's __init__ hard-codes width 64
        self._norm_layer, self.dilation, self.groups, self.base_width = nn.BatchNorm2d, 1, 1, 64
        self.inplanes = width
        if cifar_stem:
            self.conv1, self.maxpool = nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.Identity()
        else:
            self.conv1, self.maxpool = nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.MaxPool2d(3, 2, 1)
        self.bn1, self.relu = nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        for i, blocks in enumerate(layers):  # layer1..layer4: widths w, 2w, 4w, 8w
            layer = self._make_layer(block, width * 2 ** i, blocks, stride=1 if i == 0 else 2)
            setattr(self, f"layer{i + 1}", layer)
        self.avgpool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Identity()
        self.out_dim = 8 * width * block.expansion
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

def backbone(arch, width=64, image_size=32):
    """ResNet-18 (512-d at width 64) or ResNet-50 (2048-d); ImageNet stem from 64 px up."""
    block, layers = {"resnet18": (torchvision.models.resnet.BasicBlock, [2, 2, 2, 2]),
                     "resnet50": (torchvision.models.resnet.Bottleneck, [3, 4, 6, 3])}[arch]
    return ResNet(block, layers, width, cifar_stem=image_size < 64)

class L2Normalize(nn.Module):
    def forward(self, x):
        return F.normalize(x, dim=1)

def projector(dims, batchnorm=True, last_bias=True, normalize=False):
    """MLP dims[0] -> ... -> dims[-1]: Linear (+ BatchNorm) + ReLU between layers."""
    layers = []
    for a, b in zip(dims[:-2], dims[1:-1]):  # hidden layers: no bias before a BatchNorm (it would cancel it)
        layers.append(nn.Linear(a, b, bias=not batchnorm))
        layers += [nn.BatchNorm1d(b), nn.ReLU(inplace=True)] if batchnorm else [nn.ReLU(inplace=True)]
    layers.append(nn.Linear(dims[-2], dims[-1], bias=last_bias))
    if normalize:
        layers.append(L2Normalize())
    return nn.Sequential(*layers)

# -------------------------------------------------------------------------------- augmentation
# For speed (benchmarks/augment.py): ops run only on the samples they apply to, the crop is two matrix
# products, the hue rotation uses arithmetic masks; each gives torchvision's values (tests/test_augment.py).
# Parameters are drawn on the host, so which samples an op applies to is known without waiting for a GPU.
def view(crop_scale=(0.08, 1.0), flip_p=0.5, jitter=(0.0, 0.0, 0.0, 0.0), jitter_p=0.0, gray_p=0.0,
         blur_p=0.0, solarize_p=0.0):
    """One view's augmentation parameters. jitter = (brightness, contrast, saturation, hue)."""
    return dict(crop_scale=crop_scale, crop_ratio=(3 / 4, 4 / 3), flip_p=flip_p, jitter=jitter,
                jitter_p=jitter_p, gray_p=gray_p, blur_p=blur_p, solarize_p=solarize_p)

def strength(scale, flip, s):  # projector-rank paper Table 2: jitter 0.8s, 0.8s, 0.8s, 0.2s
    jitter = (0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)
    return view(crop_scale=(scale, 1.0), flip_p=0.5 if flip else 0.0, jitter=jitter, jitter_p=0.8, gray_p=0.2)

_BYOL = dict(jitter=(0.4, 0.4, 0.2, 0.1), jitter_p=0.8, gray_p=0.2)
POLICIES = {  # each is (view 1, view 2)
    # BYOL / CorInfoMax thesis Table B.1 (solo-learn imagenet-100/augmentations/asymmetric.yaml;
    # solo-learn's CIFAR file drops the blur: we keep the thesis, which used it on CIFAR too)
    "asymmetric": (view(**_BYOL, blur_p=1.0), view(**_BYOL, blur_p=0.1, solarize_p=0.2)),
    # SimCLR (solo-learn cifar/augmentations/symmetric.yaml): s = 1 jitter, blur 0.5
    "symmetric": (view(jitter=(0.8, 0.8, 0.8, 0.2), jitter_p=0.8, gray_p=0.2, blur_p=0.5),) * 2,
    # VICReg (solo-learn cifar/vicreg.yaml, its own augmentation block): both views crop 0.2-1,
    # BYOL jitter, gray 0.2, no blur, solarize 0.1
    "vicreg": (view(**_BYOL, crop_scale=(0.2, 1.0), solarize_p=0.1),) * 2,
    # ReSSL (solo-learn cifar/augmentations/ressl.yaml), weak view first
    "ressl": (view(), view(**_BYOL, blur_p=0.5)),
    "small": (strength(0.9, False, 0.05),) * 2,
    "moderate": (strength(0.5, True, 0.25),) * 2,
    "large": (strength(0.08, True, 0.5),) * 2,
    # the laptop recipe's (benchmarks/recipes.py), centred grey or colour objects: crops of 90-100%, no flip,
    # strong brightness and contrast (else the two views share grey levels, and the network learns those)
    "objects": (view(crop_scale=(0.9, 1.0), flip_p=0.0, jitter=(0.8, 0.8, 0.0, 0.0), jitter_p=0.8),) * 2,
    "linear": (view(),),  # offline linear evaluation, thesis B.1.2: random resized crop + flip only
}
SOLARIZE_THRESHOLD = 128 / 255  # thesis B.1.1: "the default threshold value is 128"

class Augment:
    """Augment(policy, data, size)(uint8 batch) -> normalised views, on the batch's device. With shard=True
    under torchrun, parameters are drawn for the whole global batch (as one process would), each process
    keeping its slice."""
    def __init__(self, policy, data, size, shard=True):
        self.views, self.data, self.size = POLICIES[policy], data, size
        self.world = WORLD_SIZE if shard else 1

    def __call__(self, x):
        x, n = x.float() / 255, len(x) * self.world
        params = [sample_params(spec, n, x.shape[2], x.shape[3]) for spec in self.views]
        if self.world > 1:
            params = [{k: shard(v) for k, v in p.items()} for p in params]
        # apply_params starts with the crop, which writes a new tensor: x itself is never modified
        layout = torch.channels_last if channels_last(x.device, self.size) else torch.contiguous_format
        views = (apply_params(x, p, self.size, spec) for p, spec in zip(params, self.views))
        return tuple(self.data.normalize(v).contiguous(memory_format=layout) for v in views)

BLUR_SIGMA = (0.1, 2.0)  # thesis B.1.1, BYOL, solo-learn: sigma uniform in [0.1, 2] pixels

def blur_kernel_size(sigma_max=BLUR_SIGMA[1]):
    """2 ceil(3 sigma_max) + 1 = 13 taps at every size, the support of PIL's GaussianBlur (official
    CorInfoMax, solo-learn); BYOL's 10% of the side (3 taps at 32 px) would cut a sigma of 2 to about 0.8."""
    return 2 * math.ceil(3 * sigma_max) + 1

def sample_params(spec, n, height, width):
    """Independent random parameters for n samples, as torchvision's transforms draw them; on the CPU."""
    rand = torch.rand
    (s0, s1), (r0, r1) = spec["crop_scale"], spec["crop_ratio"]
    # RandomResizedCrop.get_params: 10 tries of (area, log-uniform ratio), first that fits wins
    area = height * width * (s0 + (s1 - s0) * rand(n, 10))
    ratio = torch.exp(math.log(r0) + (math.log(r1) - math.log(r0)) * rand(n, 10))
    w, h = (area * ratio).sqrt().round().long(), (area / ratio).sqrt().round().long()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.float().argmax(1, keepdim=True)
    w, h, found = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0], ok.any(1)
    # fallback: the whole image cropped to the nearest allowed ratio (centre crop)
    fw, fh = width, height
    if width / height < r0:
        fh = round(width / r0)
    elif width / height > r1:
        fw = round(height * r1)
    w, h = torch.where(found, w, fw), torch.where(found, h, fh)
    top = torch.where(found, (rand(n) * (height - h + 1)).long(), (height - h) // 2)
    left = torch.where(found, (rand(n) * (width - w + 1)).long(), (width - w) // 2)
    b, c, s, hue = spec["jitter"]
    uniform = lambda a, z: a + (z - a) * rand(n)
    factors = torch.stack([uniform(max(0, 1 - b), 1 + b), uniform(max(0, 1 - c), 1 + c),
                           uniform(max(0, 1 - s), 1 + s), uniform(-hue, hue)], 1)  # (n, 4)
    return dict(top=top, left=left, height=h, width=w, flip=rand(n) < spec["flip_p"],
                jitter=rand(n) < spec["jitter_p"], order=rand(n, 4).argsort(1), factors=factors,
                gray=rand(n) < spec["gray_p"], blur=rand(n) < spec["blur_p"], sigma=uniform(*BLUR_SIGMA),
                solarize=rand(n) < spec["solarize_p"])

def apply_params(x, p, size, spec):
    """x: float (B, 3, H, W) in [0, 1] -> augmented (B, 3, size, size) in [0, 1]. Order as BYOL:
    crop, flip, colour jitter (ops in random order per sample, as torchvision), grayscale, blur, solarize."""
    p = {k: v.to(x.device, non_blocking=True) if v.is_floating_point() else v for k, v in p.items()}
    box = [p[k].to(x.device, non_blocking=True) for k in ("top", "left", "height", "width")]
    x = resized_crop(x, *box, size)

    def on(mask, op, *per_sample):  # x[i] = op(x[i], *per_sample[i]) for the samples i of mask only
        # gathered with index_select (for speed: see above); the indices are found on the host (mask is
        # there) and sent with the copy, so the device never waits
        idx = mask.nonzero()[:, 0].to(x.device, non_blocking=True)
        if len(idx):
            x[idx] = op(x.index_select(0, idx), *(t[idx] for t in per_sample))
    on(p["flip"], lambda y: y.flip(-1))
    if spec["jitter_p"] > 0:
        ops = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
        for position in range(4):  # torchvision ColorJitter: a random order of the 4 ops per image
            for o, op in enumerate(ops):
                on(p["jitter"] & (p["order"][:, position] == o), op, p["factors"][:, o])
    on(p["gray"], lambda y: grayscale(y).expand(-1, 3, -1, -1))
    if p["blur"].all():  # every sample (blur_p 1: BYOL's view 1), no gather
        x = gaussian_blur(x, p["sigma"], blur_kernel_size())
    else:
        on(p["blur"], lambda y, sigma: gaussian_blur(y, sigma, blur_kernel_size()), p["sigma"])
    on(p["solarize"], lambda y: torch.where(y >= SOLARIZE_THRESHOLD, 1 - y, y))
    return x

def resized_crop(x, top, left, height, width, size):
    """Per-sample crop boxes resized to size x size, bilinear as torch's upsampling (align_corners=False);
    boxes are never larger than `size` (data is stored at --image-size), so no anti-aliasing is needed.
    Deviation of every method: bilinear; solo-learn and the official codes resize crops bicubically."""
    B, C, H, W = x.shape
    out = torch.arange(size, device=x.device, dtype=torch.float32) + 0.5

    def weights(start, length, n_in):  # (B,) -> interpolation matrix (B, size, n_in), 2 taps per row
        src = (out[None] * (length.float()[:, None] / size) - 0.5).clamp(min=0)  # (B, size)
        i0 = src.floor().long()
        w1 = src - i0
        i1 = torch.minimum(i0 + 1, length[:, None] - 1)
        m = torch.zeros(len(start), size, n_in, device=x.device, dtype=x.dtype)
        m.scatter_add_(2, (start[:, None] + i0)[..., None], (1 - w1)[..., None])
        return m.scatter_add_(2, (start[:, None] + i1)[..., None], w1[..., None])
    rows, cols = weights(top, height, H), weights(left, width, W)
    # rows then columns: (size, H) @ (H, C W), then (size C, W) @ (W, size), per sample
    y = rows @ x.permute(0, 2, 1, 3).reshape(B, H, C * W)                  # (B, size, C W)
    y = y.view(B, size * C, W) @ cols.transpose(1, 2)                      # (B, size C, size)
    return y.view(B, size, C, size).permute(0, 2, 1, 3).contiguous()       # (B, C, size, size)

def grayscale(x):  # ITU-R 601-2 luma, as torchvision: (B, 1, H, W)
    return (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)

def _blend(x, y, f):  # torchvision _blend for float images; f (B,)
    f = f[:, None, None, None]
    return (f * x + (1 - f) * y).clamp(0, 1)

def adjust_brightness(x, f):
    return _blend(x, 0.0, f)  # torchvision blends with a black image: the same sums, without the image

def adjust_contrast(x, f):
    return _blend(x, grayscale(x).mean((1, 2, 3), keepdim=True), f)

def adjust_saturation(x, f):
    return _blend(x, grayscale(x), f)

def adjust_hue(x, f):
    """Rotate hue by f (in turns, |f| <= 0.5): RGB -> HSV, shift, HSV -> RGB, as torchvision."""
    # masks are 1 - sign(d) of differences d >= 0, y mod m is y - m floor(y / m) (for speed: see above)
    r, g, b = x.unbind(1)
    maxc, minc = torch.maximum(torch.maximum(r, g), b), torch.minimum(torch.minimum(r, g), b)
    chroma = maxc - minc
    flat = 1 - torch.sign(chroma)  # grey pixels (max == min) divide by 1 instead: s = 0, h = 0
    s = chroma / (maxc + flat)
    c = chroma + flat
    rc, gc, bc = (maxc - r) / c, (maxc - g) / c, (maxc - b) / c
    is_r = 1 - torch.sign(maxc - r)
    is_g = (1 - torch.sign(maxc - g)) * (1 - is_r)
    h = is_r * (bc - gc) + is_g * (2.0 + rc - bc) + (1 - is_r - is_g) * (4.0 + gc - rc)
    h = h / 6.0 + 1.0
    h = h - torch.floor(h) + f[:, None, None]  # hue in [0, 1), shifted
    h = h - torch.floor(h)
    # HSV -> RGB in closed form: channel n in (R, G, B) = (5, 3, 1) is v - v s clamp(min(k, 4 - k), 0, 1)
    # with k = (n + 6h) mod 6; the same values as torchvision's six-sector table, without the table
    n = torch.arange(5.0, 0.0, -2.0, device=x.device)  # made there: no copy
    k = n[None, :, None, None] + 6 * h[:, None]
    k = k - 6 * torch.floor(k / 6)
    return maxc[:, None] * (1 - s[:, None] * torch.minimum(k, 4 - k).clamp(0, 1))  # (B, 3, H, W)

def gaussian_blur(x, sigma, k):
    """Separable Gaussian blur, one sigma per sample, reflect padding, as torchvision's."""
    B, C, H, W = x.shape
    t = torch.linspace(-(k - 1) / 2, (k - 1) / 2, k, device=x.device)
    kernel = torch.exp(-0.5 * (t[None] / sigma[:, None]) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(C, 0)  # (B*C, k)
    y = F.pad(x.reshape(1, B * C, H, W), [k // 2] * 4, mode="reflect")
    y = F.conv2d(y, kernel[:, None, None, :], groups=B * C)
    y = F.conv2d(y, kernel[:, None, :, None], groups=B * C)
    return y.reshape(B, C, H, W)

# ----------------------------------------------------------------------------------------- data
# Mean/std: CIFAR values of the CorInfoMax thesis appendix B.1.3; other datasets use their own,
# computed once from the training images.
STATS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)),
         "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))}
DEFAULT_SIZE = {"shapes": 32, "cifar10": 32, "cifar100": 32, "stl10": 96, "mnist": 28, "fashion-mnist": 28,
                "imagefolder": 224}
IDX = "{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz (4 files, gzipped or not)"
URLS = {"cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "stl10": "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
        "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/" + IDX,
        "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/" + IDX}

class Data:
    """uint8 images (N, 3, S, S), int64 labels (-1: unlabelled), class names. train: pretraining; probe: kNN
    bank and linear evaluation; test: evaluation; track_x: the fixed test images --track-every measures."""
    def __init__(self, train, probe, test, class_names, mean, std, track=1000):
        (self.train_x, self.train_y), (self.probe_x, self.probe_y), (self.test_x, self.test_y) = train, probe, test
        self.class_names, self.classes = list(class_names), len(class_names)
        self.mean, self.std, self.on = torch.tensor(mean), torch.tensor(std), {}
        self.track_x = self.test_x[random_indices(len(self.test_x), track)]

    def normalize(self, x):  # uint8 or float in [0, 1] -> normalised float, on x's device
        x = x.float() / 255 if x.dtype == torch.uint8 else x
        if x.device not in self.on:  # copied once per device, not every batch
            self.on[x.device] = [t.to(x.device)[:, None, None] for t in (self.mean, self.std)]
        return (x - self.on[x.device][0]) / self.on[x.device][1]

def load_data(args):
    """The dataset of --dataset as uint8 tensors (Loader moves them to the device), resized to
    --image-size, with --train-subset applied, and one printed line that says what was loaded.
    Under torchrun the first process of each machine loads first (downloads, writes caches)."""
    wait = dist.is_initialized()
    if wait and LOCAL_RANK > 0:
        dist.barrier()
    size = args.image_size = args.image_size or DEFAULT_SIZE[args.dataset]
    subset, digest = args.train_subset or None, ""  # 0: every training image
    if args.dataset == "shapes":  # generated i.i.d. from a fixed seed: the first n are a random sample
        train, test = make_shapes(min(10_000, subset or 10_000), size, seed=0), make_shapes(2_000, size, seed=1)
        probe, names, summary = train, SHAPE_NAMES, f"shapes: {len(train[0]):,} training images generated (seed 0)"
    elif args.dataset in URLS:
        (full, full_probe, test), names = load_torchvision(args.dataset, args.data_dir)
        resized = lambda split: (resize_images(split[0], size), split[1])  # (the other sets are made at `size`)
        train, test = resized(random_subset(full, subset)), resized(test)
        probe = resized(random_subset(full_probe, subset)) if args.dataset == "stl10" else train  # one tensor
        summary = (f"{args.dataset}: {len(train[0]):,} training images" +
                   (f" (a random sample, seed 0, of {len(full[0]):,})" if len(train[0]) < len(full[0]) else ""))
    else:
        train, test, names, summary, digest = load_imagefolder(args.data_dir, size, subset)
        probe, digest = train, f", files and class names {digest}"
    if subset and subset > len(train[0]):
        summary += f"; --train-subset {subset:,} is more than there are: all are used"
    if getattr(args, "images", 0):  # a budget of images (the laptop recipe's): epochs follow the set's size
        args.epochs = max(1, round(args.images / len(train[0])))
        summary += f"; --images {args.images:,}: {plural(args.epochs, 'epoch')}"
    mean, std = STATS.get(args.dataset) or channel_stats(train[0])
    args.normalize = {"mean": list(mean), "std": list(std)}  # in args.json and last.pt: to use the backbone elsewhere
    found = (f"{args.dataset}: {len(train[0])} train, {len(probe[0])} kNN bank, {len(test[0])} test images, "
             f"{len(names)} classes{digest}")  # in args.json, last.pt: a resume or metrics.py checks it
    if getattr(args, "data_fingerprint", found) != found:
        fail(f"--data-dir {args.data_dir}: not the data the run was trained on ({found}; the run had "
             f"{args.data_fingerprint}); give --data-dir the folder it was trained on")
    args.data_fingerprint = found
    if wait and LOCAL_RANK == 0:
        dist.barrier()
    print0(f"{summary}; kNN bank {len(probe[0]):,}, test {len(test[0]):,} images, {len(names)} classes, "
           f"{size} px")
    return Data(train, probe, test, names, mean, std)

SUBSET_SEED = 0  # every sample of a dataset is drawn with this seed: the same images for every --seed

def random_indices(n, k, seed=SUBSET_SEED):
    """k of range(n) drawn at random with a fixed seed, in increasing order (all of them if k >= n)."""
    if k >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].sort().values

def random_subset(split, k):
    """A seeded random sample of k (images, labels) of a split; all of it if k is 0, None or too big."""
    x, y = split
    if not k or k >= len(x):
        return split
    keep = random_indices(len(x), k)
    return x[keep], y[keep]

def load_torchvision(name, root):
    """(train, probe, test) uint8 splits and class names of a torchvision dataset, downloaded into root if
    missing. STL-10 pretrains on train+unlabeled (labels -1), probes on train; MNIST gets 3 equal channels."""
    cls = getattr(torchvision.datasets, {"cifar10": "CIFAR10", "cifar100": "CIFAR100", "stl10": "STL10",
                                         "mnist": "MNIST", "fashion-mnist": "FashionMNIST"}[name])
    splits = [dict(train=True), dict(train=True), dict(train=False)]
    if name == "stl10":
        splits = [dict(split="train+unlabeled"), dict(split="train"), dict(split="test")]
    out, tmp, where = [], tempfile.TemporaryDirectory(), root
    try:
        os.makedirs(root, exist_ok=True)
        # a folder of (Fashion-)MNIST's 4 IDX files (as Debian installs them, gzipped): torchvision reads them
        # only unpacked in <root>/<class>/raw/ (its md5 check aside), a layout made here in a temporary folder
        idx = [next((p for p in (f"{root}/{f}", f"{root}/{f[:-3]}") if os.path.exists(p)), None)
               for f, _ in getattr(cls, "resources", [])]
        if idx and all(idx):
            where, raw = tmp.name, os.path.join(tmp.name, cls.__name__, "raw")
            os.makedirs(raw)
            for p in idx:
                if p.endswith(".gz"):
                    torchvision.datasets.utils.extract_archive(p, raw)
                else:
                    shutil.copy(p, raw)
        for kw in splits:
            if out and kw == splits[0]:  # the probe split is the train split (all but STL-10): read once
                out.append(out[0])
                continue
            ds = cls(where, download=True, **kw)
            x = torch.as_tensor(ds.data)  # STL-10 (N, 3, 96, 96), CIFAR (N, 32, 32, 3), MNIST (N, 28, 28)
            y = torch.as_tensor(ds.labels if name == "stl10" else ds.targets).long()  # -1: STL-10 unlabelled
            if x.ndim == 3:
                x = x[:, None].expand(-1, 3, -1, -1)
            elif name != "stl10":
                x = x.permute(0, 3, 1, 2)
            out.append((x.contiguous(), y))
    except Exception as e:  # no internet, bad archive, unwritable folder, ...
        fail(f"--dataset {name}: could not download or read it into --data-dir {root} "
             f"({e.__class__.__name__}: {' '.join(str(e).split())[:120]}); "
             f"download {URLS[name]} by hand into {os.path.abspath(root)}/")
    finally:
        tmp.cleanup()
    return out, list(ds.classes)

# ------------------------------------------------------------------ data: image folders
# Every extension torchvision's ImageFolder lists, and .gif: PIL decodes all of them.
IMAGE_EXTENSIONS = (*torchvision.datasets.folder.IMG_EXTENSIONS, ".gif")
CACHE_VERSION = 2  # raise it when decoding or resizing changes: caches of other versions are rebuilt

def load_imagefolder(root, size, subset=None):
    """<root>/train/<class>/... and <root>/val/<class>/... (list_image_folder), decoded once and cached as
    <root>/cache-<size>px[-subset<k>].pt, used only while the files keep their sizes and times (stamp).
    Returns (train, val, class names, a summary line, a fingerprint of the class names and files)."""
    if not all(os.path.isdir(os.path.join(root, s)) for s in ("train", "val")):
        fail(f"--data-dir {root}: --dataset imagefolder needs a folder with train/ and val/ class subfolders")
    files, names, left_out = list_image_folder(root)
    total = len(files["train"])
    if subset and subset < total:
        files["train"] = [files["train"][i] for i in random_indices(total, subset)]
    sample = f" (a random sample, seed 0, of {total:,})" if len(files["train"]) < total else ""
    cache = os.path.join(root, f"cache-{size}px{f'-subset{subset}' if sample else ''}.pt")
    record = [[os.path.relpath(p, root), *stamp(p)] for split in ("train", "val") for p, _ in files[split]]
    made_from = {"version": CACHE_VERSION, "files": record, "classes": names}
    cached = read_cache(cache)
    if all(cached.get(k) == v for k, v in made_from.items()):
        out, how = cached, f"read {cache} (made from this folder as it is)"
    else:
        out = decode_folder(root, files, size, len(record))
        how = f"made {cache} again: {describe_change(cached, record)}" if cached else f"wrote {cache}"
        try:
            atomic_write(cache, {**made_from, **out})
        except SystemExit as e:  # a read-only data folder: train anyway, decode again next time
            warn(f"{e} (not cached)")
            how = "not cached (see the warning above)"
    if out["failed"]:
        left_out.append(f"undecodable files ({len(out['failed'])})")
    counts = class_counts(out["train_y"], out["val_y"], names)
    summary = (f"imagefolder {root}: {len(names)} classes from train/, images per class train/val: {counts}; "
               f"train {len(out['train_y']):,}{sample}, val {len(out['val_y']):,}"
               + (f"; left out: {', '.join(left_out)}" if left_out else "") + f"; {how}")
    fingerprint = hashlib.sha256(to_json([names, [r[:2] for r in record]]).encode()).hexdigest()[:16]
    return (out["train_x"], out["train_y"]), (out["val_x"], out["val_y"]), names, summary, fingerprint

def read_cache(path):  # {} if there is none, {"error": kind} if it cannot be read (it is made again)
    try:
        return load_file(path) if os.path.exists(path) else {}
    except Exception as e:  # no permission, cut short by a full disk, ...
        return {"error": e.__class__.__name__}

def decode_folder(root, files, size, n):
    """Both splits decoded: {train_x, train_y, val_x, val_y, failed: 'path (error)' of each file left out}."""
    check_memory(n, size)
    out = {"failed": []}
    for split in ("train", "val"):
        x, y, bad = decode_split(files[split], size, f"decoding {split}/")
        if len(x) == 0:
            fail(f"--data-dir {root}: no image of {split}/ could be decoded, e.g. {bad[0]}")
        out[f"{split}_x"], out[f"{split}_y"] = x, y
        out["failed"] += bad
    if out["failed"]:
        warn(f"left out {plural(len(out['failed']), 'file')} that PIL cannot decode, e.g. {out['failed'][0]}")
    return out

def plural(n, word):
    return f"{n:,} {word}{'' if n == 1 else 's'}"

def some(names, k):  # "a, b, c, ...": the first k names
    return ", ".join(names[:k]) + (", ..." if len(names) > k else "")

def list_image_folder(root):
    """The image files of train/ and val/ with their class (a folder directly under the split), listed as
    torchvision's ImageFolder does but with hidden names skipped, .gif counted and each real file once per
    split (walk_class). The classes are train/'s folders with images; a mismatch between the splits is a
    one-line warning. Returns ({split: [(path, class index)]}, class names, [what else was left out])."""
    found, left_out = {}, []
    for split in ("train", "val"):
        folders = sorted(e.name for e in os.scandir(os.path.join(root, split)) if e.is_dir())
        hidden = [f for f in folders if f.startswith(".")]
        if hidden:
            left_out.append(f"hidden folders {split}/{{{','.join(hidden)}}}")
        found[split], others, links, seen = {}, {}, [], set()
        for folder in (f for f in folders if not f.startswith(".")):
            listed = walk_class(os.path.join(root, split, folder), seen, others, links)
            if listed is not None:  # None: a class folder that is a link into the split (named as a link)
                found[split][folder] = listed
        if others:
            kinds = ", ".join(f"{n} {ext}" for ext, n in sorted(others.items()))
            left_out.append(f"non-image files in {split}/ ({kinds})")
        if links:
            left_out.append(f"{plural(len(links), 'link')} in {split}/ to nothing, out of its class folder "
                            f"or back into a folder already listed ({some(links, 4)})")
    classes = [c for c, paths in found["train"].items() if paths]
    if not classes:
        fail(f"--data-dir {root}: train/ has no class folder with images ({' '.join(IMAGE_EXTENSIONS)})")
    empty = [c for c, paths in found["train"].items() if not paths]
    if empty:
        warn(f"train/ folders without images are not classes: {', '.join(empty)}")
    unknown = {c: len(p) for c, p in found["val"].items() if c not in classes and p}
    if unknown:
        warn("val/ classes that train/ does not have are left out of the test set: "
             + ", ".join(f"{c} ({n} images)" for c, n in unknown.items()))
    missing = [c for c in classes if not found["val"].get(c)]
    if missing:
        warn(f"val/ has no images of {len(missing)} of train/'s {len(classes)} classes, which are trained on "
             f"but not tested: {some(missing, 10)}")
    if len(classes) == 1:
        warn(f"train/ has a single class ({classes[0]}): training works, but kNN and probe accuracies are "
             "1.0 whatever is learned")
    files = {split: [(p, k) for k, c in enumerate(classes) for p in found[split].get(c, [])]
             for split in ("train", "val")}
    if not files["val"]:
        fail(f"--data-dir {root}: val/ has no images of train/'s classes ({some(classes, 5)})")
    return files, classes, left_out

def walk_class(top, seen, others, links):
    """The image files under one class folder (sorted), links followed only to what is inside its own tree
    and not listed yet (seen: the split's real paths); the class folder itself may link out of the split.
    Links left out go to `links`, non-images to `others` (per extension); None for a class folder that
    links to another class, to the split or above it."""
    base, parent, files = os.path.realpath(top), os.path.dirname(top), []
    split = os.path.realpath(parent)
    if os.path.islink(top) and os.path.commonpath([base, split]) in (base, split):
        links.append(os.path.basename(top))
        return None
    inside = lambda p: p.startswith(base + os.sep)

    def first(path, names):  # not hidden; a folder's own entries before the links to them
        links_last = lambda n: (os.path.islink(os.path.join(path, n)), n)
        return sorted((n for n in names if not n.startswith(".")), key=links_last)
    walked = {base}
    for path, dirs, names in os.walk(top, followlinks=True):
        real_dir, kept = os.path.realpath(path), []
        for d in first(path, dirs):
            real = os.path.realpath(os.path.join(path, d))
            if real in walked or not inside(real):
                links.append(os.path.relpath(os.path.join(path, d), parent))
            else:
                walked.add(real)
                kept.append(d)
        dirs[:] = kept
        for f in first(path, names):
            p, link = os.path.join(path, f), os.path.islink(os.path.join(path, f))
            real = os.path.realpath(p) if link else os.path.join(real_dir, f)
            if not f.lower().endswith(IMAGE_EXTENSIONS):
                ext = os.path.splitext(f)[1].lower() or "without extension"
                others[ext] = others.get(ext, 0) + 1
            elif real in seen or link and not (inside(real) and os.path.isfile(real)):
                links.append(os.path.relpath(p, parent))
            else:
                seen.add(real)
                files.append(p)
    return files

def class_counts(train_y, val_y, names):
    """'cat 30/10, dog 30/10' (train/val images per class) for up to 10 classes, else their ranges."""
    train, val = (torch.bincount(y, minlength=len(names)).tolist() for y in (train_y, val_y))
    if len(names) <= 10:
        return ", ".join(f"{name} {a}/{b}" for name, a, b in zip(names, train, val))
    return f"{min(train)}-{max(train)} / {min(val)}-{max(val)}"

def stamp(path):
    """(size, modification time in ns), as make and rsync tell a change: a content hash would read every
    file, nearly as slow as decoding it. An edit that keeps both goes unnoticed: delete the cache then."""
    s = os.stat(path)
    return s.st_size, s.st_mtime_ns

def describe_change(cached, new):
    """Why a cache is made again: unreadable, another version, or another file record (classes follow it)."""
    if "error" in cached:
        return f"the old one could not be read ({cached['error']})"
    if cached.get("version") != CACHE_VERSION:
        return "the old one was made by another version of this code"
    old, new = {r[0]: r[1:] for r in cached["files"]}, {r[0]: r[1:] for r in new}
    changed = sum(new[k] != old[k] for k in new.keys() & old.keys())
    return (f"the folder changed since ({len(new.keys() - old.keys())} files added, "
            f"{len(old.keys() - new.keys())} removed, {changed} changed)")

def available_memory():
    """Bytes of memory available to a new allocation (Linux's MemAvailable), or None where unknown."""
    with contextlib.suppress(OSError, StopIteration, ValueError), open("/proc/meminfo") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("MemAvailable:"))

def check_memory(n, size):
    """Refuse, before decoding, n images of 3 x size x size bytes that need over 80% of the free memory."""
    need, available = 3 * size * size * n, available_memory()
    if available and need > 0.8 * available:
        fits = max(8, int(math.sqrt(0.8 * available / (3 * n))))
        fail(f"--image-size {size}: the {n:,} images decoded need {need / 1e9:.1f} GB and "
             f"{available / 1e9:.1f} GB of memory is available; --image-size {fits} would fit "
             "(or use --train-subset)")

def decode_split(files, size, desc):
    """Decode [(path, label)] into one uint8 (N, 3, size, size) tensor with a pool of threads (PIL and the
    resize release the GIL). Returns the images, their labels, and 'path (error)' of each undecodable file."""
    images = torch.empty(len(files), 3, size, size, dtype=torch.uint8)

    def one(i):  # None, or 'path (error)'
        try:
            images[i] = decode_image(files[i][0], size)
        except Exception as e:  # not an image after all, truncated, an unsupported variant, ...
            return f"{files[i][0]} ({e.__class__.__name__}: {str(e)[:80]})"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one image per thread, no threads inside its resize
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    pool = concurrent.futures.ThreadPoolExecutor(cores)  # every core, even if torchrun sets OMP_NUM_THREADS=1
    try:
        errors = list(Progress(pool.map(one, range(len(files))), len(files), desc, unit="file"))
    finally:  # also on Ctrl-C: drop what has not started
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(threads)
    labels = torch.tensor([y for _, y in files], dtype=torch.long)
    bad = [e for e in errors if e]
    if bad:
        keep = torch.tensor([e is None for e in errors])
        images, labels = images[keep], labels[keep]
    return images, labels, bad

def decode_image(path, size):
    """One image file (an animation's first frame) as uint8 RGB (3, size, size), without EXIF rotation (as
    ImageFolder). PIL's draft mode decodes a JPEG at 1/2-1/8 scale when that keeps `size` px: much faster."""
    with PIL.Image.open(path) as img:
        img.draft("RGB", (size, size))
        rgb = torch.from_numpy(pil_to_rgb(img)).permute(2, 0, 1)            # (3, H, W) uint8
    return resize_images(rgb[None], size)[0]

def pil_to_rgb(img):
    """uint8 (H, W, 3) from a PIL image of any mode: 16-bit ('I;16...', and 'I', as Pillow reads 16-bit
    PNG/TIFF) scaled from 0-65535, 'F' from 0-1 if it lies there (else clipped); others by PIL's convert."""
    if img.mode == "F" or img.mode.startswith("I"):
        a = np.nan_to_num(np.asarray(img, dtype=np.float64))
        scale = 255 / 65535 if img.mode != "F" else 255.0 if a.max(initial=0) <= 1 else 1.0
        a = np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(a[..., None], 3, axis=2))
    with warnings.catch_warnings():  # "palette images with transparency ... should be converted to RGBA"
        warnings.simplefilter("ignore")
        return np.array(img.convert("RGB"))

def resize_images(x, size):
    """uint8 (N, 3, H, W): shorter side to `size` (antialiased bilinear), centre crop size x size."""
    if x.shape[-2:] == (size, size):
        return x
    chunks = [TF.center_crop(TF.resize(c, [size], antialias=True), [size, size]) for c in x.split(1024)]
    return torch.cat(chunks)

def channel_stats(x):
    """Per-channel mean and std of uint8 images (N, 3, H, W) in [0, 1] units, from exact integer sums."""
    sums = torch.zeros(2, 3, dtype=torch.int64)  # per channel: sum of x, sum of x^2
    for c in x.split(64):  # an int32 copy of 64 images at a time
        sums[0] += c.sum((0, 2, 3), dtype=torch.int64)
        sums[1] += c.int().square().sum((0, 2, 3), dtype=torch.int64)
    mean, square = sums.double() / (x.numel() // 3)  # E[x], E[x^2]
    return (mean / 255).tolist(), ((square - mean ** 2).sqrt() / 255).tolist()

# ------------------------------------------------------------------ data: shapes
SHAPE_NAMES = ("circle", "triangle", "square", "hexagon", "star", "cross", "ring", "semicircle",
               "ellipse", "L")
PALETTE = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.7, 0.2], [0.15, 0.25, 0.9], [0.95, 0.85, 0.1],
                        [0.6, 0.2, 0.8], [0.1, 0.8, 0.85], [0.95, 0.95, 0.95], [0.08, 0.08, 0.08]])

def make_shapes(n, size=32, seed=0):
    """10 classes of filled shapes (SHAPE_NAMES) at random position, scale, rotation and colours, on stripes,
    with noise: only the shape carries the class. Rendered at 2x and pooled; deterministic from `seed`."""
    g = torch.Generator().manual_seed(seed)
    u01 = lambda *shape: torch.rand(*shape, generator=g)
    labels = torch.randperm(n, generator=g) % len(SHAPE_NAMES)
    S = 2 * size
    grid = (torch.arange(S) + 0.5) / S * 2 - 1  # pixel centres in [-1, 1]
    Y, X = grid[:, None], grid[None, :]
    images = torch.empty(n, 3, size, size, dtype=torch.uint8)
    for start in range(0, n, 1000):
        idx = torch.arange(start, min(n, start + 1000))
        m = len(idx)
        r = 0.55 + 0.3 * u01(m, 1, 1)  # radius: 27-42% of the side
        cx, cy = [0.7 * (1 - r) * (2 * u01(m, 1, 1) - 1) for _ in range(2)]
        th = 2 * math.pi * u01(m, 1, 1)
        u = ((X - cx) * th.cos() + (Y - cy) * th.sin()) / r  # shape coordinates, (m, S, S)
        v = (-(X - cx) * th.sin() + (Y - cy) * th.cos()) / r
        mask = torch.stack([shape_mask(int(k), u[j], v[j]) for j, k in enumerate(labels[idx])])  # (m, S, S)
        lum = lambda c: (c * torch.tensor([0.299, 0.587, 0.114])).sum(1)
        # colours from a small palette: many images of a batch share a colour pair, so colour cannot
        # tell instances apart and contrastive learning has to look at the shape
        bg = PALETTE[torch.randint(len(PALETTE), (m,), generator=g)]
        fg = PALETTE[torch.randint(len(PALETTE), (m,), generator=g)]
        for _ in range(50):  # keep the shape visible: luminance gap >= 0.25
            bad = (lum(bg) - lum(fg)).abs() < 0.25
            fg[bad] = PALETTE[torch.randint(len(PALETTE), (int(bad.sum()),), generator=g)]
        phi, freq, phase = math.pi * u01(m, 1, 1), 1 + 5 * u01(m, 1, 1), 2 * math.pi * u01(m, 1, 1)
        stripes = 0.1 * u01(m, 1, 1) * torch.sin(math.pi * freq * (X * phi.cos() + Y * phi.sin()) + phase)
        img = torch.where(mask[:, None], fg[:, :, None, None], bg[:, :, None, None] * (1 + stripes[:, None]))
        img = F.avg_pool2d(img, 2) + 0.04 * u01(m, 1, 1, 1) * torch.randn(m, 3, size, size, generator=g)
        images[idx] = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    return images, labels

def shape_mask(k, u, v):
    rho, ang = (u ** 2 + v ** 2).sqrt(), torch.atan2(v, u)

    def polygon(sides):  # regular polygon with circumradius 1
        sector = 2 * math.pi / sides
        return rho * torch.cos(torch.remainder(ang, sector) - sector / 2) <= math.cos(math.pi / sides)
    if k == 0:
        return rho <= 1
    if k in (1, 2, 3):
        return polygon((3, 4, 6)[k - 1])
    if k == 4:  # five-pointed star: radius goes 0.4 -> 1 -> 0.4 across each of the 5 sectors
        t = torch.remainder(ang, 2 * math.pi / 5) / (2 * math.pi / 5)
        return rho <= 0.4 + 0.6 * (1 - (2 * t - 1).abs())
    if k == 5:  # cross
        return ((u.abs() <= 0.33) & (v.abs() <= 1)) | ((v.abs() <= 0.33) & (u.abs() <= 1))
    if k == 6:  # ring
        return (rho <= 1) & (rho >= 0.55)
    if k == 7:  # semicircle
        return (u ** 2 + (v + 0.4) ** 2 <= 1) & (v >= -0.4)
    if k == 8:  # ellipse
        return u ** 2 + (v / 0.5) ** 2 <= 1
    return ((u >= -1) & (u <= -0.3) & (v.abs() <= 1)) | ((u.abs() <= 1) & (v >= -1) & (v <= -0.3))  # L

# ------------------------------------------------------------------ data: the loader
class Loader:
    """Shuffled full batches (uint8 images, labels) from the dataset on the device if it fits there next to
    `need` bytes of training memory, else a batch copied there at a time (a set put there before is reused).
    With shard=True each torchrun process gets its slice of every global batch."""
    placed = torch.utils.weak.WeakIdKeyDictionary()  # host images -> (device, their copy there), while alive

    def __init__(self, images, labels, batch_size, device, need=0, shard=True):
        fits = len(images) // WORLD_SIZE * WORLD_SIZE  # the largest global batch it allows, if 2 or more
        if batch_size > len(images):
            fail(f"--batch-size {batch_size} is larger than the training set ({len(images)} images); " + (
                 f"the largest it allows is --batch-size {fits}" if fits >= 2 else
                 f"a batch needs 2 or more: use --train-subset {batch_size} or more (0: all images), or add images"))
        self.batch_size, self.device, self.shard = batch_size, device, shard and WORLD_SIZE > 1
        free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else math.inf
        there, self.images = self.placed.get(images, (None, images))  # a copy made before (for linear_eval)
        if there != device and images.device.type != device.type and images.numel() + need <= free:
            self.images = images.to(device)  # else they stay in CPU memory, not pinned (one more copy of the set)
            self.placed[images] = device, self.images
        if device.type == "cuda" and shard:
            where = "on the GPU" if self.images.is_cuda else "in CPU memory"
            print0(f"data: {images.numel() / 1e9:.1f} GB of images {where} ({free / 1e9:.1f} GB free on the "
                   f"GPU, where training needs about {need / 1e9:.1f} GB: on the GPU when both fit)")
        self.labels = labels.to(self.images.device)

    def __len__(self):
        return len(self.images) // self.batch_size

    def __iter__(self):
        order = torch.randperm(len(self.images), device=self.images.device)
        for k in range(len(self)):
            idx = order[k * self.batch_size:(k + 1) * self.batch_size]   # the same on every process
            idx = shard(idx) if self.shard else idx
            yield (self.images[idx].to(self.device, non_blocking=True),
                   self.labels[idx].to(self.device, non_blocking=True))

# ---------------------------------------------------------------------------------- evaluation
class OnlineProbe:
    """A linear classifier on detached features of view 1 with its own AdamW (lr 1e-3): it never shapes the
    representation. solo-learn's (behind several papers' online numbers): SGD lr 0.1 in the encoder's
    optimizer and schedule, on both views."""
    def __init__(self, dim, classes, device, lr=1e-3):
        self.linear = nn.Linear(dim, classes).to(device)
        fused = torch.device(device).type in ("cpu", "cuda")  # no .item() a step
        self.optimizer = torch.optim.AdamW(self.linear.parameters(), lr=lr, weight_decay=0.0, fused=fused)

    def step(self, features, labels):
        features, labels = gather(features.detach()), gather(labels)  # global batch: the same step everywhere
        # STL-10's unlabelled images (label -1) are left out; mean over the labelled ones (0 if none),
        # without asking the device how many there are
        loss = F.cross_entropy(self.linear(features.float()), labels, ignore_index=-1, reduction="sum")
        loss = loss / (labels >= 0).sum().clamp_min(1)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def state_dict(self):
        return {"linear": self.linear.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state):
        self.linear.load_state_dict(state["linear"])
        self.optimizer.load_state_dict(state["optimizer"])

@torch.no_grad()
def extract_features(backbone, images, data, device, batch_size=512, views=None):
    """Backbone features (N, F) of normalised uint8 images (with views, an Augment: a tuple, one per view), in
    eval mode, in float32: never under autocast, whose bf16 floors every spectrum near 1e-7 of its top value."""
    was_training, out = backbone.training, []
    backbone.eval()
    for chunk in (c.to(device) for c in images.split(batch_size)):
        out.append([backbone(x) for x in (views(chunk) if views else (data.normalize(chunk),))])
    backbone.train(was_training)
    features = tuple(torch.cat(parts) for parts in zip(*out))
    return features if views else features[0]

@torch.no_grad()
def knn_accuracy(train_f, train_y, test_f, test_y, classes, k=200, temperature=0.1, chunk=256):
    """Weighted kNN (Wu et al. 2018): cosine similarity, the k nearest vote with exp(sim / T). Labels are
    in range(classes) (the dataset's class list), -1 for unlabelled bank rows, which never vote."""
    train_f, test_f = F.normalize(train_f, dim=1), F.normalize(test_f, dim=1)
    keep = train_y >= 0
    train_f, train_y = train_f[keep], train_y[keep]
    k = min(k, len(train_f))
    correct = 0
    for f, y in zip(test_f.split(chunk), test_y.split(chunk)):
        sim, idx = (f @ train_f.T).topk(k, dim=1)  # (c, k)
        votes = torch.zeros(len(f), classes, device=f.device, dtype=sim.dtype)
        votes.scatter_add_(1, train_y[idx], (sim / temperature).exp())  # (c, classes)
        correct += (votes.argmax(1) == y).sum()
    return float(correct) / len(test_f)

@torch.no_grad()
def pixel_knn_accuracy(data, device):
    """The same kNN on the raw pixels of the bank and test images (at the training size, each pixel
    standardised over the bank; its std floored at one grey level): what learned features must beat."""
    # grey images (3 equal channels, as MNIST's) give the same cosines from one channel, 3x faster
    grey = all(torch.equal(x[:, 1:], x[:, :1].expand_as(x[:, 1:])) for x in (data.probe_x, data.test_x))
    c = 1 if grey else 3
    bank, test = [torch.cat([part[:, :c].to(device).flatten(1).float() for part in x.split(4096)])
                  for x in (data.probe_x, data.test_x)]  # (N, c S S)
    mean, std = bank.mean(0), bank.std(0).clamp(min=1.0)
    return knn_accuracy(bank.sub_(mean).div_(std), data.probe_y.to(device), test.sub_(mean).div_(std),
                        data.test_y.to(device), data.classes)

def evaluate(backbone, probe, data, device):
    """kNN accuracy, and the online probe's test accuracy when a probe is given."""
    bank, test = (extract_features(backbone, x, data, device) for x in (data.probe_x, data.test_x))
    test_y = data.test_y.to(device)
    out = {"knn_acc": knn_accuracy(bank, data.probe_y.to(device), test, test_y, data.classes)}
    if probe is not None:
        out["probe_acc"] = (probe.linear(test).argmax(1) == test_y).float().mean().item()
    return out

def linear_eval(backbone, data, epochs, device, batch_size=256):
    """Offline linear evaluation of the frozen backbone, thesis appendix B.2: SGD momentum 0.9,
    no weight decay, lr 0.2 with cosine decay to 0.002, batch 256, crop + flip augmentation."""
    backbone.eval()
    classifier = nn.Linear(backbone.out_dim, data.classes).to(device)
    optimizer = torch.optim.SGD(classifier.parameters(), lr=0.2, momentum=0.9, weight_decay=0.0)
    loader = Loader(data.probe_x, data.probe_y, min(batch_size, len(data.probe_x)), device, shard=False)
    augment, total = Augment("linear", data, data.test_x.shape[-1], shard=False), epochs * len(loader)
    for epoch in Progress(range(epochs), epochs, "linear eval", unit="epoch"):
        for step, (x, y) in enumerate(loader):
            set_lr(optimizer, lr_at(epoch * len(loader) + step, total, 0, 0.2, final_lr=0.002))
            with torch.no_grad(), autocast(device):
                f = backbone(augment(x)[0]).float()
            loss = F.cross_entropy(classifier(f), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    test_f = extract_features(backbone, data.test_x, data, device)
    return (classifier(test_f).argmax(1) == data.test_y.to(device)).float().mean().item()

# -------------------------------------------------------------------------------- optimisation
class LARS(torch.optim.Optimizer):
    """SGD with momentum and a layer-wise trust ratio (You et al. 2017), as the official Barlow Twins / VICReg
    code: update = g + wd * w, scaled by eta ||w|| / ||update||; with clip (solo-learn's clip_lr) the step is
    min(eta * ratio, lr) * update. lars_exclude groups (biases, BatchNorm) get neither. Deviation of every
    method on solo-learn's recipe: solo-learn divides by ||g|| + wd ||w||, not ||g + wd w||."""
    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0, eta=0.02, clip=False):  # eta: solo-learn
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta,
                                      clip=clip, lars_exclude=False))

    @torch.no_grad()
    def step(self):  # each group in a few foreach ops over all its parameters, not a loop of small ops
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            updates = [p.grad for p in params]
            if not group["lars_exclude"]:
                updates = torch._foreach_add(updates, params, alpha=group["weight_decay"])
                w_norm = torch.stack(torch._foreach_norm(params))   # (P,)
                u_norm = torch.stack(torch._foreach_norm(updates))  # (P,)
                trust = torch.where((w_norm > 0) & (u_norm > 0), group["eta"] * w_norm / u_norm, 1.0)  # (P,)
                if group["clip"]:
                    trust = (trust / group["lr"]).clamp(max=1.0)
                updates = torch._foreach_mul(updates, list(trust.unbind()))
            bufs = [self.state[p]["momentum_buffer"] if "momentum_buffer" in self.state[p] else
                    self.state[p].setdefault("momentum_buffer", torch.zeros_like(p)) for p in params]
            torch._foreach_mul_(bufs, group["momentum"])
            torch._foreach_add_(bufs, updates)
            torch._foreach_add_(params, bufs, alpha=-group["lr"])

def make_optimizer(model, args):
    """Biases and BatchNorm parameters (1-d) get no weight decay and, for LARS, no trust ratio."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    if args.optimizer == "lars":
        groups[1]["lars_exclude"] = True
        return LARS(groups, lr=args.lr, weight_decay=args.weight_decay, clip=args.lars_clip)
    fused = next(model.parameters()).device.type in ("cpu", "cuda")  # one kernel for all parameters: faster
    if args.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=args.lr, momentum=0.9, weight_decay=args.weight_decay, fused=fused)
    return torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay, fused=fused)

def lr_at(step, total_steps, warmup_steps, base_lr, start_lr=0.0, final_lr=0.0):
    """Linear warmup start_lr -> base_lr over warmup_steps, then cosine to final_lr at the last step."""
    if step < warmup_steps:
        return start_lr + (base_lr - start_lr) * step / warmup_steps
    t = (step - warmup_steps) / max(1, total_steps - 1 - warmup_steps)
    return final_lr + 0.5 * (base_lr - final_lr) * (1 + math.cos(math.pi * min(t, 1.0)))

def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr

# ------------------------------------------------------------------------ training-loop helpers
def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

def seed_epoch(seed, epoch):  # epoch e draws the same whether the run stopped before or not: no RNG saved
    seed_everything(seed * 100_003 + epoch)

def autocast(device):
    """bf16 autocast on GPUs that compute it natively (compute capability 8.0+: A100, H100, RTX 30xx), losses
    in float32; float32 elsewhere (V100, T4 only emulate bf16; fp16 would need a GradScaler in every step)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if bf16(device) else contextlib.nullcontext()

def bf16(device):  # whether autocast computes in bf16 on this device
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8

def training_memory(args):
    """GPU memory (bytes) a training step needs, estimated: what autograd keeps of the backbone (counted on
    the meta device: nothing computed) for both views of this process's batch, in bf16 where autocast is,
    +25% +2 GB (weights, gradients, optimizer, projector, workspaces). CorInfoMax's ImageNet-100: 30 GB."""
    if (device := torch.device(args.device)).type != "cuda":  # the Loader asks for free memory only there
        return 0
    with torch.device("meta"):
        model, kept = backbone(args.arch, args.width, args.image_size), {}
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.setdefault(id(t), t), lambda t: t):
        model(torch.empty(args.batch_size // WORLD_SIZE, 3, args.image_size, args.image_size, device="meta"))
    return 2 * sum(t.nbytes for t in kept.values()) * (0.5 if bf16(device) else 1) * 1.25 + 2e9

NO_FLOAT64 = ("mps",)  # devices without float64 (Apple GPUs); tests add "cpu" to emulate one

def precise_dtype(device):  # of log-dets, running covariances, spectra: float64, float32 where there is none
    return torch.float32 if torch.device(device).type in NO_FLOAT64 else torch.float64

def on_cpu_without_float64(fn, x):  # fn(x), an op MPS lacks (eigvalsh, svdvals): there on the CPU in float64
    return (fn(x) if x.device.type not in NO_FLOAT64
            else fn(x.to("cpu", torch.float64)).to(x.device, precise_dtype(x.device)))

def channels_last(device, size):
    """Whether convolutions run channels_last: faster with cuDNN, and with oneDNN on the CPU (15-27% at 16-64 px)
    up to 128 px (tests/test_devices.py); its backward crashed at 192-224 px. MPS supports it only in part."""
    return device.type == "cuda" or (device.type == "cpu" and size <= 128)

def prepare_model(model, args, device):
    sync_batchnorm(model.to(device))
    torch.backends.cudnn.benchmark = device.type == "cuda"  # the fastest kernels for the run's fixed shapes
    if channels_last(device, args.image_size):
        model.to(memory_format=torch.channels_last)
    if args.compile:
        model.backbone.compile()  # in place: state_dict keys stay the same
    return model

PROGRESS_SECONDS = 30  # without a terminal (output piped to a file), a progress line this often

class Progress(tqdm):
    """tqdm's bar on a terminal. Piped to a file, where a bar shows nothing, a plain line on stdout every
    PROGRESS_SECONDS (tqdm's mininterval) instead, so a log never sits silent. Only process 0 shows it."""
    def __init__(self, iterable, total, desc, unit="step"):
        self.piped = not sys.stderr.isatty()
        super().__init__(iterable, total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True,
                         disable=RANK > 0, file=sys.stdout if self.piped else None,
                         mininterval=PROGRESS_SECONDS if self.piped else 1.0)

    def set_postfix(self, **values):  # piped: shown with the next line, not printed on its own
        super().set_postfix(refresh=not self.piped, **values)

    def display(self, msg=None, pos=None):
        if not self.piped:
            return super().display(msg, pos)
        if msg is None and 0 < self.n < self.total:  # not the first and last refresh
            rate = self.n / (self._time() - self.start_t)
            print(f"{self.desc}: {self.n}/{self.total} {self.unit}s, {rate:.3g} {self.unit}s/s "
                  f"{self.postfix or ''}".rstrip(), flush=True)

class Meter:
    """Sums named scalar tensors without a host sync per step; .means() syncs once."""
    def __init__(self):
        self.sums, self.count = {}, 0

    def add(self, **terms):
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.detach().float()
        self.count += 1

    def means(self):
        return {k: v.item() / max(self.count, 1) for k, v in self.sums.items()}

# ============================== plumbing below: a reader of a method file can stop here ==============

# ------------------------------------------------------------------------- several processes
# torchrun starts one process per GPU. --batch-size is the global batch, of which each process takes its
# slice, so a recipe's lr means the same on 1 or 8 GPUs. Every process draws the same random numbers (the
# shuffle, the augmentation of the whole global batch, the masks): N processes train like one.
def get_device(name):
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if name == "auto":  # cuda, then mps, then cpu
        name = next((kind for kind, ok in available.items() if ok), "cpu")
    kind = name.split(":")[0]
    if not available.get(kind, True):
        fail(f"--device {name}: {kind.upper()} is not available here; use --device cpu or auto")
    return torch.device(name)

def busy_cores(samples=5):
    """Cores of this process that others use now: Linux's procs_running less this one (median of samples
    10 ms apart), scaled to the cores this process may use (a container sees the host's tasks). Else 0."""
    counts = []
    for _ in range(samples):
        try:
            with open("/proc/stat") as f:
                counts.append(next(int(l.split()[1]) for l in f if l.startswith("procs_running")) - 1)
        except (OSError, StopIteration, ValueError):
            return 0
        time.sleep(0.01)
    mine, host = len(os.sched_getaffinity(0)), os.cpu_count() or 1
    return sorted(counts)[len(counts) // 2] * mine / host

def choose_threads():
    """torch's threads (one per core, or OMP_NUM_THREADS) less the cores others are busy with: every op waits
    for its slowest thread, and one sharing a core stalls them all (benchmarks/busy.py: 3.1x vs 1.5x)."""
    if "OMP_NUM_THREADS" in os.environ:
        return torch.get_num_threads()
    return max(1, torch.get_num_threads() - round(busy_cores()))

def setup_device(args):
    """This process's device (--device) and --threads, recorded in args (args.json) with world_size; errors
    that need no trace in one line. Under torchrun it joins the process group (join_processes)."""
    if not sys.stdout.isatty() and hasattr(sys.stdout, "reconfigure"):  # piped to a file: each line as it
        sys.stdout.reconfigure(line_buffering=True)                       # is printed, not minutes later
    args.threads = args.threads or choose_threads()  # recorded in args.json: a --resume uses the same number
    torch.set_num_threads(args.threads)
    args.world_size = WORLD_SIZE
    device = get_device(args.device)
    if WORLD_SIZE > 1 and device.type == "cuda":
        device = torch.device("cuda", LOCAL_RANK)
    args.device = str(device)
    default_hook = sys.excepthook

    def one_line(kind, e, tb):  # out of GPU memory, or another process of the job failed: one line, no trace
        lost = WORLD_SIZE > 1 and issubclass(kind, RuntimeError) and (  # the failed one closes connections
            "peer" in str(e) or issubclass(kind, getattr(dist, "DistError", ())))
        if issubclass(kind, torch.cuda.OutOfMemoryError):
            print(f"error: the GPU ran out of memory; use a smaller --batch-size (now {args.batch_size}) or "
                  f"--image-size (now {args.image_size})", file=sys.stderr)
        elif lost:
            print(f"error: process {RANK} stopped because another process of the job failed (its error is "
                  "above)", file=sys.stderr)
        else:
            default_hook(kind, e, tb)
    sys.excepthook = one_line
    return device if WORLD_SIZE == 1 else join_processes(args, device)

def join_processes(args, device):  # under torchrun: refuse what does not work there, join the group
    if device.type not in ("cuda", "cpu"):
        fail(f"--device {args.device}: several processes (torchrun) need cuda or cpu")
    if args.compile:
        fail("--compile: not under torchrun (SyncBatchNorm and the batch gather break torch.compile's "
             "graphs); drop --compile, or train in one process")
    if args.batch_size % WORLD_SIZE:
        fail(f"--batch-size {args.batch_size} is the global batch and must be a multiple of the "
             f"{WORLD_SIZE} processes (each takes an equal slice)")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # timeout: the others wait while the first process of a machine downloads or decodes data (minutes)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=2))
        atexit.register(leave_process_group)  # SIGABRT at exit without it (pytorch PR 179291)
    return device

def leave_process_group():  # at exit, while Python is whole: else gloo's threads abort a finished run
    if dist.is_initialized():
        dist.destroy_process_group()

def shard(x):
    """This process's slice of a tensor that every process holds whole (dim 0)."""
    n = len(x) // WORLD_SIZE
    return x[RANK * n:(RANK + 1) * n]

def gather(x):
    """The global batch: every process's x concatenated in rank order, with gradient (the identity on one
    process); main() gathers what its loss needs, so losses stay plain tensor functions.
    Why the backward sums: every process computes the same loss L of the global batch, and all_gather's
    backward reduce-scatters: W dL/d(own rows). DDP averages over the W processes, so each sample counts
    once; the local gradient alone (lightly issue #1528) would lose what flows through the others' losses."""
    if WORLD_SIZE == 1 or not dist.is_initialized():
        return x
    from torch.distributed.nn.functional import all_gather  # imported here: needs a distributed build
    return torch.cat(all_gather(x))

class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch for gloo/CPU (torch's SyncBatchNorm runs on CUDA only): sums
    over processes through gather (so with gradient), mean then squared deviations (two passes, as
    accurate as BatchNorm). Same parameters and buffers as BatchNorm1d/2d: checkpoints load either way."""
    def _check_input_dim(self, x):
        pass

    def forward(self, x):
        if not (self.training and dist.is_initialized()):
            return super().forward(x)
        dims, shape = [0, *range(2, x.dim())], [1, -1] + [1] * (x.dim() - 2)
        total = lambda t: gather(t[None]).sum(0)                   # sum over processes, with gradient
        n = x.numel() // x.shape[1] * WORLD_SIZE                   # every process holds an equal slice
        mean = total(x.sum(dims)) / n                              # (C,)
        var = total(((x - mean.view(shape)) ** 2).sum(dims)) / n  # (C,) biased, used to normalise
        with torch.no_grad():  # running statistics as nn.BatchNorm: unbiased variance
            self.num_batches_tracked += 1
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * n / (n - 1), self.momentum)
        x = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return x * self.weight.view(shape) + self.bias.view(shape) if self.affine else x

def sync_batchnorm(model):
    """BatchNorm over the global batch under torchrun, as in SimCLR's, VICReg's and Barlow Twins' code."""
    if WORLD_SIZE == 1:
        return model
    if next(model.parameters()).is_cuda:
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for parent in list(model.modules()):
        for name, bn in list(parent.named_children()):
            if isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d)):
                new = CPUSyncBatchNorm(bn.num_features, bn.eps, bn.momentum, bn.affine)
                new.to(bn.running_mean.device).load_state_dict(bn.state_dict())
                setattr(parent, name, new)
    return model

def ddp(model):
    """DistributedDataParallel under torchrun (it averages gradients during backward), else the model."""
    if WORLD_SIZE == 1:
        return model
    device_ids = [LOCAL_RANK] if next(model.parameters()).is_cuda else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

# ---------------------------------------------------------------------- command line and recipes
DATASETS = ("shapes", "cifar10", "cifar100", "stl10", "mnist", "fashion-mnist", "imagefolder")

class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # one line that names the flag and what is allowed, no usage block
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

def checked(kind, ok, allowed):
    """An argparse type: parse with `kind`, then refuse non-finite values and values where ok(value)
    is false, naming what is allowed. Method files declare each flag's range with it, in one place."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}")
        if not (math.isfinite(value) and ok(value)):
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text}")
        return value
    return parse

def positive(kind):
    return checked(kind, lambda v: v > 0, "positive")

def nonnegative(kind):
    return checked(kind, lambda v: v >= 0, "0 or more")

def in_range(kind, low, high):  # closed interval
    return checked(kind, lambda v: low <= v <= high, f"in [{low}, {high}]")

class HelpFormatter(argparse.HelpFormatter):
    """--help shows the value a run uses for each flag: its default for every dataset (common.py's, or
    the method's RECIPES["all"]), then the datasets whose recipe sets another (put there by parse_args)."""
    def _get_help_string(self, action):
        unset = action.default in (None, argparse.SUPPRESS) or action.default is False  # 0 is shown
        shown = [] if unset else ["default: %(default)s"]
        shown += [action.per_dataset] if getattr(action, "per_dataset", "") else []
        return (action.help or "") + (f" ({'; '.join(shown)})" if shown else "")

def get_parser(method, doc, recipes):
    """The shared flags in groups; a method file adds its own. recipes["all"]: the method's values for every
    dataset, recipes[<dataset>]: what differs. Precedence: defaults below, "all", the dataset's, the flags."""
    epilog = (f"Defaults depend on --dataset: each flag shows its value for every dataset ({method}.py's "
              f"RECIPES['all'] over common.py's), then the datasets whose recipe sets another. A flag given "
              "wins over both. A run prints its recipe and the flags that override it; args.json keeps all.")
    p = ArgumentParser(prog=f"{method}.py", description=doc.split("\n")[0], formatter_class=HelpFormatter,
                       epilog=epilog)
    data = p.add_argument_group("data")
    data.add_argument("--dataset", default="shapes", choices=DATASETS, help="shapes: generated, no download")
    data.add_argument("--recipe", choices=[r for r in recipes if r != "all"], help="another recipe of the "
                      "method's table, e.g. laptop (real images on a laptop CPU) for --dataset imagefolder "
                      "(default: --dataset's; mnist, fashion-mnist: laptop)")
    data.add_argument("--data-dir", default="data", help="where datasets are downloaded / looked for")
    data.add_argument("--image-size", type=in_range(int, 8, 4096),
                      help="pixels; unless a recipe sets it the dataset's: 32, stl10 96, imagefolder 224")
    data.add_argument("--train-subset", type=nonnegative(int), default=0, help="train on a random sample of "
                      "N training images (seed 0, the same for every --seed); 0: all of them")
    data.add_argument("--policy", default="asymmetric", choices=[k for k in POLICIES if k != "linear"],
                      help="augmentation (common.POLICIES)")
    model = p.add_argument_group("model")
    model.add_argument("--arch", default="resnet18", choices=["resnet18", "resnet50"], help="backbone")
    model.add_argument("--width", type=positive(int), default=64, help="ResNet base width (64 = standard)")
    model.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=positive(int), default=100, help="training epochs")
    opt.add_argument("--images", type=nonnegative(int), default=0, help="train on about N images in all: "
                     "--epochs = N / training images, at least 1 (0: --epochs; a given --epochs wins)")
    opt.add_argument("--batch-size", default=256, help="global batch (all processes together)",
                     type=checked(int, lambda v: v >= 2, "at least 2 (losses compare samples)"))
    opt.add_argument("--lr", type=positive(float), default=0.3, help="peak learning rate (global batch)")
    opt.add_argument("--min-lr", type=nonnegative(float), default=0.0, help="end of the cosine schedule")
    opt.add_argument("--warmup-lr", type=nonnegative(float), default=0.0, help="start of the linear warmup")
    opt.add_argument("--warmup-epochs", type=nonnegative(float), default=10, help="linear warmup length")
    opt.add_argument("--weight-decay", type=nonnegative(float), default=1e-4, help="not on biases, BatchNorm")
    opt.add_argument("--optimizer", default="lars", choices=["lars", "sgd", "adamw"], help="momentum 0.9")
    opt.add_argument("--lars-clip", action=argparse.BooleanOptionalAction, default=False,
                     help="LARS: step min(eta * trust, lr), not lr * eta * trust (solo-learn's clip_lr)")
    ev = p.add_argument_group("evaluation")
    ev.add_argument("--eval-every", type=positive(int), default=10, help="kNN / probe test every N epochs")
    ev.add_argument("--linear-epochs", type=nonnegative(int), default=0, help="offline linear evaluation "
                    "epochs at the end (0: skip)")
    ev.add_argument("--track-every", type=nonnegative(int), default=0, help="every K epochs log analysis "
                    "measures (effective rank, I(R;Z), AAC, uniformity, ...) of 1,000 test images; 0: off")
    run = p.add_argument_group("run")
    run.add_argument("--device", default="auto", help="auto (cuda, mps, then cpu), cuda, cuda:N, mps, cpu")
    run.add_argument("--threads", type=positive(int), help="CPU threads for torch (default: one per core "
                     "that no other process is busy with at startup, at least 1)")
    run.add_argument("--seed", type=nonnegative(int), default=0, help="random seed (weights, shuffle, views)")
    run.add_argument("--out", default="runs", help="folder that holds the run folders")
    run.add_argument("--name", help="run folder name (default: method-dataset-time)")
    run.add_argument("--resume", metavar="RUN", help="continue the run in RUN (or RUN/last.pt) as saved")
    run.add_argument("--stop-after", type=positive(int), help="stop after epoch N (continue with --resume)")
    run.add_argument("--save-every", type=nonnegative(int), default=0, help="write last.pt every N epochs, "
                     "at the end and --stop-after; 0: while writing has taken <= 2%% of the training time")
    p.set_defaults(method=method)
    p.recipes = recipes
    return p

def given_flags(parser, argv, args):
    """Names of the arguments given on the command line: parsed again over placeholders, which argparse
    replaces only where a flag is given (defaults fill only what is unset)."""
    unset = argparse.Namespace(**{k: "__unset__" for k in vars(args)})
    return {k for k, v in vars(parser.parse_args(argv, namespace=unset)).items() if v != "__unset__"}

def parse_args(parser, argv=None):
    """The arguments of a run: common.py's defaults, the method's RECIPES["all"], then the dataset's recipe
    for what no flag gives (apply_recipe); on --resume the saved arguments (resume_args)."""
    parser.set_defaults(**parser.recipes.get("all", {}))  # here, once the method file added its flags
    for action in parser._actions:  # for --help: the datasets whose recipe gives the flag another value
        others = {name: recipe[action.dest] for name, recipe in parser.recipes.items()
                  if name != "all" and recipe.get(action.dest, action.default) != action.default}
        action.per_dataset = ", ".join(f"{name}: {value}" for name, value in others.items())
    args = parser.parse_args(argv)
    if args.device not in ("auto", "cuda", "mps", "cpu") and not args.device.startswith("cuda:"):
        parser.error(f"argument --device: expected auto, cuda, cuda:N, mps or cpu, got {args.device!r}")
    parser.given = given_flags(parser, argv, args)  # also for a method's own defaults
    flag = {a.dest: a.option_strings[-1] for a in parser._actions if a.option_strings}  # dest -> --flag
    if args.resume:
        resume_args(args, parser.given, flag)
    else:
        apply_recipe(args, parser.recipes, parser.given, flag)
    args.data_dir = os.path.abspath(args.data_dir)  # args.json: the same folder from any working directory
    return args

def resume_args(args, given, flag):
    """The saved arguments of the run in --resume win; a flag given now that disagrees is an error, not a
    surprise. A resume may set --resume, --stop-after, --device, --save-every and --data-dir."""
    mine = {"resume", "stop_after", "device", "save_every"} | ({"data_dir"} & given)
    given -= mine
    run_dir = args.resume if os.path.isdir(args.resume) else os.path.dirname(args.resume) or "."
    try:
        saved = json.load(open(os.path.join(run_dir, "args.json")))
    except (OSError, ValueError) as e:
        fail(f"--resume {args.resume}: cannot read {run_dir}/args.json ({e.__class__.__name__})")
    if saved.get("method") != args.method:
        method = saved.get("method")
        fail(f"--resume {args.resume}: that is a {method} run; resume it with {method}.py")
    for k in sorted(given):
        if k in saved and saved[k] != getattr(args, k):
            fail(f"--resume: {flag[k]} {getattr(args, k)} differs from the saved run ({saved[k]}); resume "
                 "uses the saved arguments, so drop the flag")
    vars(args).update({k: v for k, v in saved.items() if k not in mine})
    args.out, args.name = os.path.split(os.path.abspath(run_dir))

def apply_recipe(args, recipes, given, flag):
    """The recipe (--recipe, or the dataset's) fills in whatever was not given on the command line."""
    default = "laptop" if args.dataset in ("mnist", "fashion-mnist") else args.dataset
    args.recipe = args.recipe or default
    recipe = dict(recipes.get(args.recipe, {}))
    if args.recipe != args.dataset and recipe.get("train_subset") and "train_subset" not in given:
        print0(f"recipe {args.recipe}: its --train-subset {recipe.pop('train_subset')} is for {args.recipe}, "
               f"so --dataset {args.dataset} trains on all its images (--train-subset N for a random sample)")
    vars(args).update({k: v for k, v in recipe.items() if k not in given})
    if "epochs" in given and "images" not in given:  # a given --epochs beats a recipe's --images
        args.images = 0
    flags = " ".join(f"{flag[k]} {getattr(args, k)}" for k in sorted(given)
                     if k not in ("dataset", "recipe", "out", "name", "seed", "device"))
    print0(f"recipe: {args.method}.py RECIPES['{args.recipe}'] on --dataset {args.dataset}"
           + (f"; overridden by {flags}" if flags else "; no flag overrides it"))

# ----------------------------------------------------------------------------------- run folder
def to_json(obj, **kwargs):
    """json.dumps with NaN and infinities as null (JSON has no NaN): every file written is valid JSON."""
    nulled = json.loads(json.dumps(obj), parse_constant=lambda name: None)  # NaN, Infinity, -Infinity
    return json.dumps(nulled, allow_nan=False, **kwargs)

def atomic_write(path, data, on_disk=None):
    """Write text or a torch.save-able object (read back: a short write never replaces a good file) to a
    temp file renamed over `path`. A failure is one line saying what is on disk (on_disk, or the old file)."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        if isinstance(data, str):
            with open(tmp, "w") as f:
                f.write(data)
        else:
            torch.save(data, tmp)
            load_file(tmp)  # reads back, or raises
        os.replace(tmp, path)
    except BaseException as e:  # Ctrl-C included: never leave the temp file behind
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(e, (OSError, RuntimeError, EOFError, pickle.UnpicklingError)):
            kept = "the previous file is untouched" if os.path.exists(path) else "no file was written"
            fail(f"could not write {path} ({e.__class__.__name__}: {str(e)[:80]}); {on_disk or kept} "
                 "(full disk? unwritable folder?)")
        raise

def load_file(path):  # mmap: no copy in memory, where torch can (it opens only UTF-8 names that way)
    return torch.load(path, map_location="cpu", weights_only=True, mmap=printable(path) == path)

def flat_values(obj, prefix=""):
    """(dotted name, value) of every leaf of a nested state_dict (dicts, lists, tuples)."""
    if not isinstance(obj, (dict, list, tuple)):
        yield prefix[:-1], obj
        return
    for k, v in obj.items() if isinstance(obj, dict) else enumerate(obj):
        yield from flat_values(v, f"{prefix}{k}.")

def is_finite(value):
    """False for a float or a floating tensor with a NaN or an infinity; True for anything else."""
    if torch.is_tensor(value):
        return not value.is_floating_point() or bool(value.isfinite().all())
    return not isinstance(value, float) or math.isfinite(value)

CLAIMS = {}  # run folder -> its open .lock file: the folder is this process's while the file is open

def claim(args):
    """Claim <out>/<name> (made here as method-dataset-time[-k] without --name) by a flock on its .lock file,
    which the kernel drops however the process ends. Returns the pid of another holder, or None."""
    os.makedirs(args.out, exist_ok=True)
    if args.name is None:
        stem = f"{args.method}-{args.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
        for k in itertools.count(1):
            args.name = stem + (f"-{k}" if k > 1 else "")
            with contextlib.suppress(FileExistsError):
                os.mkdir(os.path.join(args.out, args.name))
                break
    path = os.path.join(args.out, args.name)
    os.makedirs(path, exist_ok=True)
    release(path)  # an earlier run into it in this Python process (a notebook, the tests) is over
    f = open(os.path.join(path, ".lock"), "a+")
    try:
        if os.name != "nt":
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        return f.read().strip() or "unknown"
    f.truncate(0)
    f.write(f"{os.getpid()}\n")
    f.flush()
    CLAIMS[path] = f

def release(path):  # the claim of this process on a run folder ends (at exit it ends by itself)
    with contextlib.suppress(KeyError):
        CLAIMS.pop(path).close()

class Run:
    """The run folder <out>/<name>/: args.json, log.jsonl, last.pt, results.json, copies of the code.
    main() calls Run(...), start, then per epoch check_finite, log, save (stopped for --stop-after), finish.
    Every message about what is on disk names the epoch last.pt holds (self.saved), or that there is none."""
    def __init__(self, args, script, device):
        self.args, self.script, self.device = args, script, device
        self.checkpoint, self.saved = None, None  # saved: the epoch last.pt holds
        self.seconds, self.last_eval, self.save_seconds = 0.0, {}, 0.0
        if args.resume and not os.path.exists(os.path.join(args.out, args.name, "last.pt")):
            fail(f"--resume {args.resume}: no last.pt in {os.path.join(args.out, args.name)}")
        self.dir = self.claim_folder()
        self.ckpt_path = os.path.join(self.dir, "last.pt")
        if args.resume:
            self.read_checkpoint()
        elif os.path.exists(self.ckpt_path):
            fail(f"--name: {self.dir} already holds a run (last.pt); continue it with --resume {self.dir}, "
                 "or choose another --name or --out")
        if RANK == 0:  # temp files of a run killed mid-write
            for f in os.listdir(self.dir):
                if ".tmp" in f:
                    os.remove(os.path.join(self.dir, f))
        if WORLD_SIZE > 1:
            print0(f"{WORLD_SIZE} processes x {args.batch_size // WORLD_SIZE} images = global batch "
                   f"{args.batch_size}; --lr {args.lr} is for the global batch (nothing is rescaled)")
        signal.signal(signal.SIGINT, self.interrupted)  # from here on, data loading included

    def claim_folder(self):
        """Claim the folder (process 0, for all) before anything is written there, or fail in one line."""
        args = self.args
        try:
            holder = claim(args) if RANK == 0 else None
        except OSError as e:
            fail(f"--out {args.out}: cannot create or write the output folder ({e.strerror or e})")
        if dist.is_initialized():
            name = [args.name]
            dist.broadcast_object_list(name, src=0)
            args.name = name[0]
        path = os.path.join(args.out, args.name)
        in_use = f"{path} is in use by another run (process {holder})"
        if holder and args.resume:
            fail(f"--resume: {in_use}; resume it once that has ended")
        if holder:
            fail(f"--name: {in_use}; choose another --name or --out")
        return path

    def read_checkpoint(self):
        try:
            self.checkpoint = torch.load(self.ckpt_path, map_location="cpu", weights_only=True)
            assert {"epoch", "args", "state"} <= set(self.checkpoint)
        except Exception as e:
            fail(f"--resume: {self.ckpt_path} is corrupt or not a checkpoint of this repository "
                 f"({e.__class__.__name__}); the file is left untouched")
        self.saved = self.checkpoint["epoch"]
        if self.saved >= self.args.epochs and os.path.exists(os.path.join(self.dir, "results.json")):
            print0(f"{self.dir} has finished all its {self.args.epochs} epochs (results.json); nothing to "
                   "resume. To train longer, start a new run with a larger --epochs.")
            raise SystemExit(0)

    def on_disk(self):  # what last.pt holds, in words, for messages
        if self.saved is None:
            return "no checkpoint was written, nothing to resume"
        return f"{self.ckpt_path} holds epoch {self.saved}; continue with --resume {self.dir}"

    def start(self, data, backbone, state):
        """Write args.json and the code. On --resume restore every object of `state` (name -> object with
        state_dict / load_state_dict, as saved by save()) and return the epoch to continue after; else log
        the kNN accuracy of the random initialisation as epoch 0 (the baseline to beat) and return 0."""
        log = os.path.join(self.dir, "log.jsonl")
        if RANK == 0:  # under torchrun only the first process writes; the others compute the same things
            atomic_write(os.path.join(self.dir, "args.json"), to_json(vars(self.args), indent=1))
            for f in (self.script, __file__):
                shutil.copy(f, os.path.join(self.dir, os.path.basename(f)))
        if self.checkpoint is None:
            self.init_knn = evaluate(backbone, None, data, self.device)["knn_acc"]
            self.pixel_knn = pixel_knn_accuracy(data, self.device)
            print0(f"epoch=0 knn_acc={self.init_knn:.4g} (random initialisation) "
                   f"pixel_knn_acc={self.pixel_knn:.4g} (raw pixels)")
            lines = [{"epoch": 0, "knn_acc": self.init_knn, "pixel_knn_acc": self.pixel_knn}]
        else:
            for k, obj in state.items():
                obj.load_state_dict(self.checkpoint["state"][k])
            lines = [json.loads(l) for l in open(log) if l.endswith("\n")] if os.path.exists(log) else []
            lines = [l for l in lines if l["epoch"] <= self.saved]  # drop epochs logged after the checkpoint
            self.seconds = sum(l.get("seconds", 0) for l in lines)
            first = lines[0] if lines and lines[0]["epoch"] == 0 else {}
            self.init_knn, self.pixel_knn = first.get("knn_acc"), first.get("pixel_knn_acc")
            self.last_eval = next((l for l in reversed(lines) if "probe_acc" in l), {})
            print0(f"resuming {self.dir} after epoch {self.saved}")
        if RANK == 0:
            atomic_write(log, "".join(to_json(l) + "\n" for l in lines))
        return self.saved or 0

    def log_init(self, measures):
        """Add measures (--track-every's, of the random initialisation) to log.jsonl's epoch-0 row."""
        path = os.path.join(self.dir, "log.jsonl")
        if RANK == 0:  # called right after start(): the epoch-0 row is the log's only row
            atomic_write(path, "".join(to_json({**json.loads(l), **measures}) + "\n" for l in open(path)))

    def interrupted(self, *_):  # Ctrl-C: last.pt holds the last completed epoch (atomic writes)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if RANK > 0:  # torchrun: Ctrl-C reaches every process; one message is enough
            raise SystemExit(1)
        fail(f"interrupted (Ctrl-C); {self.on_disk()}")

    def progress(self, loader, epoch):
        return Progress(loader, len(loader), f"epoch {epoch + 1}/{self.args.epochs}")

    def check_finite(self, row, state):
        """Stop in one line, before the epoch is logged or saved, if a loss term or any value of the state
        last.pt would hold is NaN or infinite (the last update can break weights under a finite mean loss)."""
        what = [f"{k} = {v}" for k, v in row.items() if not math.isfinite(v)]
        kind = "loss"
        if not what:  # the loss is finite: is the state?
            kind = "state"
            for name, obj in state.items():
                values = list(flat_values(obj.state_dict()))
                names = [k for k, v in values if not is_finite(v)]
                if names:
                    what.append(f"{name}: {len(names)} of {len(values)} values (e.g. {names[0]})")
        if what:
            what = (", " if kind == "loss" else "; ").join(what)
            fail(f"epoch {row['epoch']}: the {kind} is not finite ({what}); it was not saved: "
                 f"{self.on_disk()}. Start again with a lower --lr (now {self.args.lr})")

    def log(self, row):
        """Append the epoch's row to log.jsonl and print it (without world_size and global_batch)."""
        if "knn_acc" in row:
            self.last_eval = {k: row[k] for k in ("knn_acc", "probe_acc") if k in row}
        self.seconds += row["seconds"]
        if RANK == 0:  # the log first: a resume trims it back to what last.pt holds
            with open(os.path.join(self.dir, "log.jsonl"), "a") as f:
                f.write(to_json(row) + "\n")
        print0(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                        if k not in ("world_size", "global_batch")))

    def save(self, epoch, state):
        """last.pt = {"epoch", "args", "state": {name: state_dict}} when --save-every says (default: while
        writing has taken at most 2% of the training time), and at the last epoch and --stop-after."""
        every, end = self.args.save_every, min(self.args.epochs, self.args.stop_after or self.args.epochs)
        due = epoch % every == 0 if every else self.save_seconds <= 0.02 * self.seconds
        if not (due or epoch >= end):
            return
        start = time.time()
        if RANK == 0:
            atomic_write(self.ckpt_path, {"epoch": epoch, "args": vars(self.args), "state": {
                k: obj.state_dict() for k, obj in state.items()}}, on_disk=self.on_disk())
        self.saved, self.save_seconds = epoch, self.save_seconds + time.time() - start

    def stopped(self, epoch):
        release(self.dir)
        print0(f"stopped after epoch {epoch} (--stop-after); continue with --resume {self.dir}")

    def finish(self, backbone, data, extra=None):
        """Final results (+ offline linear evaluation if asked, a method's `extra`) into results.json."""
        results = {"knn_acc": self.last_eval.get("knn_acc"), "probe_acc": self.last_eval.get("probe_acc"),
                   "init_knn_acc": self.init_knn, "pixel_knn_acc": self.pixel_knn, "epochs": self.args.epochs,
                   "seconds": round(self.seconds, 2)}
        if self.args.linear_epochs > 0:
            seed_everything(self.args.seed)  # same result whether or not the run was resumed
            results["linear_acc"] = linear_eval(backbone, data, self.args.linear_epochs, self.device)
        results.update(extra or {})
        if RANK == 0:
            atomic_write(os.path.join(self.dir, "results.json"), to_json(results, indent=1))
        shown = {k: v for k, v in results.items() if k not in (extra or {})}
        print0(f"results: {to_json(shown)}  ({self.dir})")
        release(self.dir)
        return results
