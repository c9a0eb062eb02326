"""bench/gpu.py's packing section: 1/2/4/8 concurrent `resweep train` processes on one GPU.

Each child gets one CPU thread (`--threads 1` and OMP_NUM_THREADS=1), as the orchestrator
gives a trial with resources.cpu 1 (Ray sets OMP_NUM_THREADS to the trial's CPUs): without
it every child would start a thread per core and they would fight over the CPUs that feed
the GPU. The sum of their per-process images/s (median of their middle epochs) and the GPU memory
they used together (`torch.cuda.mem_get_info` polled) next to `workers.memory`'s packing
check. A function of the running `Bench` (bench/gpu.py), like the other sections.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from bench.gpu_engine import engine_trial
from bench.gpu_estimate import ROOT
from workers.config import Resources
from workers.memory import check_gpu_packing, estimate_trial_memory


# -- 3. packing ---------------------------------------------------------------------------
def packing(bench) -> dict:
    s = bench.sizes
    trial = engine_trial(bench, "resnet20", True, 0, s.packing_steps_per_epoch,
                              iterations=s.packing_iterations)
    folder = Path(tempfile.mkdtemp(prefix="resweep-packing-"))
    config = folder / "trial.json"
    config.write_text(json.dumps(trial.to_dict()))
    rows, estimate = [], estimate_trial_memory(trial).total
    for procs in s.packing_procs:
        if bench.left() < 10 + 3 * procs:
            bench.result["sections_skipped"][f"packing_{procs}"] = "time budget"
            break
        rows.append(_pack(bench, procs, config, folder))
        rows[-1]["estimated_bytes"] = procs * estimate
        check = check_gpu_packing([dataclasses.replace(trial, resources=Resources(
            gpu=1 / procs))] * procs, bench.result["meta"].get("device_memory_bytes"),
            refuse=False)
        rows[-1]["packing_check"] = check.verdict
        bench.log(f"  {procs} procs: {rows[-1]['total_images_per_s']} img/s in total")
        bench.result["packing"] = {"rows": rows}
        bench.save()
    one = rows[0]["total_images_per_s"] if rows else None
    for row in rows:
        row["gain_vs_one"] = round(row["total_images_per_s"] / one, 2) if one else None
    return {"model": "resnet20 graph bf16 batch %d" % s.batch, "rows": rows,
            "command": "python -m orchestrator.cli train --config trial.json --quiet "
                       "--out result.json"}


def _pack(bench, procs: int, config: Path, folder: Path) -> dict:
    env = child_env()
    outs = [folder / f"p{procs}-{i}.json" for i in range(procs)]
    probe = MemoryProbe(bench.device)
    began = time.perf_counter()
    popen = [subprocess.Popen(child_command(config, out, bench.smoke), cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for out in outs]
    try:
        logs = [p.communicate(timeout=max(30, bench.left()))[0] for p in popen]
    finally:                        # a timeout or an error must not leave them running
        for p in popen:
            if p.poll() is None:
                p.kill()
                p.wait()
        used = probe.stop()
    wall = time.perf_counter() - began
    per_proc, trained, captured = [], 0, []
    for p, out, text in zip(popen, outs, logs):
        if p.returncode != 0 or not out.is_file():
            raise RuntimeError(f"a packed `resweep train` failed ({p.returncode}): {text[-800:]}")
        result = json.loads(out.read_text())
        history = result["history"]
        captured.append(bool(result.get("captured")))
        rates = [h["images_per_s"] for h in history]
        middle = rates[1:-1] or rates          # first: capture; last: others finishing
        per_proc.append(round(statistics.median(middle), 1))
        trained += history[-1]["iteration"] * bench.sizes.batch
    return {"procs": procs, "per_proc_images_per_s": per_proc,
            "total_images_per_s": round(sum(per_proc), 1), "wall_s": round(wall, 1),
            "captured": captured,                  # per process: ran as a replayed graph
            "wall_images_per_s": round(trained / wall, 1),
            "measured_device_bytes": used}


def child_command(config: Path, out: Path, smoke: bool) -> list[str]:
    """One packed trial: `resweep train` on its JSON, one torch thread (CPU in the smoke)."""
    return ([sys.executable, "-m", "orchestrator.cli", "train", "--config", str(config),
             "--quiet", "--out", str(out), "--threads", "1"]
            + (["--device", "cpu"] if smoke else []))


def child_env() -> dict[str, str]:
    """The children's environment: this checkout importable, one OpenMP/MKL thread."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


class MemoryProbe:
    """Polls the device's free memory from this process while packed trials run; the
    largest drop below the free memory at the start is what they used together (CUDA
    contexts included)."""

    def __init__(self, device: torch.device, every_s: float = 0.2):
        self.device, self.every_s = device, every_s
        self.min_free: int | None = None
        self.start_free: int | None = None
        self._stop = threading.Event()
        if device.type == "cuda":
            self.start_free = torch.cuda.mem_get_info()[0]
            self.min_free = self.start_free
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.every_s):
            self.min_free = min(self.min_free, torch.cuda.mem_get_info()[0])

    def stop(self) -> int | None:
        if self.device.type != "cuda":
            return None
        self._stop.set()
        self._thread.join()
        return self.start_free - self.min_free
