"""examples/: the GPT decoder and the ResNet-18-shaped CNN train under every numerics of the
examples with every product emulated (none native, all three roles), at the tiny sizes."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the examples need torch (the test extra)")

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # examples/ is a folder of the repository, not an installed package
    sys.path.insert(0, str(ROOT))

from examples import loss_curves  # noqa: E402
from examples.models import NUMERICS  # noqa: E402
from examples.train import main, train  # noqa: E402

# products per step: GPT (1 block): qkv, qk, av, proj, mlp.0, mlp.2, head forward, two backward
# products each (the embeddings' output needs a gradient too); ResNet-18: 20 convolutions and the
# classifier, two backward products each but the stem's (its input needs no gradient)
PER_STEP = {"gpt": 7 * 3, "resnet": 21 * 3 - 1}


@pytest.mark.parametrize("numerics", [n for n in NUMERICS if n != "fp32"])
@pytest.mark.parametrize("model", ["gpt", "resnet"])
def test_example_trains_with_every_product_emulated(model, numerics):
    run = train(model, numerics, 1, size="tiny")
    assert run.native == 0
    assert run.products == PER_STEP[model]
    assert run.roles == {"forward", "backward-input", "backward-weight"}
    assert all(math.isfinite(loss) for loss in run.losses)


def test_fp32_reference_runs_natively():
    run = train("gpt", "fp32", 2, size="tiny")
    assert run.mode == "native" and run.products == 0
    assert run.losses[1] < run.losses[0]


def test_train_cli_and_plot(tmp_path, capsys):
    assert main(["--model", "gpt", "--numerics", "fp16-acc", "--steps", "1", "--size",
                 "tiny"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["native"] == 0 and len(out["losses"]) == 1
    results = {"gpt": {"fp32": {"losses": [3.0, 2.0]}, "mxfp8": {"losses": [3.0, 2.5]}}}
    (tmp_path / "l.json").write_text(json.dumps(results))
    png = tmp_path / "curves.png"
    assert loss_curves.main(["--from-json", str(tmp_path / "l.json"), "--png", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
