#!/usr/bin/env bash
# Fill the git-ignored .device/ folder that bench/gpu_run.sh needs on a GPU machine
# (pass it as the device tool's carry: [".device"], about 40 MB). Idempotent.
#   .device/reference/gpu_anchor.py   the reference eager loop (../shared/reference)
#   .device/fashion-mnist/*.gz        the four Fashion-MNIST files (Debian dataset-fashion-mnist)
#   .device/wheels/*.whl              pydantic + pyyaml and their small dependencies, for
#                                     CPython 3.11-3.13 on x86_64 Linux (the study files),
#                                     and pytest (pure Python) for the CUDA-only tests
set -eu
cd "$(dirname "$0")/.."
PIP="${PIP:-.venv/bin/pip}"
mkdir -p .device/reference .device/fashion-mnist .device/wheels
cp ../shared/reference/gpu_anchor.py .device/reference/
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  cp "${FMNIST_DIR:-/usr/share/datasets/fashion-mnist}/$f.gz" .device/fashion-mnist/
done
for py in 3.11 3.12 3.13; do
  "$PIP" download --quiet --no-deps --only-binary=:all: --python-version "$py" \
      --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux_2_28_x86_64 -d .device/wheels pydantic_core==2.50.5 PyYAML==6.0.3
done
"$PIP" download --quiet --no-deps --only-binary=:all: -d .device/wheels pydantic==2.14.4 \
    typing_extensions==4.16.0 annotated-types==0.8.0 typing-inspection==0.4.5
"$PIP" download --quiet --no-deps --only-binary=:all: -d .device/wheels pytest==9.2.0 \
    pluggy==1.7.0 iniconfig==2.3.1 packaging==26.4 pygments==2.21.0
du -sh .device
