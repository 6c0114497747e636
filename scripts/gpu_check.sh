#!/usr/bin/env bash
# The GPU check, in one run of a few minutes on a machine with a CUDA device:
#   1. the test suite's CUDA variants (pytest -k cuda: the CPU ones run in CI; PYTEST_SELECT="" for all),
#      with pytest -n WORKERS when pytest-xdist is there;
#   2. scripts/bench.py on CUDA (float32 and bfloat16 autocast; the default models plus mlp-wide);
#   3. scripts/profile_step.py on the wide MLP (bf16) and the CNN: top operators by GPU time;
#   4. scripts/conv_wgrad.py: the convolution ∂J/∂W formulations against cuDNN's weight gradient.
# The defaults fit one 10-minute device call (an H100 ran the suite in ~4 min with 12 workers).
# Logs, JUnit XML and the bench JSON go to OUTDIR; the last lines printed are the failures (if any),
# the test summary and the bench table.
#
#   scripts/gpu_check.sh [OUTDIR]          (default: $OUT, else ./gpu_check_out)
#   TESTS_S=310 BENCH_S=160 PROFILE_S=35 CONV_S=25 WORKERS=12 BENCH_ARGS="--pairs 12" scripts/gpu_check.sh
set -u
out=${1:-${OUT:-gpu_check_out}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}

# torchbp from this checkout (an editable install registers the pytest plugin's entry point)
$py -m pip install -q --no-deps --no-build-isolation -e . >"$out/install.log" 2>&1 \
    || export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

{
    $py -c 'import torch, sys; print("python", sys.version.split()[0], "| torch", torch.__version__,
"| cuda", torch.version.cuda, "| device", torch.cuda.get_device_name() if torch.cuda.is_available() else None)'
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>/dev/null
} | tee "$out/env.txt"

xdist=()
if $py -c 'import xdist' 2>/dev/null; then xdist=(-n "${WORKERS:-12}"); fi
# -v: one line per test as it ends, so a run cut off by the timeout still names its failures
select=${PYTEST_SELECT-cuda}
timeout "${TESTS_S:-310}" $py -m pytest -v -p no:cacheprovider "${xdist[@]}" -rfE ${select:+-k "$select"} \
    --junitxml="$out/tests.xml" ${PYTEST_ARGS:-} >"$out/tests.log" 2>&1
tests_rc=$?

# 12 pairs: seven models × two dtypes × eager and graph fit the bench's share of the 10 minutes
timeout "${BENCH_S:-160}" $py scripts/bench.py --device cuda --json "$out/bench-cuda.json" ${BENCH_ARGS:---pairs 12} \
    >"$out/bench.txt" 2>"$out/bench.log"
bench_rc=$?

# where the time goes in the two rows furthest from native: the wide MLP under bf16 and the CNN
{ timeout "${PROFILE_S:-35}" $py scripts/profile_step.py --model mlp-wide --dtype bfloat16 --steps 5
  timeout "${PROFILE_S:-35}" $py scripts/profile_step.py --model cnn --dtype float32 --steps 10; } \
    >"$out/profile.txt" 2>&1
timeout "${CONV_S:-25}" $py scripts/conv_wgrad.py --device cuda >"$out/conv_wgrad.txt" 2>&1

echo "== tests (rc $tests_rc; 124 = timed out)"
grep -E "(FAILED|ERROR) " "$out/tests.log" | grep -v " PASSED" | cut -c1-300 | sort -u | head -60
tail -n 1 "$out/tests.log"
echo "== bench (rc $bench_rc)"
cat "$out/bench.txt"
echo "== conv ∂J/∂W forms"
cat "$out/conv_wgrad.txt"
[ "$bench_rc" = 0 ] || tail -n 20 "$out/bench.log"
[ "$tests_rc" = 0 ] && [ "$bench_rc" = 0 ]
