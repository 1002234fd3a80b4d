"""python -m fastgenloss: the check-and-benchmark table runs and its checks pass for every family."""

from __future__ import annotations

from fastgenloss.__main__ import main
from fastgenloss._cases import all_cases


def test_main_job_checks_one_loss_of_each_family(capsys):
    losses = "l1+mse,diffusion v+minsnr,style (gram target),seg dice+iou+0.8ce"
    rc = main(["--device", "cpu", "--sizes", "64K", "--min-time", "0.01", "--no-compile",
               "--losses", losses])
    out = capsys.readouterr().out
    assert rc == 0, out
    for name in losses.split(","):
        assert name in all_cases()
        row = [line for line in out.splitlines() if line.startswith(name)]
        assert row and "ERROR" not in row[0], out
