"""SyncBatchNorm: on one process the δ batch norm (native's fallback); on two gloo processes the batch norm of the
global batch, its statistics and δ sums all-reduced, equal to native BatchNorm on the whole batch. (DDP refuses to
wrap a SyncBatchNorm on the CPU, and native's own sync path runs on GPUs only: the processes reduce their
gradients themselves, as DDP would.)"""
import copy

import pytest
import torch

import torchbp
from util import assert_matches_native, grad_fn_names, rel_err

DT = torch.float64


@pytest.mark.parametrize("kw,train", [(dict(), True), (dict(), False), (dict(momentum=None), True),
                                      (dict(affine=False), True), (dict(track_running_stats=False), True),
                                      (dict(track_running_stats=False), False)])
def test_one_process_is_batch_norm(kw, train):
    torch.manual_seed(0)
    native = torch.nn.SyncBatchNorm(3, **kw).to(DT).train(train)
    if native.running_mean is not None:
        native.running_mean.uniform_(-1, 1), native.running_var.uniform_(0.5, 2)
    twin = torchbp.swap(copy.deepcopy(native))
    assert type(twin) is not torch.nn.SyncBatchNorm and isinstance(twin, torch.nn.SyncBatchNorm)
    x = torch.randn(4, 3, 5, 2, dtype=DT, requires_grad=True)
    params = list(native.parameters())
    assert_matches_native(lambda t, *p: torch.func.functional_call(twin, dict(zip(["weight", "bias"], p)), (t,)),
                          lambda t, *p: torch.func.functional_call(native, dict(zip(["weight", "bias"], p)), (t,)),
                          (x, *[q.detach().requires_grad_() for q in params]))
    for a, b in zip(twin.buffers(), native.buffers()):
        assert torch.equal(a, b)
    assert "BatchNormBackward" in grad_fn_names(twin(x))


def test_sync_function_on_one_process_group_of_one_matches_batch_norm(tmp_path):
    """The δ sync Function itself, its collectives over a one-process gloo group, against native batch_norm."""
    import datetime
    import torch.distributed as dist
    from torchbp.functional.sync_batchnorm import sync_batch_norm
    dist.init_process_group("gloo", init_method="file://" + str(tmp_path / "store"), rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=30))
    try:
        x = torch.randn(6, 3, 4, dtype=DT, requires_grad=True)
        w, b = torch.randn(3, dtype=DT, requires_grad=True), torch.randn(3, dtype=DT, requires_grad=True)
        rm_s, rv_s, rm_n, rv_n = torch.zeros(3, dtype=DT), torch.ones(3, dtype=DT), torch.zeros(3, dtype=DT), \
            torch.ones(3, dtype=DT)
        assert_matches_native(lambda *a: sync_batch_norm(a[0], a[1], a[2], rm_s, rv_s, 1e-5, 0.1, None),
                              lambda *a: torch.nn.functional.batch_norm(a[0], rm_n, rv_n, a[1], a[2], True, 0.1),
                              (x, w, b))
        assert rel_err(rm_s, rm_n) <= 1e-12 and rel_err(rv_s, rv_n) <= 1e-12
        with pytest.raises(RuntimeError, match="sync_batch_norm: double backward is not supported"):
            y = sync_batch_norm(x, w, b, None, None, 1e-5, 0.1, None)
            torch.autograd.grad(y.sin().sum(), x, create_graph=True)
    finally:
        dist.destroy_process_group()


# --- two gloo processes -----------------------------------------------------------------------------------

ROWS = (3, 5)  # each rank's share of the global batch: unequal, so the counts matter


def _data():
    g = torch.Generator().manual_seed(7)
    return (torch.randn(sum(ROWS), 3, 4, 4, generator=g, dtype=DT),
            torch.randn(sum(ROWS), 4, 4, 4, generator=g, dtype=DT))


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1, bias=False),  # a bias before BN: δ 0
                               torch.nn.BatchNorm2d(4, momentum=0.3),
                               torch.nn.Tanh()).to(DT)


def sync_worker(rank):
    import torch.distributed as dist
    model = torchbp.swap(torch.nn.SyncBatchNorm.convert_sync_batchnorm(_model()), strict=True)
    X, V = _data()
    lo = sum(ROWS[:rank])
    x = X[lo:lo + ROWS[rank]].clone().requires_grad_()
    out = model(x)
    (out * V[lo:lo + ROWS[rank]]).sum().backward()
    for p in model.parameters():  # what DDP's gradient hook does: the mean over the ranks
        dist.all_reduce(p.grad)
        p.grad /= dist.get_world_size()
    bn = model[1]
    return dict(out=out.detach(), dx=x.grad, grads=[p.grad.clone() for p in model.parameters()],
                running=(bn.running_mean.clone(), bn.running_var.clone()), names=grad_fn_names(out),
                twin=type(bn).__module__)


def test_two_processes_equal_batch_norm_on_the_whole_batch(tmp_path):
    launch = pytest.importorskip("test_distributed").launch
    res = launch(sync_worker, tmp_path)
    X, V = _data()
    native = _model()
    x = X.clone().requires_grad_()
    out = native(x)
    (out * V).sum().backward()
    assert rel_err(torch.cat([r["out"] for r in res]), out) <= 1e-10
    assert rel_err(torch.cat([r["dx"] for r in res]), x.grad) <= 1e-10
    for r in res:
        assert "SyncBatchNormBackward" in r["names"] and r["twin"] == "torchbp.nn.sync_batchnorm"
        for g, p in zip(r["grads"], native.parameters()):  # the mean of the ranks' local gradients
            assert rel_err(g * len(ROWS), p.grad) <= 1e-10
        for a, b in zip(r["running"], (native[1].running_mean, native[1].running_var)):
            assert rel_err(a, b) <= 1e-10
