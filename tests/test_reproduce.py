"""Each script of reproduce/ draws its figure and writes its table from a --quick run (tiny runs: the
machinery, not the claim), and a second call reuses the finished runs and only redraws."""
import importlib
import json
import os
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "reproduce"))
SCRIPTS = ["collapse", "corinfomax_spectrum", "adadim_dynamics", "predictability", "projector_rank"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_quick_run_draws_the_figure_and_writes_the_table(name, tmp_path, capsys):
    script = importlib.import_module(name)
    rows = script.main(["--quick", "--out", str(tmp_path)])
    figure, table = tmp_path / f"{name}.png", tmp_path / f"{name}.json"
    assert figure.exists() and figure.stat().st_size > 10_000 and figure.read_bytes()[:4] == b"\x89PNG"
    saved = json.loads(table.read_text())
    assert saved["rows"] == json.loads(json.dumps(rows, default=str)) and saved["title"]
    printed = capsys.readouterr().out
    assert "training " in printed and str(figure) in printed
    figure.unlink()
    script.main(["--quick", "--out", str(tmp_path)])  # every run is finished: nothing is trained again
    assert "training " not in capsys.readouterr().out and figure.exists()


def test_without_matplotlib_the_table_is_saved_and_one_line_says_how_to_get_the_figure(tmp_path, capsys, monkeypatch):
    import harness
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    rows = importlib.import_module("collapse").main(["--quick", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rows and (tmp_path / "collapse.json").exists() and not (tmp_path / "collapse.png").exists()
    assert "pip install matplotlib" in out and harness.pyplot() is None
