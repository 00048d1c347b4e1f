"""Recipes: common.py's defaults < the method's values < the dataset's values < command-line flags;
--resume ignores recipes and uses the saved arguments."""
import json

import pytest

import common
import simclr

RECIPES = {
    "all": dict(lr=0.5, epochs=7, weight_decay=0.01),
    "shapes": dict(lr=0.05, width=8),
    "cifar10": dict(epochs=99, width=16),
}


def parse(argv):
    return common.parse_args(common.get_parser("toy", "Toy method.", RECIPES), argv)


@pytest.mark.parametrize("dataset,expected", [
    ("shapes", dict(lr=0.05, width=8, epochs=7, weight_decay=0.01, batch_size=256)),
    ("cifar10", dict(lr=0.5, width=16, epochs=99, weight_decay=0.01, batch_size=256)),
])
def test_each_level_wins_over_the_one_below(dataset, expected, capsys):
    # batch_size: common.py's default; weight_decay: the method's (over common's 1e-4);
    # lr / epochs: the dataset's where it has one (over the method's); width: the dataset's (over common's 64)
    args = parse(["--dataset", dataset])
    assert {k: getattr(args, k) for k in expected} == expected
    assert args.recipe == dataset
    assert "no flag overrides it" in capsys.readouterr().out
    # flags win over every level, the dataset's included
    args = parse(["--dataset", dataset, "--lr", "0.2", "--width", "4", "--weight-decay", "0", "--batch-size", "32"])
    assert (args.lr, args.width, args.weight_decay, args.batch_size) == (0.2, 4, 0.0, 32)
    assert args.epochs == expected["epochs"]
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"recipe: toy.py RECIPES['{dataset}']") and "--lr 0.2" in line and "--width 4" in line


def test_a_flag_equal_to_the_default_still_wins():
    # --width 64 is common.py's default, but given on the command line it beats the recipe's 8
    assert parse(["--dataset", "shapes", "--width", "64"]).width == 64


def test_recipe_flag_borrows_another_datasets_recipe():
    args = parse(["--dataset", "cifar10", "--recipe", "shapes"])
    assert (args.dataset, args.recipe, args.lr, args.width, args.epochs) == ("cifar10", "shapes", 0.05, 8, 7)


def test_resume_ignores_recipes_and_uses_saved_arguments(tmp_path):
    saved = vars(parse(["--dataset", "shapes", "--lr", "0.3", "--name", "r", "--out", str(tmp_path)]))
    (tmp_path / "r").mkdir()
    json.dump({**saved, "width": 5}, open(tmp_path / "r" / "args.json", "w"))
    args = parse(["--resume", str(tmp_path / "r")])
    assert (args.lr, args.width, args.epochs, args.dataset) == (0.3, 5, 7, "shapes")


def test_simclr_recipes_resolve():
    cpu = simclr.get_args([])  # shapes: the CPU recipe
    assert (cpu.dataset, cpu.optimizer, cpu.width, cpu.image_size, cpu.epochs) == ("shapes", "adamw", 8, 16, 10)
    gpu = simclr.get_args(["--dataset", "cifar100"])  # solo-learn cifar/simclr.yaml
    assert (gpu.optimizer, gpu.lr, gpu.width, gpu.epochs, gpu.batch_size, gpu.policy, gpu.lars_clip) == \
        ("lars", 0.4, 64, 1000, 256, "symmetric", True)
    assert gpu.image_size is None  # the dataset's own size (32 px) is filled in when the data loads


def test_help_says_defaults_depend_on_the_dataset(run):
    out = run("simclr.py", "--help").stdout
    assert "Defaults depend on --dataset" in out and "RECIPES" in out


@pytest.mark.parametrize("method", ["simclr", "vicreg", "barlow", "corinfomax", "sslpm", "adadim"])
def test_laptop_recipe_is_mnists_and_a_folders(method, capsys):
    """--dataset fashion-mnist / mnist take the laptop recipe; --recipe laptop gives it to a folder; every
    method has it, with a budget of images (the epochs follow the folder's size) and 28 px images."""
    module = __import__(method)
    for argv in (["--dataset", "fashion-mnist"], ["--dataset", "mnist"], ["--dataset", "imagefolder", "--recipe", "laptop"]):
        args = module.get_args(argv)
        assert args.recipe == "laptop" and args.images > 0 and args.image_size == 28
        assert f"RECIPES['laptop'] on --dataset {argv[1]}" in capsys.readouterr().out
    assert module.get_args(["--dataset", "mnist", "--epochs", "3"]).images == 0  # a given --epochs wins


def test_images_budget_sets_the_epochs_from_the_sets_size(capsys):
    args = parse(["--dataset", "shapes", "--train-subset", "300", "--images", "1000", "--image-size", "8"])
    common.load_data(args)
    assert args.epochs == 3 and "--images 1,000: 3 epochs" in capsys.readouterr().out  # round(1000 / 300)
    args = parse(["--dataset", "shapes", "--train-subset", "300", "--images", "10", "--image-size", "8"])
    common.load_data(args)
    assert args.epochs == 1  # at least one
