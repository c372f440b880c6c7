# One image for every step of the kdem-tf TFX pipeline on Kubeflow Pipelines v2 / Vertex AI Pipelines
# (pipeline/kubeflow_v2_runner.py --image), for its multi-worker Vertex AI training replicas, and the Beam
# SDK container of its Dataflow / Flink / Spark workers (--sdk_container_image: the same image).
#
#   docker build -f deploy/pipeline.Dockerfile -t REGISTRY/kdem-tf-pipeline:TAG .     (from the repository root)
#   docker push REGISTRY/kdem-tf-pipeline:TAG
#
# The stack is the lock's: constraints.txt, installed with the lock's uv as tools/make_venv.sh does for
# `make`. Nobody builds this image on the project's machines (no container engine there);
# tests/pipeline/test_kubeflow_v2.py reads this file and checks what it installs and copies.

# The Beam SDK image of the locked apache-beam: only its worker launcher is taken (/opt/apache/beam).
FROM apache/beam_python3.10_sdk:2.74.0 AS beam_sdk

# Python 3.10, as setup.py's python_requires.
FROM python:3.10-slim-bookworm

# The repository's place in the image: pipeline/kubeflow_v2_runner.py IMAGE_SOURCE_DIR writes the
# paths the steps read (the curated schema, Beam's setup.py) under it.
WORKDIR /opt/kdem-tf

# Dataflow, Flink and Spark start their SDK workers with Beam's launcher; Kubeflow and Vertex AI
# name their own command (python -m tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor).
COPY --from=beam_sdk /opt/apache/beam /opt/apache/beam

# 1. The installer and the dependencies, from the lock alone (a layer reused until the lock or
#    setup.py changes): setup.py without the packages' sources installs only its requirements.
COPY constraints.txt setup.py ./
RUN pip install --no-cache-dir --disable-pip-version-check "$(grep -E '^uv==' constraints.txt)" \
 && uv pip install --system --no-cache --compile-bytecode -c constraints.txt .

# 2. This package: the library, the pipeline's components and modules, the serving code.
COPY kdem_tf ./kdem_tf
COPY pipeline ./pipeline
COPY serving ./serving
RUN uv pip install --system --no-cache --compile-bytecode --no-deps --reinstall-package kdem-tf -c constraints.txt . \
 && python -c "import kdem_tf.train, pipeline.components, pipeline.trainer_module, kfp.pipeline_spec"

ENTRYPOINT ["/opt/apache/beam/boot"]
