"""Weight memory layouts of ESP-DL (as ESP-PPQ's exporter writes them) <-> logical arrays.

Logical conv weights are ``[kH, kW, Cin, Cout]`` (1-D ``[kW, Cin, Cout]``), depthwise ``[kH, kW, C, 1]``;
Gemm weights ``[1, 1, Cin, Cout]``; MatMul constant ``B`` ``[..., Cin, Cout]`` (each trailing matrix packed).
Write ``S`` for the spatial size kH*kW and ``a`` for the block (16 for int8, 8 for int16):

=========================  =====================================================================
layout                     memory order
=========================  =====================================================================
``(N/a)HWCa``, ``(N/a)WCa``  ``[Cout/a][S][Cin][a]``                  (depthwise: ``[C/a][S][a]``)
``..._UNALIGNED``          the aligned blocks, then the remaining ``r`` output channels as
                           ``[r][S][Cin]``                            (depthwise: ``[S][r]``)
``NHWC`` / ``NWC``         ``[Cout][S][Cin]``  (the ``c`` target)
``HWCN`` / ``WCN``         ``[S][C]``          (the ``c`` target, depthwise)
=========================  =====================================================================
"""

from __future__ import annotations

import re

import numpy as np

from ..errors import FormatError
from .graph import Graph, Tensor

_BLOCK_RE = re.compile(r"^\(?N/?(\d+)\)?H?WC(\d+)(_UNALIGNED)?$")
PLAIN_LAYOUTS = ("NHWC", "NWC", "HWCN", "WCN")


def is_packed(layout: str | None) -> bool:
    return bool(layout) and (_BLOCK_RE.match(layout) is not None or layout in PLAIN_LAYOUTS)


def weight_roles(graph: Graph) -> dict[str, str]:
    """Initializers that hold packed weights and how: ``conv``, ``depthwise`` or ``matmul``."""
    roles: dict[str, str] = {}
    for n in graph.nodes:
        if len(n.inputs) < 2 or n.inputs[1] not in graph.initializers:
            continue
        w = graph.initializers[n.inputs[1]]
        if not is_packed(w.layout):
            continue
        if n.op_type == "Conv":
            group = int(n.attr("group", 1) or 1)
            roles[w.name] = "depthwise" if group > 1 else "conv"
        elif n.op_type == "Gemm":
            roles[w.name] = "conv"
        elif n.op_type == "MatMul":
            roles[w.name] = "matmul"
    return roles


def _geometry(t: Tensor, role: str) -> tuple[int, int, int, int]:
    """(batch, S, Cin, Cout) of a weight tensor's logical dims."""
    d = t.dims
    if role == "matmul":
        if len(d) < 2:
            raise FormatError(f"MatMul weight has dims {list(d)}", field=f"tensor {t.name!r}.dims")
        return int(np.prod(d[:-2], dtype=np.int64)) if len(d) > 2 else 1, 1, d[-2], d[-1]
    if len(d) not in (3, 4):
        raise FormatError(f"conv weight must be 3-D or 4-D, got dims {list(d)}", field=f"tensor {t.name!r}.dims")
    s = int(np.prod(d[:-2], dtype=np.int64))
    if role == "depthwise":
        return 1, s, 1, d[-2]  # logical [.., C, 1]: N = C, Cin = 1
    return 1, s, d[-2], d[-1]


def layout_order(layout: str, role: str, s: int, c: int, n: int) -> np.ndarray:
    """For each memory position, the flat index into the logical ``[S][Cin][Cout]`` array."""
    logical = np.arange(s * c * n, dtype=np.int64).reshape(s, c, n)
    t = logical.transpose(2, 0, 1)  # [N][S][C] view: t[n, s, c] = index of L[s, c, n]
    m = _BLOCK_RE.match(layout)
    if m:
        a = int(m.group(1))
        if int(m.group(2)) != a:
            raise FormatError(f"layout {layout!r} has mismatched blocks", field="layout")
        aligned = n // a * a
        if aligned != n and not m.group(3):
            raise FormatError(f"{n} output channels are not a multiple of {a}: layout {layout} needs _UNALIGNED",
                              field="layout")
        head = t[:aligned].reshape(n // a, a, s, c).transpose(0, 2, 3, 1).ravel()
        rest = t[aligned:]
        if role == "depthwise":
            rest = rest.transpose(2, 1, 0)  # [1][S][r]
        return np.concatenate([head, rest.ravel()])
    if layout in ("NHWC", "NWC"):
        if role == "depthwise":
            raise FormatError(f"layout {layout} for a depthwise weight", field="layout")
        return t.ravel()
    if layout in ("HWCN", "WCN"):
        return t.transpose(1, 2, 0).ravel()  # [S][C][N]
    raise FormatError(f"unknown weight layout {layout!r}", field="layout")


def unpack(t: Tensor, role: str, flat: np.ndarray) -> np.ndarray:
    """Logical array of a weight stored in ``t.layout`` memory order."""
    batch, s, c, n = _geometry(t, role)
    order = layout_order(t.layout, role, s, c, n)
    flat = flat.reshape(batch, s * c * n)
    out = np.empty_like(flat)
    out[:, order] = flat
    return out.reshape(t.dims)


def pack(t: Tensor, role: str) -> np.ndarray:
    """Memory-order flat array of a logical weight, as ESP-DL expects it."""
    batch, s, c, n = _geometry(t, role)
    order = layout_order(t.layout, role, s, c, n)
    return np.ascontiguousarray(t.data).reshape(batch, s * c * n)[:, order].ravel()


def unpack_graph_weights(graph: Graph) -> None:
    """Turn every packed weight of a freshly read graph into its logical array, in place."""
    for name, role in weight_roles(graph).items():
        t = graph.initializers[name]
        if t.data is not None:
            t.data = unpack(t, role, t.data.ravel())


def packed_data(graph: Graph) -> dict[str, np.ndarray]:
    """Memory-order data for every packed weight (what the writer stores)."""
    return {name: pack(graph.initializers[name], role)
            for name, role in weight_roles(graph).items() if graph.initializers[name].data is not None}


def weight_layout(rank: int, cout: int, dtype: str, target: str, depthwise: bool = False) -> str:
    """The layout annotation ESP-PPQ gives a conv/gemm weight (``rank`` 3: 1-D conv, 4: 2-D conv or Gemm).

    esp32p4 / esp32s3 / esp32s31 pack output channels in blocks of 16 (int8) or 8 (int16), with an
    ``_UNALIGNED`` tail when ``cout`` is not a multiple; the ``c`` target keeps NHWC/NWC (HWCN/WCN for
    depthwise).
    """
    if target == "c":
        if rank == 3:
            return "WCN" if depthwise else "NWC"
        return "HWCN" if depthwise else "NHWC"
    a = 16 if dtype == "int8" else 8
    spatial = "WC" if rank == 3 else "HWC"
    return f"(N/{a}){spatial}{a}" + ("" if cout % a == 0 else "_UNALIGNED")


def layout_doc(layout: str | None) -> str:
    """The doc_string ESP-PPQ writes for a tensor's layout."""
    return f"layout ==> {layout or 'UNK'}"
