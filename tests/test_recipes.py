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


# ------------------------------------------------------------------ one convention in the six method files
METHODS = ["simclr", "vicreg", "barlow", "corinfomax", "sslpm", "adadim"]
ALIASES = {"simclr": {"projector"}, "corinfomax": {"projector"}}  # old spellings, translated by get_args


def method_parser(name, monkeypatch):
    """The parser a method's get_args builds, as it is before parsing (the flags as declared)."""
    import importlib
    module, seen = importlib.import_module(name), {}
    parse = common.parse_args

    def capture(parser, argv=None):
        seen["flags"] = {a.dest: a.default for g in parser._action_groups if "this file's" in (g.title or "")
                         for a in g._group_actions}
        seen["parser"] = parser
        return parse(parser, argv)
    monkeypatch.setattr(common, "parse_args", capture)
    module.get_args([])
    return module, seen["parser"], seen["flags"]


@pytest.mark.parametrize("name", METHODS)
def test_a_methods_values_live_only_in_its_recipes(name, monkeypatch, capsys):
    """Every flag of a method file is declared without a default; its value comes from RECIPES (sslpm's
    --lambda: from its LAMBDA table), so that it is written in one place."""
    module, parser, flags = method_parser(name, monkeypatch)
    assert flags and all(default is None for default in flags.values()), flags
    for dataset in [d for d in module.RECIPES if d != "all"]:
        args = module.get_args(["--dataset", dataset])
        for dest in set(flags) - ALIASES.get(name, set()):
            assert getattr(args, dest) is not None, (dataset, dest)
        for alias in ALIASES.get(name, ()):
            assert not hasattr(args, alias)  # translated to the one name


@pytest.mark.parametrize("name", METHODS)
def test_help_shows_the_value_each_dataset_uses(name, monkeypatch, capsys):
    module, parser, flags = method_parser(name, monkeypatch)
    text = " ".join(parser.format_help().split())
    for action in parser._actions:
        if action.dest == "help" or (name, action.dest) == ("sslpm", "lambd"):  # lambd: sslpm.LAMBDA, its help
            continue
        shown = " ".join(parser.formatter_class("x")._get_help_string(action).split()) % vars(action)
        base = module.RECIPES["all"].get(action.dest, action.default)
        if base is not None and base is not False:
            assert f"default: {base}" in shown, (action.dest, shown)
        for dataset, recipe in module.RECIPES.items():
            if dataset != "all" and action.dest in recipe and recipe[action.dest] != base:
                assert f"{dataset}: {recipe[action.dest]}" in shown, (action.dest, dataset, shown)
    assert "Defaults depend on --dataset" in text


def test_barlow_help_says_the_scale_the_run_uses(capsys):
    import barlow
    with pytest.raises(SystemExit):
        barlow.get_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    scale = out.split("--scale-loss SCALE_LOSS ")[1].split(" --")[0]
    assert "(default: 0.1)" in scale and barlow.get_args(["--dataset", "cifar10"]).scale_loss == 0.1


def test_one_name_for_one_concept():
    import barlow
    import corinfomax
    import sslpm
    # the lambda weights: --lambda in both files, --lambd (the official code's spelling) too
    for module in (barlow, sslpm):
        assert module.get_args(["--lambda", "0.25"]).lambd == module.get_args(["--lambd", "0.25"]).lambd == 0.25
    # the projector: --proj-layers, --proj-hidden, --proj-dim wherever a file lets them vary
    new = simclr.get_args(["--proj-layers", "1"])
    assert new.proj_layers == simclr.get_args(["--projector", "linear"]).proj_layers == 1
    old = corinfomax.get_args(["--projector", "64-64-16"])
    assert (old.proj_layers, old.proj_hidden, old.proj_dim) == (3, 64, 16)
    for name in METHODS:
        args = __import__(name).get_args([])
        assert args.proj_hidden > 0 and args.proj_dim > 0, name
