"""pipeline.kubeflow_v2_runner: the local pipeline compiled by TFX's KubeflowV2DagRunner, and its image.

Two specs are compiled through the CLI from the tiny synthetic settings (tests/pipeline/conftest.py):
`remote` with Dataflow Beam flags and three training workers, `direct` with neither. Nothing is
submitted (no cluster here); what a cluster would receive is checked: tasks and edges against the
local pipeline object, executor classes, images, Beam and training arguments, paths.
"""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest

from pipeline import components, configs, kubeflow_v2_runner, trainer_module
from pipeline import pipeline as pipeline_lib
from tests.pipeline.conftest import OVERRIDES, tiny_settings

IMAGE = "europe-docker.pkg.dev/kdem-test/reid/kdem-tf-pipeline:test"
ROOT = "gs://kdem-test-bucket/kdem/root"
DATAFLOW = ["--runner=DataflowRunner", "--project=kdem-test", "--region=europe-west4",
            "--temp_location=gs://kdem-test-bucket/tmp"]
RESOLVER = "previous_blessed_model_resolver"
KFP_RESOLVER_TASKS = (f"{RESOLVER}-model-blessing-resolver", f"{RESOLVER}-model-resolver")
CUSTOM_COMPONENTS = ("ReidExampleGen", "ReidDataCheck", "ReidEvaluator", "ReidGalleryIndex")
DOCKERFILE = os.path.join(configs.REPO_ROOT, "deploy", "pipeline.Dockerfile")


def _argv(output, tiny_data, extra=()):
    return ["--output", str(output), "--image", IMAGE, "--pipeline-root", ROOT, "--data-root", tiny_data,
            "--preset", "tiny", "--train-steps", "2", "--code-fingerprint", "tests", "--eval-trials", "2",
            *[f"--set={override}" for override in OVERRIDES], *extra]


def _compile(tmp_path_factory, tiny_data, name, extra):
    output = tmp_path_factory.mktemp("kfp") / f"{name}.json"
    assert kubeflow_v2_runner.main(_argv(output, tiny_data, extra)) == 0
    with open(output) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def remote(tmp_path_factory, tiny_data):
    return _compile(tmp_path_factory, tiny_data, "remote", ["--workers", "3", "--project", "kdem-test", "--region",
                    "europe-west4"] + [f"--beam-arg={a}" for a in DATAFLOW[:2]] + ["--"] + DATAFLOW[2:])


@pytest.fixture(scope="module")
def direct(tmp_path_factory, tiny_data):
    """`python -m pipeline.kubeflow_v2_runner` in a fresh process, its imports listed (-X importtime)."""
    output = tmp_path_factory.mktemp("kfp") / "direct.json"
    argv = _argv(output, tiny_data)
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "pipeline.kubeflow_v2_runner", *argv],
                          capture_output=True, text=True, timeout=600, cwd=configs.REPO_ROOT,
                          env=dict(os.environ, PYTHONPATH=configs.REPO_ROOT, KDEM_VERBOSE="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "tfx.orchestration.kubeflow.v2.kubeflow_v2_dag_runner" in imported
    # As pipeline/tfx_api.py: neither tfx.v1 nor the Google Cloud clients (no multi-worker Vertex job here).
    assert not {m for m in imported if m == "tfx.v1" or m.startswith("google.cloud.aiplatform")}
    assert "Trainer " in done.stdout and f"wrote {output}" in done.stdout
    with open(output) as f:
        return json.load(f)


def _tasks(spec):
    return spec["pipelineSpec"]["root"]["dag"]["tasks"]


def _executor(spec, task):
    component = spec["pipelineSpec"]["components"][_tasks(spec)[task]["componentRef"]["name"]]
    return spec["pipelineSpec"]["deploymentSpec"]["executors"][component["executorLabel"]]


def _parameter(spec, task, name):
    value = _tasks(spec)[task]["inputs"]["parameters"][name]["runtimeValue"]["constantValue"]
    return next(iter(value.values()))


def _flag(args, flag):
    return args[args.index(flag) + 1]


def test_every_component_is_a_task_with_the_local_pipelines_edges(remote, tiny_data):
    local = pipeline_lib.create_pipeline(tiny_settings("unused", tiny_data), configs.beam_pipeline_args("in_memory"))
    local_edges = {(upstream.id, node.id) for node in local.components for upstream in node.upstream_nodes}
    tasks = _tasks(remote)
    # The one difference, documented in pipeline.create_pipeline: Kubeflow v2 compiles only TFX's own
    # resolver strategies, so the baseline resolver (LatestBlessedModelStrategy) becomes two query tasks
    # that run before the Trainer instead of reading its output.
    assert set(tasks) == {node.id for node in local.components} - {RESOLVER} | set(KFP_RESOLVER_TASKS)
    assert ("Trainer", RESOLVER) in local_edges
    expected = {(up.replace(RESOLVER, KFP_RESOLVER_TASKS[1]), down) for up, down in local_edges
                if down != RESOLVER}
    compiled = {(up, name) for name, task in tasks.items() for up in task.get("dependentTasks", [])}
    assert compiled == expected
    model_resolver_input = tasks[KFP_RESOLVER_TASKS[1]]["inputs"]["artifacts"]["input"]["taskOutputArtifact"]
    assert model_resolver_input["producerTask"] == KFP_RESOLVER_TASKS[0]
    assert len(local.components) == 10 and len(tasks) == 11


def test_custom_executors_are_importable_classes_of_this_package(remote):
    for task in CUSTOM_COMPONENTS:
        class_path = _flag(_executor(remote, task)["container"]["args"], "--executor_class_path")
        module_name, class_name = class_path.rsplit(".", 1)
        assert module_name == "pipeline.components", class_path  # never __main__: the image imports it
        executor_class = getattr(importlib.import_module(module_name), class_name)
        assert isinstance(executor_class, type) and executor_class.__module__ == module_name
    trainer_args = _executor(remote, "Trainer")["container"]["args"]
    assert _flag(trainer_args, "--executor_class_path") == kubeflow_v2_runner.VERTEX_TRAINER_EXECUTOR
    assert _parameter(remote, "Trainer", "run_fn") == pipeline_lib.TRAINER_RUN_FN
    assert callable(trainer_module.run_fn)


def test_every_executor_names_the_image(remote, direct):
    for spec in (remote, direct):
        executors = spec["pipelineSpec"]["deploymentSpec"]["executors"]
        containers = {label: e["container"] for label, e in executors.items() if "container" in e}
        assert set(executors) - set(containers) == {f"{t}_executor" for t in KFP_RESOLVER_TASKS}  # run by the platform
        assert {label.rsplit("_executor", 1)[0] for label in containers} == set(_tasks(spec)) - set(KFP_RESOLVER_TASKS)
        for container in containers.values():
            assert container["image"] == IMAGE
            assert container["command"] == ["python", "-m",
                                            "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"]


def test_beam_steps_get_the_beam_arguments(remote, direct):
    for task in ("ReidExampleGen", "StatisticsGen", "ExampleValidator"):
        args = _executor(remote, task)["container"]["args"]
        beam_args = args[args.index("--json_serialized_invocation_args") + 2:]
        assert beam_args == [f"--setup_file={kubeflow_v2_runner.IMAGE_SOURCE_DIR}/setup.py"] + DATAFLOW + [
            f"--sdk_container_image={IMAGE}"]
        args = _executor(direct, task)["container"]["args"]
        assert args[args.index("--json_serialized_invocation_args") + 2:] == [
            "--runner=DirectRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=0"]


@pytest.mark.parametrize("given, added", [
    (["--runner=FlinkRunner", "--flink_master=flink:8081"], [f"--environment_config={IMAGE}"]),
    (["--runner=SparkRunner", "--spark_master_url=spark://m:7077", "--environment_type=DOCKER"],
     [f"--environment_config={IMAGE}"]),
    (["--runner=PortableRunner", "--job_endpoint=js:8099", "--environment_type=EXTERNAL",
      "--environment_config=pool:50000"], []),
    (["--runner=FlinkRunner", "--environment_type=LOOPBACK"], []),
    (["--runner=DataflowRunner", "--sdk_container_image=other:1"], []),
])
def test_remote_beam_workers_run_the_image_unless_told_otherwise(given, added, tiny_data):
    settings = tiny_settings("unused", tiny_data, beam_args=tuple(given))
    args = kubeflow_v2_runner.remote_beam_args(settings, IMAGE)
    assert args == [f"--setup_file={kubeflow_v2_runner.IMAGE_SOURCE_DIR}/setup.py"] + given + added


def test_the_trainer_gets_the_worker_settings(remote, direct):
    config = json.loads(_parameter(remote, "Trainer", "custom_config"))
    assert config["workers"] == 3 and config["preset"] == "tiny" and config["overrides"] == list(OVERRIDES)
    assert config["ai_platform_enable_vertex"] is True and config["ai_platform_vertex_region"] == "europe-west4"
    job = config["ai_platform_training_args"]
    assert job["project"] == "kdem-test"
    assert [(pool["replica_count"], pool["container_spec"]["image_uri"]) for pool in job["worker_pool_specs"]] == [
        (1, IMAGE), (2, IMAGE)]
    single = json.loads(_parameter(direct, "Trainer", "custom_config"))
    assert single["workers"] == 1 and "ai_platform_training_args" not in single
    assert _flag(_executor(direct, "Trainer")["container"]["args"], "--executor_class_path") == \
        "tfx.components.trainer.executor.GenericExecutor"


def test_artifacts_and_outputs_live_under_the_pipeline_root(remote, tiny_data):
    assert remote["runtimeConfig"]["gcsOutputDirectory"] == ROOT
    paths = []
    for task in _tasks(remote):
        for name in _tasks(remote)[task].get("inputs", {}).get("parameters", {}):
            value = str(_parameter(remote, task, name))
            paths += [(task, name, v) for v in value.replace('"', " ").split() if v.startswith(("/", "gs://"))]
    assert ("Pusher", "push_destination", f"{ROOT}/serving/kdem-reid") in paths
    assert ("ReidGalleryIndex", "index_base_dir", f"{ROOT}/serving/kdem-reid-index") in paths
    schema = ("ImportSchemaGen", "schema_file", kubeflow_v2_runner.image_path(configs.SCHEMA_PATH))
    assert schema in paths and schema[2].startswith(kubeflow_v2_runner.IMAGE_SOURCE_DIR + "/")
    assert ("ReidExampleGen", "data_root", tiny_data) in paths
    stray = [p for p in paths if not p[2].startswith((ROOT + "/", kubeflow_v2_runner.IMAGE_SOURCE_DIR + "/"))
             and p[2] != tiny_data]
    assert stray == []


def _dockerfile_instructions():
    """[(KEYWORD, arguments)] of deploy/pipeline.Dockerfile: continuation lines joined, comments dropped."""
    with open(DOCKERFILE) as f:
        lines = [line for line in f.read().splitlines() if not line.lstrip().startswith("#")]
    text = "\n".join(lines).replace("\\\n", " ")
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip()) for line in text.splitlines() if line.strip()]


def test_the_dockerfile_installs_the_lock_and_copies_the_package():
    instructions = _dockerfile_instructions()
    of = lambda keyword: [rest for key, rest in instructions if key == keyword]  # noqa: E731
    with open(os.path.join(configs.REPO_ROOT, "constraints.txt")) as f:
        pins = dict(line.strip().split("==") for line in f if "==" in line)
    assert of("WORKDIR") == [kubeflow_v2_runner.IMAGE_SOURCE_DIR]
    assert of("FROM") == [f"apache/beam_python3.10_sdk:{pins['apache-beam']} AS beam_sdk", "python:3.10-slim-bookworm"]
    copies = [rest.split() for rest in of("COPY")]
    assert copies[1:] == [["constraints.txt", "setup.py", "./"], ["kdem_tf", "./kdem_tf"], ["pipeline", "./pipeline"],
                          ["serving", "./serving"]]
    installer, package = of("RUN")
    assert "\"$(grep -E '^uv==' constraints.txt)\"" in installer  # the lock's uv, as tools/make_venv.sh
    for run in (installer, package):
        assert "uv pip install --system --no-cache --compile-bytecode" in run and "-c constraints.txt ." in run
    assert "--no-deps --reinstall-package kdem-tf" in package
    assert [key for key, _ in instructions].index("RUN") > [key for key, _ in instructions].index("COPY") + 1
    assert json.loads(of("ENTRYPOINT")[0]) == ["/opt/apache/beam/boot"]
    assert pins["kfp-pipeline-spec"] == "0.2.2" and pins["protobuf"] == "3.20.3"


def test_help_shows_every_default_without_importing_tensorflow_and_unknown_flags_fail():
    check = ("import sys\nfrom pipeline import kubeflow_v2_runner as k\n"
             "try:\n    k.parse_args(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
             "print(code, sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tfx', 'keras')))")

    def run(*argv):
        done = subprocess.run([sys.executable, "-c", check, *argv], capture_output=True, text=True, timeout=120,
                              cwd=configs.REPO_ROOT, env=dict(os.environ, PYTHONPATH=configs.REPO_ROOT, COLUMNS="400"))
        return done.stdout, done.stderr

    out, _ = run("--help")
    assert out.strip().endswith("0 []")
    shown = " ".join(out.split())
    actions = [a for a in kubeflow_v2_runner.build_parser()._actions if a.dest not in ("help", "output")]
    assert len(actions) >= 25
    for action in actions:
        assert action.help and f"(default: {action.default})" in shown, action.option_strings
    assert f"--image IMAGE container image of every step (default: {configs.PIPELINE_IMAGE})" in shown
    _, err = run("--output", "x.json", "--work", "2")  # an abbreviation of --workers
    assert "unrecognized arguments: --work 2" in err
    _, err = run("--output", "x.json", "--runner=DataflowRunner")
    assert "unrecognized arguments: --runner=DataflowRunner" in err
    _, err = run("--output", "x.json", "--beam-arg=--runner=DaskRunner")
    assert "Beam runner 'DaskRunner' is not supported" in err
    _, err = run("--output", "x.json", "--workers", "2")
    assert "--workers 2 runs a Vertex AI training job: give --project and --region" in err


@pytest.mark.parametrize("workers, tf_config, chief", [
    (1, "", True),
    (2, json.dumps({"cluster": {"chief": ["a:1"], "worker": ["b:1"]}, "task": {"type": "chief", "index": 0}}), True),
    (2, json.dumps({"cluster": {"chief": ["a:1"], "worker": ["b:1"]}, "task": {"type": "worker", "index": 0}}), False),
    (2, json.dumps({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}), True),
    (2, json.dumps({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}), False),
])
def test_run_fn_checks_tf_config_against_the_worker_count(workers, tf_config, chief):
    assert trainer_module.check_cluster(workers, tf_config) is chief


def test_a_cluster_of_another_size_is_an_error():
    with pytest.raises(trainer_module.ClusterMismatchError, match="asks for 3 training worker.* TF_CONFIG names 2"):
        trainer_module.check_cluster(3, json.dumps({"cluster": {"worker": ["a:1", "b:1"]}}))
    with pytest.raises(trainer_module.ClusterMismatchError, match="asks for 2 .* names 1 .*no cluster"):
        trainer_module.check_cluster(2, "")
    with pytest.raises(trainer_module.ClusterMismatchError, match="not valid JSON"):
        trainer_module.check_cluster(1, "{cluster")


def test_a_failed_write_leaves_no_spec(tmp_path):
    target = tmp_path / "spec.json"
    with pytest.raises(TypeError):
        kubeflow_v2_runner.write_spec({"not serialisable": object()}, str(target))
    assert os.listdir(tmp_path) == []
    kubeflow_v2_runner.write_spec({"pipelineSpec": {}}, str(target))
    assert json.loads(target.read_text()) == {"pipelineSpec": {}} and os.listdir(tmp_path) == ["spec.json"]


def test_custom_artifact_types_have_the_names_kubeflow_accepts():
    from tfx.orchestration.kubeflow.v2 import compiler_utils

    for artifact_type in (components.ScannIndex, components.DataCheckReport):
        assert compiler_utils.get_artifact_title(artifact_type) == "tfx.Artifact"
        assert f"title: {artifact_type.TYPE_NAME}" in compiler_utils.get_artifact_schema(artifact_type)
