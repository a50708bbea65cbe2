"""The training recipes: each trains the MLP, the CNN and the transformer through `refsim train
--numerics <recipe>`, quantizes each role as its paper says, and runs its products through
refsim.matmul / refsim.scaled_matmul bit for bit."""

from __future__ import annotations

import json

import numpy as np
import pytest

from refsim import matmul, scaled_matmul
from refsim.cli import main
from refsim.formats import NAMED_BLOCKS, BlockFormat
from refsim.nn import preset
from refsim.nn.numerics import LAST, RECIPES, ROLES, run_product
from refsim.nn.recipes import recipe


@pytest.mark.parametrize("name", RECIPES)
@pytest.mark.parametrize("model", ["mlp", "cnn", "transformer"])
def test_each_recipe_trains_each_model_from_the_command_line(name, model, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--model", model, "--numerics", name, "--epochs", "1", "--max-steps", "2",
            "--out", str(out), "--quiet"]
    if model == "mlp":
        args += ["--batch-size", "16"]
    assert main(args) == 0, capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["numerics"] == name and summary["steps"] == 2
    assert np.isfinite(summary["test_loss"])
    # The output layer: bf16 where the recipe keeps it (LAST is bound to the model's name).
    products = summary["products"]
    last = list(products)[-1]
    kept = "bf16" in products[last]["forward"] and "e2m1" not in products[last]["forward"]
    assert kept == (name != "mxfp8"), products[last]


def test_recipes_quantize_each_role_as_their_papers_say():
    nv = preset("nvfp4")
    fwd, bwd_in, bwd_w = (nv.product("fc1", role) for role in ROLES)
    assert fwd.scaling == bwd_in.scaling == bwd_w.scaling == "blocks"
    assert isinstance(fwd.gemm.b.fmt, BlockFormat) and fwd.gemm.b.fmt.block_rows == 16  # W 16x16
    assert fwd.gemm.a.fmt == NAMED_BLOCKS["nvfp4"] and fwd.gemm.a.rounding == "rne"
    assert bwd_in.gemm.a.rounding == "sr" and bwd_in.gemm.b.fmt.block_rows == 16  # dC sr, W^T
    assert bwd_w.gemm.b.rounding == "sr" and bwd_w.gemm.a.rounding == "rne"
    assert bwd_w.gemm.transform is not None and bwd_w.gemm.transform.block == 16
    assert fwd.gemm.transform is None and bwd_in.gemm.transform is None
    assert preset("nvfp4-4over6").product("fc1", "forward").gemm.a.fmt.scale_rule == "4over6"
    ds = preset("deepseek-fp8").product("fc1", "forward")
    assert ds.gemm.a.fmt == NAMED_BLOCKS["deepseek_1x128"]
    assert ds.gemm.b.fmt == NAMED_BLOCKS["deepseek_128x128"]
    assert ds.gemm.acc.chunk == 128 and ds.gemm.acc.order == "multiterm"
    mx = preset("mxfp8").product("fc1", "backward-weight")
    assert mx.gemm.a.fmt == mx.gemm.b.fmt == NAMED_BLOCKS["mxfp8_e4m3_rceil"]
    for name in RECIPES:
        text, _, layers = recipe(name)
        assert "arXiv" in text
        assert {"*.attn.qk", "*.attn.av"} <= set(layers)
        assert (LAST in layers) == (name != "mxfp8")


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_products_are_scaled_matmul_or_matmul_bit_for_bit(name):
    rng = np.random.default_rng(5)
    a = rng.standard_normal((16, 32)).astype(np.float32)
    b = rng.standard_normal((32, 8)).astype(np.float32)
    for role in ROLES:
        product = preset(name).product("fc1", role)
        got = run_product(product, a, b, seed=77)
        if product.scaling == "blocks":
            want = scaled_matmul(a, b, product.gemm, seed=77)
        else:
            want = matmul(a, b, product.gemm, seed=77)
        np.testing.assert_array_equal(got, np.asarray(want, np.float32))


def test_recipe_layers_patterns_are_optional_but_a_users_are_not():
    plan = preset("deepseek-fp8")
    plan.check(["fc1", "fc2"])  # no attention in an MLP: fine for the recipe's own patterns
    with pytest.raises(ValueError, match="matches no matrix product"):
        plan.with_layers({"conv9": preset("fp32").default}).check(["fc1", "fc2"])


def test_a_short_batch_is_zero_padded_to_the_transforms_block():
    # The last batch of an epoch (29 of 1437 digits at batch 32) gives a backward-weight K of 29.
    product = preset("nvfp4").product("fc1", "backward-weight")
    rng = np.random.default_rng(2)
    a = rng.standard_normal((8, 29)).astype(np.float32)
    b = rng.standard_normal((29, 4)).astype(np.float32)
    ap = np.concatenate([a, np.zeros((8, 3), np.float32)], axis=1)
    bp = np.concatenate([b, np.zeros((3, 4), np.float32)], axis=0)
    np.testing.assert_array_equal(run_product(product, a, b, seed=3),
                                  np.asarray(scaled_matmul(ap, bp, product.gemm, seed=3),
                                             np.float32))
