"""Every loss is a pure function of the tensors it is given: copied alone (with the helpers it calls) into
a scratch file whose only imports are math and torch, it runs in a fresh interpreter that has neither this
repository nor a process group, and gives the values of the method file's own function; those are checked
against the independent loops of the method tests. AdaDim's copies of the VICReg and InfoNCE losses are
letter for letter those of vicreg.py and simclr.py."""
import ast
import inspect
import json
import os
import subprocess
import sys

import pytest
import torch

import adadim
import barlow
import corinfomax
import simclr
import sslpm
import vicreg
from test_adadim import mi_eig
from test_barlow import barlow_loop
from test_simclr import nt_xent_loop
from test_vicreg import vicreg_loop

# what each file's loss needs, in the order of definition, and expressions to evaluate on shared inputs
LOSSES = {
    "simclr": (["nt_xent_loss"], ["nt_xent_loss(z1, z2, 0.3)"]),
    "vicreg": (["off_diagonal", "vicreg_loss", "embedding_std"],
               ["vicreg_loss(z1, z2)[0]", "vicreg_loss(z1, z2, 1.0, 3.0, 0.5)[1]['covariance']",
                "embedding_std(z1, z2)"]),
    "barlow": (["off_diagonal", "batchnorm_standardize", "barlow_twins_loss", "embedding_std"],
               ["barlow_twins_loss(z1, z2)[0]", "barlow_twins_loss(z1, z2, 0.5)[1]['off_diagonal']"]),
    "corinfomax": (["ldmi", "CorInfoMaxLoss"],
                   ["corinfomax_two_steps(z1, z2)",
                    "ldmi(torch.eye(3).double(), torch.eye(3).double(), 0.5 * torch.eye(3).double())"]),
    "sslpm": (["standardize", "invariance_loss", "random_mask", "ridge_weights", "ridge_predictability_loss",
               "sslpm_loss"],
              ["sslpm_loss(z1, z2, mask, 0.3, 1.0)[0]", "sslpm_loss(z1, z2, mask, 0.3, 0.5, 'masked')[2]"]),
    "adadim": (["off_diagonal", "vicreg_loss", "nt_xent_loss", "renyi_entropy", "renyi_mutual_information",
                "effective_rank", "adadim_loss"],
               ["adadim_loss(z1, z2, r1, r2, 0.3, 0.2, 0.1)[0]", "renyi_mutual_information(r1, z1)",
                "effective_rank(z1)"]),
}
TENSORS = """
torch.manual_seed(0)
z1, z2 = torch.randn(16, 8), torch.randn(16, 8) * 2 + 1
r1, r2 = torch.randn(16, 6), torch.randn(16, 6)
mask = torch.rand(32, 8) < 0.5
"""
INPUTS = TENSORS + """

def corinfomax_two_steps(z1, z2):  # the running estimates carry over from one call to the next
    loss = CorInfoMaxLoss(8, alpha=5.0, la_R=0.1, la_mu=0.1)
    loss(z1, z2)
    return loss(2 * z1, z2)[0] + loss.ldmi()
"""


def source_of(module, names):
    """The source of the named top-level functions / classes of a module, decorators included."""
    text = inspect.getsource(module)
    lines = text.splitlines()
    nodes = {n.name: n for n in ast.parse(text).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    out = []
    for name in names:
        node = nodes[name]
        first = min([node.lineno] + [d.lineno for d in node.decorator_list])
        out.append("\n".join(lines[first - 1:node.end_lineno]))
    return "\n\n\n".join(out)


def evaluate_here(module, expressions):
    scope = dict(vars(module))
    exec(INPUTS, scope)
    return [float(eval(e, scope)) for e in expressions]


@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_runs_alone_with_torch_only(name, tmp_path):
    module = {"simclr": simclr, "vicreg": vicreg, "barlow": barlow, "corinfomax": corinfomax, "sslpm": sslpm,
              "adadim": adadim}[name]
    names, expressions = LOSSES[name]
    script = "\n".join(["import math", "import torch", "import torch.nn as nn", "import torch.nn.functional as F",
                        "", "", source_of(module, names), INPUTS,
                        f"print(__import__('json').dumps([float(e) for e in [{', '.join(expressions)}]]))"])
    (tmp_path / "scratch.py").write_text(script)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    result = subprocess.run([sys.executable, "-I", "scratch.py"], cwd=tmp_path, capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    alone = json.loads(result.stdout)
    assert alone == evaluate_here(module, expressions)  # the same floats, bit for bit


def test_the_copied_losses_match_their_references():
    scope = {"torch": torch}
    exec(TENSORS, scope)
    z1, z2, r1, r2 = (scope[k] for k in ("z1", "z2", "r1", "r2"))
    assert simclr.nt_xent_loss(z1, z2, 0.3).item() == pytest.approx(nt_xent_loop(z1, z2, 0.3), rel=1e-5)
    reference = vicreg_loop(z1, z2, 25.0, 25.0, 1.0)[0].item()
    assert vicreg.vicreg_loss(z1, z2)[0].item() == pytest.approx(reference, rel=1e-5)
    assert barlow.barlow_twins_loss(z1, z2)[0].item() == pytest.approx(barlow_loop(z1, z2, 0.0051)[0].item(), rel=1e-5)
    assert adadim.renyi_mutual_information(r1, z1).item() == pytest.approx(mi_eig(r1, z1), rel=1e-4)


@pytest.mark.parametrize("name,origin", [("off_diagonal", vicreg), ("vicreg_loss", vicreg), ("nt_xent_loss", simclr)])
def test_adadim_copies_are_letter_for_letter(name, origin):
    assert source_of(adadim, [name]) == source_of(origin, [name])


def test_helpers_with_different_semantics_have_different_names():
    # barlow: biased variance + 1e-5 (BatchNorm); sslpm: unbiased std; metrics: population z-score
    import metrics
    assert not hasattr(barlow, "standardize") and hasattr(barlow, "batchnorm_standardize")
    assert hasattr(sslpm, "standardize") and not hasattr(metrics, "standardize") and hasattr(metrics, "zscore")
