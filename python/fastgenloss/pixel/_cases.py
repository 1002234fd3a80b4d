"""The pixel family's cases of the main job (python -m fastgenloss) and bench/bench_pixel.py."""

from __future__ import annotations

from .. import reference as R
from .._cases import LossCase
from . import functional

CASES: dict[str, LossCase] = {c.name: c for c in [
    LossCase("l1", lambda x, y, w: functional.l1_loss(x, y), lambda x, y, w: R.l1_loss(x, y)),
    LossCase("mse", lambda x, y, w: functional.mse_loss(x, y), lambda x, y, w: R.mse_loss(x, y)),
    LossCase("huber", lambda x, y, w: functional.huber_loss(x, y, delta=0.5),
                      lambda x, y, w: R.huber_loss(x, y, delta=0.5)),
    LossCase("smooth_l1", lambda x, y, w: functional.smooth_l1_loss(x, y, beta=0.5),
                      lambda x, y, w: R.smooth_l1_loss(x, y, beta=0.5)),
    LossCase("charbonnier", lambda x, y, w: functional.charbonnier_loss(x, y, eps=1e-3),
                      lambda x, y, w: R.charbonnier_loss(x, y, eps=1e-3)),
    LossCase("l1+mse", lambda x, y, w: functional.pixel_loss(x, y, l1=1.0, mse=1.0),
                      lambda x, y, w: R.pixel_loss(x, y, l1=1.0, mse=1.0)),
    LossCase("masked l1+charb", lambda x, y, w: functional.pixel_loss(
                 x, y, l1=1.0, charbonnier=0.5, weight=w, masked_mean=True),
                 lambda x, y, w: R.pixel_loss(x, y, l1=1.0, charbonnier=0.5, weight=w, masked_mean=True),
                 weighted=True),
]}
