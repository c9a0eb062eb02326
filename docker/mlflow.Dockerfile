# The tracking server of docker-compose.yml: MLflow with the PostgreSQL driver (backend
# store) and boto3 (artifacts in the MinIO bucket, served to clients through the server,
# so trials and drivers need no bucket credentials).
# Build arguments as in docker/Dockerfile: BASE_IMAGE (the Python 3.11 bookworm image) and
# PIP_OPTIONS (where pip takes packages from; default: the package index).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
ARG PIP_OPTIONS=""

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install $PIP_OPTIONS mlflow==3.17.2 psycopg2-binary==2.9.13 boto3==1.44.8

EXPOSE 5000
CMD ["mlflow", "server", "--help"]
