"""The public API: every loss is in fastgenloss.__all__ and in functional or nn as fits, each
family's names are gathered once, the README's table lists every public name, and no loss
imports the reference."""

from __future__ import annotations

import importlib
import inspect
import pathlib
import re
import subprocess
import sys

import torch

import fastgenloss
import fastgenloss.functional as F
import fastgenloss.nn as fnn
from fastgenloss._families import FAMILIES

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def _family_names(kind: str) -> list[str]:
    names = []
    for family in FAMILIES:
        names += importlib.import_module(f"fastgenloss.{family}.{kind}").__all__
    return names


def test_functional_gathers_every_family():
    names = _family_names("functional")
    assert len(names) == len(set(names))
    assert sorted(F.__all__) == sorted(names)
    for name in names:
        assert callable(getattr(F, name)), name


def test_nn_gathers_every_family():
    names = _family_names("nn")
    assert len(names) == len(set(names))
    assert sorted(fnn.__all__) == sorted(names)
    for name in names:
        cls = getattr(fnn, name)
        assert inspect.isclass(cls) and issubclass(cls, torch.nn.Module), name


def test_every_function_is_public_at_the_top_level():
    for name in F.__all__:
        assert name in fastgenloss.__all__, name
        assert getattr(fastgenloss, name) is getattr(F, name), name
    for name in ("build_info", "config", "functional", "nn", "reference"):
        assert name in fastgenloss.__all__
        assert getattr(fastgenloss, name) is not None


def test_every_public_function_is_defined_in_its_family():
    for family in FAMILIES:
        for kind in ("functional", "nn"):
            module = importlib.import_module(f"fastgenloss.{family}.{kind}")
            for name in module.__all__:
                obj = getattr(module, name)
                home = obj.__module__
                assert home.startswith(f"fastgenloss.{family}."), f"{name} is defined in {home}"


def test_readme_table_lists_every_public_name():
    text = README.read_text()
    head = text.index("| function or module | family | replaces |")
    rows = [line for line in text[head:].splitlines()[2:] if line.startswith("|")]
    listed = set()
    for row in rows:
        first = row.split("|")[1]
        listed.update(re.findall(r"`(?:nn\.)?([A-Za-z_0-9]+)`", first))
    missing = set(F.__all__) - listed
    assert not missing, f"README's table lacks functions {sorted(missing)}"
    missing = set(fnn.__all__) - listed
    assert not missing, f"README's table lacks modules {sorted(missing)}"
    unknown = listed - set(F.__all__) - set(fnn.__all__)
    assert not unknown, f"README's table names {sorted(unknown)}, which are not public"


def test_the_losses_never_import_the_reference():
    # a fresh interpreter: importing fastgenloss and running a loss of each family must not load
    # fastgenloss.reference (the oracle the tests compare against)
    code = (
        "import sys, torch, fastgenloss as fgl\n"
        "x = torch.randn(2, 3, 8, 8, requires_grad=True)\n"
        "fgl.mse_loss(x, torch.randn_like(x)).backward()\n"
        "fgl.focal_loss(x, torch.randint(0, 3, (2, 8, 8)), normalized=True).backward()\n"
        "fgl.nn.SoftBCEWithLogitsLoss(reduction='none')(x, torch.rand_like(x)).sum().backward()\n"
        "fgl.style_loss(x, torch.randn_like(x)).backward()\n"
        "print('fastgenloss.reference' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stdout + out.stderr


def test_reference_is_loaded_on_first_use():
    assert fastgenloss.reference.mse_loss is importlib.import_module("fastgenloss.reference").mse_loss
