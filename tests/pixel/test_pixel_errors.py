"""Bad input gets a clear error naming the argument, its shape and dtype."""

from __future__ import annotations

import pytest
import torch

import fastgenloss as fgl

ALL = [fgl.l1_loss, fgl.mse_loss, fgl.huber_loss, fgl.smooth_l1_loss, fgl.charbonnier_loss,
       fgl.pixel_loss]
IDS = [f.__name__ for f in ALL]


@pytest.mark.parametrize("fn", ALL, ids=IDS)
def test_shape_mismatch(fn):
    x, y = torch.randn(8, 3, 64, 64), torch.randn(8, 64, 64)
    with pytest.raises(ValueError, match=rf"{fn.__name__}: target \[8, 64, 64\] float32 on cpu "
                                         r"and input \[8, 3, 64, 64\] float32 on cpu must have "
                                         r"the same shape"):
        fn(x, y)


@pytest.mark.parametrize("fn", ALL, ids=IDS)
def test_integer_target(fn):
    with pytest.raises(TypeError, match=rf"{fn.__name__}: target must be float32, float64, "
                                        r"float16 or bfloat16, got \[4\] int64"):
        fn(torch.randn(4), torch.ones(4, dtype=torch.int64))


@pytest.mark.parametrize("fn", ALL, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64], ids=str)
def test_non_float_input(fn, dtype):
    x = torch.ones(4, dtype=dtype)
    with pytest.raises(TypeError, match=rf"{fn.__name__}: input must be float32, float64, "
                                        rf"float16 or bfloat16, got \[4\] {str(dtype)[6:]}"):
        fn(x, x)


@pytest.mark.parametrize("fn", ALL, ids=IDS)
def test_not_a_tensor(fn):
    with pytest.raises(TypeError, match=rf"{fn.__name__}: target must be a torch.Tensor, got list"):
        fn(torch.randn(3), [1.0, 2.0, 3.0])


@pytest.mark.parametrize("fn", ALL, ids=IDS)
def test_device_mismatch(fn):
    # the meta device stands in for a second device on machines without a GPU
    with pytest.raises(ValueError, match=rf"{fn.__name__}: target \[4\] float32 on meta and "
                                         r"input \[4\] float32 on cpu must be on the same device"):
        fn(torch.randn(4), torch.empty(4, device="meta"))


@pytest.mark.parametrize("fn", ALL, ids=IDS)
def test_weight_device_mismatch(fn):
    with pytest.raises(ValueError, match=rf"{fn.__name__}: weight \[4\] float32 on meta and input"):
        fn(torch.randn(4), torch.randn(4), weight=torch.empty(4, device="meta"))


@pytest.mark.parametrize("fn", ALL, ids=IDS)
def test_bad_reduction(fn):
    with pytest.raises(ValueError, match=rf"{fn.__name__}: reduction must be 'none', 'mean' or "
                                         r"'sum', got 'avg'"):
        fn(torch.randn(4), torch.randn(4), reduction="avg")


@pytest.mark.parametrize("fn", ALL, ids=IDS)
def test_weight_not_broadcastable(fn):
    with pytest.raises(ValueError, match=rf"{fn.__name__}: weight \[2, 3\] float32 on cpu must "
                                         r"broadcast to input's shape \[4, 3, 5\]"):
        fn(torch.randn(4, 3, 5), torch.randn(4, 3, 5), weight=torch.rand(2, 3))


@pytest.mark.parametrize("fn", ALL, ids=IDS)
def test_weight_broadcasting_input_is_rejected(fn):
    # a weight may broadcast to the input, never grow it
    with pytest.raises(ValueError, match=rf"{fn.__name__}: weight \[2, 4\] .* must broadcast "
                                         r"to input's shape \[4\]"):
        fn(torch.randn(4), torch.randn(4), weight=torch.rand(2, 4))


@pytest.mark.parametrize("fn", ALL, ids=IDS)
def test_integer_weight(fn):
    with pytest.raises(TypeError, match=rf"{fn.__name__}: weight must be a floating-point or bool "
                                        r"tensor, got \[4\] int64"):
        fn(torch.randn(4), torch.randn(4), weight=torch.ones(4, dtype=torch.int64))


@pytest.mark.parametrize("eps", [-1e-3, float("nan")])
def test_negative_eps(eps):
    with pytest.raises(ValueError, match=r"charbonnier_loss: eps must be >= 0, got"):
        fgl.charbonnier_loss(torch.randn(4), torch.randn(4), eps=eps)
    with pytest.raises(ValueError, match=r"pixel_loss: eps must be >= 0, got"):
        fgl.pixel_loss(torch.randn(4), torch.randn(4), charbonnier=1.0, eps=eps)


@pytest.mark.parametrize("delta", [0.0, -1.0])
def test_bad_delta(delta):
    with pytest.raises(ValueError, match=rf"huber_loss: delta must be > 0, got {delta}"):
        fgl.huber_loss(torch.randn(4), torch.randn(4), delta=delta)
    with pytest.raises(ValueError, match=rf"pixel_loss: delta must be > 0, got {delta}"):
        fgl.pixel_loss(torch.randn(4), torch.randn(4), huber=1.0, delta=delta)


def test_bad_beta():
    with pytest.raises(ValueError, match=r"smooth_l1_loss: beta must be >= 0, got -0.5"):
        fgl.smooth_l1_loss(torch.randn(4), torch.randn(4), beta=-0.5)


def test_pixel_loss_needs_a_term():
    with pytest.raises(ValueError, match=r"pixel_loss: every coefficient is 0"):
        fgl.pixel_loss(torch.randn(4), torch.randn(4), l1=0.0)


@pytest.mark.parametrize("value", [float("nan"), "1.0", True])
def test_pixel_loss_bad_coefficient(value):
    with pytest.raises(TypeError, match=r"pixel_loss: mse must be a finite number"):
        fgl.pixel_loss(torch.randn(4), torch.randn(4), mse=value)


def test_direct_op_call_is_checked_in_cpp():
    # the C++ checks back up the Python ones for callers of torch.ops directly
    with pytest.raises(RuntimeError, match=r"fastgenloss::pixel_fwd: target \[3\] and input \[4\] "
                                           r"must have the same shape"):
        torch.ops.fastgenloss.pixel_fwd(torch.randn(4), torch.randn(3), None, 1.0, 0.0, 0.0, 0.0,
                                        0.0, 1e-3, 1.0, 1.0, 1, False)
    with pytest.raises(RuntimeError, match=r"fastgenloss::pixel_fwd: unknown reduction code 9"):
        torch.ops.fastgenloss.pixel_fwd(torch.randn(4), torch.randn(4), None, 1.0, 0.0, 0.0, 0.0,
                                        0.0, 1e-3, 1.0, 1.0, 9, False)
    with pytest.raises(RuntimeError, match=r"fastgenloss::pixel_fwd: weight \[2\] must be "
                                           r"expanded to input's shape \[4\]"):
        torch.ops.fastgenloss.pixel_fwd(torch.randn(4), torch.randn(4), torch.rand(2), 1.0, 0.0,
                                        0.0, 0.0, 0.0, 1e-3, 1.0, 1.0, 1, False)


def test_legacy_size_average_reduce_like_torch():
    import torch.nn.functional as F
    x, y = torch.randn(5, 6), torch.randn(5, 6)
    for sa, red in [(None, None), (True, True), (False, True), (True, False), (None, False)]:
        with _quiet():  # torch warns that size_average/reduce are deprecated
            expect = F.mse_loss(x, y, size_average=sa, reduce=red)
        torch.testing.assert_close(fgl.mse_loss(x, y, size_average=sa, reduce=red), expect)


class _quiet:
    def __enter__(self):
        import warnings
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *a):
        return self._w.__exit__(*a)
