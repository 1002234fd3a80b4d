"""The loss families, in the order the public namespaces list them. Each is a subpackage
(fastgenloss/<family>/) with a functional.py and an nn.py, each with its own ``__all__``, and a
_cases.py for the main job. Adding a family is adding its name here."""

from __future__ import annotations

import importlib

FAMILIES = ("pixel", "diffusion", "style", "segmentation")


def gather(kind: str) -> dict:
    """Every family's public names of ``kind`` ("functional" or "nn"), name -> object."""
    names: dict = {}
    for family in FAMILIES:
        module = importlib.import_module(f"fastgenloss.{family}.{kind}")
        for name in module.__all__:
            if name in names:
                raise ImportError(f"fastgenloss: {kind} name {name!r} is exported by two families")
            names[name] = getattr(module, name)
    return names
