# The one project image used by every KFP component and KServe server (cannot be built on the dev machines,
# which have no Docker engine; CI validates everything this image runs).
# Build: docker build -t REGISTRY/rgalign-rec:0.1.0-python3.11 .   then compile the pipeline with
#        RGALIGN_IMAGE=REGISTRY/rgalign-rec:0.1.0-python3.11 rgalign pipeline compile --profile gpu-a100
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 \
    RGALIGN_FEATURE_REPO=/opt/rgalign/feature_repo HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
RUN apt-get update && apt-get install -y --no-install-recommends build-essential git \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/rgalign
# torch first: on Linux x86_64 the default torch==2.13.0 wheel is the CUDA build the GPU nodes need
RUN pip install torch==2.13.0
COPY pyproject.toml README.md ./
COPY rgalign ./rgalign
COPY components ./components
COPY pipelines ./pipelines
COPY serving ./serving
COPY monitoring ./monitoring
RUN pip install -e .
COPY feature_repo ./feature_repo
RUN useradd --create-home --uid 1000 rgalign && chown -R rgalign /opt/rgalign
USER rgalign
ENTRYPOINT ["rgalign"]
