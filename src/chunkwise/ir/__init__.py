"""The IR: one in-memory graph that every stage reads and writes."""

from .graph import (ATTR_CODES, ATTR_KINDS, DTYPE_CODES, DTYPE_NAMES, Attribute, Graph, Node, Tensor,
                    ValueInfo, make_attribute, np_dtype)

__all__ = ["ATTR_CODES", "ATTR_KINDS", "DTYPE_CODES", "DTYPE_NAMES", "Attribute", "Graph", "Node", "Tensor",
           "ValueInfo", "make_attribute", "np_dtype"]
