"""The README's "Using a trained backbone elsewhere" snippet, run as written (only the checkpoint path
changed): a plain torchvision ResNet-18 loads a run's backbone and gives the features this repository's
own backbone gives."""
import os
import re
import signal

import torch

import common
from conftest import ROOT


def test_readme_snippet_loads_the_backbone_into_torchvision(tmp_path):
    import simclr
    handler, threads = signal.getsignal(signal.SIGINT), torch.get_num_threads()
    try:  # a width-64 ResNet-18 (torchvision's), trained for two steps
        simclr.main(["--width", "64", "--train-subset", "64", "--batch-size", "32", "--epochs", "1",
                     "--out", str(tmp_path), "--name", "r"])
    finally:
        signal.signal(signal.SIGINT, handler)
        torch.set_num_threads(threads)
    readme = open(os.path.join(ROOT, "README.md")).read()
    section = readme.split("## Using a trained backbone elsewhere")[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    path = re.search(r'torch.load\("([^"]+)"', code).group(1)
    scope = {}
    exec(code.replace(path, str(tmp_path / "r" / "last.pt")), scope)
    features, images, args = scope["features"], scope["images"], scope["args"]
    assert features.shape == (len(images), 512)
    ckpt = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    ours = common.backbone(args["arch"], args["width"], args["image_size"])
    ours.load_state_dict({k[len("backbone."):]: v for k, v in ckpt["state"]["model"].items() if k.startswith("backbone.")})
    mean, std = (torch.tensor(v)[:, None, None] for v in args["normalize"].values())
    with torch.no_grad():
        expected = ours.eval()((images - mean) / std)
    assert torch.allclose(features, expected, atol=1e-5)
