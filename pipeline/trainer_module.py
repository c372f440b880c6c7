"""The Trainer's module: `run_fn(fn_args)` adapts TFX's arguments to `kdem_tf.train.train`.

Nothing else happens here: the training loop, the config presets and the export are the
library's (`kdem_tf.train`, `kdem_tf.config`, `serving.export`).

    fn_args.train_files[0]    …/Examples/<id>/Split-train/*  → data_dir (the Examples uri)
    fn_args.train_steps       TrainArgs.num_steps            → max_steps (None: the preset's schedule)
    fn_args.model_run_dir     the ModelRun artifact          → run_dir (checkpoints, config.yaml,
                                                                run_info.json, TensorBoard logs/)
    fn_args.serving_model_dir the Model artifact's Format-Serving → the embedder SavedModel
    fn_args.custom_config     {"dataset", "preset", "config_path", "overrides", "workers"}

Strategy: `kdem_tf.train` picks it from the TF_CONFIG environment variable (kdem_tf.training.devices.make_strategy):
MultiWorkerMirroredStrategy when TF_CONFIG names a cluster, else MirroredStrategy over this machine's
devices. The platform sets TF_CONFIG (Vertex AI on each replica of a multi-worker training job:
pipeline/kubeflow_v2_runner.py --workers N); `check_cluster` first compares it with the pipeline's
worker count, so a job configured for N workers never trains silently on one. Only the chief
exports the SavedModel; the other workers return after the last step.
"""
from __future__ import annotations

import json
import os
import time

from absl import logging


def examples_uri(file_patterns) -> str:
    """The Examples artifact uri from a split's file pattern (`URI/Split-train/*`)."""
    pattern = file_patterns[0] if isinstance(file_patterns, (list, tuple)) else file_patterns
    return os.path.dirname(os.path.dirname(pattern.rstrip("/")))


class ClusterMismatchError(RuntimeError):
    """TF_CONFIG does not describe the cluster the pipeline was compiled for."""


def check_cluster(workers: int, tf_config_text: str) -> bool:
    """Checks TF_CONFIG's cluster (chief + worker tasks; none = this process alone) against the
    Trainer's `workers`; returns whether this process is the chief (the chief task, or worker 0
    of a cluster without one). Raises ClusterMismatchError naming both counts."""
    try:
        tf_config = json.loads(tf_config_text or "{}")
    except json.JSONDecodeError as error:
        raise ClusterMismatchError(f"TF_CONFIG is not valid JSON ({error}): {tf_config_text[:200]!r}") from None
    cluster = tf_config.get("cluster") or {}
    tasks = len(cluster.get("chief", [])) + len(cluster.get("worker", [])) or 1
    if tasks != workers:
        raise ClusterMismatchError(
            f"the Trainer's custom_config asks for {workers} training worker(s) but TF_CONFIG names "
            f"{tasks} (chief + worker tasks of {sorted(cluster) or 'no cluster'}): run it where the platform "
            f"starts {workers} replicas (pipeline/kubeflow_v2_runner.py --workers) or compile with --workers {tasks}")
    task = tf_config.get("task") or {}
    if not cluster or task.get("type") == "chief":
        return True
    return "chief" not in cluster and task.get("type") == "worker" and int(task.get("index", 0)) == 0


def run_fn(fn_args) -> None:
    from kdem_tf import config as config_lib
    from kdem_tf import train as train_lib
    from kdem_tf.artifacts import LOGS_DIR, TRAIN_SUMMARY_FILE, atomic_write_text
    from serving.export import run_folder, saved_model

    custom = dict(fn_args.custom_config or {})
    config = config_lib.load_config(custom.get("preset", "demo"), custom.get("config_path") or None,
                                    list(custom.get("overrides") or ()))
    is_chief = check_cluster(int(custom.get("workers", 1)), os.environ.get("TF_CONFIG", ""))
    data_dir = examples_uri(fn_args.train_files)
    run_dir = fn_args.model_run_dir
    logging.info("run_fn: training %s (preset %s) on %s for %s steps; run folder %s", custom.get("dataset"),
                 custom.get("preset"), data_dir, fn_args.train_steps or "the preset's", run_dir)
    summary = train_lib.train(config, custom["dataset"], data_dir, run_dir,
                              max_steps=fn_args.train_steps or None, log_dir=os.path.join(run_dir, LOGS_DIR),
                              verbose=int(custom.get("verbose", 2)))
    if not is_chief:
        logging.info("run_fn: %d steps done on a non-chief worker; the chief exports the model", summary.get("steps", -1))
        return
    started = time.perf_counter()
    model, run_info = run_folder.load_run(run_dir)
    saved_model.export_saved_model(model, run_folder.run_contract(run_dir, run_info), fn_args.serving_model_dir,
                                   extra_info={"dataset": custom["dataset"], "preset": custom.get("preset"),
                                               "steps": summary.get("steps"),
                                               "num_classes": run_info.get("num_classes")})
    summary["seconds"]["export"] = round(time.perf_counter() - started, 2)
    print(f"SavedModel export {summary['seconds']['export']:.0f} s", flush=True)
    atomic_write_text(os.path.join(run_dir, TRAIN_SUMMARY_FILE), json.dumps(summary, indent=2, default=str))
    logging.info("run_fn: %d steps, SavedModel at %s, TensorBoard logs at %s", summary.get("steps", -1),
                 fn_args.serving_model_dir, os.path.join(run_dir, LOGS_DIR))
