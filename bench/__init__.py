"""Benchmarks that print JSON, run as scripts from a checkout (see README.md):
`python bench/throughput.py`, `python bench/overhead.py`, `python bench/gpu.py`
(its sections in bench/gpu_engine.py, gpu_packing.py, gpu_estimate.py)."""
