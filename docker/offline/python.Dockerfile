# A stand-in for the official python:3.11-slim-bookworm image, built from a local Debian
# base where no image registry is reachable (`make cluster-test`): Debian's Python 3.11
# in a virtual environment at /opt/python, first on PATH, so `python` and `pip` are the
# commands docker/Dockerfile and docker/mlflow.Dockerfile use, as in the official image.
ARG DEBIAN_IMAGE=debian:bookworm-slim
FROM ${DEBIAN_IMAGE}

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/python

ENV PATH=/opt/python/bin:$PATH \
    LANG=C.UTF-8
CMD ["python3"]
