"""fastgenloss's runtime switches: the one place they are defined, documented and read.

Each switch has a typed value, a default and an environment variable that sets it; the
environment is read once, when fastgenloss is imported. After that, change a switch with
:func:`set` or, for a block of code, :func:`override`::

    import fastgenloss as fgl
    fgl.config.get("seg_cuda_kernel")                 # True
    with fgl.config.override(gram_cuda_kernel=True):  # an experimental kernel, for a benchmark
        ...

Switches marked experimental turn on kernels that no GPU session has validated yet; they are
off by default (see docs/performance.md for where each stands).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Callable, Iterator

from . import _C

__all__ = ["EXPERIMENTAL", "SWITCHES", "get", "override", "set"]


def _flag_on_unless_0(text: str) -> bool:
    return text != "0"


def _flag_off_unless_1(text: str) -> bool:
    return text == "1"


def _blocks_per_sm(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        return 4
    return v if 1 <= v <= 32 else 4


@dataclass(frozen=True)
class Switch:
    name: str
    env: str                      # the environment variable read at import
    default: bool | int
    parse: Callable[[str], bool | int]
    native: bool                  # held by the compiled part (csrc/core/config.h)
    experimental: bool
    doc: str


SWITCHES = {s.name: s for s in (
    Switch("seg_cuda_kernel", "FASTGENLOSS_SEG_CUDA_KERNEL", True, _flag_on_unless_0, False, False,
           "CUDA segmentation statistics through the fused seg_stats kernel (else PyTorch ops); "
           "FASTGENLOSS_SEG_CUDA_KERNEL=0 turns it off"),
    Switch("seg_cuda_combine", "FASTGENLOSS_SEG_CUDA_COMBINE", False, _flag_off_unless_1, False, True,
           "the segmentation second stage on CUDA as one seg_combine kernel (else PyTorch ops); "
           "the CPU always takes the op; FASTGENLOSS_SEG_CUDA_COMBINE=1 turns it on"),
    Switch("gram_cuda_kernel", "FASTGENLOSS_GRAM_CUDA_KERNEL", False, _flag_off_unless_1, True, True,
           "Gram matrices and the style forward on CUDA through the hand-written tensor-core "
           "kernel (else cuBLAS); FASTGENLOSS_GRAM_CUDA_KERNEL=1 turns it on"),
    Switch("cpu_huge_pages", "FASTGENLOSS_CPU_HUGE_PAGES", True, _flag_on_unless_0, True, False,
           "advise fresh CPU outputs of 32 MiB or more for transparent huge pages (Linux); "
           "FASTGENLOSS_CPU_HUGE_PAGES=0 turns it off"),
    Switch("cuda_blocks_per_sm", "FASTGENLOSS_BLOCKS_PER_SM", 4, _blocks_per_sm, True, False,
           "blocks per SM of the reducing CUDA grids (1..32; anything else means 4), for tuning"),
    Switch("lovasz_cpu_kernel", "FASTGENLOSS_LOVASZ_CPU_KERNEL", True, _flag_on_unless_0, True,
           False, "the Lovász losses on the CPU through the radix-sort kernel (else the ATen "
           "path CUDA takes); FASTGENLOSS_LOVASZ_CPU_KERNEL=0 turns it off"),
)}

# The kernels behind these switches have not been validated on a GPU: off by default.
EXPERIMENTAL = tuple(name for name, s in SWITCHES.items() if s.experimental)

_values: dict[str, bool | int] = {}


def _switch(name: str) -> Switch:
    try:
        return SWITCHES[name]
    except KeyError:
        raise KeyError(f"fastgenloss.config: no switch named {name!r}; the switches are "
                       f"{sorted(SWITCHES)}") from None


def get(name: str) -> bool | int:
    """The switch's current value."""
    _switch(name)
    return _values[name]


def set(**values: bool | int) -> None:  # noqa: A001  (the module's verb, as torch.backends')
    """Set switches by name: ``fastgenloss.config.set(seg_cuda_kernel=False)``."""
    for name, value in values.items():
        s = _switch(name)
        kind = type(s.default)
        if kind is bool and not isinstance(value, bool):
            raise TypeError(f"fastgenloss.config: {name} takes True or False, got {value!r}")
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError(f"fastgenloss.config: {name} takes an int, got {value!r}")
        _values[name] = value
        if s.native:
            _C._set_switch(name, int(value))


@contextlib.contextmanager
def override(**values: bool | int) -> Iterator[None]:
    """Set switches for the duration of a with-block, then restore them."""
    before = {name: get(name) for name in values}
    set(**values)
    try:
        yield
    finally:
        set(**before)


def _read_environment() -> None:
    for name, s in SWITCHES.items():
        text = os.environ.get(s.env)
        set(**{name: s.default if text is None else s.parse(text)})


_read_environment()
