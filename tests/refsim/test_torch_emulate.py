"""refsim.torch_nn.emulate(): every product of a torch model, forward and backward, under the
plan; exact mode op by op equal to refsim.matmul; roles, names and seeds as refsim.nn's; fast mode
equal to exact where products and fp32 sums are exact; unsupported ops raise or run natively."""

from __future__ import annotations

import numpy as np
import pytest

import refsim
from refsim.nn.numerics import Context, Numerics, Product, gemm_seed, preset
from refsim.nn.numerics import run_product as numpy_product
from refsim.specs import AccumSpec, Cast, GemmSpec
from refsim.validation.bits import assert_same_bits

torch = pytest.importorskip("torch", reason="emulate() needs torch (the test extra)")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from refsim.torch_nn import emulate  # noqa: E402

FP8_SR = GemmSpec(a=Cast("e4m3fn", "sr", overflow="saturate"), b=Cast("e5m2", "sr"),
                  acc=AccumSpec("fp16"))


class Attention(nn.Module):
    """q, k and v split from one tensor (they share storage), causal sdpa, a projection."""

    def __init__(self, d: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Mixed(nn.Module):
    """Every kind of product: linear, sdpa, a bare q @ k^T, einsum, conv1d, conv_transpose2d."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = Attention()
        self.conv = nn.Conv1d(16, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        h = self.attn(x)                                          # (2, 6, 16)
        s = h @ h.transpose(-1, -2)                               # bmm, one storage
        h = h + torch.einsum("bts,bsd->btd", torch.softmax(s, -1), h)
        c = self.conv(h.transpose(1, 2))                          # (2, 8, 6)
        u = self.up(c.reshape(2, 2, 4, 6))                        # (2, 3, 8, 12)
        return self.head(c.transpose(1, 2)).sum() + u.square().mean()


def _replay(rec) -> np.ndarray:
    """What refsim computes from a record's operands, spec and seed (independently of emulate)."""
    a, b = rec.a.numpy(), rec.b.numpy()
    c = None if rec.c is None else rec.c.numpy()
    if rec.product.scaling == "none":
        return np.asarray(refsim.matmul(a, b, rec.product.gemm, c=c, seed=rec.seed))
    if rec.product.scaling == "blocks":
        return np.asarray(refsim.scaled_matmul(a, b, rec.product.gemm, c=c, seed=rec.seed))
    return numpy_product(rec.product, a, b, rec.seed)


def _run(model, x, numerics, **kwargs):
    with emulate(numerics, record=True, **kwargs) as em:
        model(x).backward()
    return em


@pytest.mark.parametrize("numerics", [
    refsim.hardware.gemm_spec("h100", "e4m3"), "mxfp8", "nvfp4", "fp8", FP8_SR,
    GemmSpec(a=Cast("fp16"), b=Cast("fp16"), acc=AccumSpec("fp16"))],
    ids=["h100-e4m3", "mxfp8", "nvfp4", "fp8", "fp8-sr-fp16acc", "fp16-acc"])
def test_exact_mode_equals_refsim_op_by_op(numerics):
    torch.manual_seed(0)
    model = Mixed()
    em = _run(model, torch.randn(2, 6, 16), numerics)
    assert not any(r.native for r in em.products)
    # 9 forward products (qkv, qk, av, proj, bmm, einsum's bmm, conv, up, head), each with
    # two backward products but qkv's (its input needs no gradient); int8's per-tensor rule
    # is checked in test_linear_roles_operands_and_seeds_match_refsim_nn
    assert len(em.products) == 9 * 3 - 1
    assert {r.role for r in em.products} == {"forward", "backward-input", "backward-weight"}
    for rec in em.products:
        assert_same_bits(rec.out.numpy(), _replay(rec),
                         context=f"{rec.op} {rec.layer} {rec.role}")
        assert rec.seed == gemm_seed(0, 0, rec.layer, rec.role)


def test_names_and_roles_of_a_model():
    torch.manual_seed(0)
    em = _run(Mixed(), torch.randn(2, 6, 16), "fp32")
    seen = {(r.layer, r.role) for r in em.products}
    expected = set()
    for name in ("attn.proj", "attn.qk", "attn.av", "bmm0", "bmm1", "conv", "up", "head"):
        expected |= {(name, role) for role in ("forward", "backward-input", "backward-weight")}
    expected |= {("attn.qkv", "forward"), ("attn.qkv", "backward-weight")}
    assert seen == expected
    shapes = {(r.layer, r.role): (r.a_shape, r.b_shape, r.k) for r in em.products}
    # q @ k^T of 2 x 2 heads, T = 6, head size 8: forward reduces over 8, dQ = dS K over 6
    assert shapes[("attn.qk", "forward")] == ((4, 6, 8), (4, 8, 6), 8)
    assert shapes[("attn.qk", "backward-input")][2] == 6
    # conv1d 16 -> 8, k 3: K = 16 * 3; its input gradient reduces over 8 * 3
    assert shapes[("conv", "forward")][2] == 48
    assert shapes[("conv", "backward-input")][2] == 24
    assert shapes[("conv", "backward-weight")][2] == 2 * 6


@pytest.mark.parametrize("plan", ["fp8", "bf16", "int8", "mxfp8"])
def test_linear_roles_operands_and_seeds_match_refsim_nn(plan):
    """A linear layer under emulate() gives refsim.nn's three products bit for bit (same
    operands in the same order, same seeds), so torch's own backward runs the roles."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 32)).astype(np.float32)
    w = (rng.standard_normal((16, 32)) * 0.3).astype(np.float32)
    g = rng.standard_normal((64, 16)).astype(np.float32)
    ref = Context(preset(plan), seed=3, step=2)
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(32, 16, bias=False))
    with torch.no_grad():
        model.fc1.weight.copy_(torch.from_numpy(w))
    tx = torch.from_numpy(x).requires_grad_()
    with emulate(plan, seed=3) as em:
        em.step = 2
        y = model(tx)
        y.backward(torch.from_numpy(g))
    assert_same_bits(y.detach().numpy(), ref.gemm("fc1", "forward", x, w.T), context="forward")
    assert_same_bits(tx.grad.numpy(), ref.gemm("fc1", "backward-input", g, w),
                     context="backward-input")
    assert_same_bits(model.fc1.weight.grad.numpy(),
                     np.ascontiguousarray(ref.gemm("fc1", "backward-weight", x.T, g).T),
                     context="backward-weight")


def _int_tensor(gen, *shape, hi=4):
    return torch.randint(-hi, hi + 1, shape, generator=gen).float()


CONVS = [  # (dims, transposed, stride, padding, dilation, groups, output_padding)
    (1, False, 1, 0, 1, 1, 0), (1, False, 2, 2, 2, 2, 0), (2, False, 2, 1, 1, 1, 0),
    (2, False, 1, 2, 2, 2, 0), (3, False, 2, 1, 1, 1, 0), (1, True, 2, 1, 1, 2, 1),
    (2, True, 1, 1, 1, 1, 0), (2, True, 3, 0, 2, 1, 2), (3, True, 2, 1, 1, 1, 1)]


@pytest.mark.parametrize("case", CONVS, ids=[str(c) for c in CONVS])
def test_convolutions_equal_torch_on_exact_sums(case):
    """Small integers make every sum exact in fp32: forward and both gradients must equal
    torch's bit for bit, whatever order either takes (so the im2col / stuffing / flipping is
    right), and every product is recorded under its role."""
    d, transposed, stride, padding, dilation, groups, out_pad = case
    gen = torch.Generator().manual_seed(d)
    x = _int_tensor(gen, 2, 4, *[7, 6, 5][:d]).requires_grad_()
    if transposed:
        w = _int_tensor(gen, 4, 6 // groups, *[3] * d)
        f = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[d - 1]
        kw = {"output_padding": out_pad}
    else:
        w = _int_tensor(gen, 6, 4 // groups, *[3] * d)
        f = (F.conv1d, F.conv2d, F.conv3d)[d - 1]
        kw = {}
    w.requires_grad_()
    bias = _int_tensor(gen, 6).requires_grad_()
    kw.update(stride=stride, padding=padding, dilation=dilation, groups=groups)
    y = f(x, w, bias, **kw)
    g = _int_tensor(gen, *y.shape)
    expected = (y, *torch.autograd.grad(y, (x, w, bias), g))
    with emulate("fp32") as em:
        y2 = f(x, w, bias, **kw)
        got = (y2, *torch.autograd.grad(y2, (x, w, bias), g))
    for name, e, a in zip(("y", "dx", "dw", "db"), expected, got, strict=True):
        assert_same_bits(a.detach().numpy(), e.detach().numpy(), context=f"{case} {name}")
    assert [r.role for r in em.products] == ["forward", "backward-input", "backward-weight"]


@pytest.mark.parametrize("case", CONVS[::2], ids=[str(c) for c in CONVS[::2]])
def test_fast_convolutions_run_by_torch_equal_exact_on_exact_sums(case):
    """Fast mode with element Casts runs torch's convolution on the cast input and weights
    (casting x equals casting its im2col copies): on exact sums it equals exact mode (im2col
    products through refsim), gradients included, and records the same products."""
    d, transposed, stride, padding, dilation, groups, out_pad = case
    gen = torch.Generator().manual_seed(d)
    x = (_int_tensor(gen, 2, 4, *[7, 6, 5][:d]) / 2).requires_grad_()
    shape = (4, 6 // groups) if transposed else (6, 4 // groups)
    w = _int_tensor(gen, *shape, *[3] * d).requires_grad_()
    f = ((F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d) if transposed else
         (F.conv1d, F.conv2d, F.conv3d))[d - 1]
    kw = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
    if transposed:
        kw["output_padding"] = out_pad
    spec = GemmSpec(a=Cast("e4m3fn"), b=Cast("e5m2"), acc=AccumSpec("fp32"))
    results, records = [], []
    for mode, record in (("exact", True), ("fast", False)):
        with emulate(spec, mode=mode, record=record) as em:
            y = f(x, w, **kw)
            g = _int_tensor(torch.Generator().manual_seed(9), *y.shape)
            results.append((y, *torch.autograd.grad(y, (x, w), g)))
        records.append([(r.role, r.a_shape, r.b_shape, r.k, r.seed) for r in em.products])
    for e, a in zip(*results, strict=True):
        assert_same_bits(a.detach().numpy(), e.detach().numpy(), context=str(case))
    assert records[0] == records[1]


def test_conv2d_equals_refsim_conv2d():
    """Under a spec without SR or blocks, emulate's im2col product reduces in refsim.conv2d's
    order, (c, kh, kw) with c slowest: the same bits."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 7, 7)).astype(np.float32)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    spec = GemmSpec(a=Cast("e4m3fn"), b=Cast("e4m3fn"), acc=AccumSpec("fp16"))
    with emulate(spec):
        y = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), stride=2, padding=1)
    assert_same_bits(y.numpy(), np.asarray(refsim.conv2d(x, w, spec, stride=2, padding=1)))


def test_fast_mode_equals_exact_where_sums_are_exact():
    """fp8 operand Casts and an fp32 accumulator: with small integers every product and every
    partial sum is exact in fp32, so torch's fp32 matmul (any order) gives exact mode's bits."""
    gen = torch.Generator().manual_seed(5)
    torch.manual_seed(0)
    model = Mixed()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(_int_tensor(gen, *p.shape, hi=2) / 4)
    x = _int_tensor(gen, 2, 6, 16, hi=2)
    spec = GemmSpec(a=Cast("e4m3fn"), b=Cast("e4m3fn"), acc=AccumSpec("fp32"))
    grads = []
    for mode in ("exact", "fast"):
        model.zero_grad()
        with emulate(spec, mode=mode, record=True) as em:
            # attention's softmax makes non-dyadic values: products of those are not exact
            # in fp32 after an e4m3 Cast? They are (4 x 4 significant bits), but their sums
            # are not; compare the products and sums that are exact: the linear and conv ones
            model.attn.qkv(x).sum().backward()
            model.conv(x.transpose(1, 2)).square().sum().backward()
        grads.append([p.grad.clone() for p in (model.attn.qkv.weight, model.conv.weight)])
        assert all(r.mode == mode for r in em.products) and len(em.products) == 4
    for e, f in zip(*grads, strict=True):
        assert_same_bits(f.numpy(), e.numpy())


def test_ops_that_lower_to_products():
    """matmul of vectors (dot, mv), tensordot, addmm/baddbmm with alpha and beta, addbmm, addr:
    each intercepted, with torch's semantics for alpha and beta."""
    gen = torch.Generator().manual_seed(6)
    a, b = _int_tensor(gen, 3, 5), _int_tensor(gen, 5, 4)
    v, u = _int_tensor(gen, 5), _int_tensor(gen, 5)
    bias = _int_tensor(gen, 3, 4)
    bb1, bb2, inp3 = _int_tensor(gen, 2, 3, 5), _int_tensor(gen, 2, 5, 4), _int_tensor(gen, 2, 3, 4)
    square = _int_tensor(gen, 5, 5)
    calls = {
        "dot": lambda: v @ u, "mv": lambda: a @ v,
        "tensordot": lambda: torch.tensordot(a, b, dims=1),
        "addmm": lambda: torch.addmm(bias, a, b, beta=0.5, alpha=2.0),
        "baddbmm": lambda: torch.baddbmm(inp3, bb1, bb2, beta=0.0),
        "addbmm": lambda: torch.addbmm(bias, bb1, bb2),
        "addr": lambda: torch.addr(square, v, u, alpha=3.0),
        "addmv": lambda: torch.addmv(v[:3], a, v),
        "einsum": lambda: torch.einsum("ij,jk->ik", a, b)}
    for name, call in calls.items():
        expected = call()
        with emulate("fp32") as em:
            got = call()
        assert_same_bits(got.numpy(), expected.numpy(), context=name)
        assert len(em.products) == 1 and em.products[0].role == "forward", name


def test_bias_in_the_accumulator_enters_as_c():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((8, 40)).astype(np.float32)
    lin = nn.Linear(40, 6)
    spec = refsim.hardware.gemm_spec("h100", "e4m3")
    with emulate(spec, bias="accumulator", record=True) as em:
        y = lin(torch.from_numpy(x))
    rec = em.products[0]
    assert rec.c is not None
    w, bias = lin.weight.detach().numpy(), lin.bias.detach().numpy()
    expected = refsim.matmul(x, w.T, spec, c=np.broadcast_to(bias, (8, 6)), seed=rec.seed)
    assert_same_bits(y.detach().numpy(), np.asarray(expected))
    with emulate(spec) as em:  # the default: the epilogue, one fp32 addition
        y = lin(torch.from_numpy(x))
    p = np.asarray(refsim.matmul(x, w.T, spec, seed=em.products[0].seed))
    assert_same_bits(y.detach().numpy(), p + bias)


def test_plan_patterns_and_last_reach_named_products():
    """A Numerics plan's layer patterns select by product name; the mxfp8 recipe keeps
    attention products in bf16 and nvfp4 keeps the model's last layer (LAST) in bf16 too."""
    torch.manual_seed(0)
    em = _run(nn.Sequential(Mixed()), torch.randn(2, 6, 16), "nvfp4")  # names "0.attn.qk", ...
    for rec in em.products:
        kept = rec.layer in ("0.attn.qk", "0.attn.av", "0.head")  # "*.attn.*" and LAST
        assert (rec.product.scaling == "none") == kept, (rec.layer, rec.role)
    plan = Numerics(Product(GemmSpec(acc=AccumSpec("fp32"))),
                    {"conv": {"backward-weight": Product(GemmSpec(acc=AccumSpec("fp16")))}})
    em = _run(Mixed(), torch.randn(2, 6, 16), plan)
    for rec in em.products:
        fp16 = rec.layer == "conv" and rec.role == "backward-weight"
        assert (rec.spec.acc.fmt.name == "fp16") == fp16


def test_seeds_follow_the_step_and_repeats():
    lin = nn.Linear(4, 4)
    x = torch.ones(2, 4)
    with emulate(FP8_SR) as em:
        lin(x)
        lin(x)
        em.next_step()
        lin(x)
        x @ x.T  # outside every module: named by op, counted per step
        x @ x.T
    # the outermost module has the path "": its product is named by its op
    assert [r.layer for r in em.products] == ["addmm0"] * 3 + ["mm0", "mm1"]
    assert [r.seed for r in em.products[:3]] == [
        gemm_seed(0, 0, "addmm0", "forward"), gemm_seed(0, 0, "addmm0#1", "forward"),
        gemm_seed(0, 1, "addmm0", "forward")]


def test_unsupported_ops_raise_or_run_natively():
    a = torch.randn(3, 4, dtype=torch.complex64)
    b = torch.randn(4, 2, dtype=torch.complex64)
    with pytest.raises(NotImplementedError, match=r"aten\.mm .*complex64"), emulate("fp8"):
        a @ b
    with emulate("fp8", unsupported="native") as em:
        out = a @ b
    assert torch.equal(out, a @ b)
    assert len(em.products) == 1 and em.products[0].native and em.products[0].op == "mm"
    ints = torch.ones(2, 3, dtype=torch.int64)
    with pytest.raises(NotImplementedError, match=r"aten\.mm .*int64"), emulate("fp8"):
        ints @ ints.T


def test_sparse_operands_are_named():
    s = torch.eye(3).to_sparse()
    d = torch.randn(3, 2)
    with pytest.raises((NotImplementedError, RuntimeError), match=r"aten\.\w+"), emulate("fp8"):
        torch.sparse.mm(s, d)


@pytest.mark.parametrize("kwargs, match", [
    ({"mode": "fastest"}, "mode"), ({"unsupported": "ignore"}, "unsupported"),
    ({"bias": "c"}, "bias"), ({"default_role": "backward"}, "default_role")])
def test_bad_arguments_name_the_parameter(kwargs, match):
    with pytest.raises(ValueError, match=match):
        emulate("fp8", **kwargs)


def test_bad_numerics():
    with pytest.raises(TypeError, match="numerics"):
        emulate(3.5)
    with pytest.raises(ValueError, match="preset"):
        emulate("fp9")


def test_hooks_and_modes_are_removed_on_exit():
    lin = nn.Linear(3, 3)
    x = torch.randn(2, 3)
    with pytest.raises(RuntimeError, match="boom"), emulate("fp8") as em:
        lin(x)
        raise RuntimeError("boom")
    n = len(em.products)
    lin(x) @ torch.randn(3, 3)
    assert len(em.products) == n
