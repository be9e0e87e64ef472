"""Matmul, convolution and attention FLOPs of a function, counted from its jaxpr.

XLA's `compiled.cost_analysis()` counts a `lax.scan` body once, whatever its length, so it
under-reports scan-heavy steps (slot attention over time, rollouts). This counter walks the
jaxpr instead and multiplies a scan body by its length. It counts what
`torch.utils.flop_counter` counts (the PyTorch peer's definition), so the two are comparable:
  - dot_general: 2 x (output elements) x (contracted size): matmuls, einsums and the two
    matmuls of materialised attention;
  - conv_general_dilated: 2 x (output elements) x (kernel window x input features per group),
    which also covers the input- and kernel-gradient convolutions of the backward pass;
  - fused attention primitives (cuDNN flash on GPU): 4 B H Sq Sk D forward, 8 B H Sq Sk D
    backward, dense (causal masks are not discounted, as in the peer).
Elementwise ops, reductions and softmaxes are not counted. A `while` loop's trip count is
unknown from the jaxpr: its body is counted once and `FlopCount.while_loops` says so.
"""

import dataclasses
import math
from typing import Any, Callable

import jax
from jax.extend import core as jex_core


@dataclasses.dataclass
class FlopCount:
  matmul: float = 0.0  # dot_general (includes materialised attention).
  conv: float = 0.0
  fused_attention: float = 0.0
  while_loops: int = 0  # Bodies counted once (unknown trip count).

  @property
  def total(self) -> float:
    return self.matmul + self.conv + self.fused_attention

  def add(self, other: "FlopCount", times: float = 1.0) -> None:
    self.matmul += times * other.matmul
    self.conv += times * other.conv
    self.fused_attention += times * other.fused_attention
    self.while_loops += other.while_loops


def _dot_general_flops(eqn) -> float:
  (lhs_contract, _), _ = eqn.params["dimension_numbers"]
  lhs_shape = eqn.invars[0].aval.shape
  contracted = math.prod(lhs_shape[d] for d in lhs_contract)
  return 2.0 * math.prod(eqn.outvars[0].aval.shape) * contracted


def _conv_flops(eqn) -> float:
  rhs_shape = eqn.invars[1].aval.shape
  rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out feature, in feature, *spatial).
  window = math.prod(rhs_shape[d] for d in rhs_spec[2:])
  return 2.0 * math.prod(eqn.outvars[0].aval.shape) * window * rhs_shape[rhs_spec[1]]


def _fused_attention_flops(eqn) -> float:
  # cuDNN layout [B, S, H, D] for q, k (jax.nn.dot_product_attention's BTNH).
  b, sq, h, d = eqn.invars[0].aval.shape
  sk = eqn.invars[1].aval.shape[1]
  dense = 4.0 * b * h * sq * sk * d
  return 2.0 * dense if "bwd" in eqn.primitive.name else dense


def _sub_jaxprs(value):
  if isinstance(value, jex_core.ClosedJaxpr):
    yield value.jaxpr
  elif isinstance(value, jex_core.Jaxpr):
    yield value
  elif isinstance(value, (tuple, list)):
    for v in value:
      yield from _sub_jaxprs(v)


def count_jaxpr(jaxpr) -> FlopCount:
  """FLOPs of one evaluation of `jaxpr` (a Jaxpr or ClosedJaxpr)."""
  if isinstance(jaxpr, jex_core.ClosedJaxpr):
    jaxpr = jaxpr.jaxpr
  out = FlopCount()
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      out.matmul += _dot_general_flops(eqn)
    elif name == "conv_general_dilated":
      out.conv += _conv_flops(eqn)
    elif name.startswith("dot_product_attention") and ("fwd" in name or "bwd" in name):
      out.fused_attention += _fused_attention_flops(eqn)
    elif name == "scan":
      out.add(count_jaxpr(eqn.params["jaxpr"]), times=eqn.params["length"])
    elif name == "cond":  # One branch runs: count the most expensive.
      branches = [count_jaxpr(b) for b in eqn.params["branches"]]
      out.add(max(branches, key=lambda c: c.total))
    elif name == "while":
      out.add(count_jaxpr(eqn.params["body_jaxpr"]))
      out.while_loops += 1
    else:  # jit, remat, custom_vjp/jvp calls, shard_map...: their inner jaxprs once each.
      for value in eqn.params.values():
        for sub in _sub_jaxprs(value):
          out.add(count_jaxpr(sub))
  return out


def count(fn: Callable, *args: Any, **kwargs: Any) -> FlopCount:
  """FLOPs of `fn(*args, **kwargs)` (arrays or jax.ShapeDtypeStructs); nothing is run.

  A jitted `fn` is traced as the top-level jit it is: jax refuses a jit with
  `compiler_options` (trainer.compiler_options) nested inside `make_jaxpr`.
  """
  if hasattr(fn, "trace"):
    return count_jaxpr(fn.trace(*args, **kwargs).jaxpr)
  return count_jaxpr(jax.make_jaxpr(fn)(*args, **kwargs))
