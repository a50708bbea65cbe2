"""Numerics plans: the roles reach refsim.matmul with the plan's spec and seed, a plan changes
exactly the products it names, TOML plans, presets, and errors for bad plans and shapes."""

from __future__ import annotations

import numpy as np
import pytest

from refsim import conv2d as ref_conv2d
from refsim import matmul
from refsim.nn import MLP, Context, Numerics, Product, Tensor, gemm_seed, load_numerics, ops
from refsim.nn import preset as get_preset
from refsim.nn.numerics import PRESETS, ROLES, run_product
from refsim.specs import AccumSpec, Cast, GemmSpec

FP32 = Product(GemmSpec(acc=AccumSpec("fp32")))
E2M1 = Product(GemmSpec(a=Cast("e2m1fn"), b=Cast("e2m1fn"), acc=AccumSpec("fp32")))


def _sr_plan() -> Numerics:
    sr = Cast("bf16", "sr")
    return Numerics({"forward": Product(GemmSpec(a=sr, b=sr, acc=AccumSpec("fp32"))),
                     "backward-input": Product(GemmSpec(a=Cast("e5m2", "sr"), b=sr,
                                                        acc=AccumSpec("fp16"))),
                     "backward-weight": Product(GemmSpec(a=sr, b=Cast("e5m2"),
                                                         acc=AccumSpec("bf16", "sr")))})


def test_roles_reach_matmul_with_their_spec_and_seed():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 7)).astype(np.float32)
    w = rng.standard_normal((7, 3)).astype(np.float32)
    g = rng.standard_normal((5, 3)).astype(np.float32)
    plan = _sr_plan()
    ctx = Context(plan, seed=11, step=4)
    a, b = Tensor(x, requires_grad=True), Tensor(w, requires_grad=True)
    y = ops.gemm(a, b, "L", ctx)
    y.backward(g)

    def expect(role, p, q):
        spec = plan.product("L", role).gemm
        return matmul(p, q, spec, seed=gemm_seed(11, 4, "L", role))

    np.testing.assert_array_equal(y.data, expect("forward", x, w))
    np.testing.assert_array_equal(a.grad, expect("backward-input", g, w.T))
    np.testing.assert_array_equal(b.grad, expect("backward-weight", x.T, g))


def test_seeds_differ_by_step_layer_and_role():
    seeds = {gemm_seed(s, step, layer, role) for s in (0, 1) for step in (0, 1)
             for layer in ("fc1", "fc2") for role in ROLES}
    assert len(seeds) == 2 * 2 * 2 * 3
    assert gemm_seed(3, 7, "fc1", "forward") == gemm_seed(3, 7, "fc1", "forward")


def test_conv_forward_matches_refsim_conv2d():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    plan = get_preset("fp8")
    y = ops.conv2d(Tensor(x), Tensor(w), None, "conv", Context(plan), stride=1, padding=1)
    ref = ref_conv2d(x, w, plan.product("conv", "forward").gemm, padding=1)
    np.testing.assert_array_equal(y.data, ref)


def _mlp_run(plan: Numerics):
    model = MLP((12, 10, 8, 6), seed=3)
    x = np.random.default_rng(2).standard_normal((9, 12)).astype(np.float32)
    taps: dict = {}
    trace: list = []
    ctx = Context(plan, trace=trace)
    ops.cross_entropy(model(x, ctx, taps), np.arange(9) % 6).backward()
    return taps, trace, model


def test_plan_changes_exactly_the_products_it_names():
    base = Numerics(FP32, name="fp32")
    plan = base.with_layers({"fc2": {"forward": E2M1}})
    plan.check(["fc1", "fc2", "fc3"])
    taps0, _, model0 = _mlp_run(base)
    taps1, trace, model1 = _mlp_run(plan)
    np.testing.assert_array_equal(taps0["fc1"], taps1["fc1"])
    assert not np.array_equal(taps0["fc2"], taps1["fc2"])
    assert not np.array_equal(taps0["fc3"], taps1["fc3"])
    # e2m1 operands: the forward of fc2 is the only product that used them
    used = {(t["layer"], t["role"]): plan.product(t["layer"], t["role"]) for t in trace}
    assert len(used) == 8  # 3 layers x 3 roles, less fc1's backward-input (x needs no grad)
    assert [key for key, p in used.items() if p == E2M1] == [("fc2", "forward")]
    # fc3's weight gradient reads fc2's (changed) output; fc1's reads only the input x,
    # but its dY flows back through fc2's (changed) activations, so both differ.
    assert not np.array_equal(model0.layers[2].weight.grad, model1.layers[2].weight.grad)


def test_a_backward_weight_plan_changes_only_that_gradient():
    base = Numerics(FP32, name="fp32")
    plan = base.with_layers({"fc2": {"backward-weight": E2M1}})
    taps0, _, model0 = _mlp_run(base)
    taps1, _, model1 = _mlp_run(plan)
    for name in ("fc1", "fc2", "fc3"):
        np.testing.assert_array_equal(taps0[name], taps1[name])
    for (name, p0), (_, p1) in zip(model0.named_parameters(), model1.named_parameters(),
                                   strict=True):
        if name == "layers1.weight":
            assert not np.array_equal(p0.grad, p1.grad)
        else:
            np.testing.assert_array_equal(p0.grad, p1.grad, err_msg=name)


def test_last_matching_pattern_wins_and_roles_fall_back():
    plan = Numerics(FP32, {"fc*": {"forward": E2M1}, "fc2": {"forward": FP32}})
    assert plan.product("fc1", "forward") == E2M1
    assert plan.product("fc2", "forward") == FP32
    assert plan.product("fc1", "backward-weight") == FP32
    again = plan.with_layers({"fc*": {"backward-input": E2M1}})  # moves to the end, merged
    assert list(again.layers) == ["fc2", "fc*"]
    assert again.product("fc2", "forward") == E2M1
    assert again.product("fc2", "backward-input") == E2M1


TOML_PLAN = """
name = "fp8-with-e2m1-fc2"
preset = "fp8"

[default.backward-weight]
a = { fmt = "bf16" }
b = "bf16"
acc = { fmt = "fp32", order = "pairwise" }

[layers."fc2".forward]
a = "e2m1fn"
b = { fmt = "e2m1fn", rounding = "sr" }
acc = "fp32"

[layers."block*.attn.*"]
preset = "bf16"
"""


def test_toml_plan(tmp_path):
    path = tmp_path / "plan.toml"
    path.write_text(TOML_PLAN)
    plan = load_numerics(str(path))
    fp8 = get_preset("fp8")
    assert plan.name == "fp8-with-e2m1-fc2"
    assert plan.product("fc1", "forward") == fp8.product("fc1", "forward")
    assert plan.product("fc2", "forward").gemm == GemmSpec(
        a=Cast("e2m1fn"), b=Cast("e2m1fn", "sr"), acc=AccumSpec("fp32"))
    assert plan.product("fc2", "backward-weight").gemm.acc.order == "pairwise"
    bf16 = get_preset("bf16").product("x", "forward")
    assert plan.product("block0.attn.qk", "backward-input") == bf16
    # round trip through to_dict's layer tables
    again = Numerics(plan.default, plan.layers, plan.name)
    assert again.to_dict() == plan.to_dict()


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_resolve(name):
    plan = get_preset(name)
    assert plan.name == name
    for role in ROLES:
        assert isinstance(plan.product("any", role), Product)


def test_fp8_preset_operand_formats():
    plan = get_preset("fp8")
    fmt = {role: (str(plan.product("x", role).gemm.a.fmt), str(plan.product("x", role).gemm.b.fmt))
           for role in ROLES}
    assert fmt == {"forward": ("e4m3fn", "e4m3fn"), "backward-input": ("e5m2", "e4m3fn"),
                   "backward-weight": ("e4m3fn", "e5m2")}


def test_int8_per_tensor_scaling():
    rng = np.random.default_rng(4)
    a = (rng.standard_normal((6, 40)) * 30).astype(np.float32)
    b = (rng.standard_normal((40, 5)) * 0.01).astype(np.float32)
    product = get_preset("int8").product("x", "forward")
    got = run_product(product, a, b, seed=0)
    sa = float(np.abs(a).max()) / 127
    sb = float(np.abs(b).max()) / 127
    qa = np.clip(np.round(a.astype(np.float64) / sa), -127, 127)  # no ties in random data
    qb = np.clip(np.round(b.astype(np.float64) / sb), -127, 127)
    np.testing.assert_array_equal(got, ((qa @ qb) * (sa * sb)).astype(np.float32))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, a @ b, atol=0.05 * np.abs(a @ b).max())


# ---- errors -------------------------------------------------------------------------------------
def test_unknown_preset():
    with pytest.raises(ValueError, match=r"unknown numerics preset 'fp7'.*fp8"):
        get_preset("fp7")
    with pytest.raises(ValueError, match="unknown numerics preset"):
        load_numerics("fp7")
    with pytest.raises(FileNotFoundError, match=r"missing\.toml"):
        load_numerics("missing.toml")


def test_unknown_role():
    with pytest.raises(ValueError, match=r"unknown role 'backward'.*forward, backward-input"):
        Numerics(FP32, {"fc1": {"backward": FP32}})
    with pytest.raises(ValueError, match="role must be one of"):
        Numerics(FP32).product("fc1", "fwd")
    with pytest.raises(ValueError, match=r"unknown keys 'backward'"):
        Numerics.from_toml('preset = "fp32"\n[layers.fc1.backward]\nacc = "fp32"\n')
    with pytest.raises(ValueError, match="must define every role; missing backward-weight"):
        Numerics({"forward": FP32, "backward-input": FP32})


def test_pattern_matching_nothing_is_an_error():
    plan = Numerics(FP32, {"fc9": {"forward": E2M1}})
    with pytest.raises(ValueError, match=r"pattern 'fc9' matches no matrix product.*fc1, fc2"):
        plan.check(MLP((4, 3, 2)).gemm_names())


def test_bad_plan_tables():
    with pytest.raises(ValueError, match=r"unknown keys 'presets'"):
        Numerics.from_toml('presets = "fp8"\n')
    with pytest.raises(ValueError, match="the default lacks forward"):
        Numerics.from_toml('[layers.fc1]\npreset = "fp8"\n')
    with pytest.raises(ValueError, match=r"'fc1'.forward: GemmSpec.a: unknown format 'e9m9x'"):
        Numerics.from_toml('preset = "fp8"\n[layers.fc1.forward]\na = "e9m9x"\nacc = "fp32"\n')
    with pytest.raises(ValueError, match="scaling must be one of"):
        Product(GemmSpec(acc=AccumSpec("fp32")), scaling="block")
    with pytest.raises(ValueError, match="needs a GemmSpec with Casts a and b"):
        Product(GemmSpec(acc=AccumSpec("fp32")), scaling="tensor")


def test_blocks_with_an_sr_accumulator_fails_at_load_naming_layer_and_role():
    # It loaded, then failed at the first step without naming layer and role.
    toml = ('preset = "fp32"\n[layers.fc1.backward-weight]\na = "mxfp8_e4m3"\n'
            'b = "mxfp8_e4m3"\nacc = {fmt = "bf16", rounding = "sr"}\nscaling = "blocks"\n')
    with pytest.raises(ValueError, match=r"'fc1'.backward-weight: .*must not round with 'sr'"):
        Numerics.from_toml(toml)
    outer_sr = AccumSpec("fp16", order="chunked", chunk=32, outer=AccumSpec("fp32", "sr"))
    with pytest.raises(ValueError, match="must not round with 'sr'"):
        Product(GemmSpec(a=Cast("mxfp8_e4m3"), b=Cast("mxfp8_e4m3"), acc=outer_sr), "blocks")


def test_numpy_key_beside_a_spec():
    # `numpy = false` (or true) beside a/acc said "unknown keys numpy".
    simulated = Numerics.from_toml('preset = "fp32"\n[layers.fc1.forward]\nnumpy = false\n'
                                   'a = "e4m3fn"\nacc = "fp32"\n')
    assert simulated.product("fc1", "forward").gemm == GemmSpec(a=Cast("e4m3fn"), acc="fp32")
    plain = Numerics.from_toml('preset = "fp32"\n[layers.fc1.forward]\nnumpy = true\n')
    assert plain.product("fc1", "forward").gemm is None
    with pytest.raises(ValueError, match=r"'fc1'.forward: numpy = true means np.matmul .*"
                                         r"takes no other keys; got 'a', 'acc'"):
        Numerics.from_toml('preset = "fp32"\n[layers.fc1.forward]\nnumpy = true\n'
                           'a = "e4m3fn"\nacc = "fp32"\n')
    with pytest.raises(TypeError, match="numpy must be true or false; got 'yes'"):
        Numerics.from_toml('preset = "fp32"\n[layers.fc1.forward]\nnumpy = "yes"\n')


def test_shape_mismatches_name_both_shapes():
    ctx = Context(get_preset("numpy"))
    a, b = Tensor(np.zeros((3, 4))), Tensor(np.zeros((5, 2)))
    with pytest.raises(ValueError, match=r"\(3, 4\) and \(5, 2\) do not broadcast"):
        _ = a + b
    with pytest.raises(ValueError, match=r"'fc'.*\(3, 4\).*\(5, 2\)"):
        ops.gemm(a, b, "fc", ctx)
    with pytest.raises(ValueError, match=r"'fc'.*\(3, 4\).*\(5, 2\)"):
        ops.linear(a, b, None, "fc", ctx)
    with pytest.raises(ValueError, match=r"'c'.*\(1, 2, 4, 4\).*\(3, 1, 3, 3\)"):
        ops.conv2d(Tensor(np.zeros((1, 2, 4, 4))), Tensor(np.zeros((3, 1, 3, 3))), None, "c", ctx)
    with pytest.raises(ValueError, match=r"reshape.*\(3, 4\) to \(5,\)"):
        a.reshape(5)
    with pytest.raises(TypeError, match="float32 and float64 differ"):
        _ = Tensor(np.zeros(2, np.float32)) * Tensor(np.zeros(2))


def test_last_pattern_binds_to_the_models_output_layer():
    plan = Numerics(FP32, {"@last": {"forward": E2M1}, "fc1": E2M1})
    with pytest.raises(ValueError, match="matches no matrix product"):
        plan.check([])  # @last needs a model with products...
    plan.check(["fc1", "fc2", "fc3"])  # ... and is then always matched
    bound = plan.bind(["fc1", "fc2", "fc3"])
    assert bound.product("fc3", "forward") is E2M1
    assert bound.product("fc3", "backward-input") is FP32
    assert bound.product("fc2", "forward") is FP32
    assert plan.product("fc3", "forward") is FP32  # unbound: @last names nothing yet
    # A pattern for the last layer already present merges, the later roles winning.
    both = Numerics(FP32, {"fc3": {"backward-weight": E2M1}, "@last": {"forward": E2M1}})
    merged = both.bind(["fc1", "fc3"])
    assert merged.product("fc3", "forward") is E2M1
    assert merged.product("fc3", "backward-weight") is E2M1


def test_only_keeps_some_roles_and_takes_the_rest_from_another_plan():
    bf16 = Product(GemmSpec(a=Cast("bf16"), b=Cast("bf16"), acc=AccumSpec("fp32")))
    recipe = Numerics(E2M1, {"fc2": bf16})
    rest = Numerics(FP32, {"fc1": {"backward-input": bf16}})
    plan = recipe.only(["backward-weight"], rest)
    assert plan.product("fc1", "backward-weight") is E2M1
    assert plan.product("fc2", "backward-weight") is bf16  # the recipe's pattern, its role
    assert plan.product("fc2", "forward") is FP32          # ... but not its other roles
    assert plan.product("fc1", "backward-input") is bf16   # rest's pattern for rest's role
    assert plan.product("fc1", "forward") is FP32
    with pytest.raises(ValueError, match="role must be one of forward"):
        recipe.only(["sideways"], rest)
    with pytest.raises(ValueError, match="at least one role"):
        recipe.only([], rest)


def test_plan_dict_with_roles_and_rest():
    plan = Numerics.from_dict({"preset": "fp8", "roles": ["forward"], "rest": "fp32"})
    fp8 = get_preset("fp8")
    fp32 = get_preset("fp32")
    assert plan.product("x", "forward") == fp8.product("x", "forward")
    for role in ("backward-input", "backward-weight"):
        assert plan.product("x", role) == fp32.product("x", role)
    with pytest.raises(ValueError, match="roles must be a non-empty list"):
        Numerics.from_dict({"preset": "fp8", "roles": "forward"})
