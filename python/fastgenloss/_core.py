"""What every family's Python half shares: how an op is called (eager entry points and
torch.compile), the reduction codes, the accumulation dtype, argument descriptions for errors.

Each family (fastgenloss/<family>/) registers the fake kernels and autograd formulas of its own
ops in its _ops.py with these helpers; nothing here knows a family.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Reduction codes of csrc/core/reduction.h (0..2 are torch's own; the weighted means are the
# pixel family's).
REDUCE_NONE, REDUCE_MEAN, REDUCE_SUM, REDUCE_WEIGHT_MEAN, REDUCE_MASKED_MEAN = range(5)
REDUCTIONS = {"none": REDUCE_NONE, "mean": REDUCE_MEAN, "sum": REDUCE_SUM}

# The floating dtypes the kernels take.
FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
HALF_DTYPES = (torch.float16, torch.bfloat16)


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype a loss over these floating operands computes and returns in, as torch's losses:
    type promotion (bfloat16 with float32 gives float32), and under autocast for the operands'
    device float32 in place of float16 / bfloat16, as autocast runs the losses on its float32
    list (mse_loss, l1_loss, huber_loss, ...). Operands of another dtype are converted to it
    (autocast converts them too); autograd returns each operand's gradient in its own dtype."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        if t.dtype is not dtype:
            dtype = torch.promote_types(dtype, t.dtype)
    if dtype in HALF_DTYPES and torch.is_autocast_enabled(tensors[0].device.type):
        return torch.float32
    return dtype


def desc(t: Tensor) -> str:
    """A tensor as errors name it: shape, dtype and device."""
    return f"{list(t.shape)} {str(t.dtype).removeprefix('torch.')} on {t.device}"


def host_readable(t: Tensor) -> bool:
    """Whether t's values may be read on the host for a check: never while torch.compile traces
    (its graphs cannot branch on values); on the CPU otherwise; on CUDA in eager mode outside
    CUDA-graph capture (a synchronization, which capture forbids); never on other devices (meta
    has no values). Where this is False the ops read no tensor value, so every loss can be
    captured in a CUDA graph (torch.compile mode="reduce-overhead", torch.cuda.graph)."""
    if torch.compiler.is_compiling():
        return False
    kind = t.device.type
    return kind == "cpu" or (kind == "cuda" and not torch.cuda.is_current_stream_capturing())


def reduction_code(fn: str, reduction: str, size_average=None, reduce=None) -> int:
    """A reduction name as its code; torch's deprecated size_average / reduce pair too."""
    if size_average is not None or reduce is not None:
        # torch's deprecated pair, resolved the way torch resolves it.
        size_average = True if size_average is None else size_average
        reduce = True if reduce is None else reduce
        reduction = ("mean" if size_average else "sum") if reduce else "none"
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"{fn}: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    return REDUCTIONS[reduction]


def check_positive(fn: str, name: str, value: float, *, allow_zero: bool) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{fn}: {name} must be a number, got {type(value).__name__}")
    if value < 0 or (value == 0 and not allow_zero) or value != value:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{fn}: {name} must be {bound}, got {value}")



def direct(op, *args):
    """op's CPU/CUDA kernel, called below its Autograd-key kernel. torch.library's Python
    autograd wrapper runs even with grad mode off (a redispatch, ~20 us a call: as long as the
    kernel itself on a latent-sized tensor); where autograd is not wanted (inside an
    autograd.Function's forward, an eager first-order backward, an eager no-grad call) this
    skips it. Tracing (torch.compile's fake and functional tensors) keeps the plain call."""
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


def eager_no_grad(t: torch.Tensor) -> bool:
    """A plain tensor (not one of torch.compile's tracing subclasses) with grad mode off."""
    return type(t) is torch.Tensor and not torch.is_grad_enabled()


def backward_call(op, args, grad: torch.Tensor):
    """A backward op inside an autograd formula: the kernel directly in an eager first-order
    backward (grad mode off, plain tensors), else the op (double backward, tracing)."""
    return direct(op, *args) if eager_no_grad(grad) else op(*args)


def call_op(op, function, args, needs_grad: bool):
    """op(*args) as autograd should see it.

    ``function`` None: the op's autograd formula is C++ (registered at its Autograd key, see
    csrc/core/autograd.h), so the op itself is the eager entry point, as torch's own ops are,
    for autograd, torch.compile and torch.func alike; without a gradient to record it is called
    below autograd (direct).

    Otherwise ``function`` is the op's Python autograd.Function entry point (entry_point): the
    same kernel, setup_context and backward as its torch.library registration without that
    registration's per-call fill_defaults and redispatch (~10-60 us a call). Tracing
    (torch.compile) uses the registered op.
    """
    if needs_grad and function is None or torch.compiler.is_compiling():
        return op(*args)
    if needs_grad:
        if torch._C._are_functorch_transforms_active():
            return function.transformable.apply(*args)
        return function.apply(*args)
    return direct(op, *args)


def entry_point(op_name: str, setup_context, backward, doc: str):
    """The eager autograd.Function entry point of fastgenloss::<op_name> whose autograd formula
    is Python (see call_op): forward runs the kernel below autograd, then the registered
    setup_context and backward. Called with every schema argument.

    Two classes with the same formula: the plain one (forward(ctx, *args) calls setup_context
    itself) for ordinary eager calls, and, as its ``transformable`` attribute, one with a
    separate setup_context and a generated vmap rule that torch.func (grad, vjp, vmap and
    their compositions) requires; vmap runs the kernel through torch's batched fallback (a loop
    over the batch) where the op has no batching rule. The plain one exists because
    autograd.Function.apply binds the arguments to forward's signature with inspect (~20-30 us
    a call) whenever setup_context is separate."""
    op = getattr(torch.ops.fastgenloss, op_name).default

    def forward_with_ctx(ctx, *args):
        out = direct(op, *args)
        setup_context(ctx, args, out)
        return out

    def forward(*args):
        return direct(op, *args)

    function = type(f"{op_name}_function", (torch.autograd.Function,),
                    {"forward": staticmethod(forward_with_ctx),
                     "backward": staticmethod(backward),
                     "__doc__": doc})
    function.transformable = type(f"{op_name}_transformable", (torch.autograd.Function,),
                                  {"forward": staticmethod(forward),
                                   "setup_context": staticmethod(setup_context),
                                   "backward": staticmethod(backward),
                                   "generate_vmap_rule": True,
                                   "__doc__": doc + " (torch.func transforms)"})
    return function


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels accumulate in (csrc/core/dtype.h's acc_type_t)."""
    return torch.float64 if dtype == torch.float64 else torch.float32
