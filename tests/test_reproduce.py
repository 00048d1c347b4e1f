"""Each script of reproduce/ writes its table from a --quick run (tiny runs: the machinery, not the claim),
and draws its figure when matplotlib (the optional extra) is installed; a second call reuses the finished
runs and only redraws. The quick runs are made once per module and shared by the tests below: without
matplotlib the figure tests skip (with the reason) and every other test still runs."""
import contextlib
import importlib
import io
import json
import os
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "reproduce"))
# name -> the figures it draws besides its table <name>.json (pictures.py reuses the runs of redundancy.py
# and collapse.py)
SCRIPTS = {"collapse": ["collapse.png"], "corinfomax_spectrum": ["corinfomax_spectrum.png"],
           "adadim_dynamics": ["adadim_dynamics.png"], "predictability": ["predictability.png"],
           "projector_rank": ["projector_rank.png"], "redundancy": ["redundancy.png"],
           "toys": ["toys.png", "collapse_2d.png"],
           "pictures": ["views.png", "curves.png", "embeddings.png", "neighbours.png"]}


def has_matplotlib():
    try:
        import matplotlib  # noqa: F401
        return True
    except ImportError:
        return False


def call(name, root):
    """Run the script's main on --quick with --out root/name (pictures.py: --runs root, where it finds the
    runs of redundancy.py and collapse.py); (rows, printed output)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        extra = ["--runs", str(root)] if name == "pictures" else []
        rows = importlib.import_module(name).main(["--quick", "--out", str(root / name), *extra])
    return rows, printed.getvalue()


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """Every script once on --quick, each in its own folder under one root."""
    root = tmp_path_factory.mktemp("reproduce")
    return root, {name: call(name, root) for name in SCRIPTS}


@pytest.mark.parametrize("name", SCRIPTS)
def test_quick_run_writes_the_table_and_says_what_it_trained(name, quick):
    root, calls = quick
    out = root / name
    rows, printed = calls[name]
    saved = json.loads((out / f"{name}.json").read_text())
    assert rows and saved["rows"] == json.loads(json.dumps(rows, default=str)) and saved["title"]
    if name != "toys":  # the toys train nothing
        assert "training " in printed or name == "pictures"
    assert ("pip install matplotlib" in printed) != has_matplotlib()


@pytest.mark.parametrize("name", SCRIPTS)
def test_quick_run_draws_the_figure_and_a_second_call_only_redraws(name, quick):
    pytest.importorskip("matplotlib", reason="the figures need matplotlib, the optional extra")
    root, calls = quick
    out = root / name
    for png in SCRIPTS[name]:
        figure = out / png
        assert figure.read_bytes()[:4] == b"\x89PNG" and figure.stat().st_size > 10_000
        assert str(figure) in calls[name][1]
        figure.unlink()
    _, printed = call(name, root)  # every run is finished: nothing is trained again
    assert "training " not in printed and all((out / png).exists() for png in SCRIPTS[name])


def test_without_matplotlib_the_table_is_saved_and_one_line_says_how_to_get_the_figure(quick, monkeypatch):
    import harness
    root, _ = quick
    out = root / "collapse"
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    (out / "collapse.json").unlink()
    rows, printed = call("collapse", root)
    assert rows and (out / "collapse.json").exists() and "figure:" not in printed
    assert "pip install matplotlib" in printed and harness.pyplot() is None


def test_views_add_fashion_mnist_from_its_idx_files_and_do_without_them(tmp_path):
    """pictures.fashion_examples: one t10k image per class from the 4 IDX files (Debian's gzipped ones here),
    in class order; None (views.png shows shapes only) where the folder lacks them. Nothing is downloaded."""
    import numpy as np
    import pictures
    from test_torchvision_data import write_idx
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (30, 28, 28), dtype=np.uint8)
    labels = np.array([9 - k % 10 for k in range(30)], dtype=np.uint8)  # class k first at row 9 - k
    for split in ("train", "t10k"):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", labels)
    x, names = pictures.fashion_examples(str(tmp_path))
    assert x.shape == (10, 3, 28, 28) and names[0] == "T-shirt/top" and len(names) == 10
    for k in range(10):
        assert (x[k, 0].numpy() == images[9 - k]).all() and (x[k, 1] == x[k, 0]).all()
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    assert pictures.fashion_examples(str(tmp_path)) is None
    if has_matplotlib():  # three panels: shapes at 16 and 32 px, and these images
        import harness
        pictures.views(harness.pyplot(), str(tmp_path / "views.png"), (x, names))
        assert (tmp_path / "views.png").stat().st_size > 10_000
