"""GPU audits: TF32 named in the verdict, a float64 oracle on the CPU, determinism recorded and
non-reproducible layers named. Every test here needs a CUDA device and is skipped cleanly without one;
the per-op CUDA variants live beside their CPU tests (util.DEVICES)."""
from __future__ import annotations

import contextlib
import copy
import os

import pytest
import torch
import torch.nn as nn

import torchbp
from util import CUDA, rel_err

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason="no CUDA device")]


@contextlib.contextmanager
def tf32(on: bool):
    """TF32 for float32 matmuls and convolutions on or off, restored afterwards (new API where torch has
    it: the two APIs must not be mixed)."""
    m, c = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(m, "fp32_precision"):
        old = (m.fp32_precision, c.conv.fp32_precision)
        m.fp32_precision = c.conv.fp32_precision = "tf32" if on else "ieee"
        try:
            yield
        finally:
            m.fp32_precision, c.conv.fp32_precision = old
    else:
        old = (m.allow_tf32, c.allow_tf32)
        m.allow_tf32 = c.allow_tf32 = on
        try:
            yield
        finally:
            m.allow_tf32, c.allow_tf32 = old


def mlp(width=256):
    return nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 10))


def cnn():
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


@pytest.mark.parametrize("on", [True, False])
def test_float32_audit_names_tf32_and_runs_the_oracle_on_the_cpu(on):
    model = mlp().cuda()
    with tf32(on):
        r = torchbp.audit(model, torch.randn(128, 64, device="cuda"), torch.randn(128, 10, device="cuda"),
                          dtype=torch.float32, oracle_device="cpu")
    assert r.ok, str(r)
    assert r.environment["tf32"] is on and ("TF32 on" in r.verdict()) is on
    assert r.environment["oracle_device"] == "cpu" and r.environment["oracle"] == "float64"
    assert r.environment["device_name"] == torch.cuda.get_device_name()
    # every row judged against the float64 oracle: native's own error is recorded
    assert all(row.native_rel_err is not None for row in r.rows)
    if on:  # TF32 keeps 10 mantissa bits: native itself is far from float64, and the subject no closer
        assert max(row.native_rel_err for row in r.rows if row.native_rel_err == row.native_rel_err) > 1e-5


def test_cpu_and_cuda_oracles_agree():
    model, x = cnn().cuda(), torch.randn(8, 3, 16, 16, device="cuda")
    with tf32(False):
        a = torchbp.audit(model, x, dtype=torch.float32)
        b = torchbp.audit(model, x, dtype=torch.float32, oracle_device="cpu")
    assert a.ok and b.ok, (str(a), str(b))
    for ra, rb in zip(a.rows, b.rows):
        assert (ra.layer, ra.quantity) == (rb.layer, rb.quantity)
        # the same verdicts; the errors agree to within the run-to-run spread of cuDNN's atomics
        assert ra.status == rb.status and ra.rel_err == pytest.approx(rb.rel_err, rel=0.25, abs=1e-9)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_cuda_audit(dtype):
    r = torchbp.audit(cnn().cuda(), torch.randn(8, 3, 16, 16, device="cuda"), dtype=dtype, oracle_device="cpu")
    assert r.ok, str(r)
    assert r.coverage == 1.0


def test_float64_cuda_audit_is_exact():
    r = torchbp.audit(cnn().cuda().double(), torch.randn(4, 3, 16, 16, device="cuda", dtype=torch.float64))
    assert r.ok and r.coverage == 1.0, str(r)
    assert r.worst.rel_err <= 1e-10


def test_determinism_settings_are_recorded():
    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        r = torchbp.audit(mlp().cuda(), torch.randn(32, 64, device="cuda"), dtype=torch.float32, repeat=2)
    finally:
        torch.use_deterministic_algorithms(old)
    env = r.environment
    assert env["deterministic_algorithms"] is True and env["deterministic_warn_only"] is True
    assert env["CUBLAS_WORKSPACE_CONFIG"] == os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    assert r.ok and not r.not_reproducible, str(r)


class _Jitter(torch.autograd.Function):
    """Identity whose backward adds noise drawn on the GPU: a stand-in for an atomics-based kernel whose
    gradient changes from run to run."""

    @staticmethod
    def forward(x):
        return x.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):
        return g + 1e-6 * torch.rand_like(g)


class Jitter(nn.Module):
    def forward(self, x):
        return _Jitter.apply(x)


def test_repeat_names_the_layer_that_is_not_bitwise_reproducible():
    model = nn.Sequential(nn.Linear(64, 32), Jitter(), nn.ReLU(), nn.Linear(32, 10)).cuda()
    r = torchbp.audit(model, torch.randn(16, 64, device="cuda"), dtype=torch.float32, repeat=2,
                      against=model)
    assert r.not_reproducible, str(r)
    # the noise enters below layer 1: layer 3 (above it) reproduces, layer 0 (below it) does not
    assert "0" in r.not_reproducible and "3" not in r.not_reproducible
    assert "not bitwise reproducible" in r.verdict()


def test_embedding_index_add_reproducibility_is_reported_not_failed():
    """The δ embedding accumulates rows with index_add_ (atomics on CUDA): repeat reports whatever it sees
    without failing the audit, and with deterministic algorithms requested it reproduces."""
    model = nn.Sequential(nn.Embedding(50, 64), nn.Flatten(), nn.Linear(64 * 512, 4)).cuda()
    tokens = torch.randint(0, 3, (8, 512), device="cuda")  # heavy collisions
    r = torchbp.audit(model, tokens, dtype=torch.float32, repeat=3)
    assert r.ok, str(r)
    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        d = torchbp.audit(model, tokens, dtype=torch.float32, repeat=3)
    finally:
        torch.use_deterministic_algorithms(old)
    assert d.ok and "0" not in d.not_reproducible, str(d)


@pytest.mark.parametrize("amp", [torch.bfloat16, torch.float16])
def test_swapped_model_under_cuda_autocast_matches_native(amp):
    native = cnn().cuda()
    manual = torchbp.swap(copy.deepcopy(native))
    x = torch.randn(8, 3, 16, 16, device="cuda")
    grads = []
    for m in (native, manual):
        with torch.autocast("cuda", dtype=amp):
            loss = m(x).float().square().mean()
        grads.append(torch.autograd.grad(loss, list(m.parameters())))
    oracle = cnn().double()
    oracle.load_state_dict(native.state_dict())
    loss = oracle(x.double().cpu()).square().mean()
    go = torch.autograd.grad(loss, list(oracle.parameters()))
    for gn, gm, o in zip(*grads, go):
        assert rel_err(gm, o) <= 2 * rel_err(gn, o) + 3e-2


def test_cli_audit_on_cuda(tmp_path, capsys):
    from torchbp.checker.report import AuditReport
    from torchbp.cli import main
    code = main(["audit", "torchbp.demo:derivation_network", "--input-shape", "8,4", "--target-shape", "8,3",
                 "--device", "cuda", "--dtype", "float32", "--oracle-device", "cpu",
                 "--json", str(tmp_path / "r.json")])
    assert code == 0, capsys.readouterr().out
    env = AuditReport.from_json(str(tmp_path / "r.json")).environment
    assert env["device"].startswith("cuda") and env["oracle_device"] == "cpu"
