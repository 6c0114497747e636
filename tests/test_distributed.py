"""DistributedDataParallel: swapped models train exactly like native ones, and torchbp.distributed.audit
merges every rank's audit on rank 0.

Two CPU processes, spawned once for the module (importing torch dominates the cost), meet through a file
store under a tmp dir and talk over gloo on the loopback interface only; they run every case in turn and
each test checks its case's results. test_torchrun_example runs the README's torchrun command. Every wait
is bounded (rendezvous and collectives time out, the parent joins with a deadline and kills what is
left), so a hang fails the tests instead of stalling the suite.
"""
from __future__ import annotations

import datetime
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
import traceback

import pytest
import torch

import torchbp
from planted import wrong_linear_function
from util import grad_fn_names

dist = pytest.importorskip("torch.distributed")
if not (dist.is_available() and dist.is_gloo_available()):
    pytest.skip("torch.distributed with the gloo backend is not available", allow_module_level=True)
_LOOPBACK = next((name for _, name in socket.if_nameindex() if name.startswith("lo")), None)
if _LOOPBACK is None:
    pytest.skip("no loopback network interface for gloo", allow_module_level=True)

from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: E402

WORLD = 2
COLLECTIVE_TIMEOUT = 60  # s: a rank whose peer died or hung gives up after this
JOIN_TIMEOUT = 150       # s: the parent kills whatever still runs after this (~15 s on an idle machine)


# ---------------------------------------------------------------------------------------------------
# the two-process harness

def _entry(worker, rank, tmp, args):
    os.environ["GLOO_SOCKET_IFNAME"] = _LOOPBACK  # gloo binds to 127.0.0.1, never to another address
    torch.set_num_threads(1)
    out = os.path.join(tmp, f"rank{rank}")
    try:
        dist.init_process_group("gloo", init_method="file://" + os.path.join(tmp, "store"), rank=rank,
                                world_size=WORLD, timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT))
        torch.save(worker(rank, *args), out + ".pt")
    except BaseException:
        with open(out + ".err", "w") as f:
            f.write(traceback.format_exc())
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def launch(worker, tmp_path, *args):
    """Run ``worker(rank, *args)`` on WORLD gloo ranks; return the list of their return values."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_entry, args=(worker, r, str(tmp_path), args), daemon=True)
             for r in range(WORLD)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + JOIN_TIMEOUT
    try:
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
    finally:
        hung = [r for r, p in enumerate(procs) if p.is_alive()]
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
    errors = [(tmp_path / f"rank{r}.err").read_text() for r in range(WORLD) if (tmp_path / f"rank{r}.err").exists()]
    assert not errors, "\n".join(errors)
    assert not hung, f"ranks {hung} still running after {JOIN_TIMEOUT}s (killed)"
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


# ---------------------------------------------------------------------------------------------------
# what the ranks run (module level, so the spawned processes can import them)

def mlp():
    torch.manual_seed(0)  # the same initial weights on every rank, as DDP requires
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8),
                               torch.nn.ReLU(), torch.nn.Linear(8, 3)).double()


def batch(rank, step=0):
    g = torch.Generator().manual_seed(100 * rank + step)  # every rank its own data
    return (torch.randn(6, 4, generator=g, dtype=torch.float64),
            torch.randn(6, 3, generator=g, dtype=torch.float64))


def cost(h, y):
    return 0.5 * (y - h).pow(2).sum() / h.shape[0]  # the derivation's ½‖y − h‖², mean over the batch


def train(ddp, rank, steps, swap_at=None):
    """SGD steps through DDP: (gradients of every step, final parameters, whether each step's graph
    went through the δ Linear)."""
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    grads, routed = [], []
    for step in range(steps):
        if step == swap_at:
            torchbp.swap(ddp)  # swap the already-wrapped model: ddp.module's submodules change class
        x, y = batch(rank, step)
        opt.zero_grad()
        loss = cost(ddp(x), y)
        routed.append(bool({"LinearBackward", "DenseStackBackward"} & set(grad_fn_names(loss))))  # δ Linear, or a fused run
        loss.backward()  # DDP averages over the ranks here (not under torch.autograd.grad)
        grads.append([p.grad.clone() for p in ddp.parameters()])
        opt.step()
    return grads, [p.detach().clone() for p in ddp.parameters()], routed


def local_mean_grads(model, rank, step=0):
    """The mean over ranks of each rank's own (un-wrapped) gradient: what DDP's allreduce must give."""
    x, y = batch(rank, step)
    local = torch.autograd.grad(cost(model(x), y), list(model.parameters()))
    out = []
    for g in local:
        parts = [torch.empty_like(g) for _ in range(WORLD)]
        dist.all_gather(parts, g.contiguous())
        out.append((parts[0] + parts[1]) / WORLD)
    return out


def swap_then_wrap(rank):
    native = DDP(mlp())
    n_grads, n_params, n_routed = train(native, rank, steps=3)
    model = torchbp.swap(mlp())
    expected = local_mean_grads(model, rank)
    swapped = DDP(model)
    s_grads, s_params, s_routed = train(swapped, rank, steps=3)
    return dict(native=(n_grads, n_params, n_routed), swapped=(s_grads, s_params, s_routed),
                expected=expected, classes=[type(m) for m in swapped.module])


def wrap_then_swap(rank, **ddp_kwargs):
    native = DDP(mlp(), **ddp_kwargs)
    n = train(native, rank, steps=3)
    ddp = DDP(mlp(), **ddp_kwargs)
    s = train(ddp, rank, steps=3, swap_at=1)  # one native step first: DDP rebuilds its buckets after it
    classes = [type(m) for m in ddp.module]
    torchbp.unswap(ddp)
    return dict(native=n, swapped=s, classes=classes, unswapped=[type(m) for m in ddp.module])


def wrap_then_swap_static_graph(rank):
    return wrap_then_swap(rank, static_graph=True)  # DDP records the graph of the first (native) step


_WrongLinearFn = wrong_linear_function(weight_scale=1.01)  # a planted bug: ∂J/∂W off by 1 %


class WrongLinear(torch.nn.Linear):
    def forward(self, x):
        return _WrongLinearFn.apply(x, self.weight, self.bias)


def audits(rank):
    import torchbp.distributed as tbd
    ddp, control = DDP(mlp()), DDP(mlp())
    train(ddp, rank, steps=1)
    train(control, rank, steps=1)
    before = [(p.detach().clone(), p.grad.clone()) for p in ddp.parameters()]
    x, y = batch(rank, 7)
    out = {"clean": tbd.audit(ddp, x, y)}
    out["untouched"] = (all(torch.equal(p, v) and torch.equal(p.grad, g)
                            for p, (v, g) in zip(ddp.parameters(), before))
                        and [type(m) for m in ddp.module] == [type(m) for m in control.module])
    # a bug on rank 1 only, with determinism settings that differ between the ranks
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if rank == 1:
        torchbp.register(torch.nn.Linear, WrongLinear)
        torch.use_deterministic_algorithms(True)
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":16:8"
    try:
        out["bug"] = tbd.audit(ddp, x, y)
    finally:
        torchbp.register(torch.nn.Linear, torchbp.nn.Linear)
        torch.use_deterministic_algorithms(False)
        if cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = cublas
    # an audit that raises on rank 1 only: both ranks raise, neither waits for the other
    try:
        tbd.audit(ddp, x[:, :3] if rank == 1 else x, y)
        out["error"] = None
    except Exception as e:
        out["error"] = f"{type(e).__name__}: {e}"
    # DDP still trains exactly as a model that was never audited
    after, expected = train(ddp, rank, steps=2)[0], train(control, rank, steps=2)[0]
    out["after"] = all(torch.equal(a, b) for sa, sb in zip(after, expected) for a, b in zip(sa, sb))
    return {k: v.to_json() if isinstance(v, torchbp.AuditReport) else v for k, v in out.items()}


# ---------------------------------------------------------------------------------------------------
# the tests

CASES = [swap_then_wrap, wrap_then_swap, wrap_then_swap_static_graph, audits]


def all_cases(rank):
    """Every case in turn; one that raises records its traceback and the next one still runs (after a
    case that failed on one rank only, the other rank may wait in a collective until COLLECTIVE_TIMEOUT
    and later cases may fail in its wake: read the first traceback)."""
    out = {}
    for case in CASES:
        try:
            out[case.__name__] = case(rank)
        except Exception:
            out[case.__name__] = {"traceback": traceback.format_exc()}
    return out


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return launch(all_cases, tmp_path_factory.mktemp("ddp"))


def case(ranks, name):
    """Each rank's results for ``name``; the rank's traceback if it raised."""
    for rank, res in enumerate(ranks):
        assert "traceback" not in res[name], f"rank {rank}:\n{res[name]['traceback']}"
    return [res[name] for res in ranks]


def rel_err(s, r):
    return float((s - r).norm() / r.norm()) if r.norm() > 0 else float((s - r).norm())


def check_same_training(results, swap_at=0):
    for rank, res in enumerate(results):
        n_grads, n_params, n_routed = res["native"]
        s_grads, s_params, s_routed = res["swapped"]
        assert not any(n_routed)
        assert s_routed == [step >= swap_at for step in range(len(s_routed))], s_routed
        for step, (gs, gn) in enumerate(zip(s_grads, n_grads)):
            for i, (s, n) in enumerate(zip(gs, gn)):
                assert rel_err(s, n) <= 1e-10, (rank, step, i, rel_err(s, n))
        for s, n in zip(s_params, n_params):
            assert rel_err(s, n) <= 1e-10
    # DDP's promise, kept with δ backward: every rank holds bitwise the same averaged gradient
    for step in range(len(results[0]["swapped"][0])):
        for g0, g1 in zip(results[0]["swapped"][0][step], results[1]["swapped"][0][step]):
            assert torch.equal(g0, g1), step


def test_swap_then_wrap_grads_equal_native_ddp(ranks):
    results = case(ranks, "swap_then_wrap")
    check_same_training(results)
    for res in results:
        assert res["classes"][0] is torchbp.nn.Linear and res["classes"][1] is torchbp.nn.Tanh
        # the same reduction (sum of two, halved) as DDP's allreduce: bitwise equal
        for got, want in zip(res["swapped"][0][0], res["expected"]):
            assert torch.equal(got, want)


@pytest.mark.parametrize("name", ["wrap_then_swap", "wrap_then_swap_static_graph"])
def test_wrap_then_swap_grads_equal_native_ddp(ranks, name):
    results = case(ranks, name)
    check_same_training(results, swap_at=1)
    for res in results:
        assert res["classes"][0] is torchbp.nn.Linear and res["classes"][3] is torchbp.nn.ReLU
        assert res["unswapped"][0] is torch.nn.Linear and res["unswapped"][1] is torch.nn.Tanh


def test_distributed_audit_needs_a_process_group():
    import torchbp.distributed as tbd
    with pytest.raises(RuntimeError, match="init_process_group"):
        tbd.audit(torch.nn.Linear(2, 2), torch.randn(1, 2))
    m = torch.nn.Linear(2, 2)
    assert tbd.local_module(m) is m and tbd.local_module(torch.nn.DataParallel(m)) is m


@pytest.fixture
def audited(ranks):
    return case(ranks, "audits")


def test_distributed_audit_merges_every_rank_on_rank0(audited):
    assert audited[1]["clean"] is None  # only rank 0 gets the merged report
    rep = torchbp.AuditReport.from_json(audited[0]["clean"])
    assert rep.ok and rep.first_divergence is None, str(rep)
    layers = {r.layer for r in rep.rows}
    for rank in range(WORLD):
        assert {f"rank{rank}/0", f"rank{rank}/2", f"rank{rank}/4"} <= layers
    half = len(rep.rows) // 2
    assert [r.layer.removeprefix("rank0/") for r in rep.rows[:half]] == \
           [r.layer.removeprefix("rank1/") for r in rep.rows[half:]]
    env = rep.environment
    assert env["world_size"] == WORLD and env["backend"] == "gloo" and env["ranks"] == [0, 1]
    assert env["per_rank"] == {}
    assert env["deterministic_algorithms"] == torch.are_deterministic_algorithms_enabled()
    assert env["CUBLAS_WORKSPACE_CONFIG"] == os.environ.get("CUBLAS_WORKSPACE_CONFIG")


def test_distributed_audit_names_the_rank_of_a_planted_bug(audited):
    rep = torchbp.AuditReport.from_json(audited[0]["bug"])
    assert not rep.ok
    assert rep.first_divergence in ("rank1/0", "rank1/2", "rank1/4"), rep.first_divergence
    failing = {(r.layer, r.quantity) for r in rep.failures}
    assert ("rank1/4", "weight") in failing and not any(l.startswith("rank0/") for l, _ in failing)
    assert rep.environment["per_rank"]["deterministic_algorithms"] == [False, True]
    assert rep.environment["per_rank"]["CUBLAS_WORKSPACE_CONFIG"] == [os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
                                                                     ":16:8"]
    assert "rank1/" in rep.verdict()


def test_distributed_audit_error_on_one_rank_raises_everywhere_without_hanging(audited):
    assert audited[0]["error"].startswith("RuntimeError: torchbp.distributed.audit failed on rank 1:")
    assert audited[1]["error"] and "rank" not in audited[1]["error"].split(":")[0]


def test_distributed_audit_leaves_ddp_training_untouched(audited):
    for res in audited:
        assert res["untouched"] and res["after"]


def _kill_tree(pid):
    """SIGKILL ``pid`` and every process below it, found through /proc (children first listed, then
    killed together, so none is re-parented away before it is seen)."""
    if not os.path.isdir("/proc"):  # nothing to walk: torchrun's own group is the best we can do
        os.killpg(pid, signal.SIGKILL)
        return
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass


def test_torchrun_example(tmp_path):
    """The README's command: torchrun with a c10d rendezvous on 127.0.0.1 (a free port)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc-per-node={WORLD}",
           "--rdzv-backend=c10d", "--rdzv-endpoint=127.0.0.1:0", "-m", "torchbp.distributed",
           "--json", str(tmp_path / "merged.json")]
    env = dict(os.environ, GLOO_SOCKET_IFNAME=_LOOPBACK, OMP_NUM_THREADS="1")
    # Output to a file, not a pipe: a worker that outlives torchrun would hold a pipe open forever.
    log = tmp_path / "torchrun.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=JOIN_TIMEOUT)
        except subprocess.TimeoutExpired:
            _kill_tree(proc.pid)  # torchrun starts each worker in a session of its own: kill them by parent
            proc.wait()
            pytest.fail(f"torchrun still running after {JOIN_TIMEOUT}s (killed):\n{log.read_text()}")
    out = log.read_text()
    assert proc.returncode == 0, out
    assert "rank 1: swapped DDP vs native DDP" in out and "torchbp.audit: OK" in out
    rep = json.loads((tmp_path / "merged.json").read_text())
    assert rep["ok"] and rep["environment"]["world_size"] == WORLD
