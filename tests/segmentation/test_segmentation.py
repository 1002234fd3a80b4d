"""The fused segmentation losses against fastgenloss.reference (itself checked against smp in
test_segmentation_reference.py): every mode x term x ignore_index x per_image x dtype, 2D and 3D,
label dtypes, odd sizes, absent classes, all pixels ignored, empty batch; gradcheck, opcheck,
torch.compile(fullgraph=True), determinism across thread counts, the smp-style modules,
errors."""

from __future__ import annotations

import pytest
import torch

import fastgenloss as fgl
from fastgenloss import reference as R
from helpers import check_against_reference

C = 5
IGNORE = 255


@pytest.fixture(autouse=True)
def _cuda_kernel_on(request):
    """On CUDA the tests run the hand-written kernels, the experimental combine kernel included
    (the PyTorch-ops path they replace is compared with them in
    test_cuda_kernel_matches_torch_path)."""
    if "device" in request.fixturenames and request.getfixturevalue("device") == "cuda":
        with fgl.config.override(seg_cuda_kernel=True, seg_cuda_combine=True):
            yield
    else:
        yield


def make(mode, spatial, *, n=2, c=C, ignore=False, seed=0, absent=False, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, 1 if mode == "binary" else c, *spatial), generator=g, dtype=torch.float64) * 3
    if mode == "multiclass":
        t = torch.randint(0, c - 1 if absent else c, (n, *spatial), generator=g)
        if ignore:
            t[torch.rand(t.shape, generator=g) < 0.25] = IGNORE
    else:
        t = (torch.rand(x.shape, generator=g) < 0.4).to(torch.float64)
        if absent:
            t[:, -1] = 0
        if ignore:
            t[torch.rand(t.shape, generator=g) < 0.25] = -1.0
    return x.to(device).requires_grad_(True), t.to(device)


MODES = ["binary", "multiclass", "multilabel"]
TERMS = [
    dict(dice=1.0, iou=0.0, bce=0.0),
    dict(dice=0.0, iou=1.0, bce=0.0),
    dict(dice=0.0, iou=0.0, bce=1.0),
    dict(dice=1.0, iou=1.0, bce=0.8),  # the "IoU + Dice + 0.8 BCE"
    dict(dice=0.0, iou=0.0, bce=0.0, tversky=1.0, tversky_alpha=0.3, tversky_beta=0.7,
         tversky_gamma=1.3),
    dict(dice=1.0, iou=0.0, bce=0.5, focal=1.0, focal_alpha=0.25),
]
TERM_IDS = ["dice", "iou", "bce", "dice+iou+0.8bce", "tversky", "dice+bce+focal"]


@pytest.mark.parametrize("terms", TERMS, ids=TERM_IDS)
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("ignore", [False, True])
@pytest.mark.parametrize("spatial", [(7, 9), (3, 4, 5)], ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_matches_reference_float64(device, mode, spatial, ignore, per_image, terms):
    x, t = make(mode, spatial, ignore=ignore, absent=True, device=device)
    ig = (IGNORE if mode == "multiclass" else -1) if ignore else None
    kw = dict(terms, ignore_index=ig, per_image=per_image)
    got = fgl.segmentation_loss(x, t, mode, **kw)
    want = R.segmentation_loss(x, t, mode=mode, **kw)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    (gx,) = torch.autograd.grad(got, x)
    (rx,) = torch.autograd.grad(want, x)
    torch.testing.assert_close(gx, rx, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_low_precision_against_float64(device, mode, dtype):
    """float32 / half / bfloat16 logits: float accumulation, error within the 2x rule of plain
    PyTorch in that dtype against float64."""
    x, t = make(mode, (17, 33), n=3, ignore=True, device=device, seed=4)
    ig = IGNORE if mode == "multiclass" else -1
    check_against_reference(
        lambda a: fgl.segmentation_loss(a, t, mode, ignore_index=ig),
        lambda a: R.segmentation_loss(a, t, mode=mode, ignore_index=ig), [x], dtype, factor=16.0)


def test_half_logits_do_not_overflow(device):
    """smp's float16 Dice overflows its sums: ours accumulate in float."""
    x = (torch.randn(2, 3, 256, 256, device=device) * 4).half().requires_grad_(True)
    t = torch.randint(0, 3, (2, 256, 256), device=device)
    loss = fgl.segmentation_loss(x, t, "multiclass")
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    (g,) = torch.autograd.grad(loss, x)
    assert g.dtype == torch.float16 and torch.isfinite(g).all()


@pytest.mark.parametrize("label_dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64],
                         ids=str)
def test_label_dtypes(device, label_dtype):
    x, t = make("multiclass", (6, 7), device=device)
    want = R.segmentation_loss(x, t, mode="multiclass")
    torch.testing.assert_close(fgl.segmentation_loss(x, t.to(label_dtype), "multiclass"), want)


def test_layouts(device):
    """channels_last, channels_last_3d and non-contiguous logits give the contiguous result."""
    x, t = make("multiclass", (6, 8), device=device)
    want = fgl.segmentation_loss(x, t, "multiclass")
    for v in (x.detach().to(memory_format=torch.channels_last),
              x.detach().transpose(2, 3).contiguous().transpose(2, 3)):
        torch.testing.assert_close(fgl.segmentation_loss(v, t, "multiclass"), want)
    x3, t3 = make("multiclass", (3, 4, 5), device=device)
    v3 = x3.detach().to(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(fgl.segmentation_loss(v3, t3, "multiclass"),
                               fgl.segmentation_loss(x3.detach(), t3, "multiclass"))


@pytest.mark.parametrize("mode", MODES)
def test_all_ignored_and_empty_batch(device, mode):
    x, t = make(mode, (4, 4), ignore=False, device=device)
    t_all = torch.full_like(t, IGNORE if mode == "multiclass" else -1)
    ig = IGNORE if mode == "multiclass" else -1
    got = fgl.segmentation_loss(x, t_all, mode, ignore_index=ig)
    want = R.segmentation_loss(x, t_all, mode=mode, ignore_index=ig)
    torch.testing.assert_close(got, want)
    (g,) = torch.autograd.grad(got, x)
    assert (g == 0).all()
    xe, te = x[:0].detach().requires_grad_(True), t[:0]
    torch.testing.assert_close(fgl.segmentation_loss(xe, te, mode, bce=0.0),
                               R.segmentation_loss(xe, te, mode=mode, bce=0.0), equal_nan=True)


@pytest.mark.parametrize("fn,ref,kw", [
    (fgl.dice_loss, R.dice_loss, {}),
    (fgl.jaccard_loss, R.jaccard_loss, {"log_loss": True, "smooth": 1.0}),
    (fgl.iou_loss, R.jaccard_loss, {"classes": [0, 3], "class_weights": [1, 2, 3, 4, 5]}),
    (fgl.tversky_loss, R.tversky_loss, {"alpha": 0.2, "beta": 0.8, "gamma": 2.0}),
    (fgl.dice_loss, R.dice_loss, {"reduction": "none"}),
    (fgl.dice_loss, R.dice_loss, {"reduction": "none", "per_image": True}),
    (fgl.dice_loss, R.dice_loss, {"reduction": "sum"}),
])
def test_single_terms(device, fn, ref, kw):
    x, t = make("multiclass", (9, 5), device=device, absent=True)
    got, want = fn(x, t, "multiclass", **kw), ref(x, t, mode="multiclass", **kw)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("mode", MODES)
def test_probabilities_and_soft_targets(device, mode):
    x, t = make(mode, (6, 5), device=device)
    probs = (x.softmax(1) if mode == "multiclass" else x.sigmoid()).detach().requires_grad_(True)
    torch.testing.assert_close(fgl.segmentation_loss(probs, t, mode, from_logits=False),
                               R.segmentation_loss(probs, t, mode=mode, from_logits=False))
    if mode == "multiclass":  # soft labels of the input's shape: PyTorch-ops path
        soft = torch.rand(x.shape, dtype=x.dtype, device=device).softmax(1)
        loss = fgl.segmentation_loss(x, soft, mode, bce=0.0)
        hard = torch.nn.functional.one_hot(t, C).permute(0, 3, 1, 2).to(x.dtype)
        torch.testing.assert_close(fgl.segmentation_loss(x, hard, mode, bce=0.0),
                                   fgl.segmentation_loss(x, t, mode, bce=0.0))
        assert torch.isfinite(loss)


def test_gradcheck(device):
    for mode in MODES:
        x, t = make(mode, (3, 4), device=device, ignore=True, seed=9)
        ig = IGNORE if mode == "multiclass" else -1
        assert torch.autograd.gradcheck(
            lambda a: fgl.segmentation_loss(a, t, mode, ignore_index=ig, tversky=0.5), (x,))


def test_opcheck(device):
    x, t = make("multiclass", (4, 6), device=device)
    for args in [(x.detach().reshape(2, C, -1).float(), t.reshape(2, -1), 1, True, 3),
                 (x.detach().reshape(2, C, -1), t.reshape(2, -1).int(), 1, False, 0)]:
        torch.library.opcheck(torch.ops.fastgenloss.seg_stats.default, args)
    xm, tm = make("multilabel", (4, 6), device=device)
    torch.library.opcheck(torch.ops.fastgenloss.seg_stats.default,
                          (xm.detach().reshape(2, C, -1), tm.reshape(2, C, -1), 2, False, 0))


def test_compile_fullgraph(device):
    x, t = make("multiclass", (8, 8), device=device, ignore=True)
    fn = torch.compile(lambda a, b: fgl.segmentation_loss(a, b, "multiclass", ignore_index=IGNORE),
                       fullgraph=True)
    got = fn(x, t)
    want = fgl.segmentation_loss(x, t, "multiclass", ignore_index=IGNORE)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got, x)[0], torch.autograd.grad(want, x)[0])


def test_compile_fullgraph_probabilities_with_labels(device):
    # probabilities as input take the PyTorch-ops statistics, whose label check branches on the
    # data in eager mode; traced, it is an assertion the graph runs
    x, t = make("multiclass", (8, 8), device=device, ignore=True)
    p = x.detach().softmax(1).requires_grad_(True)
    f = lambda a, b: fgl.segmentation_loss(a, b, "multiclass", from_logits=False,  # noqa: E731
                                           ignore_index=IGNORE, dice=1.0, iou=1.0, bce=0.8)
    fn = torch.compile(f, fullgraph=True)
    got = fn(p, t)
    want = f(p, t)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got, p)[0], torch.autograd.grad(want, p)[0])
    bad = t.clone()
    bad.view(-1)[3] = C + 2
    with pytest.raises(RuntimeError, match=r"labels must be in \[0, %d\) or ignore_index "
                                            r"\(%d\), got %d" % (C, IGNORE, C + 2)):
        fn(p.detach(), bad)


@pytest.mark.parametrize("label_dtype", [torch.uint8, torch.int32, torch.int64], ids=str)
def test_seg_labels_op(device, label_dtype):
    # the compiled ops path's label op: int64 labels, ignored ones 0, never an alias; errors
    # name the first bad label; opcheck (fake kernel, schema)
    t = torch.tensor([[0, 4, 255, 2], [1, 255, 3, 0]], dtype=label_dtype, device=device)
    got = torch.ops.fastgenloss.seg_labels(t, 5, True, 255)
    assert got.dtype == torch.int64 and got.device == t.device
    assert got.tolist() == [[0, 4, 0, 2], [1, 0, 3, 0]]
    t64 = t.long()
    out = torch.ops.fastgenloss.seg_labels(t64, 256, False, 0)
    assert torch.equal(out, t64) and out.data_ptr() != t64.data_ptr()
    torch.library.opcheck(torch.ops.fastgenloss.seg_labels.default, (t, 5, True, 255))
    with pytest.raises(RuntimeError, match=r"seg_labels: labels must be in \[0, 4\) or "
                                            r"ignore_index \(255\), got 4"):
        torch.ops.fastgenloss.seg_labels(t, 4, True, 255)
    with pytest.raises(RuntimeError, match=r"labels must be in \[0, 5\), got 255 \(pass "
                                            r"ignore_index"):
        torch.ops.fastgenloss.seg_labels(t, 5, False, 0)
    with pytest.raises(RuntimeError, match=r"labels must be an integer tensor, got Float"):
        torch.ops.fastgenloss.seg_labels(t.float(), 5, False, 0)


def test_deterministic_across_thread_counts():
    x, t = make("multiclass", (64, 200), n=3, seed=12)
    x = x.float().detach().requires_grad_(True)
    results = []
    old = torch.get_num_threads()
    try:
        for threads in (1, 2, old):
            torch.set_num_threads(threads)
            loss = fgl.segmentation_loss(x, t, "multiclass")
            (g,) = torch.autograd.grad(loss, x)
            results.append((loss, g))
    finally:
        torch.set_num_threads(old)
    for loss, g in results[1:]:
        assert torch.equal(loss, results[0][0]) and torch.equal(g, results[0][1])


def test_modules_are_drop_in_for_smp(device):
    x, t = make("multiclass", (6, 6), device=device)
    for ours, ref in [(fgl.nn.DiceLoss("multiclass", ignore_index=1), R.dice_loss),
                      (fgl.nn.JaccardLoss("multiclass", log_loss=True), R.jaccard_loss)]:
        kw = {"ignore_index": 1} if ours.ignore_index is not None else {"log_loss": True}
        torch.testing.assert_close(ours(x, t), ref(x, t, mode="multiclass", **kw))
    tv = fgl.nn.TverskyLoss("multiclass", alpha=0.3, beta=0.7, gamma=1.5)
    torch.testing.assert_close(tv(x, t), R.tversky_loss(x, t, mode="multiclass", alpha=0.3,
                                                        beta=0.7, gamma=1.5))
    s = fgl.nn.SegmentationLoss("multiclass", dice=1.0, iou=1.0, ce=0.8)
    torch.testing.assert_close(s(x, t), R.segmentation_loss(x, t, mode="multiclass"))


@pytest.mark.parametrize("make_args,match", [
    (lambda x, t: (x, t, "multi"), "mode must be one of"),
    (lambda x, t: (x, t.clamp(max=3) + 3, "multiclass"), r"labels must be in \[0, 5\)"),
    (lambda x, t: (x, t - 1, "multiclass"), r"labels must be in \[0, 5\), got -1"),
    (lambda x, t: (x, t[:, :-1], "multiclass"), r"one label per position, \[N, \*spatial\]"),
    (lambda x, t: (x[:, :1], t * 0, "multiclass"), "needs C >= 2"),
    (lambda x, t: (x, t, "binary"), r"target must have \[N, \*\]"),
    (lambda x, t: (x.detach().long(), t, "multiclass"), "floating-point logits"),
    (lambda x, t: (x, t.float()[:, :2], "multilabel"), "input's shape"),
    (lambda x, t: (x[0, 0], t, "multiclass"), "must have input's batch dim 4"),
    (lambda x, t: (x[0, 0, 0], t, "multiclass"), r"\[N, C, \*spatial\]"),
])
def test_errors_name_the_argument(make_args, match):
    x, t = make("multiclass", (4, 4))
    with pytest.raises((ValueError, TypeError), match=match):
        fgl.segmentation_loss(*make_args(x, t))


def test_out_of_range_label_with_ignore_index_names_both():
    x, t = make("multiclass", (4, 4))
    t[0, 0, 0] = 7
    with pytest.raises(ValueError, match=r"or ignore_index \(255\), got 7"):
        fgl.segmentation_loss(x, t, "multiclass", ignore_index=IGNORE)


# ---- the focal term, fused into the statistics pass -------------------------------------------

FOCAL_KW = [{}, {"alpha": 0.25, "gamma": 1.0}, {"gamma": 0.5}, {"gamma": 0.0}, {"gamma": 3.0},
            {"reduction": "sum"}, {"class_weights": [1.0, 2.0, 0.5, 1.5, 1.0]}]


@pytest.mark.parametrize("kw", FOCAL_KW, ids=str)
@pytest.mark.parametrize("ignore", [False, True])
@pytest.mark.parametrize("spatial", [(7, 9), (3, 4, 5)], ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_focal_matches_reference_float64(device, mode, spatial, ignore, kw):
    if mode == "binary" and "class_weights" in kw:
        pytest.skip("class_weights are not supported in binary mode (as smp)")
    x, t = make(mode, spatial, ignore=ignore, absent=True, device=device, seed=21)
    ig = (IGNORE if mode == "multiclass" else -1) if ignore else None
    got = fgl.focal_loss(x, t, mode, ignore_index=ig, **kw)
    want = R.focal_loss(x, t, mode=mode, ignore_index=ig, **kw)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    (gx,) = torch.autograd.grad(got, x)
    (rx,) = torch.autograd.grad(want, x)
    torch.testing.assert_close(gx, rx, rtol=1e-8, atol=1e-12)
    if ignore:  # ignored elements get no gradient
        keep = (t != ig) if mode != "multiclass" else (t != ig).unsqueeze(1).expand_as(x)
        assert (gx[~keep] == 0).all()


@pytest.mark.parametrize("gamma", [2.0, 1.0, 0.5])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("mode", ["binary", "multilabel"])
def test_focal_soft_and_hard_tiles(device, mode, dtype, gamma):
    """The CPU kernel skips the soft-target exp in tiles of 64 targets that are all 0 / 1: rows
    whose tiles are all hard, all soft, or hard but for one soft value (at either end of a
    tile), with ignored elements, against the float64 reference: loss and gradient."""
    g = torch.Generator().manual_seed(31)
    c = 1 if mode == "binary" else 3
    m = 64 * 6 + 7
    x = (torch.randn(2, c, m, generator=g, dtype=torch.float64) * 3)
    t = (torch.rand(2, c, m, generator=g, dtype=torch.float64) > 0.5).double()
    t[:, :, 64:128] = torch.rand(2, c, 64, generator=g, dtype=torch.float64)  # a soft tile
    t[:, :, 128] = 0.3     # first of a tile
    t[:, :, 255] = 0.7     # last of a tile
    t[:, :, 300:310] = -1  # ignored
    t[1, :, :] = (t[1] > 0.5).double()  # the second sample all hard (ignored ones -> 0)
    t[1, :, 300:310] = -1
    for a in (x, t):
        assert a.is_contiguous()
    kw = dict(ignore_index=-1, gamma=gamma, alpha=0.25)
    xs = x.to(device, dtype).requires_grad_(True)
    got = fgl.focal_loss(xs, t.to(device, dtype), mode, **kw)
    x64 = x.to(device).requires_grad_(True)
    want = R.focal_loss(x64, t.to(device), mode=mode, **kw)
    tol = dict(rtol=1e-9, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=1e-7)
    torch.testing.assert_close(got.double(), want, **tol)
    (gx,) = torch.autograd.grad(got, xs)
    (rx,) = torch.autograd.grad(want, x64)
    torch.testing.assert_close(gx.double(), rx, rtol=tol["rtol"] * 10, atol=rx.abs().max().item() * 1e-5)
    both = fgl.segmentation_loss(xs, t.to(device, dtype), mode, dice=1.0, iou=0.0, bce=0.8,
                                 focal=1.0, focal_gamma=gamma, focal_alpha=0.25, ignore_index=-1)
    ref = R.segmentation_loss(x64, t.to(device), mode=mode, dice=1.0, iou=0.0, bce=0.8, focal=1.0,
                              focal_gamma=gamma, focal_alpha=0.25, ignore_index=-1)
    torch.testing.assert_close(both.double(), ref, **tol)


@pytest.mark.parametrize("kw", [{"normalized": True}, {"reduced_threshold": 0.5},
                                {"reduction": "none"}, {"from_logits": False}], ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_focal_variants(device, mode, kw):
    """smp's normalized / reduced focal loss and reduction='none' (PyTorch-ops path), and
    probabilities as input, against the reference."""
    x, t = make(mode, (5, 6), ignore=True, device=device, seed=22)
    ig = IGNORE if mode == "multiclass" else -1
    if kw.get("from_logits") is False:
        x = (x.softmax(1) if mode == "multiclass" else x.sigmoid()).detach().requires_grad_(True)
    torch.testing.assert_close(fgl.focal_loss(x, t, mode, ignore_index=ig, **kw),
                               R.focal_loss(x, t, mode=mode, ignore_index=ig, **kw))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_focal_low_precision_against_float64(device, mode, dtype):
    x, t = make(mode, (17, 33), n=3, ignore=True, device=device, seed=23)
    ig = IGNORE if mode == "multiclass" else -1
    kw = dict(dice=1.0, iou=0.0, bce=0.5, focal=2.0, focal_alpha=0.25, ignore_index=ig)
    check_against_reference(
        lambda a: fgl.segmentation_loss(a, t, mode, **kw),
        lambda a: R.segmentation_loss(a, t, mode=mode, **kw), [x], dtype, factor=16.0)


@pytest.mark.parametrize("gamma", [2.0, 1.0, 0.5])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_multiclass_focal_variants_float32(device, gamma, channels_last):
    """Each focal gamma (2, 1 and general) is its own variant of the multiclass CPU kernels,
    fwd and bwd: float32 against float64, over more than one chunk of 4096 positions and a
    partial tile, with ignored positions, in both memory layouts."""
    x, t = make("multiclass", (67, 65), n=2, ignore=True, device=device, seed=27)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    kw = dict(dice=1.0, iou=1.0, bce=0.8, focal=1.0, focal_gamma=gamma, focal_alpha=0.25,
              ignore_index=IGNORE)
    check_against_reference(
        lambda a: fgl.segmentation_loss(a, t, "multiclass", **kw),
        lambda a: R.segmentation_loss(a, t, mode="multiclass", **kw), [x], torch.float32,
        factor=16.0)


@pytest.mark.parametrize("mode", ["binary", "multilabel"])
def test_sigmoid_path_extreme_logits(device, mode):
    """float32 logits up to +-100 (sigmoid saturated, exp(-|x|) below float's range): the
    branch-free sigmoid / log1p of the kernel against float64."""
    g = torch.Generator().manual_seed(24)
    c = 1 if mode == "binary" else 3
    x = torch.randn(2, c, 40, 50, generator=g, dtype=torch.float64) * 30
    x[0, 0, 0, :8] = torch.tensor([100.0, -100.0, 88.5, -88.5, 17.0, -17.0, 0.0, 1e-30])
    t = (torch.rand(x.shape, generator=g) < 0.5).to(torch.float64)
    kw = dict(dice=1.0, iou=1.0, bce=1.0, focal=1.0)
    x = x.to(device)
    t = t.to(device)
    xf = x.float().requires_grad_(True)
    got = fgl.segmentation_loss(xf, t.float(), mode, **kw)
    x64 = x.clone().requires_grad_(True)
    want = R.segmentation_loss(x64, t, mode=mode, **kw)
    torch.testing.assert_close(got.double(), want, rtol=2e-6, atol=1e-7)
    (gf,) = torch.autograd.grad(got, xf)
    (g64,) = torch.autograd.grad(want, x64)
    torch.testing.assert_close(gf.double(), g64, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("mode", MODES)
def test_focal_all_ignored_is_zero_not_nan(device, mode):
    x, t = make(mode, (4, 4), device=device)
    ig = IGNORE if mode == "multiclass" else -1
    t_all = torch.full_like(t, ig)
    loss = fgl.focal_loss(x, t_all, mode, ignore_index=ig)
    assert loss.item() == 0.0
    (g,) = torch.autograd.grad(loss, x)
    assert (g == 0).all()
    torch.testing.assert_close(loss, R.focal_loss(x, t_all, mode=mode, ignore_index=ig))


def test_focal_gradcheck_opcheck_compile(device):
    for mode in MODES:
        x, t = make(mode, (3, 4), device=device, ignore=True, seed=25)
        ig = IGNORE if mode == "multiclass" else -1
        for gamma in (2.0, 0.5):
            assert torch.autograd.gradcheck(
                lambda a: fgl.segmentation_loss(a, t, mode, ignore_index=ig, focal=1.0,
                                                focal_gamma=gamma, focal_alpha=0.3), (x,))
    if True:  # the op on this device (CPU kernel, or the CUDA kernel)
        x, t = make("multiclass", (4, 6), device=device)
        torch.library.opcheck(torch.ops.fastgenloss.seg_stats.default,
                              (x.detach().reshape(2, C, -1).float(), t.reshape(2, -1), 1, True, 3,
                               2.0, 0.25))
        xm, tm = make("multilabel", (4, 6), device=device)
        torch.library.opcheck(torch.ops.fastgenloss.seg_stats.default,
                              (xm.detach().reshape(2, C, -1), tm.reshape(2, C, -1), 2, False, 0,
                               1.5, -1.0))
    x, t = make("multiclass", (8, 8), device=device, ignore=True)
    fn = torch.compile(lambda a, b: fgl.focal_loss(a, b, "multiclass", ignore_index=IGNORE,
                                                   alpha=0.25), fullgraph=True)
    got = fn(x, t)
    want = fgl.focal_loss(x, t, "multiclass", ignore_index=IGNORE, alpha=0.25)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got, x)[0], torch.autograd.grad(want, x)[0])


def test_focal_module_and_errors():
    x, t = make("multiclass", (6, 6))
    m = fgl.nn.FocalLoss("multiclass", alpha=0.25, gamma=1.5, ignore_index=1)
    torch.testing.assert_close(m(x, t), R.focal_loss(x, t, mode="multiclass", alpha=0.25,
                                                     gamma=1.5, ignore_index=1))
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        fgl.focal_loss(x, t, "multiclass", gamma=-1.0)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        fgl.focal_loss(x, t, "multiclass", alpha=1.5)
    with pytest.raises(ValueError, match="class_weights must have one weight per class"):
        fgl.focal_loss(x, t, "multiclass", class_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="not supported with mode='binary'"):
        fgl.nn.FocalLoss("binary", class_weights=[1.0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("spatial", [(37, 61), (3, 17, 29), (70, 70)], ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_cuda_kernel_matches_torch_path(mode, spatial, dtype):
    """The CUDA kernel against the PyTorch-ops path on the same device and against float64 on
    the CPU: every term incl. focal, ignore_index, rows longer than one chunk (70 x 70 > 2048)."""
    x, t = make(mode, spatial, n=3, ignore=True, absent=True, seed=31)
    ig = IGNORE if mode == "multiclass" else -1
    kw = dict(dice=1.0, iou=1.0, bce=0.8, focal=0.5, focal_alpha=0.25, tversky=0.3,
              ignore_index=ig)
    want = R.segmentation_loss(x, t, mode=mode, **kw)
    (gwant,) = torch.autograd.grad(want, x)
    xc = x.detach().to("cuda", dtype).requires_grad_(True)
    tc = t.to("cuda") if mode == "multiclass" else t.to("cuda", dtype)
    out = {}
    for flag in (True, False):
        with fgl.config.override(seg_cuda_kernel=flag):
            loss = fgl.segmentation_loss(xc, tc, mode, **kw)
            (g,) = torch.autograd.grad(loss, xc)
        out[flag] = (loss.double().cpu(), g.double().cpu())
    tol = {torch.float64: (1e-10, 1e-12), torch.float32: (1e-5, 1e-7),
           torch.float16: (2e-3, 2e-4), torch.bfloat16: (1e-2, 2e-3)}[dtype]
    for flag, (loss, g) in out.items():
        torch.testing.assert_close(loss, want.detach(), rtol=tol[0], atol=tol[1],
                                   msg=lambda m: f"kernel={flag}: {m}")
        torch.testing.assert_close(g, gwant, rtol=max(tol[0], 1e-3) if dtype != torch.float64 else tol[0],
                                   atol=tol[1] * 10, msg=lambda m: f"kernel={flag} grad: {m}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_kernel_bad_label_raises_not_crashes():
    x, t = make("multiclass", (40, 60), device="cuda")
    t[1, 39, 59] = 9
    with fgl.config.override(seg_cuda_kernel=True):
        with pytest.raises(ValueError, match=r"labels must be in \[0, 5\), got 9"):
            fgl.segmentation_loss(x, t, "multiclass")
        # the device is still usable afterwards
        assert torch.isfinite(fgl.segmentation_loss(x, t.clamp(max=C - 1), "multiclass"))


@pytest.mark.parametrize("spatial", [(9, 70), (3, 5, 30)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_channels_last_multiclass_in_place(device, spatial, dtype):
    """channels_last logits: the multiclass kernel reads their [N, M, C] memory in place; the
    loss and the gradient equal the contiguous input's (same math, same order of sums), the
    gradient comes back channels_last, and the op passes opcheck on that view."""
    x, t = make("multiclass", spatial, n=3, ignore=True, device=device, seed=41)
    fmt = torch.channels_last if len(spatial) == 2 else torch.channels_last_3d
    kw = dict(dice=1.0, iou=1.0, bce=0.8, focal=0.5, ignore_index=IGNORE)
    xc = x.detach().to(dtype).requires_grad_(True)
    xl = x.detach().to(dtype).to(memory_format=fmt).requires_grad_(True)
    assert not xl.is_contiguous()
    want = fgl.segmentation_loss(xc, t, "multiclass", **kw)
    got = fgl.segmentation_loss(xl, t, "multiclass", **kw)
    torch.testing.assert_close(got, want, rtol=1e-6 if dtype != torch.float64 else 1e-12, atol=0)
    (gw,) = torch.autograd.grad(want, xc)
    (gl,) = torch.autograd.grad(got, xl)
    torch.testing.assert_close(gl, gw, rtol=1e-6 if dtype != torch.float64 else 1e-12, atol=1e-9)
    if device == "cpu":
        assert gl.is_contiguous(memory_format=fmt)
        n, c = xl.shape[:2]
        view = xl.detach().movedim(1, -1).reshape(n, -1, c).transpose(1, 2)
        torch.library.opcheck(torch.ops.fastgenloss.seg_stats.default,
                              (view, t.reshape(n, -1), 1, True, IGNORE, 2.0, 0.25))


def test_channels_last_reads_no_copy_of_the_logits():
    """Peak memory of a channels_last fwd+bwd stays at the gradient's size (no contiguous copy
    of the logits on top)."""
    from fastgenloss._measure import peak_memory_bytes

    x = torch.randn(4, 19, 64, 64).to(memory_format=torch.channels_last).requires_grad_(True)
    t = torch.randint(0, 19, (4, 64, 64))

    def step():
        fgl.segmentation_loss(x, t, "multiclass").backward()
        x.grad = None

    step()
    peak = peak_memory_bytes(step, "cpu")
    assert peak < 1.3 * x.numel() * x.element_size(), peak


# ---- the second stage as one op (seg_combine) -------------------------------------------------
COMBINE_CASES = [
    ("binary", dict(dice=1.0, iou=0.0, bce=0.8, focal=1.0)),
    ("binary", dict(dice=1.0, iou=1.0, bce=0.0, focal=1.0, focal_alpha=0.25, reduction="sum")),
    ("multiclass", dict(dice=1.0, iou=1.0, bce=0.8)),
    ("multiclass", dict(dice=0.7, iou=0.0, bce=0.3, tversky=0.5, tversky_alpha=0.3,
                        tversky_beta=0.7, tversky_gamma=1.5, focal=0.4, log_loss=True,
                        smooth=0.5)),
    ("multiclass", dict(dice=1.0, iou=0.5, bce=0.0, focal=1.0, per_image=True, reduction="sum")),
    ("multilabel", dict(dice=0.0, iou=1.0, bce=1.0, focal=0.5, focal_gamma=0.5, per_image=True)),
    ("multilabel", dict(dice=1.0, iou=0.0, bce=0.0, tversky=1.0, tversky_gamma=0.75,
                        log_loss=True, eps=1e-3)),
    # classes: the overlap terms over the selected classes (a repeat counts twice, a negative
    # index from the end), BCE / focal over all of them
    ("multiclass", dict(dice=1.0, iou=1.0, bce=0.8, classes=[3, 1, 1, -1])),
    ("multiclass", dict(dice=1.0, iou=0.0, bce=0.0, focal=0.5, tversky=0.5, tversky_gamma=2.0,
                        classes=[0, 2], per_image=True)),
    ("multilabel", dict(dice=0.5, iou=1.0, bce=1.0, classes=(4, 0), reduction="sum")),
    # class_weights: the overlap and focal terms' weighted class means (per image: over the
    # (sample, class) pairs), never the cross-entropy's; with classes, the selected ones' weights
    ("multiclass", dict(dice=1.0, iou=1.0, bce=0.8, class_weights=[0.5, 2.0, 1.0, 0.25, 3.0])),
    ("multiclass", dict(dice=0.5, iou=0.0, bce=0.0, focal=1.0, tversky=1.0, tversky_gamma=1.5,
                        per_image=True, class_weights=(1.0, 0.0, 2.0, 1.5, 0.5))),
    ("multiclass", dict(dice=1.0, iou=0.0, bce=0.3, focal=0.7, classes=[4, 1, 1],
                        class_weights=torch.tensor([3.0, 0.5, 1.0, 2.0, 0.75]))),
    ("multilabel", dict(dice=1.0, iou=1.0, bce=0.0, focal=1.0, reduction="sum",
                        class_weights=[2.0, 1.0, 0.5, 1.0, 4.0])),
    ("multilabel", dict(dice=0.0, iou=1.0, bce=1.0, per_image=True, log_loss=True,
                        class_weights=[1.0, 1.0, 3.0, 0.1, 1.0])),
]


def _python_stage(monkeypatch, on):
    monkeypatch.setattr(fgl.segmentation.functional, "_combine_enabled", (lambda s: True) if on else (lambda s: False))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("case", range(len(COMBINE_CASES)))
def test_combine_op_matches_python_stage(device, monkeypatch, case, dtype):
    """The fused second stage (one op forward, one backward) against the PyTorch-ops stage it
    replaces, loss and input gradient, with absent classes and ignored elements."""
    mode, kw = COMBINE_CASES[case]
    x, t = make(mode, (6, 7), n=3, ignore=True, absent=True, seed=50 + case, device=device)
    kw = dict(kw, ignore_index=IGNORE if mode == "multiclass" else -1)
    xd = x.detach().to(dtype).requires_grad_(True)
    td = t if mode == "multiclass" else t.to(dtype)
    out = {}
    for on in (True, False):
        _python_stage(monkeypatch, on)
        loss = fgl.segmentation_loss(xd, td, mode, **kw)
        (g,) = torch.autograd.grad(loss, xd)
        out[on] = (loss, g)
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == torch.float64 else dict(rtol=2e-6, atol=1e-7)
    torch.testing.assert_close(out[True][0], out[False][0], **tol)
    torch.testing.assert_close(out[True][1], out[False][1], **tol)
    if "reduction" in kw:  # the reference has smp's means only
        return
    want = R.segmentation_loss(x, t, mode=mode, **kw)
    torch.testing.assert_close(out[True][0].double(), want.detach(),
                               **(dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64
                                  else dict(rtol=1e-5, atol=1e-6)))


def test_combine_op_is_one_op_each_way():
    """The whole second stage is seg_combine forward and seg_combine_bwd backward: a handful of
    tensor ops a step instead of about a hundred (their overhead dominated on a GPU)."""
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[str(func)] += 1
            return func(*args, **(kwargs or {}))

    x, t = make("multiclass", (16, 16), n=2)
    # (extra arguments, seg_combine calls each way, most ops forward, most ops backward);
    # classes: two calls (the overlap terms on the selected classes, BCE on all)
    for kw, calls, most_fwd, most_bwd in (({}, 1, 6, 6), (dict(classes=[1, 3]), 2, 12, 14),
                                          (dict(class_weights=[1.0, 2.0, 0.5, 1.0, 3.0]), 1, 8, 6)):
        with Count() as fwd:
            loss = fgl.segmentation_loss(x, t, "multiclass", dice=1.0, iou=1.0, bce=0.8, **kw)
        with Count() as bwd:
            loss.backward()
        assert fwd.ops["fastgenloss.seg_combine.default"] == calls
        assert bwd.ops["fastgenloss.seg_combine_bwd.default"] == calls
        assert sum(fwd.ops.values()) <= most_fwd, fwd.ops
        assert sum(bwd.ops.values()) <= most_bwd, bwd.ops


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("binary", [False, True])
def test_combine_op_gradcheck_opcheck(device, per_image, binary):
    """seg_combine's backward against finite differences of its forward, every term on (three
    overlap terms with gamma != 1, log_loss, smooth, BCE, focal), mean and sum; opcheck."""
    g = torch.Generator().manual_seed(7 + per_image + 2 * binary)
    n, c = 3, 1 if binary else 4
    P = torch.rand(n, c, generator=g, dtype=torch.float64) * 20 + 1
    T = torch.rand(n, c, generator=g, dtype=torch.float64) * 20 + 1
    # (no absent class here: the loss jumps at T = 0, where finite differences mean nothing;
    # test_combine_op_matches_python_stage covers absent classes)
    A = (P - T).abs() + torch.rand(n, c, generator=g, dtype=torch.float64) * 5
    F_ = torch.rand(n, c, generator=g, dtype=torch.float64) * 10
    K = torch.full((n, c), 30.0, dtype=torch.float64)
    stats = torch.stack([P, T, A, F_, K], -1).to(device).requires_grad_(True)
    xent = (torch.rand(n, c, generator=g, dtype=torch.float64) * 9).to(device).requires_grad_(True)
    overlap = [1.0, 0.5, 0.5, 1.0, 0.7, 1.0, 1.0, 1.5, 0.4, 0.3, 0.7, 0.8]
    weights = (torch.rand(c, generator=g, dtype=torch.float64) * 2 + 0.1).to(device)
    for red_sum in (False, True):
        for log_loss in (False, True):
            for w in (None, weights):
                args = (overlap, 0.8, 123.0, 0.6, binary, per_image, red_sum, log_loss, 0.25,
                        1e-7, w)
                assert torch.autograd.gradcheck(
                    lambda s, x: torch.ops.fastgenloss.seg_combine(s, x, *args), (stats, xent))
    for w in (None, weights.float()):
        torch.library.opcheck(torch.ops.fastgenloss.seg_combine.default,
                              (stats.detach().float(), xent.detach().float(), overlap, 0.8, 123.0,
                               0.6, binary, per_image, False, False, 0.0, 1e-7, w))


def test_combine_op_checks_arguments():
    stats, xent = torch.rand(2, 3, 3), torch.rand(2, 3)
    op = torch.ops.fastgenloss.seg_combine
    args = (0.0, 1.0, 0.0, False, False, False, False, 0.0, 1e-7)
    with pytest.raises(RuntimeError, match=r"stats must be float32 or float64 \[N, C, 3 or 5\]"):
        op(torch.rand(2, 3, 4), xent, [1.0, 0.5, 0.5, 1.0], *args)
    with pytest.raises(RuntimeError, match=r"xent must be \[N, C\] = \[2, 3\]"):
        op(stats, torch.rand(3, 2), [1.0, 0.5, 0.5, 1.0], *args)
    with pytest.raises(RuntimeError, match="overlap must hold"):
        op(stats, xent, [1.0, 0.5, 0.5], *args)
    with pytest.raises(RuntimeError, match="overlap must hold"):
        op(stats, xent, [1.0, 0.5, 0.5, 1.0] * 4, *args)
    for bad in (torch.ones(2), torch.ones(3, 1), torch.ones(3, dtype=torch.float64)):
        with pytest.raises(RuntimeError, match=r"class_weights must be \[C\] = \[3\] of stats' dtype"):
            op(stats, xent, [1.0, 0.5, 0.5, 1.0], *args, bad)


def test_eager_entry_points_skip_library_argument_handling(monkeypatch):
    """Eager calls go through the ops' autograd.Function entry points (the same kernels,
    setup_context and backward as the registered formulas) rather than torch.library's autograd
    wrapper, whose per-call fill_defaults cost ~50 us for seg_combine's 13 arguments: same loss
    and gradient bits, and no fill_defaults call."""
    import torch._library.utils as lib_utils

    calls = []
    real = lib_utils.fill_defaults
    monkeypatch.setattr(lib_utils, "fill_defaults",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    x, t = make("multiclass", (9, 7), n=2, ignore=True, seed=3)
    kw = dict(dice=1.0, iou=0.5, bce=0.8, focal=0.5, ignore_index=IGNORE,
              class_weights=[1.0, 2.0, 0.5, 1.0, 3.0])
    loss = fgl.segmentation_loss(x, t, "multiclass", **kw)
    (g,) = torch.autograd.grad(loss, x)
    assert not calls
    # the registered ops with their torch.library autograd, as torch.compile records them
    def registered_op(op, fn, args, needs_grad):
        return op(*args)

    monkeypatch.setattr(fgl.segmentation._stats, "call_op", registered_op)
    monkeypatch.setattr(fgl.segmentation.functional, "call_op", registered_op)
    loss2 = fgl.segmentation_loss(x, t, "multiclass", **kw)
    (g2,) = torch.autograd.grad(loss2, x)
    assert calls  # the wrapper did run (so the first assertion can fail)
    assert torch.equal(loss, loss2) and torch.equal(g, g2)


# ---- found by the differential fuzzer (tests/segmentation/test_segmentation_fuzz.py) ----------------------

@pytest.mark.parametrize("python_stage", [False, True], ids=["combine", "python-stage"])
@pytest.mark.parametrize("case", ["absent", "all-ignored", "log-loss-all-ignored"])
def test_gamma_below_one_at_zero_loss_has_zero_gradient(device, monkeypatch, python_stage, case):
    """(mean loss) ** gamma with gamma < 1 where that mean is 0 and constant (every class absent
    or every pixel ignored): torch's pow gives the derivative gamma * 0 ** (gamma - 1) = inf and
    inf * 0 = NaN in every gradient element (smp's TverskyLoss does); ours is 0, the limit."""
    _python_stage(monkeypatch, not python_stage)
    x, t = make("multiclass", (3, 5), device=device, seed=3)
    kw = dict(dice=0.0, iou=0.0, bce=0.0, tversky=1.0, tversky_alpha=0.7, tversky_beta=0.2,
              tversky_gamma=0.75, ignore_index=IGNORE, log_loss=case.startswith("log"))
    if case == "absent":
        x, t = make("binary", (1, 1), device=device, seed=3)
        t = torch.zeros_like(t)
        kw["ignore_index"] = None
    else:
        t = torch.full_like(t, IGNORE)
    mode = "binary" if case == "absent" else "multiclass"
    for fn in (fgl.segmentation_loss, lambda *a, **k: R.segmentation_loss(a[0], a[1], mode=a[2], **k)):
        loss = fn(x, t, mode, **kw)
        (g,) = torch.autograd.grad(loss, x)
        assert loss.item() == 0.0
        assert torch.equal(g, torch.zeros_like(g)), g


@pytest.mark.parametrize("gamma", [0.75, 2.0])
def test_gamma_power_of_a_rounding_negative_loss_is_zero_not_nan(gamma):
    """1 - score can round to -1 ulp where the prediction equals the target (probabilities as
    input): (-tiny) ** 0.75 is NaN in torch; the power counts it as 0 (reference.power)."""
    base = torch.tensor([-1e-17, 0.0, 0.25], dtype=torch.float64, requires_grad=True)
    out = R.power(base, gamma)
    (g,) = torch.autograd.grad(out.sum(), base)
    torch.testing.assert_close(out, torch.tensor([0.0, 0.0, 0.25 ** gamma], dtype=torch.float64))
    torch.testing.assert_close(g, torch.tensor([0.0, 0.0, gamma * 0.25 ** (gamma - 1)],
                                               dtype=torch.float64))
    assert torch.isnan(R.power(torch.tensor([float("nan")]), gamma)).all()
    assert R.power(torch.tensor([0.0]), 0.0).item() == 1.0


@pytest.mark.parametrize("kw", [dict(normalized=True), dict(reduced_threshold=0.5),
                                dict(reduction="none")], ids=str)
@pytest.mark.parametrize("mode", ["binary", "multilabel"])
def test_focal_variants_gamma_below_one_saturated_float32(mode, kw):
    """smp's focal variants with gamma < 1 in float32 where p_t rounds to 1 (|logit| ~ 15-40):
    1 - exp(-l) is 0 there and the power's gradient NaN; ours takes -expm1(-l) and the power
    with the limit at 0, finite and equal to the float64 result within float32 tolerance."""
    x, t = make(mode, (7, 9), seed=19)
    x = (x.detach() * 8).requires_grad_(True)
    x32 = x.detach().float().requires_grad_(True)
    out = {}
    for xi in (x, x32):
        loss = fgl.focal_loss(xi, t.to(xi.dtype), mode, gamma=0.5, **kw)
        (g,) = torch.autograd.grad(loss.sum(), xi)
        assert torch.isfinite(loss).all() and torch.isfinite(g).all()
        out[xi.dtype] = (loss, g)
    torch.testing.assert_close(out[torch.float32][0].double(), out[torch.float64][0],
                               rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out[torch.float32][1].double(), out[torch.float64][1],
                               rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("ignore", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_probabilities_input_gradient(device, mode, ignore):
    """from_logits=False: loss and gradient (with respect to the probabilities) against the
    reference in float64, the cross-entropy term included, probabilities near 0 and 1 (where
    the eps clamp acts). Multiclass CE from probabilities is -log(clamp(p_label)), not
    renormalized: the gradient is -1 / p at the label only."""
    x, t = make(mode, (5, 6), ignore=ignore, seed=23, device=device)
    z = x.detach() * 6
    p = (z.softmax(1) if mode == "multiclass" else z.sigmoid()).requires_grad_(True)
    ig = (IGNORE if mode == "multiclass" else -1) if ignore else None
    kw = dict(dice=1.0, iou=0.5, bce=0.8, from_logits=False, eps=1e-3, ignore_index=ig)
    check_against_reference(lambda a: fgl.segmentation_loss(a, t, mode, **kw),
                            lambda a: R.segmentation_loss(a, t, mode=mode, **kw), [p],
                            torch.float64)
    if mode == "multiclass":
        q = p.detach().requires_grad_(True)
        loss = fgl.segmentation_loss(q, t, mode, dice=0.0, iou=0.0, bce=1.0, from_logits=False,
                                     ignore_index=ig)
        (g,) = torch.autograd.grad(loss, q)
        lab = t.long().clamp(max=C - 1).unsqueeze(1)
        keep = (t != IGNORE).unsqueeze(1) if ignore else torch.ones_like(lab, dtype=torch.bool)
        at_label = torch.zeros_like(q).scatter_(1, lab, 1.0).bool() & keep
        assert torch.equal(g[~at_label], torch.zeros_like(g[~at_label]))


def test_probabilities_input_float32_saturated_bce():
    """Binary BCE from saturated float32 probabilities: eps is honoured as in float64 (the
    bound 1 - 1e-7 rounds to 1 - 1.19e-7 in float32, which would move the clamped logit from
    16.12 to 15.94)."""
    x, t = make("binary", (8, 8), seed=29)
    p32 = (x.detach() * 30).sigmoid().float()
    assert (p32 == 1).any() and (p32 == 0).any()
    kw = dict(dice=0.0, iou=0.0, bce=1.0, from_logits=False)
    got = fgl.segmentation_loss(p32, t.float(), "binary", **kw)
    want = R.segmentation_loss(p32.double(), t, mode="binary", **kw)
    torch.testing.assert_close(got.double(), want, rtol=2e-6, atol=0)


@pytest.mark.parametrize("call,match", [
    (lambda x, t, w: fgl.dice_loss(x, t, "multiclass", class_weights=w, classes=[0, 1]),
     r"classes averaged \(\[0, 1\]\) sum to 0"),
    (lambda x, t, w: fgl.focal_loss(x, t, "multiclass", class_weights=[0.0] * C),
     "class_weights sum to 0"),
    # smp's variants (PyTorch ops) divide by the weights' sum too, in both reductions
    (lambda x, t, w: fgl.focal_loss(x, t, "multiclass", normalized=True, class_weights=[0.0] * C),
     "class_weights sum to 0"),
    (lambda x, t, w: fgl.focal_loss(x, t, "multiclass", reduced_threshold=0.5, reduction="sum",
                                    class_weights=[0.0] * C), "class_weights sum to 0"),
    (lambda x, t, w: fgl.focal_loss(x, t, "multiclass", normalized=True,
                                    class_weights=[1.0, float("nan"), 1.0, 1.0, 1.0]),
     "class_weights must be finite"),
])
def test_class_weights_with_a_zero_mean_raise(call, match):
    """A weighted class mean over weights summing to 0 is 0 / 0: a ValueError naming the
    weights instead of a silent NaN (host weights; CUDA ones are not read back)."""
    x, t = make("multiclass", (4, 4))
    w = [0.0, 0.0, 1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match=match):
        call(x, t, w)
    # with reduction="none" smp's focal variants return the element-wise loss: no weights used
    assert fgl.focal_loss(x, t, "multiclass", normalized=True, reduction="none",
                          class_weights=[0.0] * C).shape == x.shape
