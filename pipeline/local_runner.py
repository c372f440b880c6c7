"""Runs the kdem-tf TFX pipeline on this machine with `LocalDagRunner`.

    python -m pipeline.local_runner [--dataset sysu] [--data-root DIR] [--preset demo] ...

or, through the TFX CLI (which runs this file without arguments: configure it with the
KDEM_* environment variables of pipeline/configs.py)::

    tfx pipeline create --engine local --pipeline_path pipeline/local_runner.py
    tfx run create --engine local --pipeline_name kdem-reid

Without --data-root the built-in synthetic SYSU-layout dataset is generated under
HOME/data/ on first use. Artifacts land under HOME/tfx/<name>/, ML Metadata in
HOME/tfx/<name>/metadata.sqlite, blessed models in HOME/serving/<name>/<version>/.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

if __name__ == "__main__":  # run as a script (`tfx pipeline create`, `tfx run create`, python pipeline/…)
    # The script's folder on sys.path would make `pipeline` resolve to pipeline/pipeline.py.
    _here = os.path.dirname(os.path.realpath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.getcwd()) != _here]
    sys.path.insert(0, os.path.dirname(_here))
    from kdem_tf import console  # noqa: E402  (a clean console for the TFX CLI's runs too)

    console.start("pipeline.local_runner")

from kdem_tf import artifacts  # noqa: E402
from pipeline import configs  # noqa: E402
from pipeline.configs import PipelineSettings  # noqa: E402

CODE_PATHS = ("kdem_tf", "serving/export/run_folder.py", "serving/export/saved_model.py",
              "pipeline/trainer_module.py")


# ----------------------------------------------------------------------------- settings


def fingerprint_data(data_root: str) -> str:
    """A cheap fingerprint of a local dataset folder: relative paths, sizes and mtimes.

    Remote roots (gs://, hdfs://) fingerprint their split lists only (exp/, idx/).
    """
    digest = hashlib.sha256()
    if "://" in data_root:
        import tensorflow as tf

        for sub in ("exp", "idx"):
            for path in sorted(tf.io.gfile.glob(f"{data_root.rstrip('/')}/{sub}/*.txt")):
                with tf.io.gfile.GFile(path, "rb") as f:
                    digest.update(path.encode() + f.read())
        return "lists:" + digest.hexdigest()[:16]
    if os.path.isfile(data_root):  # a CSV manifest: its folder holds it and its images
        data_root = os.path.dirname(os.path.abspath(data_root))
    if not os.path.isdir(data_root):
        return "missing"
    for folder, dirs, files in os.walk(data_root):
        dirs.sort()
        for name in sorted(files):
            stat = os.stat(os.path.join(folder, name))
            rel = os.path.relpath(os.path.join(folder, name), data_root)
            digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return "files:" + digest.hexdigest()[:16]


def fingerprint_code(paths: Sequence[str] = CODE_PATHS) -> str:
    """Hash of the training code's Python sources: a changed library retrains (cache key)."""
    digest = hashlib.sha256()
    for rel in paths:
        full = os.path.join(configs.REPO_ROOT, rel)
        files = [full] if os.path.isfile(full) else sorted(
            os.path.join(folder, name) for folder, _, names in os.walk(full) for name in names
            if name.endswith(".py"))
        for path in files:
            with open(path, "rb") as f:
                digest.update(os.path.relpath(path, configs.REPO_ROOT).encode() + b"\0" + f.read())
    return digest.hexdigest()[:16]


def ensure_synthetic_data(settings: PipelineSettings, identities: int = configs.SYNTHETIC_IDENTITIES,
                          images_per_camera: int = configs.SYNTHETIC_IMAGES_PER_CAMERA,
                          seed: int = configs.SYNTHETIC_SEED,
                          image_size: Tuple[int, int] = configs.SYNTHETIC_IMAGE_SIZE) -> str:
    """Generates the synthetic dataset at settings.synthetic_data_root unless it is there
    (rendered at `image_size`, the training size: an existing folder is reused as it is)."""
    from kdem_tf import datasets

    root = settings.synthetic_data_root
    if not os.path.isdir(root):
        print(f"generating the synthetic {settings.dataset} dataset ({identities} identities) at {root}",
              file=sys.stderr)
        datasets.get(settings.dataset).generate_synthetic(root, identities=identities, seed=seed, image_size=image_size,
                                                          images_per_camera=images_per_camera, progress=False)
    return root


def resolve_settings(settings: PipelineSettings, synthetic_identities: int = configs.SYNTHETIC_IDENTITIES,
                     synthetic_images_per_camera: int = configs.SYNTHETIC_IMAGES_PER_CAMERA) -> PipelineSettings:
    """Fills in what create_pipeline needs: the data root (the synthetic dataset when none is given,
    generated on first use), the training image size and the two cache fingerprints (unless given)."""
    from kdem_tf import config as config_lib

    changes = {}
    from kdem_tf import datasets

    if settings.dataset not in datasets.names():
        raise SystemExit(f"--dataset must be one of {', '.join(datasets.names())}, got {settings.dataset!r}")
    if not datasets.get(settings.dataset).synthetic_defaults and not settings.data_root:
        raise SystemExit(f"--dataset {settings.dataset} needs --data-root ({datasets.get(settings.dataset).data_root_help}; "
                         f"it has no synthetic stand-in)")
    if settings.image_size is None:
        config = config_lib.load_config(settings.preset, settings.train_config or None, settings.train_overrides)
        changes["image_size"] = tuple(int(v) for v in config.data.image_size)
    if not settings.data_root:
        changes["data_root"] = ensure_synthetic_data(settings, synthetic_identities, synthetic_images_per_camera,
                                                     image_size=changes.get("image_size", settings.image_size))
    data_root = changes.get("data_root", settings.data_root)
    if "://" not in data_root:
        changes["data_root"] = data_root = os.path.abspath(data_root)
    if not settings.data_fingerprint:
        changes["data_fingerprint"] = fingerprint_data(data_root)
    if not settings.code_fingerprint:
        changes["code_fingerprint"] = fingerprint_code()
    return dataclasses.replace(settings, **changes)


# ----------------------------------------------------------------------------- run and report


def build(settings: PipelineSettings):
    """(pipeline, resolved settings) for resolved or unresolved settings."""
    from pipeline import pipeline as pipeline_lib

    if not settings.data_root or settings.image_size is None or not settings.code_fingerprint:
        settings = resolve_settings(settings)
    beam_args = configs.beam_pipeline_args(settings.beam_mode, settings.beam_workers, settings.beam_args)
    return pipeline_lib.create_pipeline(settings, beam_args, pipeline_lib.metadata_config(settings)), settings


def run(settings: PipelineSettings):
    """Builds and runs the pipeline with LocalDagRunner; returns the resolved settings."""
    from pipeline import tfx_api

    pipeline, settings = build(settings)
    tfx_api.orchestration.LocalDagRunner().run(pipeline)
    return settings


def open_store(settings: PipelineSettings):
    from ml_metadata.metadata_store import metadata_store
    from pipeline import tfx_api

    return metadata_store.MetadataStore(tfx_api.orchestration.metadata.sqlite_metadata_connection_config(
        settings.metadata_path))


def run_report(settings: PipelineSettings, store=None) -> Dict[str, dict]:
    """{node id: {"state", "outputs": {key: [uri...]}, "properties"}} of the latest pipeline run."""
    from ml_metadata.proto import metadata_store_pb2

    store = store or open_store(settings)
    runs = [c for c in store.get_contexts_by_type("pipeline_run")]
    if not runs:
        return {}
    latest = max(runs, key=lambda c: (c.create_time_since_epoch, c.id))
    executions = {e.id: e for e in store.get_executions_by_context(latest.id)}
    nodes = store.get_contexts_by_type("node")
    prefix = f"{settings.pipeline_name}."
    state_name = metadata_store_pb2.Execution.State.Name
    report = {}
    for node in nodes:
        if not node.name.startswith(prefix):
            continue
        mine = [e for e in store.get_executions_by_context(node.id) if e.id in executions]
        if not mine:
            continue
        execution = max(mine, key=lambda e: e.id)
        events = store.get_events_by_execution_ids([execution.id])
        outputs: Dict[str, List[str]] = {}
        output_ids = [ev.artifact_id for ev in events if ev.type in (ev.OUTPUT, ev.DECLARED_OUTPUT)]
        artifacts = {a.id: a for a in store.get_artifacts_by_id(output_ids)} if output_ids else {}
        for ev in events:
            if ev.artifact_id in artifacts and ev.type in (ev.OUTPUT, ev.DECLARED_OUTPUT):
                key = ev.path.steps[0].key if ev.path.steps else "?"
                outputs.setdefault(key, []).append(artifacts[ev.artifact_id].uri)
        # MLMD's own timestamps (ms): creation when the launcher starts it, last update when it ends.
        seconds = (execution.last_update_time_since_epoch - execution.create_time_since_epoch) / 1000.0
        report[node.name[len(prefix):]] = {"state": state_name(execution.last_known_state),
                                           "execution_id": execution.id, "outputs": outputs,
                                           "seconds": round(seconds, 1)}
    return report


def _latest_run_id(settings: PipelineSettings) -> Optional[int]:
    if not os.path.exists(settings.metadata_path):
        return None
    runs = open_store(settings).get_contexts_by_type("pipeline_run")
    return max((c.id for c in runs), default=None)


def format_report(settings: PipelineSettings, report: Dict[str, dict]) -> str:
    lines = [f"pipeline {settings.pipeline_name}: root {settings.pipeline_root}",
             f"{'component':<32}{'state':<10}{'time':>7}  output"]
    for node, info in sorted(report.items(), key=lambda kv: kv[1]["execution_id"]):
        first = next((f"{k}: {v[0]}" for k, v in sorted(info["outputs"].items()) if v), "")
        # A cached component's execution is this run's lookup, not the work: its time is ~0.
        time_text = f"{info['seconds']:.0f} s" if info["state"] != "CACHED" else "cached"
        lines.append(f"{node:<32}{info['state']:<10}{time_text:>7}  {first}")
    metrics = _first_output(report, "ReidEvaluator", "evaluation")
    if metrics and os.path.exists(os.path.join(metrics, "metrics.json")):
        with open(os.path.join(metrics, "metrics.json")) as f:
            result = json.load(f)
        current = result["current"]
        lines.append(f"metrics: rank-1 {current['rank1']:.2f}  mAP {current['mAP']:.2f}  mINP {current['mINP']:.2f} "
                     f"(threshold mAP {result['min_map']:.2f}) → {'BLESSED' if result['blessed'] else 'NOT BLESSED'}"
                     + ("" if result["blessed"] else ": " + "; ".join(result["reasons"])))
    pushed = _first_output(report, "Pusher", "pushed_model")
    versions = artifacts.list_versions(settings.serving_model_dir)  # numeric order: 10 after 2
    lines.append(f"serving: {settings.serving_model_dir} versions {versions}"
                 + (f" (this run's push: {pushed})" if pushed else ""))
    lines.append(f"metadata: {settings.metadata_path}")
    return "\n".join(lines)


def _first_output(report, node: str, key: str) -> Optional[str]:
    uris = report.get(node, {}).get("outputs", {}).get(key) or []
    return uris[0] if uris else None


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    from kdem_tf import cli_help, datasets
    from kdem_tf.data import beam_options

    d = PipelineSettings()
    parser = cli_help.parser(
        "pipeline.local_runner", usage="%(prog)s [options] [-- BEAM_OPTION ...]", description="Runs the kdem-tf TFX pipeline with LocalDagRunner: examples, validation, "
        "training, protocol evaluation, blessing, push and the ScaNN gallery index; prints the results table "
        "(library messages go to HOME/console.log).",
        epilog="Beam options: --beam-arg=--runner=FlinkRunner --beam-arg=--flink_master=HOST:8081, or after a lone "
               "--. Every default comes from pipeline/configs.py and its KDEM_* environment variables (the TFX "
               "CLI runs this file without flags: configure it with those).")
    parser.add_argument("--pipeline-name", default=d.pipeline_name, help="pipeline name (its folder and metadata)")
    parser.add_argument("--home", default=d.home, help="artifacts, metadata, serving and data folder")
    parser.add_argument("--dataset", default=d.dataset, choices=datasets.names(), help="a registered dataset")
    parser.add_argument("--data-root", default=d.data_root,
                        help="raw dataset folder; '' = the built-in synthetic dataset, generated under HOME/data")
    parser.add_argument("--trial", type=int, default=d.trial, help="the dataset's trial, where it has one (RegDB 1..10)")
    parser.add_argument("--num-shards", type=int, default=d.num_shards, help="TFRecord shards per split; 0 = auto")
    parser.add_argument("--preset", default=d.preset, help="training preset: paper, demo, tiny")
    parser.add_argument("--train-config", default=d.train_config, help="YAML over the preset")
    parser.add_argument("--set", dest="train_overrides", action="append", default=list(d.train_overrides),
                        metavar="SECTION.KEY=VALUE", help="training config override (repeatable)")
    parser.add_argument("--train-steps", type=int, default=d.train_steps, help="TrainArgs.num_steps; 0 = schedule")
    parser.add_argument("--min-map", type=float, default=d.min_map, help="blessing threshold, mAP in percent")
    parser.add_argument("--max-map-drop", type=float, default=d.max_map_drop,
                        help="mAP points a model may lose to the last blessed one")
    parser.add_argument("--eval-trials", type=int, default=d.eval_trials, help="gallery draws (or index splits) of the protocol")
    parser.add_argument("--eval-mode", default=d.eval_mode, help="search mode of datasets that have one (SYSU: all or indoor)")
    parser.add_argument("--beam-mode", default=d.beam_mode, choices=["multi_processing", "in_memory"],
                        help="DirectRunner mode of the Beam components")
    parser.add_argument("--beam-workers", type=int, default=d.beam_workers, help="0 = one per core")
    parser.add_argument("--serving-dir", default=d.serving_dir, help="Pusher base directory; '' = HOME/serving/NAME")
    parser.add_argument("--index-dir", default=d.index_dir,
                        help="gallery index base directory; '' = HOME/serving/NAME-index")
    parser.add_argument("--infer-schema", action="store_true", help="SchemaGen instead of the curated schema")
    parser.add_argument("--code-fingerprint", default=d.code_fingerprint,
                        help="pin the training code's cache key; '' = a hash of kdem_tf/ sources")
    parser.add_argument("--no-cache", action="store_true", help="re-execute every component")
    parser.add_argument("--synthetic-identities", type=int, default=configs.SYNTHETIC_IDENTITIES,
                        help="identities of the synthetic dataset (when it is generated)")
    parser.add_argument("--synthetic-images-per-camera", type=int, default=configs.SYNTHETIC_IMAGES_PER_CAMERA,
                        help="images per id and camera of the synthetic dataset (when it is generated)")
    parser.add_argument("--beam-arg", dest="beam_args", action="append", default=[], metavar="ARG",
                        help=beam_options.BEAM_ARG_HELP)
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    from kdem_tf.data import beam_options

    own_args, separated = beam_options.split_at_separator(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(own_args)
    args.beam_args += separated
    try:
        beam_options.check_beam_args(args.beam_args)  # a refused runner: before any data is generated
    except beam_options.UnsupportedRunnerError as error:
        parser.error(str(error))
    return args


def settings_from_args(args: argparse.Namespace) -> PipelineSettings:
    return PipelineSettings(
        pipeline_name=args.pipeline_name, home=os.path.abspath(args.home), dataset=args.dataset,
        data_root=args.data_root, trial=args.trial, num_shards=args.num_shards, preset=args.preset,
        train_config=args.train_config, train_overrides=tuple(args.train_overrides), train_steps=args.train_steps,
        min_map=args.min_map, max_map_drop=args.max_map_drop, eval_trials=args.eval_trials,
        eval_mode=args.eval_mode, beam_mode=args.beam_mode, beam_workers=args.beam_workers,
        beam_args=tuple(args.beam_args), enable_cache=not args.no_cache,
        schema_path=None if args.infer_schema else configs.SCHEMA_PATH,
        serving_dir=args.serving_dir, index_dir=args.index_dir, code_fingerprint=args.code_fingerprint)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.INFO)
    args = parse_args(argv)
    from kdem_tf import console

    if "://" not in args.home:
        console.log_beside(os.path.join(os.path.abspath(args.home), "console.log"))
    settings = resolve_settings(settings_from_args(args), args.synthetic_identities,
                                args.synthetic_images_per_camera)
    before = _latest_run_id(settings)
    settings = run(settings)  # under `tfx pipeline create` the CLI patches run() to only compile
    if _latest_run_id(settings) != before:
        print(format_report(settings, run_report(settings)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
