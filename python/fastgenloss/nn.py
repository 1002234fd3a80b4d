"""Every loss of fastgenloss as a module, gathered from the families' own lists
(fastgenloss/<family>/nn.py). Where torch has the module, ours subclasses it, so isinstance
checks, constructor arguments, repr and state_dict behave as before; only forward changes."""

from __future__ import annotations

from ._families import gather

_names = gather("nn")
globals().update(_names)
__all__ = sorted(_names)
