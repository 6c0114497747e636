"""scripts/bench.py prints what it measures: torch.profiler's own log lines (kineto's USDT / STAGE / ERROR)
stay out of its output."""
import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def test_cpu_peak_memory_measurement_is_silent():
    code = f'''
import sys
sys.path.insert(0, {str(SCRIPTS)!r})
import bench
model, x, y, loss_fn, _ = bench.build("seed", quick=True)
print("peak", bench.peak_memory(bench.make_step(model, loss_fn, x, y, False), "cpu") > 0)
'''
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "peak True"
    assert r.stderr == "", r.stderr
