"""Compiles the kdem-tf TFX pipeline for Kubeflow Pipelines v2 and Vertex AI Pipelines (compile only).

    python -m pipeline.kubeflow_v2_runner --output kdem-reid.json --image REGISTRY/kdem-tf-pipeline:TAG \
        --pipeline-root gs://BUCKET/kdem/root --data-root gs://BUCKET/SYSU-MM01 \
        [--beam-arg=--runner=DataflowRunner --beam-arg=--project=P ...] [--workers N --project P --region R]

The pipeline is `pipeline.pipeline.create_pipeline()`, the one the local runner runs, with the
settings of pipeline/configs.py; TFX 1.16's `KubeflowV2DagRunner` turns it into a PipelineJob JSON
(nothing is submitted: docs/pipeline.md, "Running on Vertex AI / Kubeflow / a Beam cluster", has
the build, push and submit commands). Every step runs in one image (deploy/pipeline.Dockerfile),
which holds this repository at IMAGE_SOURCE_DIR: paths the pipeline reads from the repository
(the curated schema, Beam's setup.py) are written as paths inside the image.

What the spec gets beyond the local run:
* Beam steps (ReidExampleGen, StatisticsGen, ExampleValidator...) get `--beam-arg`s unchanged; with a
  remote `--runner` their SDK workers run IMAGE too (`worker_image_args`: the image is a Beam SDK
  container) unless the flags say otherwise; without one they run Beam's DirectRunner inside the step's container with one
  worker per core of that container (`--direct_num_workers=0`).
* `--workers N` (N > 1) puts N in the Trainer's custom_config and runs the Trainer as a Vertex AI
  custom training job (TFX's google_cloud_ai_platform Trainer executor) with a chief and N-1 workers
  of IMAGE; Vertex sets TF_CONFIG on each, and `kdem_tf.train` picks MultiWorkerMirroredStrategy
  from it (pipeline/trainer_module.py checks that the cluster has N tasks).
* InfraValidator is not supported by this runner; the pipeline does not use it.

Flags are parsed before TensorFlow or TFX is imported: `--help` answers at once.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from typing import List, Optional, Sequence

from kdem_tf import datasets
from kdem_tf.data import beam_options
from pipeline import configs
from pipeline.configs import PipelineSettings

IMAGE_SOURCE_DIR = "/opt/kdem-tf"          # where deploy/pipeline.Dockerfile puts this repository
TRAINER_ID = "Trainer"
VERTEX_TRAINER_EXECUTOR = "tfx.extensions.google_cloud_ai_platform.trainer.executor.GenericExecutor"
DEFAULT_MACHINE_TYPE = "n1-standard-8"


def build_parser() -> argparse.ArgumentParser:
    d = PipelineSettings()
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.kubeflow_v2_runner", allow_abbrev=False,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Compiles the kdem-tf TFX pipeline into a Kubeflow Pipelines v2 / Vertex AI PipelineJob JSON.",
        epilog="Defaults come from pipeline/configs.py and its KDEM_* environment variables.")
    parser.add_argument("--output", required=True, default=argparse.SUPPRESS,
                        help="REQUIRED: the PipelineJob JSON file to write")
    parser.add_argument("--image", default=configs.PIPELINE_IMAGE, help="container image of every step")
    parser.add_argument("--pipeline-name", default=d.pipeline_name, help="pipeline name")
    parser.add_argument("--pipeline-root", default=d.pipeline_root, help="artifact root (gs://... on Vertex)")
    parser.add_argument("--data-root", default=d.data_root,
                        help="raw dataset the steps read (gs://...); '' = the synthetic dataset, generated "
                             "under --home on this machine (only for an orchestrator that sees this path)")
    parser.add_argument("--home", default=d.home, help="where the synthetic dataset is generated")
    parser.add_argument("--dataset", default=d.dataset, choices=datasets.names(), help="a registered dataset")
    parser.add_argument("--trial", type=int, default=d.trial, help="the dataset's trial, where it has one (RegDB 1..10)")
    parser.add_argument("--num-shards", type=int, default=d.num_shards, help="TFRecord shards per split; 0 = auto")
    parser.add_argument("--preset", default=d.preset, help="training preset: paper, demo, tiny")
    parser.add_argument("--set", dest="train_overrides", action="append", default=list(d.train_overrides),
                        metavar="SECTION.KEY=VALUE", help="training config override (repeatable)")
    parser.add_argument("--train-steps", type=int, default=d.train_steps, help="TrainArgs.num_steps; 0 = schedule")
    parser.add_argument("--min-map", type=float, default=d.min_map, help="blessing threshold, mAP in percent")
    parser.add_argument("--max-map-drop", type=float, default=d.max_map_drop, help="mAP points a model may lose")
    parser.add_argument("--eval-trials", type=int, default=d.eval_trials, help="gallery draws (or index splits) of the protocol")
    parser.add_argument("--eval-mode", default=d.eval_mode, help="search mode of datasets that have one (SYSU: all or indoor)")
    parser.add_argument("--serving-dir", default="", help="Pusher base directory; '' = PIPELINE_ROOT/serving/NAME")
    parser.add_argument("--index-dir", default="", help="gallery index base directory; '' = PIPELINE_ROOT/serving/NAME-index")
    parser.add_argument("--beam-arg", dest="beam_args", action="append", default=[], metavar="ARG",
                        help=beam_options.BEAM_ARG_HELP)
    parser.add_argument("--workers", type=int, default=d.train_workers,
                        help="training workers; > 1: a Vertex AI training job (needs --project, --region)")
    parser.add_argument("--project", default="", help="Google Cloud project of the multi-worker training job")
    parser.add_argument("--region", default="", help="Vertex AI region of the multi-worker training job")
    parser.add_argument("--machine-type", default=DEFAULT_MACHINE_TYPE, help="machine type of each training worker")
    parser.add_argument("--data-fingerprint", default="",
                        help="the raw data's cache key; '' = computed from --data-root (gs:// reads its split lists)")
    parser.add_argument("--code-fingerprint", default=d.code_fingerprint, help="'' = a hash of kdem_tf/ sources")
    parser.add_argument("--no-cache", action="store_true", help="re-execute every component")
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The flags; Beam options after a lone `--` join --beam-arg's. Errors exit with argparse's code 2."""
    own_args, separated = beam_options.split_at_separator(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(own_args)
    args.beam_args += separated
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    if args.workers > 1 and not (args.project and args.region):
        parser.error(f"--workers {args.workers} runs a Vertex AI training job: give --project and --region")
    try:
        beam_options.check_beam_args(args.beam_args)
    except beam_options.UnsupportedRunnerError as error:
        parser.error(str(error))
    return args


def settings_from_args(args: argparse.Namespace) -> PipelineSettings:
    """The pipeline's settings for a remote run: the given root; serving and index under it."""
    root = args.pipeline_root.rstrip("/")
    return PipelineSettings(
        pipeline_name=args.pipeline_name, home=args.home, root=root, dataset=args.dataset, data_root=args.data_root,
        trial=args.trial, num_shards=args.num_shards, preset=args.preset, train_overrides=tuple(args.train_overrides),
        train_steps=args.train_steps, train_workers=args.workers, min_map=args.min_map,
        max_map_drop=args.max_map_drop, eval_trials=args.eval_trials, eval_mode=args.eval_mode,
        beam_args=tuple(args.beam_args), enable_cache=not args.no_cache,
        schema_path=image_path(configs.SCHEMA_PATH),
        serving_dir=args.serving_dir or f"{root}/serving/{args.pipeline_name}",
        index_dir=args.index_dir or f"{root}/serving/{args.pipeline_name}-index",
        data_fingerprint=args.data_fingerprint, code_fingerprint=args.code_fingerprint)


def image_path(repository_path: str) -> str:
    """The path inside the image of a file of this repository."""
    return f"{IMAGE_SOURCE_DIR}/{os.path.relpath(repository_path, configs.REPO_ROOT)}"


def remote_beam_args(settings: PipelineSettings, image: str) -> List[str]:
    """configs.beam_pipeline_args for the steps' containers: setup.py at its path in the image;
    a remote runner's workers run the same image; the DirectRunner uses the container's cores."""
    args = configs.beam_pipeline_args(settings.beam_mode, settings.beam_workers, settings.beam_args)
    args = [f"--setup_file={image_path(os.path.join(configs.REPO_ROOT, 'setup.py'))}"
            if a.startswith("--setup_file=") else a for a in args]
    remote = any(a.startswith("--runner") for a in settings.beam_args)
    if remote:
        args += worker_image_args(args, image)
    else:
        args = [a for a in args if not a.startswith(("--direct_num_workers", "--sdk_container_image"))]
        args.append("--direct_num_workers=0")  # Beam: 0 = one worker per core of the machine it runs on
    return args


def worker_image_args(beam_args: Sequence[str], image: str) -> List[str]:
    """The flag that runs a remote runner's SDK workers in `image`: Dataflow's --sdk_container_image,
    a portable runner's (Flink, Spark) Docker --environment_config; none when the flags already name
    an image or choose another environment (LOOPBACK, EXTERNAL, PROCESS)."""
    from apache_beam.options.pipeline_options import PipelineOptions, PortableOptions, WorkerOptions

    options = PipelineOptions(list(beam_args))
    portable = options.view_as(PortableOptions)
    if options.view_as(WorkerOptions).sdk_container_image or portable.environment_config:
        return []
    if beam_options.runner_name(beam_args).rsplit(".", 1)[-1].lower() in ("dataflow", "dataflowrunner"):
        return [f"--sdk_container_image={image}"]
    if (portable.environment_type or "DOCKER").upper() == "DOCKER":
        return [f"--environment_config={image}"]
    return []


def use_vertex_training(pipeline, image: str, workers: int, project: str, region: str, machine_type: str) -> None:
    """Runs the Trainer as a Vertex AI custom job: a chief and workers-1 workers, all of `image`.

    The job's replicas run the Trainer's own executor (run_fn) with TF_CONFIG set by Vertex.
    """
    from tfx.dsl.components.base import executor_spec
    from tfx.extensions.google_cloud_ai_platform import constants
    from tfx.extensions.google_cloud_ai_platform.trainer import executor as vertex_executor
    from tfx.utils import json_utils

    trainer = next(c for c in pipeline.components if c.id == TRAINER_ID)
    pool = {"machine_spec": {"machine_type": machine_type}, "container_spec": {"image_uri": image}}
    custom_config = json_utils.loads(trainer.exec_properties["custom_config"])
    custom_config.update({
        vertex_executor.TRAINING_ARGS_KEY: {"project": project, "worker_pool_specs": [
            dict(pool, replica_count=1), dict(pool, replica_count=workers - 1)]},
        constants.ENABLE_VERTEX_KEY: True, constants.VERTEX_REGION_KEY: region})
    trainer.exec_properties["custom_config"] = json_utils.dumps(custom_config)
    trainer.executor_spec = executor_spec.ExecutorClassSpec(vertex_executor.GenericExecutor)


def compile_spec(settings: PipelineSettings, image: str, workers_job: Optional[dict] = None) -> dict:
    """The PipelineJob (a dict) of create_pipeline(settings) with every step in `image`.

    `workers_job`: {"project", "region", "machine_type"} to run a multi-worker Trainer on Vertex AI.
    """
    from pipeline import pipeline as pipeline_lib
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

    from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import LatestBlessedModelStrategy

    pipeline = pipeline_lib.create_pipeline(settings, remote_beam_args(settings, image),
                                            baseline_strategy=LatestBlessedModelStrategy)
    if settings.train_workers > 1:
        use_vertex_training(pipeline, image, settings.train_workers, **(workers_job or {}))
    runner = kubeflow_v2_dag_runner.KubeflowV2DagRunner(
        config=kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(default_image=image), output_dir=".")
    return runner.run(pipeline, write_out=False)


def write_spec(spec: dict, path: str) -> None:
    """Writes the JSON through a temporary sibling and a rename: never a half-written spec."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(temporary, "w") as f:
            json.dump(spec, f, indent=1, sort_keys=True)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def describe(spec: dict) -> str:
    """One line per task: its executor's image and the tasks it waits for."""
    pipeline_spec = spec["pipelineSpec"]
    executors = pipeline_spec["deploymentSpec"]["executors"]
    lines = [f"pipeline {pipeline_spec['pipelineInfo']['name']}: root "
             f"{spec['runtimeConfig'].get('gcsOutputDirectory', '?')}"]
    for name, task in sorted(pipeline_spec["root"]["dag"]["tasks"].items()):
        executor = executors[pipeline_spec["components"][task["componentRef"]["name"]]["executorLabel"]]
        image = executor["container"]["image"] if "container" in executor else "(run by the platform)"
        lines.append(f"  {name:<34} {image}  after {sorted(task.get('dependentTasks', [])) or '-'}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    from pipeline import local_runner

    settings = local_runner.resolve_settings(settings_from_args(args))
    if "://" not in settings.data_root:
        print(f"note: the data root {settings.data_root} is a path on this machine: the steps' containers must "
              f"see it there (give --data-root gs://... for Vertex AI)", file=sys.stderr)
    workers_job = {"project": args.project, "region": args.region, "machine_type": args.machine_type}
    spec = compile_spec(settings, args.image, workers_job)
    write_spec(spec, args.output)
    print(describe(spec))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
