"""Every compiled lowering gives the per-node kernel's integers, on random shapes and parameters.

Each case builds one node with random attributes, shapes, exponents and weights (int8 and int16, every
target), prepares it (``engine.Plan``), lowers it (``program.Program``), checks the node really compiled
(no host step) and compares the program with the per-node kernel on several random inputs (pushed one
after the other, so stateful ops are compared over time). A lowering without a case here, or an op with
a kernel but neither a lowering nor a declared refusal, fails the last tests.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from chunkwise.emu.engine import Plan
from chunkwise.emu.program import Program, lowering_check
from chunkwise.emu.registry import KERNELS, LOWERINGS, NOT_LOWERED, supported_ops
from chunkwise.ir.graph import Graph, Node, Tensor, ValueInfo, make_attribute

TARGETS = ["esp32p4", "esp32s3", "c"]
DTYPES = ["int8", "int16"]
QT = {"int8": "S8", "int16": "S16"}


class Case:
    """One node under test: inputs (activations and initializers), outputs, attributes."""

    def __init__(self, op: str, dtype: str, rng: np.random.Generator):
        self.op, self.dtype, self.rng = op, dtype, rng
        self.g = Graph(name=f"lower_{op}")
        self.inputs: list[str] = []
        self.feeds: dict[str, callable] = {}
        self.attrs: dict = {"quant_type": QT.get(dtype, "F32")}
        self.outs: list[str] = []
        self._n = 0

    def _name(self, base):
        self._n += 1
        return f"{base}{self._n}"

    def act(self, shape, exp=None, dtype=None) -> str:
        """An activation input, fed random integers (or floats) of ``dtype``."""
        dtype = dtype or self.dtype
        name = self._name("x")
        exps = () if dtype == "float32" else (self.rng.integers(-9, -3) if exp is None else exp,)
        self.g.inputs.append(ValueInfo(name, dtype, tuple(shape), tuple(int(e) for e in exps)))
        self.inputs.append(name)
        self.feeds[name] = (tuple(shape), dtype)
        return name

    def const(self, data, exps=(), name=None) -> str:
        data = np.asarray(data)
        name = name or self._name("c")
        self.g.initializers[name] = Tensor(name, str(data.dtype), tuple(data.shape), data, tuple(int(e) for e in exps))
        self.inputs.append(name)
        return name

    def table(self, data, exp) -> str:
        """An initializer named by an attribute (not a node input)."""
        data = np.asarray(data)
        name = self._name("lut")
        self.g.initializers[name] = Tensor(name, str(data.dtype), tuple(data.shape), data, (int(exp),))
        return name

    def ints(self, shape, dtype=None, lim=None):
        dtype = dtype or self.dtype
        info = np.iinfo(dtype)
        lo, hi = (info.min, info.max) if lim is None else (-lim, lim)
        return self.rng.integers(lo, hi + 1, size=shape).astype(dtype)

    def out(self, dtype=None, exp=None) -> str:
        dtype = dtype or self.dtype
        name = self._name("y")
        exps = () if dtype == "float32" else (int(self.rng.integers(-9, -3) if exp is None else exp),)
        self.g.outputs.append(ValueInfo(name, dtype, None, exps))
        self.outs.append(name)
        return name

    def build(self, inputs=None, **attrs):
        self.attrs.update(attrs)
        node = Node(self.op, f"node_{self.op}", list(self.inputs if inputs is None else inputs), list(self.outs))
        for k, v in self.attrs.items():
            if v is not None:
                node.attrs[k] = make_attribute(v)
        self.g.nodes.append(node)
        return self

    def random_feeds(self):
        out = {}
        for name, (shape, dtype) in self.feeds.items():
            if dtype == "float32":
                out[name] = (self.rng.standard_normal(shape) * 4).astype(np.float32)
            else:
                out[name] = self.ints(shape, dtype)
        return out


# ---- one generator per op family: (case, rng) -> None ----------------------------------------------------


def _shape(rng, rank, lo=1, hi=6):
    return tuple(int(v) for v in rng.integers(lo, hi + 1, size=rank))


def gen_conv(c: Case, rng):
    two_d = bool(rng.integers(2))
    kind = rng.choice(["full", "depthwise", "grouped"])
    cin = int(rng.integers(1, 40))
    group = 1
    if kind == "depthwise":
        group = cin = max(cin, 2)
    elif kind == "grouped":
        group = int(rng.integers(2, 4))
        cin = group * int(rng.integers(1, 9))
    cout = cin if kind == "depthwise" else group * int(rng.integers(1, 24))
    nsp = 2 if two_d else 1
    ks = [int(v) for v in rng.integers(1, 4, size=nsp)]
    st = [int(v) for v in rng.integers(1, 3, size=nsp)]
    dil = [int(v) for v in rng.integers(1, 3, size=nsp)]
    pads = [int(v) for v in rng.integers(0, 3, size=2 * nsp)]
    sp = [int(k * d + rng.integers(0, 5)) for k, d in zip(ks, dil)]
    x = c.act((1, *sp, cin))
    wshape = (*ks, 1, cin) if kind == "depthwise" else (*ks, cin // group, cout)
    w = c.ints(wshape, lim=127 if c.dtype == "int8" else int(rng.choice([127, 2000, 32767])))
    e_w = [int(v) for v in rng.integers(-12, -5, size=cout)] if rng.integers(2) else [int(rng.integers(-12, -5))]
    c.inputs = [x]
    c.const(w, e_w)
    if rng.integers(3):
        e_x = c.g.inputs[0].exponents[0]
        be = [e_x + e for e in (e_w if len(e_w) > 1 else e_w * cout)]
        c.const(rng.integers(-3000, 3001, size=cout).astype(np.int32), be)
    c.out()
    c.build(kernel_shape=ks, strides=st, dilations=dil, pads=pads, group=group,
            activation=str(rng.choice(["Linear", "Relu"])))


def gen_gemm(c: Case, rng):
    k, n = int(rng.integers(1, 70)), int(rng.integers(1, 40))
    x = c.act((int(rng.integers(1, 4)), k))
    c.inputs = [x]
    w = c.ints((1, 1, k, n), lim=127)
    e_w = [int(v) for v in rng.integers(-12, -5, size=n)]
    c.const(w, e_w)
    e_x = c.g.inputs[0].exponents[0]
    c.const(rng.integers(-3000, 3001, size=n).astype(np.int32), [e_x + e for e in e_w])
    c.out()
    c.build(activation=str(rng.choice(["Linear", "Relu"])))


def gen_matmul(c: Case, rng):
    m, k, n = (int(v) for v in rng.integers(1, 20, size=3))
    batch = (int(rng.integers(1, 3)),)
    c.act(batch + (m, k))
    if rng.integers(2):
        c.const(c.ints((k, n), lim=100), [int(rng.integers(-10, -5))])
        layout = "packed"
    else:
        c.act(batch + (k, n))
        layout = str(rng.choice(["packed", "native_kn"]))
    c.out()
    c.build(activation=str(rng.choice(["Linear", "Relu"])), input1_layout=layout)


def _bcast_shapes(rng):
    rank = int(rng.integers(1, 5))
    out = _shape(rng, rank, 1, 7)
    a = tuple(d if rng.integers(3) else 1 for d in out)
    b = tuple(d if rng.integers(3) else 1 for d in out)
    if rng.integers(3) == 0:
        b = b[int(rng.integers(0, rank)):] or (1,)
    return a, b


def gen_binary(c: Case, rng):
    sa, sb = _bcast_shapes(rng)
    e = int(rng.integers(-8, -3))
    same = c.op in ("Add", "Sub", "Max", "Min")
    c.act(sa, e)
    if rng.integers(3) == 0:
        c.const(c.ints(sb), (e if same else int(rng.integers(-8, -3)),))
    else:
        c.act(sb, e if same else None)
    c.out(exp=e if same else None)
    c.build()


def gen_compare(c: Case, rng):
    sa, sb = _bcast_shapes(rng)
    c.act(sa, -5)
    c.act(sb, -5)
    c.out(dtype="bool")
    c.build()


def gen_unary(c: Case, rng):
    shape = _shape(rng, int(rng.integers(1, 5)))
    x = c.act(shape)
    c.inputs = [x]
    if c.op == "PRelu":
        shape = (1,) + _shape(rng, 3)
        c.g.inputs[0] = ValueInfo(x, c.dtype, shape, c.g.inputs[0].exponents)
        c.feeds[x] = (shape, c.dtype)
        n = 1 if rng.integers(2) else shape[-1]
        c.const(c.ints((n,), lim=100), (int(rng.integers(-9, -5)),))
    if c.op == "Clip":
        lo, hi = sorted(int(v) for v in c.ints(2))
        c.const(np.array(lo, dtype=c.dtype), c.g.inputs[0].exponents)
        c.const(np.array(hi, dtype=c.dtype), c.g.inputs[0].exponents)
    attrs = {}
    if c.op == "LeakyRelu":
        attrs["alpha"] = float(rng.choice([0.01, 0.1, 0.3]))
    e_out = c.g.inputs[0].exponents[0] if c.op == "Neg" else None
    c.out(exp=e_out)
    if c.dtype == "int8" and c.op != "Neg" and rng.integers(2):  # ESP-DL's LUT module
        attrs["lut"] = c.table(c.ints(256), c.g.outputs[-1].exponents[0])
    c.build(**attrs)


ACTS = ("Sigmoid", "Tanh", "Swish", "HardSigmoid", "HardSwish", "Elu", "Exp", "Log", "Sqrt")


def gen_activation(c: Case, rng):
    c.act(_shape(rng, int(rng.integers(1, 4)), 1, 9))
    c.out()
    attrs = {}
    e_out = c.g.outputs[-1].exponents[0]
    if c.op in ("LUT", "Gelu"):
        if c.dtype == "int8":
            attrs["lut"] = c.table(c.ints(256), e_out)
        else:
            step = int(2 ** rng.integers(0, 9))
            attrs["lut"] = c.table(c.ints(65536 // step + 1), e_out)
            attrs["int16_lut_step"] = step
    elif c.op == "HardSigmoid":
        attrs.update(alpha=float(rng.choice([0.2, 1 / 6])), beta=0.5)
    elif c.op == "Elu":
        attrs["alpha"] = float(rng.choice([1.0, 0.5]))
    c.build(**attrs)


def gen_quant(c: Case, rng):
    shape = _shape(rng, int(rng.integers(1, 4)))
    other = "int16" if c.dtype == "int8" else "int8"
    if c.op == "QuantizeLinear":
        c.act(shape, dtype="float32")
        c.out()
    elif c.op == "DequantizeLinear":
        c.act(shape)
        c.out(dtype="float32")
    else:
        c.act(shape)
        c.out(dtype=str(rng.choice([c.dtype, other])))
    c.attrs.pop("quant_type")
    c.build()


def gen_pool(c: Case, rng):
    two_d = bool(rng.integers(2))
    nsp = 2 if two_d else 1
    ks = [int(v) for v in rng.integers(1, 4, size=nsp)]
    st = [int(v) for v in rng.integers(1, 3, size=nsp)]
    pads = [int(rng.integers(0, k)) for k in ks for _ in range(2)]
    pads = pads[0::2] + pads[1::2]
    sp = [k + int(rng.integers(0, 6)) for k in ks]
    c.act((1, *sp, int(rng.integers(1, 20))))
    c.out()
    if c.op == "GlobalAveragePool":
        c.build()
    else:
        c.build(kernel_shape=ks, strides=st, pads=pads)


REDUCE = ("ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceMax", "ReduceMin", "ReduceMean", "ReduceL2",
          "ReduceLogSum", "ReduceLogSumExp", "ReduceProd")


def gen_reduce(c: Case, rng):
    rank = int(rng.integers(1, 4))
    shape = _shape(rng, rank, 2, 5)
    axes = [int(a) for a in rng.permutation(rank)[:int(rng.integers(1, rank + 1))]]
    c.act(shape, int(rng.integers(-6, -2)))
    c.const(np.array(sorted(axes), dtype=np.int64))
    c.out()
    c.build(keepdims=int(rng.integers(2)))


def gen_softmax(c: Case, rng):
    shape = _shape(rng, int(rng.integers(1, 4)))
    c.act(shape, int(rng.integers(-7, -2)))
    c.out(dtype="float32")
    c.build(axis=int(rng.integers(-len(shape), len(shape))))


def gen_norm(c: Case, rng):
    shape = _shape(rng, int(rng.integers(2, 4)), 2, 8)
    rank = len(shape)
    axis = int(rng.integers(1, rank))
    n = int(np.prod(shape[axis:]))
    c.act(shape, int(rng.integers(-7, -3)))
    if c.op == "LayerNormalization":
        if rng.integers(3):
            c.const(c.ints(shape[axis:], lim=100), (-6,))
            if rng.integers(2):
                c.const(c.ints(shape[axis:], lim=100), (-6,))
        c.out()
        c.build(axis=axis, epsilon=1e-5)
    elif c.op == "RMSNormalization":
        c.const((rng.standard_normal(n) * 0.5 + 1).astype(np.float32).reshape(shape[axis:]))
        c.out()
        c.build(axis=axis, epsilon=1e-5)
    else:
        c.out()
        c.build(axis=int(rng.integers(0, rank)), p=int(rng.choice([1, 2])))


def gen_rnn(c: Case, rng):
    gates = 4 if c.op == "LSTM" else 3
    seq, ins, hid = int(rng.integers(1, 5)), int(rng.integers(1, 20)), int(rng.integers(1, 12))
    ndir = int(rng.integers(1, 3))
    c.act((seq, 1, ins), -6)
    c.const(c.ints((ndir, gates * hid, ins), lim=100), (-8,))
    c.const(c.ints((ndir, gates * hid, hid), lim=100), (-8,))
    c.const(rng.integers(-2000, 2001, size=(ndir, 2 * gates * hid)).astype(np.int16), (-9,))
    c.inputs.append("")
    if rng.integers(2):
        c.act((ndir, 1, hid), -6)
    c.out(exp=-6)
    c.out(exp=-6)
    if c.op == "LSTM":
        c.out(dtype="int16", exp=-9)
    attrs = dict(hidden_size=hid, direction="bidirectional" if ndir == 2 else "forward", gate_exponent=-9)
    if c.op == "GRU":
        attrs["linear_before_reset"] = 1
    c.build(**attrs)


def gen_resize(c: Case, rng):
    two_d = bool(rng.integers(2))
    sp = _shape(rng, 2 if two_d else 1, 1, 6)
    ch = int(rng.integers(1, 9))
    c.act((1, *sp, ch))
    c.inputs.append("")  # no roi
    scales = [1.0, 1.0] + [float(rng.choice([0.5, 1.0, 2.0, 3.0])) for _ in sp]
    c.const(np.array(scales, dtype=np.float32))
    c.out()
    c.build(mode=str(rng.choice(["nearest", "linear"])),
            coordinate_transformation_mode=str(rng.choice(["half_pixel", "align_corners"])))


def gen_movement(c: Case, rng):
    op = c.op
    rank = int(rng.integers(1, 5))
    shape = _shape(rng, rank, 1, 6)
    c.attrs.pop("quant_type")
    if op == "Concat":
        axis = int(rng.integers(0, rank))
        for _ in range(int(rng.integers(1, 4))):
            s = list(shape)
            s[axis] = int(rng.integers(1, 5))
            c.act(tuple(s), -5)
        c.out(exp=-5)
        c.build(axis=axis)
        return
    x = c.act(shape, -5)
    if op == "Split":
        axis = int(rng.integers(0, rank))
        cuts = sorted(int(v) for v in rng.integers(0, shape[axis] + 1, size=int(rng.integers(0, 3))))
        sizes = [b - a for a, b in zip([0] + cuts, cuts + [shape[axis]])]
        c.const(np.array(sizes, dtype=np.int64))
        for _ in sizes:
            c.out(exp=-5)
        c.build(axis=axis)
    elif op == "Slice":
        axes = [int(a) for a in rng.permutation(rank)[:int(rng.integers(1, rank + 1))]]
        starts, ends, steps = [], [], []
        for a in axes:
            d = shape[a]
            step = int(rng.choice([1, 1, 2, 3, -1, -2]))
            if step > 0:
                s0 = int(rng.integers(0, d))
                starts.append(s0)
                ends.append(int(rng.integers(s0 + 1, d + 1)))
            else:
                starts.append(-1)
                ends.append(-(d + 1) if rng.integers(2) else -2**31)
            steps.append(step)
        for v in (starts, ends, axes, steps):
            c.const(np.array(v, dtype=np.int64))
        c.out(exp=-5)
        c.build()
    elif op == "Gather":
        axis = int(rng.integers(0, rank))
        c.const(rng.integers(0, shape[axis], size=_shape(rng, int(rng.integers(1, 3)), 1, 4)).astype(np.int64))
        c.out(exp=-5)
        c.build(axis=axis)
    elif op == "Pad":
        mode = str(rng.choice(["constant", "edge", "reflect"]))
        pads = [int(rng.integers(0, (d if mode == "reflect" else 3))) for d in shape] * 2
        if mode == "reflect":
            pads = [min(p, d - 1) for p, d in zip(pads, list(shape) * 2)]
        c.const(np.array(pads, dtype=np.int64))
        if mode == "constant":
            c.const(np.array(int(c.ints(()) // 2), dtype=c.dtype), (-5,))
        c.out(exp=-5)
        c.build(mode=mode)
    elif op in ("DepthToSpace", "SpaceToDepth"):
        bs = int(rng.integers(1, 4))
        if op == "DepthToSpace":
            shape = (1, int(rng.integers(1, 4)), int(rng.integers(1, 4)), bs * bs * bs)
        else:
            shape = (1, bs * int(rng.integers(1, 3)), bs * int(rng.integers(1, 3)), int(rng.integers(1, 5)))
        c.g.inputs[0] = ValueInfo(x, c.dtype, shape, (-5,))
        c.feeds[x] = (shape, c.dtype)
        c.out(exp=-5)
        c.build(blocksize=bs, **({"mode": str(rng.choice(["DCR", "CRD"]))} if op == "DepthToSpace" else {}))
    elif op == "InsertZeros":
        shape = (1,) + _shape(rng, int(rng.integers(2, 4)), 1, 5)
        c.g.inputs[0] = ValueInfo(x, c.dtype, shape, (-5,))
        c.feeds[x] = (shape, c.dtype)
        nsp = len(shape) - 2
        c.out(exp=-5)
        c.build(stride=[int(v) for v in rng.integers(1, 4, size=nsp)],
                output_padding=[int(v) for v in rng.integers(0, 2, size=nsp)])
    elif op == "Transpose":
        c.out(exp=-5)
        c.build(perm=[int(v) for v in rng.permutation(rank)])
    elif op == "Reshape":
        c.const(np.array([-1], dtype=np.int64))
        c.out(exp=-5)
        c.build()
    elif op == "Flatten":
        c.out(exp=-5)
        c.build(axis=int(rng.integers(0, rank + 1)))
    elif op in ("Squeeze", "Unsqueeze"):
        if op == "Unsqueeze":
            c.const(np.array([int(rng.integers(0, rank + 1))], dtype=np.int64))
        c.out(exp=-5)
        c.build()
    elif op == "Identity":
        c.out(exp=-5)
        c.build()
    elif op == "StreamingCache":
        shape = (1,) + _shape(rng, int(rng.integers(2, 4)), 1, 5)
        c.g.inputs[0] = ValueInfo(x, c.dtype, shape, (-5,))
        c.feeds[x] = (shape, c.dtype)
        c.out(exp=-5)
        c.build(window_size=int(rng.integers(2, 7)), frame_axis=1)


GENERATORS = {
    "Conv": gen_conv, "Gemm": gen_gemm, "MatMul": gen_matmul,
    **dict.fromkeys(("Add", "Sub", "Max", "Min", "Mul", "Div"), gen_binary),
    **dict.fromkeys(("Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual"), gen_compare),
    **dict.fromkeys(("Relu", "Neg", "LeakyRelu", "PRelu", "Clip"), gen_unary),
    **dict.fromkeys(ACTS + ("LUT", "Gelu"), gen_activation),
    **dict.fromkeys(("RequantizeLinear", "QuantizeLinear", "DequantizeLinear"), gen_quant),
    **dict.fromkeys(("AveragePool", "GlobalAveragePool", "MaxPool"), gen_pool),
    **dict.fromkeys(REDUCE, gen_reduce),
    **dict.fromkeys(("Softmax", "LogSoftmax"), gen_softmax),
    **dict.fromkeys(("LayerNormalization", "RMSNormalization", "LpNormalization"), gen_norm),
    **dict.fromkeys(("GRU", "LSTM"), gen_rnn),
    "Resize": gen_resize,
    **dict.fromkeys(("Concat", "Split", "Slice", "Gather", "Pad", "DepthToSpace", "SpaceToDepth", "InsertZeros",
                     "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "StreamingCache"),
                    gen_movement),
}
INT8_ONLY = {"Resize"}  # ESP-DL's resize<int16_t> is empty: the kernel refuses int16
CONFIGS = 4  # random node configurations per (op, dtype, target)
PUSHES = 3  # random inputs per configuration, run one after the other


def _cases():
    for op in sorted(GENERATORS):
        for dtype in DTYPES:
            if dtype != "int8" and op in INT8_ONLY:
                continue
            for target in TARGETS:
                yield pytest.param(op, dtype, target, id=f"{op}-{dtype}-{target}")


@pytest.mark.parametrize("op,dtype,target", list(_cases()))
def test_compiled_equals_per_node(op, dtype, target):
    seed = zlib.crc32(f"{op}/{dtype}/{target}".encode())
    rng = np.random.default_rng(seed)
    compiled = 0
    for k in range(CONFIGS):
        c = Case(op, dtype, rng)
        GENERATORS[op](c, rng)
        shapes = {n: s for n, (s, _) in c.feeds.items()}
        try:
            plan = Plan(c.g, target, shapes)
        except Exception as e:  # a random configuration the kernel refuses (e.g. too many merged axes)
            from chunkwise.errors import ChunkwiseError

            if isinstance(e, ChunkwiseError):
                continue
            raise
        prog = Program(plan)
        assert prog.not_compiled == [], [(n.name, why) for n, why in prog.not_compiled]
        compiled += 1
        ref = Plan(c.g, target, shapes)  # the per-node path, with its own state
        for _ in range(PUSHES):
            feeds = c.random_feeds()
            want = ref.run(feeds)
            got = prog.run(feeds)
            assert got.keys() == want.keys()
            for name in want:
                assert got[name].dtype == want[name].dtype, name
                assert got[name].shape == want[name].shape, name
                np.testing.assert_array_equal(got[name], want[name], err_msg=f"{op} config {k} output {name}")
    assert compiled >= 1, f"no random configuration of {op} was accepted by its kernel"


def test_every_kernel_has_a_lowering_or_a_reason():
    assert lowering_check() == []
    supported_ops()
    for op in KERNELS:
        assert op in LOWERINGS or NOT_LOWERED.get(op), op


def test_every_lowering_has_a_random_case():
    supported_ops()
    assert sorted(set(LOWERINGS) - set(GENERATORS)) == []


def test_a_refused_node_runs_between_compiled_rows():
    """Pow has no lowering: the graph still compiles around it, and the program equals the per-node path."""
    rng = np.random.default_rng(5)
    g = Graph(name="segmented")
    g.inputs.append(ValueInfo("x", "int8", (1, 4, 8), (-5,)))
    g.initializers["two"] = Tensor("two", "int8", (1,), np.array([2], dtype=np.int8), (0,))
    nodes = [Node("Relu", "r", ["x"], ["a"]), Node("Pow", "p", ["a", "two"], ["b"]), Node("Neg", "n", ["b"], ["y"])]
    for n in nodes:
        n.attrs["quant_type"] = make_attribute("S8")
    g.nodes += nodes
    g.value_info["a"] = ValueInfo("a", "int8", None, (-5,))
    g.value_info["b"] = ValueInfo("b", "int8", None, (-4,))
    g.outputs.append(ValueInfo("y", "int8", None, (-4,)))
    plan = Plan(g, "esp32p4", {"x": (1, 4, 8)})
    prog = Program(plan)
    assert [(n.op_type, why) for n, why in prog.not_compiled] == [("Pow", NOT_LOWERED["Pow"])]
    for _ in range(3):
        x = rng.integers(-128, 128, size=(1, 4, 8)).astype(np.int8)
        np.testing.assert_array_equal(prog.run({"x": x})["y"], plan.run({"x": x})["y"])


@pytest.mark.parametrize("producer", ["Relu", "Reshape", "output"])
def test_cache_written_in_place(producer):
    """A StreamingCache whose input is computed in the program keeps its frames in the input's producer's
    output (the cache buffer's tail) and moves them at the start of each chunk; compared over several chunks
    with the per-node path, including after reset and when the input is also a graph output."""
    rng = np.random.default_rng(11)
    g = Graph(name="cache_in_place")
    g.inputs.append(ValueInfo("x", "int8", (1, 3, 8), (-5,)))
    nodes = []
    if producer == "Reshape":
        g.initializers["shape"] = Tensor("shape", "int64", (3,), np.array([1, 3, 8], dtype=np.int64), ())
        nodes.append(Node("Reshape", "r", ["x", "shape"], ["a"]))
    else:
        nodes.append(Node("Relu", "r", ["x"], ["a"]))
    cache = Node("StreamingCache", "c", ["a"], ["b"])
    cache.attrs["window_size"] = make_attribute(4)
    cache.attrs["frame_axis"] = make_attribute(1)
    nodes += [cache, Node("Relu", "s", ["b"], ["y"])]
    for n in nodes:
        n.attrs["quant_type"] = make_attribute("S8")
    g.nodes += nodes
    for v in ("a", "b"):
        g.value_info[v] = ValueInfo(v, "int8", None, (-5,))
    g.outputs.append(ValueInfo("y", "int8", None, (-5,)))
    if producer == "output":
        g.outputs.append(ValueInfo("a", "int8", None, (-5,)))
    plan = Plan(g, "esp32p4", {"x": (1, 3, 8)})
    prog, ref = Program(plan), Plan(g, "esp32p4", {"x": (1, 3, 8)})
    assert prog.not_compiled == []
    assert "b" in Program(plan).slots and prog.slots["a"] == prog.slots["b"] + 3 * 8 * 1  # 3 kept frames
    for k in range(8):
        if k == 5:
            prog.reset()
            ref.reset()
        x = rng.integers(-128, 128, size=(1, 3, 8)).astype(np.int8)
        got, want = prog.run({"x": x}), ref.run({"x": x})
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"chunk {k} {name}")
