"""Products and gathers in the quantizer: MatMul, Gather and ConvTranspose, with ESP-PPQ's export conventions.

Float-exact passes on the prepared graph (onnxruntime still runs the result, so calibration sees it):

* :func:`matmul_to_gemm` -- ``MatMul(x, W)`` with a constant 2-D ``W`` (``nn.Linear`` on ``[B, T, C]``), and a
  following ``Add`` of a constant ``[N]`` bias, becomes ``Reshape [M, K] -> Gemm(W, bias) -> Reshape`` back,
  as ESP-PPQ exports it (its formatter fuses MatMul + Add into Gemm; ESP-DL's Gemm multiplies every row).
  A 2-D ``x`` needs no Reshape. MatMul of two activations stays a MatMul (ESP-DL's module, ``input1_layout =
  native_kn``); a constant ``B`` of rank > 2 stays a MatMul with ``B`` packed like a conv filter per matrix
  (``input1_layout = packed``).
* :func:`gather_nonneg` -- ``Gather`` with constant negative indices gets the equivalent non-negative ones
  (ESP-DL's Gather reads ``indices`` as offsets and does not wrap, ``dl_module_gather.hpp``; ESP-PPQ 1.3
  exports ``-1`` as is and the chip reads outside the tensor).

Rewrite before export (:func:`decompose_conv_transpose`, ESP-PPQ's ``ConvTransposeDecompositionPass``):
``ConvTranspose`` -> ``InsertZeros(stride, output_padding)`` (only when a stride is > 1) + ``Conv`` with
stride 1, the kernel flipped along every spatial axis and its in/out channels swapped per group, pads
``dilation * (k - 1) - pad`` on each side. InsertZeros passes its input exponent through.

Parameters as ESP-PPQ quantizes them: a constant MatMul ``B`` per tensor (its quantizer makes only Conv /
ConvTranspose / Gemm weights per channel), from :func:`param_exponent`.
"""

from __future__ import annotations

import numpy as np

from ..emu.rounding import quantize as q_quantize
from ..errors import UnsupportedError
from ..ir import ops as opdefs
from ..ir.layout import weight_layout
from ..ir.ops import Layout
from .export import REWRITES, register_rule
from .prepare import PREPARE_PASSES, FGraph, FNode, infer_shapes, supported_float_ops

PERCENTILE = 0.9999  # ESP-PPQ's OBSERVER_PERCENTILE


# ---- parameters -------------------------------------------------------------------------------------

def param_exponent(w: np.ndarray, bits: int) -> int:
    """Per-tensor power-of-two exponent of a parameter as ESP-PPQ's default observer gives it.

    int8 parameters outside Conv/Gemm's per-channel configs get ESP-PPQ's ``percentile`` observer
    (``torch.kthvalue`` at ``int(n * 0.9999)`` and ``int(n * 0.0001)``: the true max / min for up to 10 000
    values), int16 ones ``minmax``; the scale ``2 * max(|lo|, |hi|) / (qmax - qmin)`` is rounded up to a power
    of two.
    """
    v = np.asarray(w, np.float32).ravel()
    if v.size == 0:
        return -24
    if bits == 8:
        n = v.size
        srt = np.sort(v)
        lo_k = max(0, int(n * (1 - PERCENTILE))) + 1
        hi_k = min(int(n * PERCENTILE), n - 1) + 1
        lo, hi = float(srt[lo_k - 1]), float(srt[hi_k - 1])
    else:
        lo, hi = float(v.min()), float(v.max())
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    scale = max(2.0 * max(abs(lo), abs(hi)) / (qmax - qmin), 2.0 ** -23)
    # ESP-PPQ computes the scale in float32 (torch) before ppq_round_to_power_of_2(ROUND_UP)
    scale = float(np.float32(scale))
    return int(np.ceil(np.log2(scale)))


def quantize_param(w: np.ndarray, bits: int, mode: int) -> tuple[np.ndarray, int]:
    e = param_exponent(w, bits)
    return q_quantize(np.asarray(w, np.float32), e, "int8" if bits == 8 else "int16", mode), e


# ---- float-exact passes ------------------------------------------------------------------------------

def _origin(fg: FGraph, new: list[str], old: list[str]) -> None:
    """Nodes ``new`` replace the ONNX nodes ``old`` (for ``int16_nodes`` and the report). Kept on the graph as
    ``product_origin`` too: the export stage's rewrite starts a fresh ``fg.origin``, :func:`restore_origin`
    puts these back."""
    src = []
    for o in old:
        src += fg.origin.pop(o, [o]) if hasattr(fg, "origin") else [o]
    keep = fg.__dict__.setdefault("product_origin", {})
    for n in new:
        keep[n] = list(src)
        if hasattr(fg, "origin"):
            fg.origin[n] = list(src)


def restore_origin(fg: FGraph) -> int:
    """The prepare-stage origins of :func:`matmul_to_gemm`'s nodes, back into ``fg.origin``."""
    names = {n.name for n in fg.nodes}
    keep = {k: v for k, v in fg.__dict__.get("product_origin", {}).items() if k in names}
    if hasattr(fg, "origin"):
        for k, v in keep.items():
            fg.origin.setdefault(k, v)
    return len(keep)


def _const_name(fg: FGraph, base: str) -> str:
    name, i = base, 0
    while name in fg.consts or any(name in n.outputs for n in fg.nodes):
        i += 1
        name = f"{base}_{i}"
    return name


def gather_nonneg(fg: FGraph) -> int:
    """Constant negative Gather indices -> ``index + dim`` (out-of-range indices are refused). Returns the count
    of rewritten nodes."""
    count = 0
    for n in fg.nodes:
        if n.op != "Gather":
            continue
        x, idx = n.inputs[0], n.inputs[1] if len(n.inputs) > 1 else ""
        if idx not in fg.consts:
            raise UnsupportedError("Gather indices must be constants (ESP-DL reads them when it loads the model)",
                                   node=n.name, op="Gather", supported=["constant indices"])
        shp = fg.shapes.get(x)
        if shp is None:
            raise UnsupportedError("Gather input without a static shape", node=n.name, op="Gather")
        axis = int(n.attrs.get("axis", 0))
        if not -len(shp) <= axis < len(shp):
            raise UnsupportedError(f"axis {axis} out of range for rank {len(shp)}", node=n.name, op="Gather")
        axis %= len(shp)
        dim = int(shp[axis])
        ind = np.asarray(fg.consts[idx])
        if ind.size and (int(ind.min()) < -dim or int(ind.max()) >= dim):
            raise UnsupportedError(f"indices {ind.ravel().tolist()[:8]} out of range for a dimension of {dim}",
                                   node=n.name, op="Gather", supported=[f"indices in [-{dim}, {dim})"])
        n.attrs["axis"] = axis
        if ind.size and int(ind.min()) < 0:
            new = np.where(ind < 0, ind + dim, ind).astype(ind.dtype)
            name = _const_name(fg, f"{idx}_nonneg")
            fg.consts[name] = new
            n.inputs[1] = name
            if not any(idx in m.inputs for m in fg.nodes):
                del fg.consts[idx]
            count += 1
    return count


def _bias_add(fg: FGraph, mm: FNode, n_out: int):
    """The Add of a constant bias ``[N]`` (any leading 1 dims) that alone reads ``mm``'s output, or None."""
    y = mm.outputs[0]
    readers = fg.consumers(y)
    if fg.is_output(y) or len(readers) != 1 or readers[0].op != "Add":
        return None, None
    add = readers[0]
    others = [u for u in add.inputs if u != y]
    if len(others) != 1 or others[0] not in fg.consts or add.inputs.count(y) != 1:
        return None, None
    b = np.asarray(fg.consts[others[0]])
    if b.size != n_out or (b.ndim and b.shape[-1] != n_out) or b.ndim > len(fg.shapes[y]):
        return None, None
    return add, b.reshape(n_out).astype(np.float32)


def matmul_to_gemm(fg: FGraph) -> int:
    """MatMul with a constant 2-D right operand (+ a constant bias Add) -> [Reshape] Gemm [Reshape]."""
    count = 0
    for mm in [n for n in fg.nodes if n.op == "MatMul"]:
        a, b = mm.inputs
        if a in fg.consts and b in fg.consts:
            continue  # folded already
        if a in fg.consts:
            raise UnsupportedError("MatMul with a constant first operand", node=mm.name, op="MatMul",
                                   supported=["activation x constant", "activation x activation"])
        if b not in fg.consts or np.asarray(fg.consts[b]).ndim != 2:
            continue  # dynamic MatMul / batched constant: ESP-DL's MatMul module
        w = np.asarray(fg.consts[b], np.float32)
        k, n_out = w.shape
        sa = tuple(fg.shapes[a])
        if sa[-1] != k:
            raise UnsupportedError(f"inner dimensions differ: {list(sa)} x {list(w.shape)}", node=mm.name, op="MatMul")
        y_shape = tuple(sa[:-1]) + (n_out,)
        add, bias = _bias_add(fg, mm, n_out)
        y = add.outputs[0] if add is not None else mm.outputs[0]
        i = fg.nodes.index(mm)
        new_nodes = []
        gemm_in, gemm_out = a, y
        rows = int(np.prod(sa[:-1], dtype=np.int64)) if len(sa) > 1 else 1
        if len(sa) != 2:
            gemm_in = _const_name(fg, f"{mm.name}/Reshape_in_output_0")
            shp = _const_name(fg, f"{mm.name}/Reshape_in_shape")
            fg.consts[shp] = np.array([rows, k], np.int64)
            new_nodes.append(FNode("Reshape", _const_name(fg, f"{mm.name}/Reshape_in"), [a, shp], [gemm_in]))
            gemm_out = _const_name(fg, f"{mm.name}/Gemm_output_0")
        wname = _const_name(fg, f"{mm.name}_weight")
        fg.consts[wname] = w
        ins = [gemm_in, wname]
        if bias is not None:
            bname = _const_name(fg, f"{mm.name}_bias")
            fg.consts[bname] = bias
            ins.append(bname)
        new_nodes.append(FNode("Gemm", mm.name, ins, [gemm_out], {"alpha": 1.0, "beta": 1.0, "transB": 0}))
        if len(sa) != 2:
            shp = _const_name(fg, f"{mm.name}/Reshape_out_shape")
            fg.consts[shp] = np.array(y_shape, np.int64)
            new_nodes.append(FNode("Reshape", _const_name(fg, f"{mm.name}/Reshape_out"), [gemm_out, shp], [y]))
        fg.nodes.remove(mm)
        if add is not None:
            fg.nodes.remove(add)
        _origin(fg, [n.name for n in new_nodes], [mm.name] + ([add.name] if add is not None else []))
        fg.nodes[i:i] = new_nodes
        count += 1
    if count:
        used = {u for n in fg.nodes for u in n.inputs}
        for c in [c for c in fg.consts if c not in used and c not in fg.outputs]:
            del fg.consts[c]
        infer_shapes(fg)
    return count


def row_wise(op: str) -> bool:
    """A unary element-wise op the quantizer takes whose ESP-DL kernel runs at any rank (PRelu needs 4-D): a
    Gemm's rows can pass through it in 2-D."""
    d = opdefs.find(op)
    return d is not None and d.layout is Layout.ELEMENTWISE and not d.ranks and op in supported_float_ops()


def collapse_gemm_reshapes(fg: FGraph) -> int:
    """``Reshape(back to [B, T, N]) -> row-wise activations -> Reshape([B*T, N])`` between two Gemms made by
    :func:`matmul_to_gemm` -> the activations run on the 2-D rows directly, as ESP-PPQ's simplified graph has
    it (runs after the pattern fusions, which turn GELU / Swish into single ops). Returns the count."""
    count = 0
    prods = fg.producers()
    for r_in in [n for n in fg.nodes if n.op == "Reshape"]:
        if r_in not in fg.nodes:
            continue
        chain, v = [], r_in.inputs[0]
        while v in prods and row_wise(prods[v].op) and len(fg.consumers(v)) == 1 and not fg.is_output(v):
            chain.append(prods[v])
            v = prods[v].inputs[0]
        r_out = prods.get(v)
        if not chain or r_out is None or r_out.op != "Reshape" or len(fg.consumers(v)) != 1 or fg.is_output(v):
            continue
        src = r_out.inputs[0]
        if tuple(fg.shapes[src]) != tuple(fg.shapes[r_in.outputs[0]]) or fg.is_output(r_in.outputs[0]):
            continue
        if any(len(n.inputs) > 1 and any(u and u not in fg.consts for u in n.inputs[1:]) for n in chain):
            continue
        chain[-1].inputs[0] = src
        for n in chain:
            for o in n.outputs:
                fg.shapes[o] = tuple(fg.shapes[src])
        dst, new = r_in.outputs[0], r_in.inputs[0]
        for n in fg.nodes:
            n.inputs = [new if u == dst else u for u in n.inputs]
        fg.nodes.remove(r_in)
        fg.nodes.remove(r_out)
        prods = fg.producers()
        count += 1
    return count


def prepare_products(fg: FGraph) -> None:
    gather_nonneg(fg)
    matmul_to_gemm(fg)


# ---- ConvTranspose -> InsertZeros + Conv ----------------------------------------------------------------

def _ints(v, n: int, default: int, what: str, node: FNode) -> list[int]:
    if v is None or (isinstance(v, (list, tuple)) and not v):
        return [default] * n
    if isinstance(v, (int, np.integer)):
        return [int(v)] * n
    v = [int(x) for x in v]
    if len(v) != n:
        raise UnsupportedError(f"{what} {v} does not fit a {n}-D ConvTranspose", node=node.name, op="ConvTranspose")
    return v


def conv_transpose_as_conv(w: np.ndarray, group: int) -> np.ndarray:
    """ConvTranspose weight ``[Cin, Cout/g, k...]`` -> the equivalent Conv weight ``[Cout, Cin/g, k...]``:
    spatial axes flipped, in/out channels swapped within each group."""
    cin, cout_g = w.shape[:2]
    sp = list(w.shape[2:])
    f = np.flip(w, axis=tuple(range(2, w.ndim)))
    return np.ascontiguousarray(f.reshape([group, cin // group, cout_g] + sp).swapaxes(1, 2)
                                .reshape([cout_g * group, cin // group] + sp))


def decompose_conv_transpose(fg: FGraph) -> int:
    """Every ConvTranspose -> (InsertZeros +) Conv, in place; the Conv keeps the node's name and output."""
    count = 0
    for ct in [n for n in fg.nodes if n.op == "ConvTranspose"]:
        x = ct.inputs[0]
        if len(ct.inputs) < 2 or ct.inputs[1] not in fg.consts:
            raise UnsupportedError("ConvTranspose weight must be a constant", node=ct.name, op="ConvTranspose")
        w = np.asarray(fg.consts[ct.inputs[1]], np.float32)
        nsp = w.ndim - 2
        if nsp not in (1, 2):
            raise UnsupportedError(f"{nsp}-D ConvTranspose", node=ct.name, op="ConvTranspose", supported=["1-D", "2-D"])
        a = ct.attrs
        if a.get("auto_pad", "NOTSET") not in ("NOTSET", ""):
            raise UnsupportedError(f"auto_pad={a['auto_pad']}", node=ct.name, op="ConvTranspose",
                                   supported=["explicit pads"])
        if a.get("output_shape"):
            raise UnsupportedError("output_shape", node=ct.name, op="ConvTranspose",
                                   supported=["pads and output_padding (PyTorch's export)"])
        ks = [int(k) for k in w.shape[2:]]
        if a.get("kernel_shape") and [int(k) for k in a["kernel_shape"]] != ks:
            raise UnsupportedError(f"kernel_shape {list(a['kernel_shape'])} differs from the weight's {ks}",
                                   node=ct.name, op="ConvTranspose")
        strides = _ints(a.get("strides"), nsp, 1, "strides", ct)
        dil = _ints(a.get("dilations"), nsp, 1, "dilations", ct)
        pads = _ints(a.get("pads"), 2 * nsp, 0, "pads", ct)
        opad = _ints(a.get("output_padding"), nsp, 0, "output_padding", ct)
        group = int(a.get("group", 1))
        cin = int(fg.shapes[x][1])
        if w.shape[0] != cin or cin % group:
            raise UnsupportedError(f"weight {list(w.shape)} for {cin} input channels and group {group}",
                                   node=ct.name, op="ConvTranspose")
        if any(p >= s for p, s in zip(opad, strides)):
            raise UnsupportedError(f"output_padding {opad} not below strides {strides}", node=ct.name,
                                   op="ConvTranspose")
        conv_pads = [d * (k - 1) - p for d, k, p in zip(dil * 2, ks * 2, pads)]
        if any(p < 0 for p in conv_pads):
            raise UnsupportedError(f"pads {pads} larger than the kernel span", node=ct.name, op="ConvTranspose",
                                   supported=["pads <= dilation * (kernel - 1)"])
        wname = _const_name(fg, f"{ct.inputs[1]}_conv")
        fg.consts[wname] = conv_transpose_as_conv(w, group)
        src = x
        i = fg.nodes.index(ct)
        if any(s > 1 for s in strides):
            z = _const_name(fg, f"{ct.name}/InsertZeros_output_0")
            iz = FNode("InsertZeros", f"{ct.name}/InsertZeros", [x], [z], {"stride": strides, "output_padding": opad})
            fg.nodes.insert(i, iz)
            shp = list(fg.shapes[x])
            for j in range(nsp):
                d = shp[2 + j]
                shp[2 + j] = d + (strides[j] - 1) * (d - 1) + opad[j]
            fg.shapes[z] = tuple(shp)
            if hasattr(fg, "origin"):
                fg.origin[iz.name] = list(fg.origin.get(ct.name, [ct.name]))
            src = z
        ct.op = "Conv"
        ct.inputs = [src, wname] + list(ct.inputs[2:3])
        ct.attrs = {"kernel_shape": ks, "strides": [1] * nsp, "dilations": dil, "pads": conv_pads, "group": group}
        count += 1
    return count


# ---- PRelu on [N, C, T] ------------------------------------------------------------------------------------

def prelu_to_4d(fg: FGraph) -> int:
    """PRelu on a 3-D ``[N, C, T]`` tensor (``nn.PReLU`` after a Conv1d) -> a storage reshape to 4-D, PRelu, and
    back. ESP-DL's PRelu takes its channels from ``shape[3]`` (``dl_module_prelu.hpp``), which a 3-D tensor
    does not have (ESP-PPQ 1.3 exports it as is: the chip reads past the shape). The NWC storage ``[N, T, C]``
    is reshaped to ``[N, 1, T, C]`` (the ONNX-order value ``[N, C, 1, T]`` in NHWC) without moving data."""
    count = 0
    for n in [m for m in fg.nodes if m.op == "PRelu"]:
        x = n.inputs[0]
        if len(fg.shapes.get(x, ())) != 3 or len(n.inputs) < 2 or n.inputs[1] not in fg.consts:
            continue
        nb, c, t = fg.shapes[x]
        slope = np.asarray(fg.consts[n.inputs[1]], np.float32)
        if slope.size not in (1, c):
            continue  # refused by the layout pass with the supported slope shapes
        y = n.outputs[0]
        x4 = _const_name(fg, f"{n.name}/to4d_output_0")
        y4 = _const_name(fg, f"{n.name}/PRelu4d_output_0")
        s4 = _const_name(fg, f"{n.inputs[1]}_4d")
        fg.consts[s4] = slope.reshape(-1, 1, 1) if slope.size == c and c > 1 else slope.reshape(1)
        fg.shapes[x4] = fg.shapes[y4] = (nb, c, 1, t)
        i = fg.nodes.index(n)
        up = FNode("StorageReshape", f"{n.name}/to4d", [x], [x4], {"perm_in": [0, 2, 1], "perm_out": [0, 2, 3, 1]})
        down = FNode("StorageReshape", f"{n.name}/to3d", [y4], [y], {"perm_in": [0, 2, 3, 1], "perm_out": [0, 2, 1]})
        n.inputs = [x4, s4]
        n.outputs = [y4]
        fg.nodes[i:i + 1] = [up, n, down]
        if hasattr(fg, "origin"):
            for m in (up, down):
                fg.origin[m.name] = list(fg.origin.get(n.name, [n.name]))
        count += 1
    return count


class StorageReshapeRule:
    """A reshape of the stored (channel-last) data between a 3-D NWC and a 4-D NHWC view of the same values:
    ESP-DL's Reshape to the output's storage shape; the exponent passes through."""

    @staticmethod
    def layout(fg, node, perm, require, rank):
        require(node, 0, list(node.attrs["perm_in"]))
        perm[node.outputs[0]] = list(node.attrs["perm_out"])

    @staticmethod
    def ties(fg, qi, node, tie, fixed, calib_exp):
        x, y = node.inputs[0], node.outputs[0]
        prelu = fg.producers().get(x)
        if prelu is not None and prelu.op == "PRelu" and len(fg.shapes[x]) == 4 and qi.vbits.get(x) == qi.vbits.get(y):
            # data movement; the 4-D PRelu's output is no value of the float graph: it is calibrated as the 3-D
            # value it is reshaped to (when ESP-DL needs it at its input's exponent: export.prelu_keeps_exponent)
            tie[x] = y
        else:
            tie[y] = x  # data movement

    @staticmethod
    def export(ex, n, attrs):
        shape = np.array(ex.shape(n.outputs[0]), np.int64)
        name = ex.param(f"{n.name}_shape", shape, "int64", [0])
        attrs["allowzero"] = 0
        return "Reshape", attrs, [n.inputs[0], name]


# ---- stage rules ---------------------------------------------------------------------------------------

def _identity(r: int) -> list[int]:
    return list(range(r))


class MatMulRule:
    """ESP-DL's MatMul module: operands in their ONNX order; constant B packed, dynamic B ``native_kn``."""

    @staticmethod
    def layout(fg, node, perm, require, rank):
        for i, u in enumerate(node.inputs):
            if u and u not in fg.consts:
                require(node, i, _identity(rank(u)))
        perm[node.outputs[0]] = _identity(rank(node.outputs[0]))

    @staticmethod
    def export(ex, n, attrs):
        a, b = n.inputs
        bits = ex.qi.bits[n.name]
        attrs["activation"] = n.attrs.get("activation", "Linear")
        if a in ex.fg.consts:
            raise UnsupportedError("MatMul with a constant first operand", node=n.name, op="MatMul")
        if b in ex.fg.consts:
            w = np.asarray(ex.fg.consts[b], np.float32)
            if w.ndim < 2:
                raise UnsupportedError(f"constant B of rank {w.ndim}", node=n.name, op="MatMul",
                                       supported=["rank >= 2 constant B"])
            q, e = quantize_param(w, bits, ex.mode)
            layout = weight_layout(4, int(w.shape[-1]), ex.dtype(bits), ex.target)
            b = ex.param(b, q, ex.dtype(bits), [e], layout)
            attrs["input1_layout"] = "packed"
        else:
            attrs["input1_layout"] = "native_kn"
        return "MatMul", attrs, [a, b]


class GatherRule:
    """Gather along one axis with constant (non-negative, see :func:`gather_nonneg`) indices; the input exponent
    passes through. A scalar index on a permuted (NWC/NHWC) input gathers the stored axis; otherwise the
    input goes back to its ONNX order."""

    @staticmethod
    def layout(fg, node, perm, require, rank):
        x = node.inputs[0]
        r = rank(x)
        if x not in perm:
            perm[x] = _identity(r)
        p = perm[x]
        axis = int(node.attrs.get("axis", 0)) % r
        ind = np.asarray(fg.consts[node.inputs[1]])
        if p != _identity(r) and ind.ndim == 0:
            node.attrs["axis"] = p.index(axis)
            perm[node.outputs[0]] = [q - (q > axis) for q in p if q != axis]
            return
        require(node, 0, _identity(r))
        node.attrs["axis"] = axis
        perm[node.outputs[0]] = _identity(rank(node.outputs[0]))

    @staticmethod
    def ties(fg, qi, node, tie, fixed, calib_exp):
        x = node.inputs[0]
        if x and x not in fg.consts and qi.vbits.get(x) == qi.bits[node.name]:
            tie[node.outputs[0]] = x

    @staticmethod
    def export(ex, n, attrs):
        attrs["axis"] = int(n.attrs.get("axis", 0))
        idx = n.inputs[1]
        ind = np.asarray(ex.fg.consts[idx]).astype(np.int64)
        return "Gather", attrs, [n.inputs[0], ex.param(idx, ind, "int64", [0])]


class InsertZerosRule:
    """ESP-PPQ's InsertZeros (ConvTranspose's stride): channel-last like the Conv after it, input exponent."""

    @staticmethod
    def layout(fg, node, perm, require, rank):
        r = rank(node.inputs[0])
        p = [0, 2, 3, 1] if r == 4 else [0, 2, 1]
        require(node, 0, p)
        perm[node.outputs[0]] = p

    @staticmethod
    def ties(fg, qi, node, tie, fixed, calib_exp):
        # no float value of its own: the exponent of its input (requantized first if the bits differ)
        x, b = node.inputs[0], qi.bits[node.name]
        if qi.vbits.get(x) == b:
            tie[node.outputs[0]] = x
        else:
            fixed[node.outputs[0]] = calib_exp(x, b)

    @staticmethod
    def expected_input(fg, qi, node, u, calib_exp):
        return qi.exp[node.outputs[0]], qi.bits[node.name]

    @staticmethod
    def export(ex, n, attrs):
        attrs["stride"] = [int(v) for v in n.attrs["stride"]]
        attrs["output_padding"] = [int(v) for v in n.attrs.get("output_padding", [0] * len(attrs["stride"]))]
        return "InsertZeros", attrs, [n.inputs[0]]


def register() -> None:
    for op, rule in {"MatMul": MatMulRule, "Gather": GatherRule, "InsertZeros": InsertZerosRule,
                     "StorageReshape": StorageReshapeRule}.items():
        register_rule(op, rule)
    for fn in (restore_origin, decompose_conv_transpose, prelu_to_4d, collapse_gemm_reshapes):
        if fn not in REWRITES:
            REWRITES.append(fn)
    if prepare_products not in PREPARE_PASSES:
        PREPARE_PASSES.append(prepare_products)


register()
