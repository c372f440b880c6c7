"""The Trainer's module: `run_fn(fn_args)` adapts TFX's arguments to `kdem_tf.train.train`.

Nothing else happens here: the training loop, the config presets and the export are the
library's (`kdem_tf.train`, `kdem_tf.config`, `serving.export`).

    fn_args.train_files[0]    …/Examples/<id>/Split-train/*  → data_dir (the Examples uri)
    fn_args.train_steps       TrainArgs.num_steps            → max_steps (None: the preset's schedule)
    fn_args.model_run_dir     the ModelRun artifact          → run_dir (checkpoints, config.yaml,
                                                                run_info.json, TensorBoard logs/)
    fn_args.serving_model_dir the Model artifact's Format-Serving → the embedder SavedModel
    fn_args.custom_config     {"dataset", "preset", "config_path", "overrides"}
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


def run_fn(fn_args) -> None:
    from kdem_tf import config as config_lib
    from kdem_tf import train as train_lib
    from serving.export import run_folder, saved_model

    custom = dict(fn_args.custom_config or {})
    config = config_lib.load_config(custom.get("preset", "demo"), custom.get("config_path") or None,
                                    list(custom.get("overrides") or ()))
    data_dir = examples_uri(fn_args.train_files)
    run_dir = fn_args.model_run_dir
    logging.info("run_fn: training %s (preset %s) on %s for %s steps; run folder %s", custom.get("dataset"),
                 custom.get("preset"), data_dir, fn_args.train_steps or "the preset's", run_dir)
    summary = train_lib.train(config, custom["dataset"], data_dir, run_dir,
                              max_steps=fn_args.train_steps or None, log_dir=os.path.join(run_dir, "logs"),
                              verbose=int(custom.get("verbose", 2)))
    started = time.perf_counter()
    model, run_info = run_folder.load_run(run_dir)
    saved_model.export_saved_model(model, run_folder.run_contract(run_dir, run_info), fn_args.serving_model_dir,
                                   extra_info={"dataset": custom["dataset"], "preset": custom.get("preset"),
                                               "steps": summary.get("steps"),
                                               "num_classes": run_info.get("num_classes")})
    summary["seconds"]["export"] = round(time.perf_counter() - started, 2)
    print(f"SavedModel export {summary['seconds']['export']:.0f} s", flush=True)
    with open(os.path.join(run_dir, "train_summary.json"), "w") as f:
        json.dump(summary, f, indent=2, default=str)
    logging.info("run_fn: %d steps, SavedModel at %s, TensorBoard logs at %s", summary.get("steps", -1),
                 fn_args.serving_model_dir, os.path.join(run_dir, "logs"))
