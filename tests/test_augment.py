"""Tests of the batched on-device augmentation in common.py.

Every op is checked against an independent reference: torchvision's functional ops
(torchvision.transforms.v2.functional) applied one image at a time to float images in [0, 1]
with the same parameters. The whole pipeline is rebuilt per sample from those ops, the random
parameters are checked against the policies' probabilities and ranges, and the policies
themselves against Table 2 of "Toward a Geometrical Understanding" (arXiv 2205.06926) and CorInfoMax thesis Table B.1.
"""
import itertools
import math
import os
import sys

import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.v2.functional as TF

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)
ATOL = 1e-5
THRESHOLD = common.SOLARIZE_THRESHOLD


def make_data(x):
    y = torch.arange(len(x)) % 10
    return common.Data((x, y), (x, y), (x, y), [str(k) for k in range(10)], MEAN, STD)


def special_images(size=32):
    """uint8 (6, 3, size, size): images that hit the edge cases of the colour ops."""
    g = torch.Generator().manual_seed(1)
    randint = lambda lo, hi, *shape: torch.randint(lo, hi, shape, generator=g, dtype=torch.uint8)
    gray = torch.full((3, size, size), 128, dtype=torch.uint8)  # flat (max == min), exactly at the threshold
    corners = randint(0, 2, 3, size, size) * 255  # saturated colours: the 8 corners of the RGB cube
    levels = randint(0, 4, 3, size, size) * 85  # 4 levels: many exact ties of the RGB max and min
    hi, lo = randint(128, 256, size, size), randint(0, 128, size, size)
    kind = torch.arange(size * size).reshape(size, size) % 3  # r = g > b, g = b > r, r = b > g
    ties = torch.stack([torch.where(kind == 1, lo, hi), torch.where(kind == 2, lo, hi),
                        torch.where(kind == 0, lo, hi)])
    boundary = randint(127, 130, 3, size, size)  # 127, 128, 129: both sides of the solarize threshold
    noise = randint(0, 256, 3, size, size)
    return torch.stack([gray, corners, levels, ties, boundary, noise])


def float_images(size=32, seed=0):
    """float (12, 3, size, size) in [0, 1]: 6 uniform-noise images, then the 6 special ones."""
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.rand(6, 3, size, size, generator=g), special_images(size).float() / 255])


def fixed_spec(**kw):
    """A view whose crop is always the whole (square) image; other probabilities as given."""
    return common.view(**{"crop_scale": (1.0, 1.0), "flip_p": 0.0, **kw})


def close(a, b, atol=ATOL):
    return torch.allclose(a, b, rtol=0, atol=atol)


def max_err(a, b):
    return (a - b).abs().max().item()


# ---------------------------------------------------------------------- 1. each op vs torchvision
CROP_BOXES = [  # (top, left, height, width) in a 32 x 32 image
    (0, 0, 32, 32),   # the whole image (identity at size 32)
    (5, 7, 1, 1),     # a single pixel
    (10, 3, 2, 3),    # tiny, non-square
    (29, 30, 3, 2),   # touching the bottom-right corner
    (31, 31, 1, 1),   # the bottom-right pixel
    (0, 27, 32, 5),   # tall strip on the right edge
    (23, 0, 9, 32),   # wide strip on the bottom edge
    (16, 16, 16, 16),
    (3, 5, 20, 11),
    (1, 2, 30, 29),
    (0, 0, 7, 25),
    (12, 9, 17, 23),
]


@pytest.mark.parametrize("size", [32, 48])
def test_resized_crop_matches_torchvision(size):
    # Per-sample boxes of every shape, including 1x1 and boxes on the far edges, give what
    # TF.resized_crop(antialias=True) gives image by image (upsampling, so antialias is moot).
    torch.manual_seed(0)
    x = float_images()
    top, left, h, w = (torch.tensor(c) for c in zip(*CROP_BOXES))
    out = common.resized_crop(x, top, left, h, w, size)
    assert out.shape == (len(x), 3, size, size)
    for i, box in enumerate(CROP_BOXES):
        ref = TF.resized_crop(x[i], *box, [size, size], antialias=True)
        assert close(out[i], ref), (box, max_err(out[i], ref))


def test_flip_matches_torchvision():
    # apply_params with only the flip switched on mirrors each image as TF.horizontal_flip does.
    torch.manual_seed(0)
    x = float_images()
    spec = fixed_spec(flip_p=1.0)
    out = common.apply_params(x.clone(), common.sample_params(spec, len(x), 32, 32), 32, spec)
    for i in range(len(x)):
        assert torch.equal(out[i], TF.horizontal_flip(x[i]))


COLOUR_FACTORS = {
    "brightness": (common.adjust_brightness, TF.adjust_brightness, [0.0, 0.2, 0.6, 0.95, 1.0, 1.3, 1.8, 2.5]),
    "contrast": (common.adjust_contrast, TF.adjust_contrast, [0.0, 0.2, 0.6, 0.95, 1.0, 1.3, 1.8, 2.5]),
    "saturation": (common.adjust_saturation, TF.adjust_saturation, [0.0, 0.2, 0.6, 0.95, 1.0, 1.3, 1.8, 2.5]),
    "hue": (common.adjust_hue, TF.adjust_hue, [-0.5, -0.37, -0.2, -0.05, 0.0, 0.1, 0.25, 0.5]),
}


@pytest.mark.parametrize("name", COLOUR_FACTORS)
def test_colour_op_matches_torchvision(name):
    # Each colour-jitter op, with a different factor per sample, equals the torchvision op applied
    # to each image alone; every image meets every factor (incl. 0, 1, and hue 0 and +-0.5).
    op, reference, factors = COLOUR_FACTORS[name]
    torch.manual_seed(0)
    x = float_images()
    for shift in range(len(factors)):
        f = torch.tensor([factors[(i + shift) % len(factors)] for i in range(len(x))])
        out = op(x, f)
        assert out.shape == x.shape
        for i in range(len(x)):
            ref = reference(x[i], float(f[i]))
            assert close(out[i], ref), (name, i, float(f[i]), max_err(out[i], ref))


def test_hue_shift_moves_colours():
    # Guards against a hue op that is accidentally the identity: +1/3 turn maps red to green,
    # green to blue, and a half turn maps red to cyan, as torchvision does.
    x = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [1.0, 0, 0]])[:, :, None, None]
    out = common.adjust_hue(x, torch.tensor([1 / 3, 1 / 3, 0.5]))
    expected = torch.tensor([[0, 1.0, 0], [0, 0, 1.0], [0, 1.0, 1.0]])[:, :, None, None]
    assert close(out, expected)


def test_grayscale_matches_torchvision():
    # ITU-R 601-2 luma, one channel, as TF.rgb_to_grayscale(num_output_channels=1).
    x = float_images()
    out = common.grayscale(x)
    assert out.shape == (len(x), 1, 32, 32)
    for i in range(len(x)):
        assert close(out[i], TF.rgb_to_grayscale(x[i], num_output_channels=1))


@pytest.mark.parametrize("k", [3, 5, 13, 23])
def test_gaussian_blur_matches_torchvision(k):
    # Separable blur with one sigma per sample equals TF.gaussian_blur([k, k], [sigma, sigma])
    # (reflect padding; k = 23 pads 11 on a 32 px image, below the reflect limit of 32).
    x = float_images()
    sigma = torch.linspace(0.1, 2.0, len(x))
    out = common.gaussian_blur(x, sigma, k)
    assert out.shape == x.shape
    for i in range(len(x)):
        ref = TF.gaussian_blur(x[i], [k, k], [float(sigma[i]), float(sigma[i])])
        assert close(out[i], ref), (k, float(sigma[i]), max_err(out[i], ref))
    assert not close(out, x, atol=1e-2)  # it does blur


def test_solarize_matches_torchvision():
    # Solarize as applied inside apply_params is TF.solarize with SOLARIZE_THRESHOLD on float
    # images, and TF.solarize(threshold=128) on the uint8 images (pixel 128 is inverted, 127 not).
    x_u8 = special_images()
    x = x_u8.float() / 255
    spec = fixed_spec(solarize_p=1.0)
    out = common.apply_params(x.clone(), common.sample_params(spec, len(x), 32, 32), 32, spec)
    for i in range(len(x)):
        assert torch.equal(out[i], TF.solarize(x[i], THRESHOLD))
        assert close(out[i], TF.solarize(x_u8[i], 128).float() / 255, atol=1e-6)
    assert close(out[0], torch.full_like(out[0], 127 / 255), atol=1e-6)  # 128 is inverted to 127


def test_normalize_matches_torchvision():
    # Data.normalize: float images as TF.normalize; uint8 images are first scaled to [0, 1].
    x = float_images()
    x_u8 = special_images()
    data = make_data(x_u8)
    for i in range(len(x)):
        assert close(data.normalize(x[i:i + 1])[0], TF.normalize(x[i], MEAN, STD))
    for i in range(len(x_u8)):
        ref = TF.normalize(TF.to_dtype(x_u8[i], torch.float32, scale=True), MEAN, STD)
        assert close(data.normalize(x_u8[i:i + 1])[0], ref)


# ------------------------------------------------------------------ 2. whole pipeline vs torchvision
def reference_before_solarize(img, p, i, size):
    """Sample i through torchvision's functional ops in the documented (BYOL) order: crop, flip,
    colour jitter (ops in this sample's order), grayscale (3 channels), blur. Solarize is left out."""
    box = [int(p[k][i]) for k in ("top", "left", "height", "width")]
    out = TF.resized_crop(img, *box, [size, size], antialias=True)
    if p["flip"][i]:
        out = TF.horizontal_flip(out)
    if p["jitter"][i]:
        ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
        for o in p["order"][i].tolist():
            out = ops[o](out, float(p["factors"][i, o]))
    if p["gray"][i]:
        out = TF.rgb_to_grayscale(out, num_output_channels=3)
    if p["blur"][i]:
        k, s = common.blur_kernel_size(), float(p["sigma"][i])
        out = TF.gaussian_blur(out, [k, k], [s, s])
    return out


ALL_ON = common.view(jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=1, gray_p=0, blur_p=1, solarize_p=1)
PIPELINE_SPECS = {
    "all-on": ALL_ON,
    "all-on-gray": common.view(jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=1, gray_p=1, blur_p=1, solarize_p=1),
    "strong-half": common.view(jitter=(0.9, 0.9, 0.9, 0.5), jitter_p=1, gray_p=0.5, blur_p=0.5, solarize_p=0.5),
    **{f"{name}-view{v + 1}": spec for name, views in common.POLICIES.items() for v, spec in enumerate(views)},
}
PIPELINE_CASES = [(name, 32, 32) for name in PIPELINE_SPECS] + [("all-on", 96, 96), ("all-on", 24, 32)]


@pytest.mark.parametrize("name,image,size", PIPELINE_CASES)
def test_pipeline_matches_torchvision(name, image, size):
    # apply_params with sampled per-sample parameters equals the same chain of torchvision ops,
    # image by image. Solarize is a step at the threshold, so pixels whose reference value lies
    # within 1e-5 of it only have to be either solarized or not.
    spec = PIPELINE_SPECS[name]
    torch.manual_seed(0)
    x_u8 = torch.cat([torch.randint(0, 256, (6, 3, image, image), dtype=torch.uint8), special_images(image)])
    x = x_u8.float() / 255
    p = common.sample_params(spec, len(x), image, image)
    out = common.apply_params(x.clone(), p, size, spec)
    assert out.shape == (len(x), 3, size, size)
    for i in range(len(x)):
        pre = reference_before_solarize(x[i], p, i, size)
        if not p["solarize"][i]:
            assert close(out[i], pre), (name, i, max_err(out[i], pre))
            continue
        ref = TF.solarize(pre, THRESHOLD)
        near = (pre - THRESHOLD).abs() < 1e-5
        assert close(out[i][~near], ref[~near]), (name, i, max_err(out[i][~near], ref[~near]))
        assert (((out[i] - pre).abs() < ATOL) | ((out[i] - (1 - pre)).abs() < ATOL))[near].all()
    if spec is ALL_ON:  # every op really ran: the output is far from a plain crop
        assert not close(out, common.resized_crop(x, p["top"], p["left"], p["height"], p["width"], size), 0.05)


# ---------------------------------------------------------------------- 3. sample_params statistics
def within(rate, p, n, k=4.0):
    return abs(rate - p) <= k * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("scale,shape", [((0.08, 1.0), (32, 32)), ((0.5, 1.0), (32, 32)),
                                         ((0.9, 1.0), (32, 32)), ((0.08, 1.0), (24, 40)),
                                         ((0.5, 1.0), (40, 24)), ((0.08, 0.3), (96, 96))])
def test_crop_boxes(scale, shape):
    # Boxes lie inside the image; unless they are the fallback box, their area fraction and aspect
    # ratio are within crop_scale and crop_ratio up to the rounding of w and h to integers; the
    # position is uniform over every admissible offset (both edges reached).
    torch.manual_seed(0)
    H, W = shape
    n = 20000
    spec = common.view(crop_scale=scale)
    p = common.sample_params(spec, n, H, W)
    top, left, h, w = p["top"], p["left"], p["height"], p["width"]
    for t in (top, left, h, w):
        assert t.dtype == torch.int64 and t.shape == (n,)
    assert (h >= 1).all() and (w >= 1).all() and (top >= 0).all() and (left >= 0).all()
    assert (top + h <= H).all() and (left + w <= W).all()
    # the fallback box of torchvision's RandomResizedCrop (centre crop at the nearest allowed ratio)
    r0, (rlo, rhi) = W / H, spec["crop_ratio"]
    fw, fh = (W, round(W / rlo)) if r0 < rlo else (round(H * rhi), H) if r0 > rhi else (W, H)
    fallback = (w == fw) & (h == fh) & (top == (H - fh) // 2) & (left == (W - fw) // 2)
    keep = ~fallback
    assert keep.sum() > n // 2
    w, h = w[keep].double(), h[keep].double()
    area_lo, area_hi = (w - 0.5) * (h - 0.5) / (H * W), (w + 0.5) * (h + 0.5) / (H * W)
    assert (area_hi >= scale[0]).all() and (area_lo <= scale[1]).all()
    ratio_lo, ratio_hi = (w - 0.5) / (h + 0.5), (w + 0.5) / (h - 0.5).clamp(min=1e-9)
    assert (ratio_hi >= rlo).all() and (ratio_lo <= rhi).all()
    # uniform offsets: the mean relative position is 1/2 and both extremes occur
    top, left, room_h, room_w = top[keep], left[keep], (H - p["height"])[keep], (W - p["width"])[keep]
    some = room_h >= 4
    rel = (top[some].double() + 0.5) / (room_h[some] + 1)
    assert abs(rel.mean().item() - 0.5) < 4 * math.sqrt(1 / 12 / some.sum().item())
    assert (top == 0).any() and (top == room_h).any()
    assert (left == 0).any() and (left == room_w).any()


@pytest.mark.parametrize("scale,shape", [((0.08, 1.0), (32, 32)), ((0.5, 1.0), (24, 40))])
def test_crop_distribution_matches_torchvision(scale, shape):
    # The box size distribution is RandomResizedCrop.get_params's: mean area fraction and mean
    # log aspect ratio agree within 5 standard errors of the difference.
    torch.manual_seed(0)
    H, W = shape
    p = common.sample_params(common.view(crop_scale=scale), 20000, H, W)
    ours = [(p["height"] * p["width"]).double() / (H * W), (p["width"] / p["height"]).double().log()]
    boxes = [T.RandomResizedCrop.get_params(torch.empty(3, H, W), list(scale), [3 / 4, 4 / 3]) for _ in range(3000)]
    hs, ws = (torch.tensor(c, dtype=torch.float64) for c in list(zip(*boxes))[2:])
    theirs = [hs * ws / (H * W), (ws / hs).log()]
    for a, b in zip(ours, theirs):
        se = math.sqrt(a.var().item() / len(a) + b.var().item() / len(b))
        assert abs(a.mean().item() - b.mean().item()) < 5 * se


def test_crop_fallback_matches_torchvision():
    # Images too wide or too tall for any box at the allowed ratio get torchvision's fallback:
    # the centred box at the nearest allowed ratio.
    torch.manual_seed(0)
    for H, W in [(8, 64), (64, 8)]:
        spec = common.view(crop_scale=(0.9, 1.0))
        p = common.sample_params(spec, 100, H, W)
        i, j, h, w = T.RandomResizedCrop.get_params(torch.empty(3, H, W), [0.9, 1.0], [3 / 4, 4 / 3])
        for key, value in dict(top=i, left=j, height=h, width=w).items():
            assert (p[key] == value).all(), (H, W, key)


VIEWS = [(name, v) for name, views in common.POLICIES.items() for v in range(len(views))]


@pytest.mark.parametrize("name,v", VIEWS)
def test_param_rates_and_ranges(name, v):
    # Over 20000 samples every Bernoulli decision fires at the spec's rate (within 4 standard
    # errors; exactly never / always at p = 0 / 1), decisions are independent of each other,
    # jitter factors and sigma are uniform on their ranges, and the jitter order is a uniformly
    # random permutation of the 4 ops.
    spec = common.POLICIES[name][v]
    torch.manual_seed(0)
    n = 20000
    p = common.sample_params(spec, n, 32, 32)
    probs = dict(flip=spec["flip_p"], jitter=spec["jitter_p"], gray=spec["gray_p"], blur=spec["blur_p"],
                 solarize=spec["solarize_p"])
    for key, prob in probs.items():
        assert p[key].dtype == torch.bool and p[key].shape == (n,)
        assert within(p[key].float().mean().item(), prob, n), (key, prob, p[key].float().mean().item())
    for a, b in itertools.combinations(probs, 2):  # independent draws: P(a and b) = P(a) P(b)
        assert within((p[a] & p[b]).float().mean().item(), probs[a] * probs[b], n), (a, b)
    b, c, s, hue = spec["jitter"]
    ranges = [(max(0, 1 - b), 1 + b), (max(0, 1 - c), 1 + c), (max(0, 1 - s), 1 + s), (-hue, hue)]
    assert p["factors"].shape == (n, 4)
    for o, (lo, hi) in enumerate(ranges):
        f = p["factors"][:, o].double()
        assert (f >= lo - 1e-6).all() and (f <= hi + 1e-6).all(), (o, lo, hi)
        if hi > lo:  # uniform: covers the range, mean in the middle
            assert f.min() < lo + 0.01 * (hi - lo) and f.max() > hi - 0.01 * (hi - lo)
            assert abs(f.mean().item() - (lo + hi) / 2) < 4 * (hi - lo) / math.sqrt(12 * n)
    sigma = p["sigma"].double()
    assert (sigma >= 0.1).all() and (sigma <= 2.0).all()
    assert sigma.min() < 0.12 and sigma.max() > 1.98
    assert abs(sigma.mean().item() - 1.05) < 4 * 1.9 / math.sqrt(12 * n)
    order = p["order"]
    assert order.shape == (n, 4)
    assert torch.equal(order.sort(1).values, torch.arange(4).expand(n, 4))  # permutations of 0..3
    for position in range(4):
        for op in range(4):
            assert within((order[:, position] == op).float().mean().item(), 0.25, n), (position, op)
    perms = torch.unique(order, dim=0, return_counts=True)[1]
    assert len(perms) == 24 and all(within(k / n, 1 / 24, n) for k in perms.tolist())


# ------------------------------------------------------------------ 4. per-sample and per-view independence
@pytest.mark.parametrize("policy", ["asymmetric", "symmetric", "moderate"])
def test_views_of_identical_images_all_differ(policy):
    # A batch of 8 copies of one image: all 16 augmented images (2 views x 8 samples) differ
    # pairwise, so parameters are drawn per sample and per view, even for identical view specs.
    torch.manual_seed(0)
    img = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    x = img.expand(8, -1, -1, -1).contiguous()
    views = common.Augment(policy, make_data(x), 32)(x)
    assert len(views) == 2
    flat = torch.cat(views).flatten(1)
    for a, b in itertools.combinations(range(len(flat)), 2):
        assert not torch.equal(flat[a], flat[b]), (a, b)
    assert (views[0] - views[1]).abs().flatten(1).amax(1).min() > 1e-3


def test_params_differ_between_samples():
    # Two samples of one call get different continuous draws (jitter factors, sigma, offsets).
    torch.manual_seed(0)
    p = common.sample_params(ALL_ON, 2, 32, 32)
    assert (p["factors"][0] != p["factors"][1]).all()
    assert p["sigma"][0] != p["sigma"][1]
    assert (p["height"][0], p["width"][0], p["top"][0], p["left"][0]) != \
           (p["height"][1], p["width"][1], p["top"][1], p["left"][1])


# ---------------------------------------------------------------------------------- 5. output
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("policy", list(common.POLICIES))
@pytest.mark.parametrize("size", [32, 40])
def test_augment_output(policy, size, device):
    # Augment gives one (B, 3, size, size) float32 view per spec, on the input's device; the
    # images before normalisation and the un-normalised outputs lie in [0, 1] (up to 1e-6: a
    # normalised blur kernel can sum to 1 + 1 ulp).
    torch.manual_seed(0)
    x = torch.cat([torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8), special_images()]).to(device)
    data = make_data(x)
    views = common.Augment(policy, data, size)(x)
    assert len(views) == len(common.POLICIES[policy])
    mean, std = data.mean.to(device)[:, None, None], data.std.to(device)[:, None, None]
    for out in views:
        assert out.shape == (len(x), 3, size, size) and out.dtype == torch.float32 and out.device == x.device
        raw = out * std + mean
        assert raw.min() >= -1e-6 and raw.max() <= 1 + 1e-6
        assert raw.min() < 0.05 and raw.max() > 0.95  # it is [0, 1] data, not already normalised
    for spec in common.POLICIES[policy]:
        p = common.sample_params(spec, len(x), 32, 32)
        out = common.apply_params(x.float() / 255, p, size, spec)
        assert out.min() >= -1e-6 and out.max() <= 1 + 1e-6


def test_identity_policy_is_just_normalisation(monkeypatch):
    # With crop scale 1 on a square image (the box is always the whole image: a ratio != 1 gives
    # a side > 32 and the fallback is the whole image too) and every probability 0, Augment's
    # output is exactly (x / 255 - mean) / std.
    spec = fixed_spec()
    monkeypatch.setitem(common.POLICIES, "identity", (spec, spec))
    torch.manual_seed(0)
    x = torch.cat([torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8), special_images()])
    data = make_data(x)
    expected = (x.float() / 255 - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    for out in common.Augment("identity", data, 32)(x):
        assert torch.equal(out, expected)
    assert torch.equal(data.normalize(x), expected)


def test_apply_params_leaves_its_input_unchanged():
    # Augment hands the same float batch to both views without copying it: apply_params must write
    # only to its own output, even when the crop is the whole image and every op is applied.
    spec = fixed_spec(flip_p=1.0, jitter=(0.4, 0.4, 0.2, 0.1), jitter_p=1.0, gray_p=1.0, blur_p=1.0,
                      solarize_p=1.0)
    torch.manual_seed(0)
    x = torch.rand(8, 3, 32, 32)
    before = x.clone()
    out = common.apply_params(x, common.sample_params(spec, len(x), 32, 32), 32, spec)
    assert torch.equal(x, before) and not torch.equal(out, before)


def test_each_view_uses_its_own_spec(monkeypatch):
    # View k is augmented with spec k: here view 1 is the identity and view 2 always flips and
    # solarizes, so view 2 is the normalised TF.solarize(TF.horizontal_flip(x)).
    monkeypatch.setitem(common.POLICIES, "pair", (fixed_spec(), fixed_spec(flip_p=1.0, solarize_p=1.0)))
    torch.manual_seed(0)
    x = torch.cat([torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8), special_images()])
    data = make_data(x)
    v1, v2 = common.Augment("pair", data, 32)(x)
    assert torch.equal(v1, data.normalize(x))
    assert close(v2, data.normalize(TF.solarize(TF.horizontal_flip(x.float() / 255), THRESHOLD)), 1e-6)


# ------------------------------------------------------------------------------ 6. the policies
@pytest.mark.parametrize("name,scale,flip,s", [("small", 0.9, 0.0, 0.05), ("moderate", 0.5, 0.5, 0.25),
                                               ("large", 0.08, 0.5, 0.5)])
def test_strength_policies_are_paper_004_table_2(name, scale, flip, s):
    # "Toward a Geometrical Understanding" Table 2: crop scale, flip probability, jitter (0.8s, 0.8s, 0.8s, 0.2s) at p 0.8,
    # grayscale 0.2, no blur or solarize; the same spec for both views.
    views = common.POLICIES[name]
    assert len(views) == 2 and views[0] == views[1]
    spec = views[0]
    assert spec["crop_scale"] == pytest.approx((scale, 1.0))
    assert spec["crop_ratio"] == pytest.approx((3 / 4, 4 / 3))
    assert spec["flip_p"] == flip
    assert spec["jitter"] == pytest.approx((0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s))
    assert spec["jitter_p"] == 0.8 and spec["gray_p"] == 0.2
    assert spec["blur_p"] == 0.0 and spec["solarize_p"] == 0.0


def test_asymmetric_policy_is_thesis_table_b1():
    # CorInfoMax thesis Table B.1 (BYOL): jitter (0.4, 0.4, 0.2, 0.1) at p 0.8, grayscale 0.2,
    # blur 1.0 / 0.1 and solarize 0.0 / 0.2 for view 1 / view 2, crop scale (0.08, 1), flip 0.5.
    v1, v2 = common.POLICIES["asymmetric"]
    for spec in (v1, v2):
        assert spec["crop_scale"] == (0.08, 1.0) and spec["flip_p"] == 0.5
        assert spec["jitter"] == (0.4, 0.4, 0.2, 0.1) and spec["jitter_p"] == 0.8 and spec["gray_p"] == 0.2
    assert (v1["blur_p"], v2["blur_p"]) == (1.0, 0.1)
    assert (v1["solarize_p"], v2["solarize_p"]) == (0.0, 0.2)
    assert common.SOLARIZE_THRESHOLD == 128 / 255


def test_blur_kernel_keeps_the_whole_gaussian():
    # 3 sigma each side of sigma 2: 13 taps at every image size; the discrete kernel's own standard deviation
    # is then sigma within 1% (a 3-tap kernel, 10% of a 32 px side, gives 0.8 for sigma 2)
    k = common.blur_kernel_size()
    assert k == 13 and common.blur_kernel_size(1.0) == 7
    def kernel_std(k, sigma):  # the standard deviation of the discrete, truncated, normalised kernel
        t = torch.arange(k, dtype=torch.float64) - k // 2
        w = torch.exp(-t ** 2 / (2 * sigma ** 2))
        return ((w / w.sum()) * t ** 2).sum().sqrt().item()
    for sigma in (1.0, 1.5, 2.0):
        assert kernel_std(k, sigma) == pytest.approx(sigma, rel=0.01)
    assert kernel_std(3, 2.0) == pytest.approx(0.80, abs=0.01)  # what 3 taps did to sigma 2
    assert common.BLUR_SIGMA == (0.1, 2.0)
