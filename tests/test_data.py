"""Image folders as users have them: every mode and bit depth PIL writes, every extension the listing
accepts, class sets that differ between train/ and val/, hidden and empty folders, random subsets, a
cache that follows the folder, a memory check, and what load_data and args.json record. Images are made
here with PIL and numpy; nothing is committed."""
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import common


def write(path, image, **kw):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path, **kw)
    return path


def decoded(path, size=8):
    x = common.decode_image(str(path), size)
    assert x.dtype == torch.uint8 and x.shape == (3, size, size)
    return x.permute(1, 2, 0).numpy().astype(int)  # (H, W, 3)


RNG = np.random.default_rng(0)
TRUTH = RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)  # an 8 x 8 RGB image: decoded at 8 px, no resize


# ---------------------------------------------------------------------- every mode, every bit depth
def expected_grey(values):
    return np.repeat(np.asarray(values)[..., None], 3, axis=2)


def mode_cases():
    """(mode, file name, PIL image, expected (8, 8, 3) uint8 values, tolerance), each expected value
    computed here from the data written, not by the code under test."""
    luma = np.asarray(Image.fromarray(TRUTH).convert("L")).astype(int)
    deep = RNG.integers(0, 65536, (8, 8)).astype(np.uint16)
    unit = RNG.random((8, 8)).astype(np.float32)
    bits = RNG.integers(0, 2, (8, 8)).astype(bool)
    palette = Image.fromarray(TRUTH).quantize(colors=6)
    lut = np.asarray(palette.getpalette()[:18]).reshape(6, 3)
    rgba = np.dstack([TRUTH, RNG.integers(0, 256, (8, 8), dtype=np.uint8)])
    return [
        ("1", "bits.png", Image.fromarray(bits), expected_grey(bits * 255), 0),
        ("L", "grey.png", Image.fromarray(luma.astype(np.uint8)), expected_grey(luma), 0),
        ("P", "palette.png", palette, lut[np.asarray(palette)], 0),
        ("RGB", "rgb.png", Image.fromarray(TRUTH), TRUTH, 0),
        ("RGBA", "rgba.png", Image.fromarray(rgba), TRUTH, 0),  # alpha dropped, as ImageFolder
        ("LA", "la.png", Image.fromarray(np.dstack([luma, luma]).astype(np.uint8), "LA"), expected_grey(luma), 0),
        ("I;16", "deep16.png", Image.fromarray(deep), expected_grey(np.rint(deep / 257.0)), 0),
        ("I;16", "deep16.tif", Image.fromarray(deep), expected_grey(np.rint(deep / 257.0)), 0),
        ("I", "int32.tif", Image.fromarray(deep.astype(np.int32)), expected_grey(np.rint(deep / 257.0)), 0),
        ("I;16B", "deep16b.tif", Image.fromarray(deep.astype(">u2")), expected_grey(np.rint(deep / 257.0)), 0),
        ("PA", "palette_alpha.tif", palette.convert("PA"), lut[np.asarray(palette)], 0),
        ("F", "float01.tif", Image.fromarray(unit), expected_grey(np.rint(unit * 255)), 0),
        ("F", "float255.tif", Image.fromarray(unit * 300), expected_grey(np.clip(np.rint(unit * 300), 0, 255)), 0),
        ("CMYK", "cmyk.tif", Image.fromarray(TRUTH).convert("CMYK"), TRUTH, 1),
        ("YCbCr", "ycbcr.tif", Image.fromarray(TRUTH).convert("YCbCr"), TRUTH, 4),
        ("LAB", "lab.tif", Image.fromarray(TRUTH).convert("LAB"), TRUTH, 20),  # 8-bit LAB loses a little
    ]


@pytest.mark.parametrize("case", mode_cases(), ids=lambda c: f"{c[0]}-{c[1]}")
def test_every_mode_becomes_uint8_rgb_in_0_255(case, tmp_path):
    mode, name, image, expected, tolerance = case
    assert image.mode == mode
    path = write(str(tmp_path / name), image)
    got = decoded(path)
    assert np.abs(got - np.asarray(expected, dtype=int)).max() <= tolerance, (mode, name)


def png48(path, rgb16):
    """A 16-bit-per-channel RGB PNG written byte by byte (PIL does not write this format)."""
    h, w, _ = rgb16.shape
    raw = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(h))
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def test_48_bit_png_keeps_its_colours(tmp_path):
    rgb16 = RNG.integers(0, 65536, (8, 8, 3)).astype(np.uint16)
    got = decoded(png48(str(tmp_path / "rgb48.png"), rgb16))
    assert np.abs(got - rgb16 / 257.0).max() <= 1  # the high byte (Pillow) or the rounded ratio: within 1


def test_a_folder_of_16_bit_and_8_bit_images_trains_on_0_255_values(tmp_path):
    """The reported case: 16-bit PNGs among 8-bit ones load (no dtype error), and nothing exceeds 255 or
    scales wrongly: a 16-bit image of value v decodes to v / 257."""
    for split in ("train", "val"):
        for c in ("a", "b"):
            write(str(tmp_path / split / c / "eight.png"), Image.fromarray(TRUTH))
            write(str(tmp_path / split / c / "sixteen.png"), Image.fromarray(np.full((8, 8), 40000, np.uint16)))
    train, val, names, *_ = common.load_imagefolder(str(tmp_path), 8)
    x = torch.cat([train[0], val[0]])
    assert x.dtype == torch.uint8 and names == ["a", "b"] and len(train[0]) == 4
    sixteen = [i for i in range(len(train[0])) if train[0][i].float().std() == 0]
    assert sixteen and all(train[0][i].max().item() == round(40000 / 257) for i in sixteen)


# ------------------------------------------------------------------- every listed extension decodes
FORMATS = {".jpg": ("JPEG", 20), ".jpeg": ("JPEG", 20), ".png": ("PNG", 0), ".ppm": ("PPM", 0), ".bmp": ("BMP", 0),
           ".pgm": ("PPM", 0), ".tif": ("TIFF", 0), ".tiff": ("TIFF", 0), ".webp": ("WEBP", 0), ".gif": ("GIF", 0)}


@pytest.mark.parametrize("ext", common.IMAGE_EXTENSIONS)
def test_every_extension_the_listing_accepts_decodes(ext, tmp_path):
    assert ext in FORMATS, f"{ext}: add a case for it"
    fmt, tolerance = FORMATS[ext]
    # a smooth gradient (JPEG is lossy) of 64 colours (GIF is a palette of at most 256); PGM is grey
    ramp = np.arange(8) * 24 + 40
    truth = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], np.full((8, 8), 128)), 2).astype(np.uint8)
    image = Image.fromarray(truth).convert("L" if ext == ".pgm" else "RGB")
    kw = {"lossless": True} if fmt == "WEBP" else {"quality": 95} if fmt == "JPEG" else {}
    path = write(str(tmp_path / f"image{ext}"), image, format=fmt, **kw)
    expected = np.asarray(image.convert("RGB")).astype(int)
    assert np.abs(decoded(path) - expected).max() <= tolerance


# ------------------------------------------------------------- class sets, hidden and empty folders
def folder(root, layout, size=(12, 10)):
    """layout: {"train/cats": 3, ...} -> that many random images per folder."""
    for sub, n in layout.items():
        os.makedirs(os.path.join(root, sub), exist_ok=True)
        for i in range(n):
            Image.fromarray(RNG.integers(0, 256, (*size, 3), dtype=np.uint8)).save(os.path.join(root, sub, f"{i}.png"))
    return str(root)


def load(root, capsys, size=8, subset=None):
    out = common.load_imagefolder(root, size, subset)[:4]  # the fingerprint aside
    return out, capsys.readouterr().err


def test_val_without_a_train_class_trains_and_evaluates(tmp_path, capsys):
    root = folder(tmp_path, {"train/a": 4, "train/b": 4, "train/c": 4, "val/a": 2, "val/b": 2})
    (train, val, names, _), err = load(root, capsys)
    assert names == ["a", "b", "c"] and sorted(set(train[1].tolist())) == [0, 1, 2]
    assert "val/ has no images of 1 of train/'s 3 classes" in err and ": c" in err
    data = common.Data(train, train, val, names, (0.5,) * 3, (0.25,) * 3)
    net = common.backbone("resnet18", 2, 8)
    probe = common.OnlineProbe(net.out_dim, data.classes, torch.device("cpu"))
    probe.step(torch.randn(12, net.out_dim), train[1])  # label 2 is in range: the class count is train/'s
    result = common.evaluate(net, probe, data, torch.device("cpu"))
    assert 0 <= result["knn_acc"] <= 1 and data.classes == 3


def test_val_only_classes_are_left_out_with_a_warning(tmp_path, capsys):
    root = folder(tmp_path, {"train/a": 3, "train/b": 3, "val/a": 2, "val/b": 2, "val/zebra": 5})
    (train, val, names, summary), err = load(root, capsys)
    assert names == ["a", "b"] and len(val[0]) == 4
    assert "val/ classes that train/ does not have are left out of the test set: zebra (5 images)" in err


def test_empty_and_hidden_folders_are_not_classes(tmp_path, capsys):
    root = folder(tmp_path, {"train/0_empty": 0, "train/.thumbnails": 2, "train/cats": 3, "train/dogs": 3,
                             "val/cats": 1, "val/dogs": 1, "val/.cache": 1})
    (train, val, names, summary), err = load(root, capsys)
    assert names == ["cats", "dogs"] and train[1].tolist() == [0, 0, 0, 1, 1, 1]  # no label shifted by one
    assert "train/ folders without images are not classes: 0_empty" in err
    assert "hidden folders train/{.thumbnails}" in summary and "hidden folders val/{.cache}" in summary


def test_a_single_class_warns(tmp_path, capsys):
    root = folder(tmp_path, {"train/only": 3, "val/only": 2})
    _, err = load(root, capsys)
    assert "single class (only)" in err


@pytest.mark.parametrize("layout,needle", [
    ({"train/a": 0, "val/a": 2}, "train/ has no class folder with images"),
    ({"train/a": 2, "val/b": 2}, "val/ has no images of train/'s classes"),
])
def test_nothing_to_train_or_test_on_is_refused_in_one_line(tmp_path, layout, needle):
    root = folder(tmp_path, layout)
    with pytest.raises(SystemExit, match=needle) as e:
        common.load_imagefolder(root, 8)
    assert "\n" not in str(e.value)


def test_non_images_and_broken_files_are_named(tmp_path, capsys):
    root = folder(tmp_path, {"train/a": 2, "train/b": 2, "val/a": 1, "val/b": 1})
    (tmp_path / "train" / "a" / "notes.txt").write_text("x")
    (tmp_path / "train" / "b" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (train, _, _, summary), err = load(root, capsys)
    assert len(train[0]) == 4 and "non-image files in train/ (1 .txt)" in summary and "undecodable files (1)" in summary
    assert "broken.jpg" in err


# ------------------------------------------------------------------------------------------ subsets
def test_subsets_are_seeded_random_samples_of_every_class(tmp_path, capsys):
    root = folder(tmp_path, {**{f"train/c{k}": 30 for k in range(4)}, **{f"val/c{k}": 2 for k in range(4)}})
    (train, _, _, summary), _ = load(root, capsys, subset=30)
    assert len(train[0]) == 30 and len(set(train[1].tolist())) == 4  # the first 30 files: one class only
    assert "a random sample, seed 0, of 120" in summary
    (again, _, _, _), _ = load(root, capsys, subset=30)  # from its own cache now: the same sample
    assert torch.equal(again[0], train[0]) and os.path.exists(tmp_path / "cache-8px-subset30.pt")
    x = torch.arange(1000)
    a, b = common.random_subset((x, x), 100), common.random_subset((x, x), 100)
    assert torch.equal(a[0], b[0]) and a[0].max() > 900 and len(set(a[0].tolist())) == 100
    assert common.random_subset((x, x), 2000)[0] is x and common.random_subset((x, x), None)[0] is x


def test_a_borrowed_recipe_does_not_cut_the_users_folder(capsys):
    import simclr
    args = simclr.get_args(["--dataset", "imagefolder", "--recipe", "shapes"])
    assert args.train_subset == 0 and args.width == simclr.RECIPES["shapes"]["width"]  # the rest of it applies
    assert "its --train-subset 4000 is for shapes" in capsys.readouterr().out
    assert simclr.get_args(["--dataset", "imagefolder", "--recipe", "shapes", "--train-subset", "50"]).train_subset == 50
    assert simclr.get_args([]).train_subset == 4000  # on shapes itself the recipe's subset stays
    assert simclr.get_args(["--train-subset", "0"]).train_subset == 0  # 0: every image


# --------------------------------------------------------------------- the cache follows the folder
def test_the_cache_is_used_only_for_the_folder_it_was_made_from(tmp_path, capsys):
    root = folder(tmp_path, {"train/a": 3, "train/b": 3, "val/a": 1, "val/b": 1})
    (_, _, _, summary), _ = load(root, capsys)
    assert "wrote" in summary
    (_, _, _, summary), _ = load(root, capsys)
    assert "read" in summary and "as it is" in summary
    Image.fromarray(TRUTH).save(tmp_path / "train" / "a" / "new.png")                 # an image added
    (train, _, _, summary), _ = load(root, capsys)
    assert len(train[0]) == 7 and "1 files added, 0 removed, 0 changed" in summary
    os.remove(tmp_path / "train" / "b" / "0.png")                                      # one deleted
    (train, _, _, summary), _ = load(root, capsys)
    assert len(train[0]) == 6 and "0 files added, 1 removed, 0 changed" in summary
    path = tmp_path / "train" / "a" / "new.png"
    Image.fromarray(255 - TRUTH).save(path)                                              # one rewritten
    os.utime(path, ns=(1, 1))
    (train, _, _, summary), _ = load(root, capsys)
    assert "1 changed" in summary and any(torch.equal(x, torch.from_numpy(255 - TRUTH).permute(2, 0, 1)) for x in train[0])
    folder(tmp_path, {"val/c": 1, "train/c": 2})                                          # a class added
    (train, val, names, summary), _ = load(root, capsys)
    assert names == ["a", "b", "c"] and "made" in summary


# ----------------------------------------------------- memory: a folder too large for it is refused
def test_memory_check_refuses_an_oversized_request_in_one_line(tmp_path, monkeypatch):
    root = folder(tmp_path, {"train/a": 3, "train/b": 3, "val/a": 1, "val/b": 1})
    monkeypatch.setattr(common, "available_memory", lambda: 8 * 3 * 64 * 64)  # room for 6 images of 64 px
    with pytest.raises(SystemExit) as e:
        common.load_imagefolder(root, 224)
    message = str(e.value)
    assert "--image-size 224" in message and "--image-size" in message.split("would fit")[0].split(";")[-1]
    assert "\n" not in message and not os.path.exists(tmp_path / "cache-224px.pt")
    fits = int(message.split("--image-size ")[-1].split()[0])
    assert 8 <= fits < 224 and 8 * 3 * fits * fits <= 0.8 * 8 * 3 * 64 * 64
    common.load_imagefolder(root, fits)  # the size it suggests does load


# ------------------------------------------------------ what load_data gives and what a run records
def test_data_keeps_the_class_names_and_a_fixed_random_tracking_sample():
    x, y = torch.zeros(3000, 3, 8, 8, dtype=torch.uint8), torch.arange(3000) % 7
    data = common.Data((x, y), (x, y), (torch.arange(3000).view(-1, 1, 1, 1).expand(-1, 3, 8, 8), y),
                       [str(k) for k in range(7)], (0.5,) * 3, (0.25,) * 3)
    assert data.classes == 7 and len(data.track_x) == 1000
    assert data.track_x[:, 0, 0, 0].max() > 2000  # not the first 1000 test images


def test_args_json_records_the_device_used_and_threads(tmp_path):
    import json
    import signal

    import simclr
    threads, handler = torch.get_num_threads(), signal.getsignal(signal.SIGINT)
    try:
        simclr.main(["--width", "2", "--train-subset", "64", "--batch-size", "32", "--epochs", "1", "--threads", "1",
                     "--out", str(tmp_path), "--name", "r"])
    finally:
        torch.set_num_threads(threads)
        signal.signal(signal.SIGINT, handler)
    saved = json.load(open(tmp_path / "r" / "args.json"))
    assert saved["device"] == "cpu" and saved["threads"] == 1
