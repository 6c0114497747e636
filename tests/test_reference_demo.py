"""The NumPy reference against native autograd and the δ layers; the demo; the bench's smoke run."""
import copy
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

import torchbp
from torchbp import demo, reference
from torchbp.functional import activation as act_fns

ROOT = pathlib.Path(__file__).resolve().parents[1]

ACTIVATIONS = {
    "identity": nn.Identity, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.1), "elu": lambda: nn.ELU(0.7), "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU("tanh"), "silu": nn.SiLU,
    "softplus": lambda: nn.Softplus(beta=2.0, threshold=1.5),  # threshold reached by some units
    "hardtanh": lambda: nn.Hardtanh(-0.5, 0.8), "relu6": nn.ReLU6,
}
SIZES = [(3, 4, 2), (5, 7, 6, 3)]


def dense(sizes, make_act, bias=True):
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b, bias=bias, dtype=torch.float64), make_act()]
    return nn.Sequential(*layers)


def half_squared_error(h, y, reduction="mean"):
    j = 0.5 * ((y - h) ** 2).sum(-1)
    return j.mean() if reduction == "mean" else j.sum()


def rel(s, r):
    s, r = np.asarray(s, np.float64), np.asarray(r, np.float64)
    return np.linalg.norm(s - r) / max(np.linalg.norm(r), 1e-300)


def check_against(model, x, y, ref, reduction="mean"):
    deltas, gW, gb = demo._backprop_torch(model, x, y, lambda h, y: half_squared_error(h, y, reduction))
    for l, (d, w, b) in enumerate(zip(deltas, gW, gb)):
        assert rel(d.detach().numpy(), ref["deltas"][l]) <= 1e-10, f"δ({l + 2})"
        assert rel(w.numpy(), ref["grad_W"][l]) <= 1e-10, f"∂J/∂W({l + 1})"
        if ref["grad_b"][l] is None:
            assert b is None
        else:
            assert rel(b.numpy(), ref["grad_b"][l]) <= 1e-10, f"∂J/∂b({l + 1})"


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("sizes", SIZES)
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_reference_matches_native_and_delta_layers(name, sizes, batch):
    model = dense(sizes, ACTIVATIONS[name])
    x = 3 * torch.randn(batch, sizes[0], dtype=torch.float64)  # wide enough to reach every branch of f'
    y = torch.randn(batch, sizes[-1], dtype=torch.float64)
    ref = reference.backprop(*reference.from_torch(model), x.numpy(), y.numpy())
    assert abs(ref["loss"] - half_squared_error(model(x), y).item()) <= 1e-12 * max(1.0, ref["loss"])
    np.testing.assert_allclose(ref["a"][-1], model(x).detach().numpy(), rtol=1e-12, atol=1e-14)
    check_against(model, x, y, ref)                                   # native autograd
    manual = torchbp.swap(copy.deepcopy(model), strict=True)
    check_against(manual, x, y, ref)                                  # torchbp's δ layers


def test_reference_sum_reduction_and_no_bias():
    model = dense((4, 5, 3), nn.Tanh, bias=False)
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    ref = reference.backprop(*reference.from_torch(model), x.numpy(), y.numpy(), reduction="sum")
    assert ref["grad_b"] == [None, None]
    check_against(model, x, y, ref, reduction="sum")


def test_reference_activation_specs_and_bad_input():
    W, b = [np.eye(2)], [np.zeros(2)]
    x = np.array([[-1.0, 2.0]])
    out = reference.backprop(W, b, [("leaky_relu", {"negative_slope": 0.5})], x, np.zeros((1, 2)))
    np.testing.assert_allclose(out["a"][-1], [[-0.5, 2.0]])
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        reference.backprop(W, b, ["swish"], x, np.zeros((1, 2)))
    with pytest.raises(ValueError, match="target y has shape"):
        reference.backprop(W, b, ["relu"], x, np.zeros((1, 3)))
    with pytest.raises(ValueError, match="one entry per layer"):
        reference.backprop(W, b, [], x, np.zeros((1, 2)))
    with pytest.raises(ValueError, match="reduction"):
        reference.backprop(W, b, ["relu"], x, np.zeros((1, 2)), reduction="none")


@pytest.mark.parametrize("model, match", [
    (nn.Sequential(nn.Linear(3, 4), nn.Conv1d(4, 4, 1)), r"module '1' \(Conv1d\) is neither Linear"),
    (nn.Sequential(nn.Linear(3, 4), nn.Softmax(-1)), r"module '1' \(Softmax\)"),
    (nn.Sequential(nn.ReLU(), nn.Linear(3, 4)), r"module '0' \(ReLU\) must follow a Linear"),
    (nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Tanh()), r"module '2' \(Tanh\) must follow a Linear"),
    (nn.Sequential(nn.ReLU6()), "must follow a Linear"),
    (nn.Sequential(), "no Linear layer"),
    (nn.Linear(3, 4), "expected an nn.Sequential"),
])
def test_from_torch_errors(model, match):
    with pytest.raises(ValueError, match=match):
        reference.from_torch(model)


def test_from_torch_reads_twins_and_parameters():
    model = torchbp.swap(nn.Sequential(nn.Linear(3, 4), nn.ReLU6(), nn.Linear(4, 2), nn.Softplus(2.0, 5.0)))
    W, b, acts = reference.from_torch(model)
    assert acts == ["relu6", ("softplus", {"beta": 2.0, "threshold": 5.0})]
    assert W[0].dtype == np.float64 and W[0].shape == (4, 3) and b[1].shape == (2,)
    np.testing.assert_array_equal(W[1], model[2].weight.detach().double().numpy())


# --- the demo -------------------------------------------------------------------------------------

def test_demo_agrees(capsys):
    assert demo.main([]) == 0
    out = capsys.readouterr().out
    for text in ("δ vs native", "δ vs NumPy", "native vs NumPy", "p (l = n_l)", "j (l = n_l−4)", "∂J/∂W",
                 "All three agree"):
        assert text in out
    assert "FAIL" not in out
    assert max(len(line) for line in out.splitlines()) <= 100  # reads in a terminal


@pytest.mark.parametrize("argv", [["--batch", "1", "--seed", "3"], ["--dtype", "float32"]])
def test_demo_options(argv, capsys):
    assert demo.main(argv) == 0
    assert "All three agree" in capsys.readouterr().out


def test_demo_catches_a_planted_bug(monkeypatch, capsys):
    # a wrong sigmoid derivative in the δ layers: f'(z) = a instead of a(1 − a)
    monkeypatch.setattr(act_fns.Sigmoid, "delta", staticmethod(lambda g, a: g * a))
    assert demo.main([]) == 1
    out = capsys.readouterr().out
    assert "DISAGREEMENT" in out and "FAIL" in out
    rows, ok = demo.compare()
    assert not ok
    first = next(r for r in rows if r[-1] == "FAIL")
    assert first[:2] == ["p (l = n_l)", "δ"]  # found where it starts: the output layer's δ
    monkeypatch.undo()
    assert demo.compare()[1]


def test_demo_rejects_bad_batch():
    with pytest.raises(SystemExit):
        demo.main(["--batch", "0"])


# --- the bench ------------------------------------------------------------------------------------

@pytest.mark.slow  # a subprocess importing torch and profiling: ~5 s idle, 12 s on a loaded machine
def test_bench_quick_end_to_end(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--threads", "1",
                           "--pairs", "2", "--json", str(out)], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "time ×" in proc.stdout and "mlp" in proc.stdout
    doc = json.loads(out.read_text())
    assert doc["schema"] == 1 and "torch" in doc["environment"]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])  # --device all, the default
    rows = {(r["model"], r["device"], r["dtype"]): r for r in doc["results"]}
    assert set(rows) == {(m, dev, d) for dev in devices
                         for m in ("mlp", "mlp-small", "seed", "cnn", "resnet", "transformer")
                         + (("mlp-wide",) if dev == "cuda" else ())
                         for d in ("float32", "bfloat16")}
    for r in rows.values():
        assert r["status"] == "ok" or r["status"].startswith("skipped (missing: ")
    for key in [("mlp", "cpu", "float32"), ("seed", "cpu", "bfloat16")]:
        r = rows[key]
        assert r["status"] == "ok" and r["time_ratio"] > 0 and r["native_peak_mib"] > 0 and len(r["ratios"]) == 2
    # a second run set beside the first
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--threads", "1",
                           "--pairs", "1", "--models", "seed", "--dtypes", "float32", "--phases", "--json",
                           str(tmp_path / "b2.json"), "--baseline", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "time × before" in proc.stdout and "phases (µs" in proc.stdout
    (row,) = json.loads((tmp_path / "b2.json").read_text())["results"]
    assert set(row["phases_ms"]) == {"native", "manual"}
    assert all(set(p) == {"forward", "loss", "backward", "optimizer"} and min(p.values()) > 0
               for p in row["phases_ms"].values())


def test_conv_wgrad_forms_agree_with_native(capsys):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import conv_wgrad
    finally:
        sys.path.pop(0)
    assert conv_wgrad.main(["--device", "cpu", "--dtypes", "float32", "--reps", "1", "--shapes", "cnn.conv2"]) == 0
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("cnn.conv2")]
    errs = [float(c.split()[0]) for c in row[0].split("x ")[1:]] if row else []  # "<ms> <ratio>x <err>"
    assert len(errs) == 3 and max(errs) < 1e-5, row  # torchbp, kernel, im2col: each right, not just timed
