"""fastgenloss.config: the runtime switches, typed, read from the environment once at import,
with the compiled part's switches set through to _C."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import fastgenloss
from fastgenloss import _C, config


def test_every_switch_has_a_default_and_is_documented():
    assert set(config.SWITCHES) == {"seg_cuda_kernel", "seg_cuda_combine", "gram_cuda_kernel",
                                    "cpu_huge_pages", "cuda_blocks_per_sm", "lovasz_cpu_kernel"}
    for name, s in config.SWITCHES.items():
        assert s.env.startswith("FASTGENLOSS_") and s.doc, name
    assert set(config.EXPERIMENTAL) == {"seg_cuda_combine", "gram_cuda_kernel"}


def test_native_switches_are_the_compiled_parts():
    assert set(_C._switch_names()) == {n for n, s in config.SWITCHES.items() if s.native}


def test_defaults_without_environment():
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTGENLOSS_")}
    code = ("import fastgenloss as f, json; from fastgenloss import _C; "
            "print(json.dumps({n: f.config.get(n) for n in f.config.SWITCHES})); "
            "print(json.dumps({n: _C._get_switch(n) for n in _C._switch_names()}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True).stdout.splitlines()
    import json
    assert json.loads(out[0]) == {"seg_cuda_kernel": True, "seg_cuda_combine": False,
                                  "gram_cuda_kernel": False, "cpu_huge_pages": True,
                                  "cuda_blocks_per_sm": 4, "lovasz_cpu_kernel": True}
    assert json.loads(out[1]) == {"cpu_huge_pages": 1, "gram_cuda_kernel": 0,
                                  "cuda_blocks_per_sm": 4, "lovasz_cpu_kernel": 1}


@pytest.mark.parametrize("env,want", [
    ({"FASTGENLOSS_SEG_CUDA_KERNEL": "0"}, ("seg_cuda_kernel", False)),
    ({"FASTGENLOSS_SEG_CUDA_KERNEL": "yes"}, ("seg_cuda_kernel", True)),
    ({"FASTGENLOSS_SEG_CUDA_COMBINE": "1"}, ("seg_cuda_combine", True)),
    ({"FASTGENLOSS_GRAM_CUDA_KERNEL": "1"}, ("gram_cuda_kernel", True)),
    ({"FASTGENLOSS_GRAM_CUDA_KERNEL": "true"}, ("gram_cuda_kernel", False)),
    ({"FASTGENLOSS_CPU_HUGE_PAGES": "0"}, ("cpu_huge_pages", False)),
    ({"FASTGENLOSS_BLOCKS_PER_SM": "8"}, ("cuda_blocks_per_sm", 8)),
    ({"FASTGENLOSS_BLOCKS_PER_SM": "99"}, ("cuda_blocks_per_sm", 4)),
    ({"FASTGENLOSS_BLOCKS_PER_SM": "x"}, ("cuda_blocks_per_sm", 4)),
    ({"FASTGENLOSS_LOVASZ_CPU_KERNEL": "0"}, ("lovasz_cpu_kernel", False)),
])
def test_environment_is_read_at_import(env, want):
    name, value = want
    code = (f"import fastgenloss as f; from fastgenloss import _C; v = f.config.get({name!r}); "
            f"print(repr(v)); print(_C._get_switch({name!r}) if {name!r} in _C._switch_names() "
            "else int(v))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, **env}, check=True).stdout.splitlines()
    assert out[0] == repr(value)
    assert int(out[1]) == int(value)


def test_set_and_override_reach_the_compiled_part():
    before = config.get("gram_cuda_kernel")
    with config.override(gram_cuda_kernel=not before):
        assert config.get("gram_cuda_kernel") is (not before)
        assert _C._get_switch("gram_cuda_kernel") == int(not before)
    assert config.get("gram_cuda_kernel") is before
    assert _C._get_switch("gram_cuda_kernel") == int(before)


def test_bad_names_and_values_raise():
    with pytest.raises(KeyError, match="no switch named 'gram_kernel'"):
        config.get("gram_kernel")
    with pytest.raises(KeyError, match="no switch named"):
        config.set(nope=True)
    with pytest.raises(TypeError, match="seg_cuda_kernel takes True or False, got 1"):
        config.set(seg_cuda_kernel=1)
    with pytest.raises(TypeError, match="cuda_blocks_per_sm takes an int, got True"):
        config.set(cuda_blocks_per_sm=True)
    with pytest.raises(KeyError, match="no runtime switch named 'x'"):
        _C._get_switch("x")


def test_is_reachable_from_the_package():
    assert fastgenloss.config is config
