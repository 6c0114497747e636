#!/usr/bin/env python
"""Training-step time and peak memory: torchbp's δ layers against native autograd.

For each model, dtype and device: a native model and ``torchbp.swap(deepcopy(native))`` (same
weights), each with its own SGD optimizer; one step = zero_grad + forward + loss + backward + SGD step.

Timing: after a warm-up, N pairs of samples in one process, alternating which side runs first in each
pair (so drift, turbo and neighbours' load hit both sides alike); each sample times enough steps to
last ~50 ms. Reported: the median of the per-pair ratios manual/native and their IQR.

On CUDA each model is also timed in "graph" mode (``--graphs no`` to skip): both training steps
captured in a CUDA graph and replayed, so the ratio is the GPU work of the δ formulas against native
autograd's, without the per-op Python/launch cost that dominates small models in "eager" mode.

``--compile`` adds "compiled" rows on every device: both models through ``torch.compile`` (inductor), the
loss and optimizer eager; the δ Functions' backwards are traced into the compiled backward graph (each
swapped layer compiles in one graph: tests/test_compile.py). Compilation happens before the warm-up.

bfloat16 means mixed precision through ``torch.autocast(device, torch.bfloat16)`` with float32
parameters, on CPU and CUDA alike: how bf16 training is run in practice, and the path through
torchbp's autocast handling.

Peak memory of one step, above what was live before it (parameters, inputs, optimizer state):
- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``.
- CPU: every allocation and free of the CPU allocator during the step, as ``torch.profiler``
  (``profile_memory=True``) records them with their timestamps; their running sum is the live heap of
  the step and its maximum the peak. Unlike RSS this is not blurred by glibc's caching, and unlike
  counting saved tensors it includes backward's temporaries (a materialised mask shows up).

CPU allocator: glibc hands blocks above its (adaptive) mmap threshold back to the OS and page-faults
them in again on the next step; which side of a pair pays that depends on the two sides' allocation
order, not on their formulas (measured: ~2900 minor faults, +5 ms, on whichever bf16 MLP step ran
second). ``--malloc heap`` (the default) sets M_MMAP_THRESHOLD = 32 MiB and a high M_TRIM_THRESHOLD
through mallopt, so both sides reuse the heap, much as PyTorch's caching allocator does on CUDA;
``--malloc default`` keeps glibc's behaviour.

Audit cost, in native training steps (each audit timed between two timings of the native step, median of
3 rounds): "audit ×" the default audit (float64 throughout, on a float64 copy), "audit × auto" a float32
audit with ``oracle="auto"`` (the float64 oracle only where some gradient misses floor(float32) against
native), "audit × oracle" a float32 audit with the float64 oracle always. The audit's peak memory, measured
as a step's is: "audit MiB" and "audit mem ×" (÷ the native step's) for the default audit, "auto mem ×"
for the float32 auto one.

``--phases``: also the median time of each phase of a step (forward, loss, backward, optimizer with
zero_grad), both sides alternating, printed as native's time and δ's difference. For small steps this is
what shows where δ's extra time goes; torch.profiler's per-op times do not (they leave out the cold cost
of each distinct op and autograd node, and its own overhead dwarfs it).

Models whose layers have no δ twin yet are reported as "skipped (missing: …)"; a loss without a twin
falls back to the native loss for both sides, and the row says so.

Models: mlp (784-1024-1024-1024-10, batch 256), mlp-small (784-256-256-10, batch 64), mlp-wide
(4096-wide, 4 layers, batch 8192; run by default on CUDA only), seed (the derivation's 4-layer sigmoid net),
cnn (two small convs, no normalization), resnet (a CIFAR-style stem and two basic blocks at 64 channels,
BatchNorm, 32×32, batch 32), transformer (one pre-norm block).

Real architectures (``--models real``, not in the default list; random init, nothing downloads):
resnet18 and mobilenet_v3_small from torchvision (batch 8 at 64×64, 10 classes), bert-tiny (transformers'
BertForSequenceClassification: 2 layers, d 128, seq 64, batch 8) and llama-tiny (LlamaForCausalLM: 2 layers,
d 128, vocab 1000, seq 64, batch 8). Each is timed in mode "eager" (``torchbp.swap`` only, as the other
rows) and "routed" (the swapped model's forward and loss inside ``torchbp.manual_backward()``, so torch.* /
F.* calls in the model's own forward reach their δ twins too). torchvision and transformers are optional:
without them those rows say "skipped" and why.

  python scripts/bench.py [--quick] [--models mlp,seed,cnn,transformer|real] [--device cpu|cuda|all]
                          [--dtypes float32,bfloat16] [--pairs N] [--threads N] [--json bench.json]
                          [--baseline old.json] [--phases] [--compile]
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

import torchbp
from torchbp import registry

# torch.profiler's library logs its own stages on stderr (USDT and STAGE lines, and an ERROR line on a CUDA
# build without a GPU); the bench prints only what it measures. Read when the profiler first starts.
os.environ.setdefault("KINETO_LOG_LEVEL", "6")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# --- the models -----------------------------------------------------------------------------------

class TransformerBlock(nn.Module):
    """Embedding, pre-norm self-attention and GELU MLP with residuals, then a vocabulary head."""

    def __init__(self, vocab=1000, d=256, heads=4, ff=1024):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, ff), nn.GELU(), nn.Linear(ff, d))
        self.head = nn.Linear(d, vocab)

    def forward(self, tokens):
        h = self.emb(tokens)
        a = self.ln1(h)
        h = h + self.attn(a, a, a, need_weights=False)[0]
        h = h + self.mlp(self.ln2(h))
        return self.head(h)


class BasicBlock(nn.Module):
    """ResNet's basic block: conv-BN-ReLU-conv-BN plus the identity, then ReLU (in place, as torchvision's)."""

    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(x + self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))


def _half_squared_error(h, y):  # the derivation's cost, ½‖y − h‖² per example, mean over the batch
    return 0.5 * ((y - h) ** 2).sum(-1).mean()


def _ce(out, y):
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def build(name, quick):
    """(model, input, target, native loss, twin loss class name). ``quick`` shrinks every model."""
    g = torch.Generator().manual_seed(0)
    if name in ("mlp", "mlp-small", "mlp-wide"):
        sizes, batch = {"mlp": ((784, 1024, 1024, 1024, 10), 256), "mlp-small": ((784, 256, 256, 10), 64),
                        "mlp-wide": ((4096, 4096, 4096, 4096, 4096), 8192)}[name]
        if quick:
            sizes, batch = (sizes[0], 64, 64, sizes[-1]), 16
        layers = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        model = nn.Sequential(*layers[:-1])
        return model, torch.randn(batch, sizes[0], generator=g), \
            torch.randint(0, sizes[-1], (batch,), generator=g), _ce, "CrossEntropyLoss"
    if name == "seed":
        from torchbp.demo import derivation_network
        batch = 8 if quick else 64
        return derivation_network(0, torch.float32), torch.randn(batch, 4, generator=g), \
            torch.rand(batch, 3, generator=g), _half_squared_error, "HalfSquaredError"
    if name == "cnn":
        batch, side = (4, 8) if quick else (64, 32)
        model = nn.Sequential(nn.Conv2d(3, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3), nn.ReLU(),
                              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
        return model, torch.randn(batch, 3, side, side, generator=g), \
            torch.randint(0, 10, (batch,), generator=g), _ce, "CrossEntropyLoss"
    if name == "resnet":  # CIFAR-style: a stem and two basic blocks at 64 channels, with BatchNorm
        batch, side, c = (4, 8, 8) if quick else (32, 32, 64)
        model = nn.Sequential(nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                              BasicBlock(c), BasicBlock(c), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))
        return model, torch.randn(batch, 3, side, side, generator=g), \
            torch.randint(0, 10, (batch,), generator=g), _ce, "CrossEntropyLoss"
    if name == "transformer":
        batch, seq, vocab, d, ff = (2, 8, 50, 32, 64) if quick else (8, 128, 1000, 256, 1024)
        model = TransformerBlock(vocab, d, 4, ff)
        return model, torch.randint(0, vocab, (batch, seq), generator=g), \
            torch.randint(0, vocab, (batch, seq), generator=g), _ce, "CrossEntropyLoss"
    if name in REAL_MODELS:
        return build_real(name, quick, g)
    raise ValueError(f"unknown model {name!r}")


class Logits(nn.Module):
    """A transformers model called with token ids, returning its logits (the bench's losses take a tensor)."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, tokens):
        return self.m(input_ids=tokens).logits


def third_party(name):
    """torchvision or transformers, or a SkipRow saying why not. tests/thirdparty.py holds the one way to
    import torchvision on a CPU-only torch whose PyPI torchvision wheel links CUDA libraries (it declares
    the detection op schemas first); the scripts/ directory is not a package, so tests/ goes on sys.path."""
    import importlib.util
    if importlib.util.find_spec(name) is None:
        raise SkipRow(f"skipped ({name} is not installed: pip install {name})")
    tests = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import thirdparty
    return getattr(thirdparty, name)()


class SkipRow(Exception):
    """A row that cannot run here; its message is the row's status."""


def build_real(name, quick, g):
    torch.manual_seed(0)  # the random init of the third-party constructors
    if name in ("resnet18", "mobilenet_v3_small"):
        tv = third_party("torchvision")
        batch, side = (2, 32) if quick else (8, 64)
        model = getattr(tv.models, name)(weights=None, num_classes=10)
        return model, torch.randn(batch, 3, side, side, generator=g), \
            torch.randint(0, 10, (batch,), generator=g), _ce, "CrossEntropyLoss"
    tf = third_party("transformers")
    batch, seq, vocab, d = (2, 16, 100, 32) if quick else (8, 64, 1000, 128)
    common = dict(vocab_size=vocab, hidden_size=d, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=4 * d)
    if name == "bert-tiny":
        cfg = tf.BertConfig(max_position_embeddings=seq, num_labels=2, hidden_dropout_prob=0.0,
                            attention_probs_dropout_prob=0.0, **common)
        model = Logits(tf.BertForSequenceClassification(cfg))
        target = torch.randint(0, 2, (batch,), generator=g)
    else:
        cfg = tf.LlamaConfig(max_position_embeddings=seq, num_key_value_heads=4, **common)
        model = Logits(tf.LlamaForCausalLM(cfg))
        target = torch.randint(0, vocab, (batch, seq), generator=g)
    return model, torch.randint(0, vocab, (batch, seq), generator=g), target, _ce, "CrossEntropyLoss"


REAL_MODELS = ("resnet18", "mobilenet_v3_small", "bert-tiny", "llama-tiny")
MODELS = ("mlp", "mlp-small", "mlp-wide", "seed", "cnn", "resnet", "transformer") + REAL_MODELS
DEFAULT_MODELS = ("mlp", "mlp-small", "seed", "cnn", "resnet", "transformer")  # mlp-wide: 3 x 4096², batch 8192 (GPU)
CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict, TransformerBlock, BasicBlock)


def missing_twins(model) -> list[str]:
    """Class names of the layers that would stay native after swap: a module with a twin covers its
    children (its forward is the twin's); containers are looked into."""
    out = []

    def walk(m):
        if isinstance(m, CONTAINERS):  # (nn.Sequential has a twin too, but its children decide)
            for c in m.children():
                walk(c)
        elif registry.twin_for(type(m)) is not None or registry.native_for(type(m)) is not None:
            return
        elif type(m).__name__ not in out:
            out.append(type(m).__name__)

    walk(model)
    return out


def twin_loss(name, native_loss):
    """torchbp's form of the loss, called as ``native_loss`` is: both bench losses are plain functions, so
    the δ side calls torchbp.functional's (a twin module's ``__call__`` would add a cost native does not pay).
    Another loss: its torchbp.nn twin when there is one, else None."""
    if native_loss is _ce:
        return lambda out, y: torchbp.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
    if native_loss is _half_squared_error:
        return torchbp.functional.half_squared_error
    cls = getattr(torchbp.nn, name, None)
    return None if cls is None else cls()


def heap_malloc() -> bool:
    """glibc only: keep freed blocks up to 32 MiB in the heap instead of returning them to the OS."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):
        return False


# --- measuring ------------------------------------------------------------------------------------

def make_step(model, loss_fn, x, y, amp, routed=False):
    """One training step; ``routed``: its forward and loss inside ``torchbp.manual_backward()``."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    device = x.device.type

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=amp), \
                (torchbp.manual_backward() if routed else contextlib.nullcontext()):
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    step.opt = opt
    return step


PHASES = ("forward", "loss", "backward", "optimizer")


def make_phase_step(model, loss_fn, x, y, amp, opt):
    """One training step that records how long each phase took (forward, loss, backward, optimizer incl.
    zero_grad), synchronising the device between phases on CUDA."""
    device, pc = x.device.type, time.perf_counter

    def step(acc):
        t0 = pc()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
            out = model(x)
            sync(device)
            t1 = pc()
            loss = loss_fn(out, y)
        sync(device)
        t2 = pc()
        loss.backward()
        sync(device)
        t3 = pc()
        opt.step()
        sync(device)
        t4 = pc()
        acc.append((t1 - t0, t2 - t1, t3 - t2, t4 - t3))
    return step


def phase_times(steps, pairs, reps):
    """Median seconds per phase for each side, from alternating samples of ``reps`` steps: where a step's
    time goes inside the training loop, which the profiler's per-op times do not show for small steps."""
    acc = {side: [] for side in steps}
    for i in range(pairs):
        for side in (list(steps) if i % 2 == 0 else list(reversed(list(steps)))):
            steps[side](acc[side])  # a step to warm what the other side's steps evicted
            for _ in range(reps):
                steps[side](acc[side])
    return {side: {ph: statistics.median(v) for ph, v in zip(PHASES, zip(*rows))} for side, rows in acc.items()}


def make_graphed_step(model, loss_fn, x, y, amp):
    """The same training step captured once in a CUDA graph and replayed (PyTorch's whole-network
    capture recipe): what remains is the GPU's work, without the per-op Python and launch cost that
    dominates small models. Static inputs; gradients live in fixed buffers (no set_to_none)."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def body():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp, cache_enabled=False):
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            body()
    torch.cuda.current_stream().wait_stream(s)
    opt.zero_grad(set_to_none=False)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()

    def step():
        graph.replay()

    step.opt = opt
    return step


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def timed(step, reps, device):
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        step()
    sync(device)
    return (time.perf_counter() - t) / reps


def quartiles(v):
    if len(v) < 2:
        return v[0], v[0], v[0]
    q = statistics.quantiles(v, n=4, method="inclusive")
    return q[0], statistics.median(v), q[2]


def peak_memory(step, device) -> int:
    """Bytes of the step's peak live memory above what was live when it started (see module doc)."""
    step.opt.zero_grad(set_to_none=True)  # the previous gradients are freed before the measurement
    return peak_of(step, device)


def peak_of(run, device) -> int:
    """Bytes of the peak live memory of ``run()`` above what was live when it started, measured as a
    step's is (see module doc): a training step, or an audit."""
    gc.collect()  # a collection of earlier runs' leftovers inside the profiled call would read as frees
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    allocs = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.typed[0] == _EventType.Allocation and node.typed[1].device.type == "cpu":
            allocs.append((node.start_time_ns, node.typed[1].alloc_size))
        stack.extend(node.children)
    live = peak = 0
    for _, size in sorted(allocs):
        live += size
        peak = max(peak, live)
    return peak


def bench_one(name, device, dtype_name, args, mode="eager"):
    row = dict(model=name, device=device, dtype=dtype_name, mode=mode, status="ok", note="")
    try:
        model, x, y, native_loss, loss_twin_name = build(name, args.quick)
    except SkipRow as e:
        row["status"] = str(e)
        return row
    missing = [] if name in REAL_MODELS else missing_twins(model)  # real models: what swap leaves native stays
    if missing:
        row["status"] = f"skipped (missing: {', '.join(missing)})"
        return row
    manual_loss = twin_loss(loss_twin_name, native_loss)
    if manual_loss is None:
        manual_loss = native_loss
        row["note"] = f"no torchbp {loss_twin_name}: native loss on both sides"
    model, x, y = model.to(device), x.to(device), y.to(device)
    manual = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torchbp.swap(manual)
    amp = dtype_name == "bfloat16"
    if mode == "graph":
        try:
            steps = {"native": make_graphed_step(model, native_loss, x, y, amp),
                     "manual": make_graphed_step(manual, manual_loss, x, y, amp)}
        except Exception as e:  # a side that cannot be captured is reported, not debugged
            row["status"] = f"capture failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
            return row
    elif mode == "compiled":  # each side's model through torch.compile (default inductor), the loss eager
        torch._dynamo.reset()  # each row compiles afresh: no earlier row's code or recompile count carries over
        steps = {"native": make_step(torch.compile(model), native_loss, x, y, amp),
                 "manual": make_step(torch.compile(manual), manual_loss, x, y, amp)}
        try:
            t = time.perf_counter()
            for s in steps.values():
                s()  # the compilation, outside the warm-up count
            row["note"] = f"compiled in {time.perf_counter() - t:.0f} s (both sides)"
        except Exception as e:  # a side that does not compile is reported, not debugged
            row["status"] = f"compile failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
            return row
    else:
        steps = {"native": make_step(model, native_loss, x, y, amp),
                 "manual": make_step(manual, manual_loss, x, y, amp, routed=mode == "routed")}

    for _ in range(args.warmup):
        for s in steps.values():
            s()
    one = min(timed(steps["native"], 1, device) for _ in range(3))
    reps = max(1, math.ceil(args.sample_s / max(one, 1e-6)))
    times = {"native": [], "manual": []}
    for i in range(args.pairs):
        order = ("native", "manual") if i % 2 == 0 else ("manual", "native")
        for side in order:
            times[side].append(timed(steps[side], reps, device))
    ratios = [m / n for m, n in zip(times["manual"], times["native"])]
    q1, med, q3 = quartiles(ratios)
    row.update(native_ms=1e3 * statistics.median(times["native"]), manual_ms=1e3 * statistics.median(times["manual"]),
               time_ratio=med, ratio_iqr=[q1, q3], ratios=ratios, reps_per_sample=reps, pairs=args.pairs)

    no_audit = dict.fromkeys([key for key, _ in AUDITS] + ["audit_peak_mib", "audit_peak_mib_auto", "audit_mem_ratio",
                                                          "audit_mem_ratio_auto"])
    if mode not in ("eager", "routed"):  # memory and audit overhead: see the eager rows
        row.update(native_peak_mib=None, manual_peak_mib=None, mem_ratio=None, **no_audit)
        return row
    mem = {side: peak_memory(s, device) for side, s in steps.items()}
    row.update(native_peak_mib=mem["native"] / 2**20, manual_peak_mib=mem["manual"] / 2**20,
               mem_ratio=mem["manual"] / mem["native"] if mem["native"] else float("nan"))
    if mode == "routed":  # the audit's cost: see the model's eager (swap) row
        row.update(no_audit)
        return row
    if getattr(args, "phases", False):
        sides = {"native": (model, native_loss), "manual": (manual, manual_loss)}
        ph = phase_times({s: make_phase_step(m, f, x, y, amp, steps[s].opt) for s, (m, f) in sides.items()},
                         args.pairs, max(1, min(reps, 20)))
        row["phases_ms"] = {s: {k: 1e3 * v for k, v in d.items()} for s, d in ph.items()}

    row.update(audit_cost(model, x, y, native_loss, device, steps["native"], 1 if args.quick else 3))
    for suffix in ("", "_auto"):
        peak = row["audit_peak_mib" + suffix]
        row["audit_mem_ratio" + suffix] = peak / row["native_peak_mib"] if peak is not None and mem["native"] else None
    if row.pop("audit_error", None):
        row["note"] = (row["note"] + "; " if row["note"] else "") + row["audit_note"]
    row.pop("audit_note", None)
    return row


# each audit configuration: (JSON key of its cost in native steps, audit keywords)
AUDITS = (("audit_overhead", {}),  # the default: float64 throughout (a float64 copy of the model)
          ("audit_overhead_auto", dict(dtype=torch.float32, oracle="auto")),
          ("audit_overhead_oracle", dict(dtype=torch.float32, oracle="always")))


def audit_cost(model, x, y, loss_fn, device, native_step, repeats) -> dict:
    """The audit's cost in native training steps, for each configuration of AUDITS: each audit timed
    between two timings of the native step (the CPU is shared: the ratio is taken where both ran),
    median over ``repeats`` rounds; and the default audit's peak memory, measured as a step's is
    (``audit_peak_mib``), and its ratio to the native step's (``audit_mem_ratio``)."""
    out = {key: None for key, _ in AUDITS}
    out.update(audit_peak_mib=None, audit_peak_mib_auto=None)
    one = min(timed(native_step, 1, device) for _ in range(3))
    reps = max(1, math.ceil(0.02 / max(one, 1e-6)))
    try:
        for _, kw in AUDITS:  # each configuration's first run pays its one-time costs (imports, caches)
            torchbp.audit(model, x, y, loss_fn=loss_fn, **kw)
        ratios = {key: [] for key, _ in AUDITS}
        for _ in range(repeats):
            for key, kw in AUDITS:
                before = timed(native_step, reps, device)
                sync(device)
                t = time.perf_counter()
                torchbp.audit(model, x, y, loss_fn=loss_fn, **kw)
                sync(device)
                spent = time.perf_counter() - t
                ratios[key].append(spent / ((before + timed(native_step, reps, device)) / 2))
        out.update({key: statistics.median(v) for key, v in ratios.items()})
        out["audit_peak_mib"] = peak_of(lambda: torchbp.audit(model, x, y, loss_fn=loss_fn), device) / 2**20
        out["audit_peak_mib_auto"] = peak_of(lambda: torchbp.audit(model, x, y, loss_fn=loss_fn, **AUDITS[1][1]),
                                             device) / 2**20
    except Exception as e:  # the bench reports, it does not debug the audit
        out.update(audit_error=True, audit_note=f"audit failed: {type(e).__name__}: {e}")
    return out


# --- report ---------------------------------------------------------------------------------------

def environment():
    env = dict(torch=torch.__version__, torchbp=torchbp.__version__, python=platform.python_version(),
               platform=platform.platform(), processor=platform.processor() or platform.machine(),
               threads=torch.get_num_threads(), cpu_capability=torch.backends.cpu.get_cpu_capability(),
               torch_cuda=torch.version.cuda)
    try:
        with open("/proc/cpuinfo") as f:
            env["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if torch.cuda.is_available():
        env["cuda"] = torch.version.cuda
        env["gpu"] = torch.cuda.get_device_name()
    return env


def table(rows) -> str:
    from tabulate import tabulate

    def f(v, fmt):
        return "" if v is None else format(v, fmt)

    out = []
    for r in rows:
        if r["status"] != "ok":
            out.append([r["model"], r["device"], r["dtype"], r.get("mode", "eager"), "", "", r["status"]] + [""] * 10)
            continue
        q1, q3 = r["ratio_iqr"]
        out.append([r["model"], r["device"], r["dtype"], r.get("mode", "eager"), f(r["native_ms"], ".2f"),
                    f(r["manual_ms"], ".2f"),
                    f(r["time_ratio"], ".3f"), f"{q1:.3f}–{q3:.3f}", f(r["native_peak_mib"], ".1f"),
                    f(r["manual_peak_mib"], ".1f"), f(r["mem_ratio"], ".3f"), f(r.get("audit_overhead"), ".1f"),
                    f(r.get("audit_overhead_auto"), ".1f"), f(r.get("audit_overhead_oracle"), ".1f"),
                    f(r.get("audit_peak_mib"), ".1f"), f(r.get("audit_mem_ratio"), ".2f"),
                    f(r.get("audit_mem_ratio_auto"), ".2f")])
    text = tabulate(out, headers=["model", "device", "dtype", "mode", "native ms", "δ ms", "time ×", "IQR",
                                  "native MiB", "δ MiB", "mem ×", "audit ×", "audit × auto", "audit × oracle",
                                  "audit MiB", "audit mem ×", "auto mem ×"], disable_numparse=True,
                    colalign=("left", "left", "left", "left") + ("right",) * 13)
    notes = [f"{r['model']} {r['device']} {r['dtype']} {r.get('mode', 'eager')}: {r['note']}"
             for r in rows if r.get("note")]
    return text + ("\n\nnotes:\n  " + "\n  ".join(notes) if notes else "")


def phase_table(rows) -> str:
    """Per phase, native's median and δ's difference from it (µs): forward, loss, backward, optimizer."""
    from tabulate import tabulate

    out = []
    for r in rows:
        ph = r.get("phases_ms")
        if not ph:
            continue
        n, m = ph["native"], ph["manual"]
        out.append([r["model"], r["device"], r["dtype"]] +
                   [f"{1e3 * n[k]:.0f} {1e3 * (m[k] - n[k]):+.0f}" for k in PHASES])
    if not out:
        return ""
    return "phases (µs: native, then δ − native; the device is synchronised between phases):\n" + \
        tabulate(out, headers=["model", "device", "dtype", *PHASES], disable_numparse=True,
                 colalign=("left", "left", "left") + ("right",) * len(PHASES))


def compare_runs(old_doc, rows) -> str:
    """Old and new time and memory ratios side by side, matched by (model, device, dtype)."""
    from tabulate import tabulate
    old = {(r["model"], r["device"], r["dtype"], r.get("mode", "eager")): r for r in old_doc.get("results", [])}

    def f(r, k):
        return "" if r is None or r.get(k) is None else f"{r[k]:.3f}"

    out = []
    for r in rows:
        o = old.get((r["model"], r["device"], r["dtype"], r.get("mode", "eager")))
        out.append([r["model"], r["device"], r["dtype"], r.get("mode", "eager"), f(o, "time_ratio"), f(r, "time_ratio"),
                    f(o, "mem_ratio"), f(r, "mem_ratio")])
    return tabulate(out, headers=["model", "device", "dtype", "mode", "time × before", "time × now", "mem × before",
                                  "mem × now"], disable_numparse=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=None,
                   help=f"comma-separated, from {', '.join(MODELS)}, or real (= {', '.join(REAL_MODELS)}) "
                        f"(default: {', '.join(DEFAULT_MODELS)}, and mlp-wide on CUDA)")
    p.add_argument("--device", default="all", choices=("cpu", "cuda", "all"),
                   help="all = cpu, and cuda when available (default)")
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated: float32, bfloat16 (autocast)")
    p.add_argument("--pairs", type=int, default=None, help="paired samples (default 20; 3 with --quick)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps per side (default 5; 1 with --quick)")
    p.add_argument("--sample-s", type=float, default=None, help="seconds per timed sample (default 0.05)")
    p.add_argument("--quick", action="store_true", help="tiny models, few pairs: a smoke test, not a measurement")
    p.add_argument("--json", default="bench.json", help="where to write the JSON (default bench.json)")
    p.add_argument("--baseline", default=None, help="a previous --json file: print its ratios beside these")
    p.add_argument("--malloc", choices=("heap", "default"), default="heap",
                   help="glibc allocator setting (see the module doc; default heap)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--phases", action="store_true",
                   help="also time each phase of a step (forward, loss, backward, optimizer), both sides alternating")
    p.add_argument("--graphs", choices=("yes", "no"), default="yes",
                   help="on CUDA, also time both steps captured in a CUDA graph (default yes)")
    p.add_argument("--compile", action="store_true",
                   help="also time both models through torch.compile (\"compiled\" rows; compiling takes a while)")
    args = p.parse_args(argv)
    args.pairs = args.pairs or (3 if args.quick else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 5)
    args.sample_s = args.sample_s or (0.002 if args.quick else 0.05)
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    if models:
        models = [r for m in models for r in (REAL_MODELS if m == "real" else (m,))]
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    for m in models or ():
        if m not in MODELS:
            p.error(f"unknown model {m!r}; choose from {', '.join(MODELS)}, or real")
    for d in dtypes:
        if d not in ("float32", "bfloat16"):
            p.error(f"unknown dtype {d!r}; choose float32 or bfloat16")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    devices = ["cpu", "cuda"] if args.device == "all" and torch.cuda.is_available() else \
        ["cpu"] if args.device == "all" else [args.device]
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    malloc = "glibc default"
    if args.malloc == "heap":
        malloc = "mallopt M_MMAP_THRESHOLD=32MiB, M_TRIM_THRESHOLD=1GiB" if heap_malloc() else \
            "default (mallopt unavailable)"

    rows = []
    for device in devices:
        for name in models or DEFAULT_MODELS + (("mlp-wide",) if device == "cuda" else ()):
            for dtype in dtypes:
                modes = ("eager",) + (("routed",) if name in REAL_MODELS else ()) + (("graph",) if device == "cuda" and args.graphs == "yes" else ()) \
                    + (("compiled",) if args.compile else ())
                for mode in modes:
                    log(f"bench: {name} on {device}, {dtype}, {mode} ...")
                    t = time.perf_counter()
                    try:
                        rows.append(bench_one(name, device, dtype, args, mode))
                    except Exception as e:  # one broken row must not cost the rest of the table
                        rows.append(dict(model=name, device=device, dtype=dtype, mode=mode, note="",
                                         status=f"error: {type(e).__name__}: {str(e).splitlines()[0][:100]}"))
                    log(f"bench:   {rows[-1]['status']}"
                        + (f", ratio {rows[-1]['time_ratio']:.3f}" if "time_ratio" in rows[-1] else "")
                        + f" ({time.perf_counter() - t:.1f} s)")
    print(table(rows))
    if any(r.get("phases_ms") for r in rows):
        print("\n" + phase_table(rows))
    if args.baseline:
        with open(args.baseline) as f:
            print("\nagainst " + args.baseline + ":\n" + compare_runs(json.load(f), rows))
    doc = dict(schema=1, environment=environment(),
               settings=dict(quick=args.quick, pairs=args.pairs, warmup=args.warmup, sample_s=args.sample_s,
                             bf16="torch.autocast with float32 parameters", malloc=malloc,
                             threads=torch.get_num_threads(),
                             cpu_memory="torch.profiler allocation events, peak of the running sum"),
               results=rows)
    with open(args.json, "w") as f:
        json.dump(doc, f, indent=1)
    log(f"bench: wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
