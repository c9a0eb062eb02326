#!/usr/bin/env bash
# The GPU engine's measurement as ONE command for a GPU machine that has only torch.
#
#   bash bench/gpu_run.sh            # from the repository root; writes $OUT/gpu_bench.json
#
# Expects, in the git-ignored .device/ folder (bench/prepare_device.sh fills it; pass it
# as the device tool's carry: [".device"]):
#   .device/reference/gpu_anchor.py  a copy of ../shared/reference/gpu_anchor.py
#   .device/fashion-mnist/*.gz       the four Fashion-MNIST files
#   .device/wheels/*.whl             pydantic, pydantic-core, PyYAML, typing-extensions,
#                                    annotated-types, typing-inspection (for the study files),
#                                    pytest, pluggy, iniconfig, packaging, pygments (tests)
# Unpacks the wheels for this Python (no pip) only if pydantic, yaml or pytest cannot be
# imported, then runs bench/gpu.py with a hard time limit (the JSON is written after every
# section, so a run cut short still leaves what it measured), then the GPU engine's tests
# (the CUDA-only ones run here and nowhere else) into $OUT/pytest.txt; --cpu-smoke skips them.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/resweep-gpu}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
started=$(date +%s)

{
  echo "python: $($PY --version 2>&1)"
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available() and torch.cuda.get_device_name(0))"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
} 2>&1 | tee "$OUT/env.txt"

if ! $PY -c "import pydantic, yaml, pytest" 2>/dev/null; then
  # Unpack the wheels for this Python into .device/site (no pip, no system site-packages).
  echo "unpacking the study-file wheels from .device/wheels into .device/site" | tee -a "$OUT/env.txt"
  $PY - <<'PY' 2>&1 | tee -a "$OUT/env.txt"
import glob, os, sys, zipfile
tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
for wheel in sorted(glob.glob(".device/wheels/*.whl")):
    python_tag = os.path.basename(wheel).split("-")[2]
    if python_tag in ("py3", tag):
        zipfile.ZipFile(wheel).extractall(".device/site")
        print("unpacked", os.path.basename(wheel))
PY
  export PYTHONPATH="$PWD/.device/site${PYTHONPATH:+:$PYTHONPATH}"
  $PY -c "import pydantic, yaml, pytest; print('pydantic', pydantic.VERSION, 'yaml', yaml.__version__, 'pytest', pytest.__version__)" 2>&1 | tee -a "$OUT/env.txt"
fi

# 300 s of sections (--budget-s) + start-up; killed at 345 s whatever happens.
timeout 345 $PY bench/gpu.py --out "$OUT/gpu_bench.json" "$@" \
    > "$OUT/gpu_bench.stdout.json" 2> "$OUT/gpu_bench.log"
status=$?
tail -n 60 "$OUT/gpu_bench.log"
echo "bench/gpu.py exit status $status after $(( $(date +%s) - started )) s; JSON: $OUT/gpu_bench.json"
$PY - "$OUT/gpu_bench.json" <<'PY' || true
import json, sys
d = json.load(open(sys.argv[1]))
print(json.dumps({"meta": d.get("meta"), "summary": d.get("throughput", {}).get("summary"),
                  "packing": [(r["procs"], r["total_images_per_s"], r.get("gain_vs_one"))
                              for r in d.get("packing", {}).get("rows", [])],
                  "correctness": d.get("correctness", {}).get("comparison"),
                  "degradation": {k: d.get("degradation_estimate", {}).get(k)
                                  for k in ("serial_minutes", "packed_minutes")},
                  "captured": {k: v.get("captured") for k, v in d.get("capture_checks", {}).items()
                               if isinstance(v, dict) and "captured" in v},
                  "rows_captured": [(r.get("net"), r["path"], r.get("captured"))
                                    for r in d.get("throughput", {}).get("rows", [])
                                    if "step_class" in r],
                  "targets": d.get("targets"), "skipped": d.get("sections_skipped")}, indent=1))
PY
case " $* " in
  *" --cpu-smoke "*) ;;
  *) # the engine's tests, the CUDA-only ones included (they skip without a GPU)
     CI=true timeout 150 $PY -m pytest -q -rs -p no:cacheprovider tests/workers/test_gpu_release.py \
         tests/workers/test_engine_gpu.py > "$OUT/pytest.txt" 2>&1
     echo "pytest exit status $? (tail of $OUT/pytest.txt):"; tail -n 15 "$OUT/pytest.txt" ;;
esac
exit $status
