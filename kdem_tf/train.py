"""Train KDEM: `python -m kdem_tf.train --dataset sysu --data TFRECORD_DIR --out RUN_DIR`.

One custom loop serves every `tf.distribute` strategy: `MirroredStrategy` over the
local devices by default and `MultiWorkerMirroredStrategy` when `TF_CONFIG` is set
(Keras 3 `fit()` fails under multi-worker, keras-team/keras#20585). Each replica
gets a whole P×K batch, so triplets are mined within a replica.

Run folder::

    RUN_DIR/config.yaml            the resolved config
    RUN_DIR/run_info.json          dataset, num_classes, image_size, image_contract, embedding_dim, steps
    RUN_DIR/image_contract.json    the image contract (size, resize, normalisation) every later stage reads
    RUN_DIR/history.jsonl          one line of metrics per epoch (and evaluation results; with
                                   evaluation on, an "epoch": 0 line evaluates the untrained model)
    RUN_DIR/checkpoints/           epoch-EEEE-step-SSSSSSSS/ folders (variables + the history up
                                   to them) + latest.json (written atomically)
    RUN_DIR/logs/                  TensorBoard
    RUN_DIR/inference_model.keras  the inference model, saved at the end
    RUN_DIR/influence_factors.npy  mi_v of the final model on training pairs

Kill it at any point and start the same command again: it resumes from the last
complete checkpoint and finishes the schedule, and on a CPU with the same seeds the result
is the uninterrupted run's bit for bit (tests/training/test_resume.py). What makes it so:

* sampling and augmentation depend only on (seed, global batch number): the resumed input
  pipeline starts at the batch the optimizer's step count says (`IdentitySampler.pairs`);
* the checkpoint holds every piece of state a step reads or writes: model variables (BN
  moving statistics included), the optimizer's iterations (the LR schedule's step) and
  momentum slots, and the running means of the epoch's metrics (so an epoch cut by
  --max-steps and completed after the resume logs the same means); the model has no
  stateful random ops (no dropout, no SeedGenerator), the augmentation is stateless;
* epochs are counted from the step (epoch = ceil(step / steps_per_epoch)), not from the
  number of loop turns, so a resume after a partial epoch completes that same epoch;
* the history is committed with the checkpoint: each checkpoint folder carries every
  history record up to it, and RUN_DIR/history.jsonl is a copy rewritten atomically after
  latest.json moves and rebuilt from the checkpoint on resume (see `save_checkpoint`).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Optional, Sequence

import numpy as np

from kdem_tf import config as config_lib
from kdem_tf.image_contract import ImageContract
from kdem_tf.artifacts import (CHECKPOINTS_DIR, CONFIG_FILE, HISTORY_FILE, INFERENCE_MODEL_FILE, INFLUENCE_FACTORS_FILE,
                               LOGS_DIR, RUN_INFO_FILE, atomic_write_text, publish_folder)
from kdem_tf.training import TrainingError
from kdem_tf.training.checkpointing import latest_checkpoint, read_json, save_checkpoint
from kdem_tf.training.devices import choose_jit, choose_mixed_precision, make_strategy
from kdem_tf.training.fault_injection import kill_self, sigkill_step
from kdem_tf.training.models import build_models
from kdem_tf.training.progress import SHOWN_METRICS, PhaseTimes, RunProgress
from kdem_tf.training.run_history import resume_history, write_history

FIRST_STEP = "first step (tracing)"  # the PhaseTimes key of the traced first step


@dataclasses.dataclass
class _Run:
    """What a training run holds between its phases (`train` builds it in `_start_run`)."""
    config: config_lib.TrainConfig
    dataset: str
    data_dir: str
    run_dir: str
    verbose: int
    policy: str
    strategy: object
    is_chief: bool
    contract: ImageContract
    split: object
    num_classes: int
    train_model: object
    inference_model: object
    optimizer_setup: object
    trainer: object
    checkpoint: object
    steps_per_epoch: int
    total_steps: int
    step: int
    history: list

    @property
    def ckpt_dir(self) -> str:
        return os.path.join(self.run_dir, CHECKPOINTS_DIR)

    @property
    def history_path(self) -> str:
        return os.path.join(self.run_dir, HISTORY_FILE)


def train(config: config_lib.TrainConfig, dataset: str, data_dir: str, run_dir: str,
          max_steps: Optional[int] = None, log_dir: Optional[str] = None, verbose: int = 1,
          return_models: bool = False) -> dict:
    """Trains (or resumes) a run. Returns a summary dict (steps, epochs, last metrics, paths).

    Args:
        config: the resolved TrainConfig.
        dataset: "sysu", "regdb", "llcm" or "manifest" (recorded; selects the evaluation protocol).
        data_dir: preprocessing output (our layout or a TFX Examples uri).
        run_dir: the run folder (created; resumed when it holds checkpoints).
        max_steps: cap on total optimizer steps (TFX TrainArgs.num_steps); None: the schedule.
        log_dir: TensorBoard folder (default RUN_DIR/logs).
        verbose: 0 silent; 1 a Keras progress bar per epoch (the CLI); 2 one line per epoch (logs:
            the TFX Trainer); 3 one progress bar for the whole run (the demo's console).
        return_models: add "train_model" and "inference_model" to the result.
    """
    import tensorflow as tf

    times = PhaseTimes()
    started = times.clock()
    kill_at_step = sigkill_step()  # None unless a resume test injects a crash
    os.makedirs(run_dir, exist_ok=True)
    run = _start_run(config, dataset, data_dir, run_dir, max_steps, verbose)
    iterator = iter(run.strategy.distribute_datasets_from_function(
        lambda context, start_step=run.step: _replica_dataset(run, context, start_step)))
    distributed_step = make_distributed_step(run.strategy, run.trainer)
    writer = (tf.summary.create_file_writer(log_dir or os.path.join(run_dir, LOGS_DIR)) if run.is_chief
              else tf.summary.create_noop_writer())
    times.since("setup", started)  # up to here: models, optimizer, data, run folder (not the evaluation below)
    if config.eval_every and run.step == 0 and run.is_chief:
        # Epoch 0: the untrained model, the reference for what training achieved.
        with times("evaluations"):
            record = {"epoch": 0, "step": 0, "eval": _evaluate(run, "untrained ")}
        _write_eval_summaries(writer, 0, record["eval"])
        run.history = [record]
        write_history(run.history_path, run.history)
    run_bar = RunProgress(run.total_steps, run.step, config.optim.epochs) if verbose == 3 else None
    metrics = {}
    epoch = -(-run.step // run.steps_per_epoch)  # epochs begun; the last one may be partial
    while run.step < run.total_steps:
        if run.step % run.steps_per_epoch == 0:  # a new epoch; a partial one goes on with its restored means
            for tracker in run.trainer.metrics:
                tracker.reset_state()
            epoch += 1
        started = time.time()
        metrics = _train_epoch(run, epoch, iterator, distributed_step, times, run_bar, kill_at_step)
        _end_epoch(run, epoch, metrics, time.time() - started, writer, times, run_bar)
    if run_bar:
        run_bar.close()
    writer.flush()
    if run.is_chief:
        with times("final save"):
            _save_final(run)
    if verbose:
        print(times.summary(), flush=True)
    result = {"run_dir": run_dir, "steps": run.step, "epochs": epoch, "metrics": metrics,
              "num_classes": run.num_classes, "replicas": run.strategy.num_replicas_in_sync,
              "mixed_precision": run.policy, "seconds": times.as_dict()}
    if return_models:
        result.update(train_model=run.train_model, inference_model=run.inference_model)
    return result


def _start_run(config, dataset: str, data_dir: str, run_dir: str, max_steps: Optional[int], verbose: int) -> _Run:
    """Seeds, precision, strategy, data, models, optimizer and checkpoint; restores the latest
    checkpoint of the run folder; writes the run's config, contract and run_info (chief)."""
    import keras
    from kdem_tf.data import input_pipeline
    from kdem_tf.architecture import ABLATION_ROWS

    keras.utils.set_random_seed(config.seed)
    policy = choose_mixed_precision(config.mixed_precision)
    keras.mixed_precision.set_global_policy(policy)
    strategy = make_strategy()
    contract = ImageContract.from_config(config)  # the one contract of this run
    split = input_pipeline.load_split(data_dir, "train")
    num_classes = input_pipeline.num_classes(split)
    info_path = os.path.join(run_dir, RUN_INFO_FILE)
    previous = read_json(info_path)
    if previous and previous.get("num_classes") != num_classes:
        raise TrainingError(f"{run_dir}: the run was started with {previous.get('num_classes')} classes but "
                            f"{data_dir} has {num_classes}; use a new --out folder for different data")
    row = ABLATION_ROWS[config.loss.ablation]
    train_model, inference_model = build_models(config, num_classes, row, strategy)
    if config.model.init_from not in (None, "none", "") and not latest_checkpoint(os.path.join(run_dir, "checkpoints")):
        from kdem_tf.model.init_from import init_from  # --init-from: earlier weights, for a fresh start only
        message = init_from(config.model.init_from, train_model, contract)
        if verbose:
            print(message)
    sampler = input_pipeline.IdentitySampler(split.labels, split.modalities, config.data.num_identities,
                                             config.data.num_instances, config.seed)
    steps_per_epoch = config.optim.steps_per_epoch or sampler.batches_per_epoch
    total_steps = config.optim.epochs * steps_per_epoch
    if max_steps is not None:
        total_steps = min(total_steps, int(max_steps))
    optimizer_setup, trainer, checkpoint = _build_trainer(config, row, train_model, strategy, steps_per_epoch)
    run = _Run(config=config, dataset=dataset, data_dir=data_dir, run_dir=run_dir, verbose=verbose, policy=policy,
               strategy=strategy, is_chief=_is_chief(strategy), contract=contract, split=split,
               num_classes=num_classes, train_model=train_model, inference_model=inference_model,
               optimizer_setup=optimizer_setup, trainer=trainer, checkpoint=checkpoint,
               steps_per_epoch=steps_per_epoch, total_steps=total_steps, step=0, history=[])
    latest = latest_checkpoint(run.ckpt_dir)
    if latest:
        checkpoint.read(latest["prefix"]).assert_existing_objects_matched()
        if verbose:
            print(f"resumed from {latest['prefix']} (epoch {latest['epoch']}, "
                  f"step {int(optimizer_setup.optimizer.iterations.numpy())})")
    run.history = resume_history(latest, run.history_path) if run.is_chief else []
    run.step = int(optimizer_setup.optimizer.iterations.numpy())
    if run.is_chief:
        _write_run_files(run, info_path)
    return run


def _build_trainer(config, row: dict, train_model, strategy, steps_per_epoch: int):
    """(optimizer setup, compiled KDEMTrainer, tf.train.Checkpoint of every state a step touches)."""
    import tensorflow as tf
    from kdem_tf.model.optim import build_optimizer
    from kdem_tf.model.trainer import KDEMTrainer

    optim, loss = config.optim, config.loss
    with strategy.scope():
        setup = build_optimizer(base_lr=optim.base_lr, backbone_lr=optim.backbone_lr, momentum=optim.momentum,
                                nesterov=optim.nesterov, weight_decay=optim.weight_decay,
                                warmup_epochs=optim.warmup_epochs, milestones=optim.milestones,
                                steps_per_epoch=steps_per_epoch)
        trainer = KDEMTrainer(train_model, loss_weights=(loss.id_weight, loss.wrt_weight, loss.div_weight,
                                                         loss.con_weight),
                              use_diversity_loss=row["use_diversity_loss"],
                              use_consistency_loss=row["use_consistency_loss"],
                              con_detach_factors=loss.con_detach_factors,
                              backbone_lr_scale=setup.backbone_lr_scale, weight_decay=setup.weight_decay)
        trainer.compile(optimizer=setup.optimizer, jit_compile=choose_jit(config.jit_compile))
        setup.optimizer.build(trainer.trainable_variables)
        # The metrics' running means too: an epoch cut by --max-steps resumes its means.
        checkpoint = tf.train.Checkpoint(model=train_model, optimizer=setup.optimizer, epoch_metrics={
            tracker.name: list(tracker.variables) for tracker in trainer.metrics})
    return setup, trainer, checkpoint


def _write_run_files(run: _Run, info_path: str) -> None:
    """RUN_DIR/config.yaml, image_contract.json and run_info.json (atomic writes)."""
    atomic_write_text(os.path.join(run.run_dir, CONFIG_FILE), config_lib.to_yaml(run.config))
    run.contract.save(run.run_dir)
    atomic_write_text(info_path, json.dumps({
        "dataset": run.dataset, "data_dir": run.data_dir, "num_classes": run.num_classes,
        "image_size": list(run.contract.image_size), "image_contract": run.contract.to_dict(),
        "embedding_dim": int(run.inference_model.output["embedding"].shape[-1]),
        "steps_per_epoch": run.steps_per_epoch, "total_steps": run.total_steps,
        "replicas": run.strategy.num_replicas_in_sync, "mixed_precision": run.policy,
        "ablation": run.config.loss.ablation}, indent=2))


def _replica_dataset(run: _Run, context, start_step: int = 0):
    """One whole P×K batch per element; each input pipeline draws its own batches and hands one to
    each of its replicas per step, so it has drawn step * that many."""
    from kdem_tf.data import input_pipeline

    data = run.config.data
    pipeline_seed = run.config.seed + 1000 * context.input_pipeline_id
    replicas_per_pipeline = max(1, context.num_replicas_in_sync // max(1, context.num_input_pipelines))
    dataset, _ = input_pipeline.train_dataset(
        run.split, data.image_size, data.num_identities, data.num_instances, 1, pipeline_seed,
        start_batch=start_step * replicas_per_pipeline, erasing=data.random_erasing,
        channel_augmentation=data.channel_augmentation, contract=run.contract)
    return dataset


def _train_epoch(run: _Run, epoch: int, iterator, distributed_step, times: PhaseTimes, run_bar,
                 kill_at_step: Optional[int]) -> dict:
    """The steps of one epoch (the rest of it after a resume, or up to --max-steps); returns the
    trainer's metrics after its last step (running means of the epoch)."""
    import keras

    steps_now = min(run.steps_per_epoch - run.step % run.steps_per_epoch, run.total_steps - run.step)
    # The trainer's metrics are running means already: show them as they are.
    # verbose 1: a progress bar per epoch; 2 (logs, the TFX Trainer): one line per epoch, at its
    # end; 3 (the demo): one progress bar for the whole run, evaluation lines above it.
    bar = keras.utils.Progbar(steps_now, stateful_metrics=[m.name for m in run.trainer.metrics],
                              verbose=1, unit_name="step") if run.verbose == 1 else None
    if run.verbose == 1:
        print(f"epoch {epoch}/{run.config.optim.epochs}")
    metrics = {}
    for done in range(1, steps_now + 1):
        # The first call traces the step function: timed apart from the others.
        with times(FIRST_STEP if FIRST_STEP not in times.seconds else "steps"):
            metrics = {k: float(v) for k, v in distributed_step(next(iterator)).items()}
        if not np.isfinite(metrics["loss"]):
            raise TrainingError(f"loss became {metrics['loss']} at step {run.step + 1} (epoch {epoch}); "
                                f"no checkpoint was written for this epoch. Lower optim.base_lr/backbone_lr, "
                                f"check the data, or resume from {run.ckpt_dir}")
        run.step += 1
        if run.step == kill_at_step:
            kill_self()
        if bar:
            bar.update(done, values=[(k, metrics[k]) for k in SHOWN_METRICS if k in metrics])
        if run_bar:
            run_bar.update(epoch, metrics)
    return metrics


def _end_epoch(run: _Run, epoch: int, metrics: dict, seconds: float, writer, times: PhaseTimes, run_bar) -> None:
    """The epoch's record: its line (verbose 2), TensorBoard scalars, the periodic evaluation, the
    history and, every `checkpoint_every` epochs and at the end, a checkpoint."""
    import tensorflow as tf

    config, finished = run.config, run.step >= run.total_steps
    if run.verbose == 2:
        print(f"epoch {epoch}/{config.optim.epochs} {seconds:.0f}s " + " ".join(
            f"{k} {metrics[k]:.4g}" for k in SHOWN_METRICS if k in metrics), flush=True)
    lr = float(run.optimizer_setup.optimizer.learning_rate)  # the schedule's value at the current step
    record = {"epoch": epoch, "step": run.step, "seconds": round(seconds, 2), "lr": lr, **metrics}
    with writer.as_default(step=run.step):
        for k, v in metrics.items():
            tf.summary.scalar(f"train/{k}", v)
        tf.summary.scalar("train/learning_rate", lr)
    if config.eval_every and (epoch % config.eval_every == 0 or finished) and run.is_chief:
        with times("evaluations"):
            record["eval"] = _evaluate(run, write=run_bar.write if run_bar else print)
        _write_eval_summaries(writer, run.step, record["eval"])
    # An epoch completed after a resume replaces the record of its first, partial part.
    run.history = [r for r in run.history if r["epoch"] != epoch] + [record]
    if epoch % max(1, config.checkpoint_every) == 0 or finished:
        with times("checkpoints"):
            save_checkpoint(run.checkpoint, run.ckpt_dir, epoch, run.step, run.is_chief, run.history)
    # Between checkpoints history.jsonl runs ahead of the latest checkpoint; a resume rebuilds it
    # from the checkpoint (resume_history) and trains those epochs again, so the two stay consistent.
    if run.is_chief:
        write_history(run.history_path, run.history)


def _save_final(run: _Run) -> None:
    """RUN_DIR/inference_model.keras and, with KDEM, influence_factors.npy (mi_v on training pairs)."""
    import tensorflow as tf

    _save_inference_model(run.inference_model, os.path.join(run.run_dir, INFERENCE_MODEL_FILE))
    if "influence_factors" in run.train_model.output:
        np.save(os.path.join(run.run_dir, INFLUENCE_FACTORS_FILE),
                _influence_factors(run.train_model, _replica_dataset(run, tf.distribute.InputContext(), 0)))


def make_distributed_step(strategy, trainer):
    """A tf.function running `trainer.train_step` on every replica's batch; metrics averaged.

    The trainer divides its loss by the number of replicas and gradients are summed,
    so N replicas with one P×K batch each take the step of the mean loss.
    """
    import tensorflow as tf

    @tf.function(jit_compile=False)
    def distributed_step(batch):
        results = strategy.run(trainer.train_step, args=(batch,))
        return {k: strategy.reduce("MEAN", v, axis=None) for k, v in results.items()}

    return distributed_step


def _is_chief(strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    return resolver.task_type in ("chief", None) or (resolver.task_type == "worker" and resolver.task_id == 0)


def _save_inference_model(model, path: str) -> None:
    publish_folder(path, model.save, replace=True)  # a .keras file, whole or not at all


def _influence_factors(train_model, dataset, batches: int = 8) -> np.ndarray:
    values = []
    for inputs, _ in dataset.take(batches):
        values.append(train_model(inputs, training=False)["influence_factors"].numpy()[:, 0])
    return np.concatenate(values)


def _evaluate(run: _Run, label: str = "", write=print) -> dict:
    from kdem_tf.evaluation.records import evaluate_keras_model

    result = evaluate_keras_model(run.inference_model, run.dataset, run.data_dir, run.contract)
    if run.verbose:
        write(f"{label}eval: " + ", ".join(f"{k} {v:.2f}" for k, v in result.items() if isinstance(v, float)))
    return result


def _write_eval_summaries(writer, step: int, result: dict) -> None:
    import tensorflow as tf

    with writer.as_default(step=step):
        for k, v in result.items():
            if isinstance(v, (int, float)):
                tf.summary.scalar(f"eval/{k}", v)


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    from kdem_tf import cli_help, datasets

    parser = cli_help.parser(
        "kdem_tf.train", usage="%(prog)s --dataset NAME --data DIR --out DIR [options]\n       %(prog)s --print-config [options]",
        description=("Train KDEM on preprocessed TFRecords (kdem_tf.data.preprocess). --dataset, --data and --out "
                    "are required unless --print-config. Flags left unset keep the preset's values (see "
                    "--print-config); the flags below override them."),
        epilog=cli_help.presets_help())
    required = dict(default=argparse.SUPPRESS)  # required unless --print-config: checked below
    parser.add_argument("--dataset", choices=datasets.names(), **required,
                        help=cli_help.REQUIRED + "the dataset the TFRecords hold (selects the evaluation protocol)")
    parser.add_argument("--data", **required,
                        help=cli_help.REQUIRED + "preprocessing output folder (kdem_tf.data.preprocess)")
    parser.add_argument("--out", **required, help=cli_help.REQUIRED + "run folder (resumed when it holds checkpoints)")
    parser.add_argument("--preset", default="paper", choices=sorted(config_lib.PRESETS),
                        help="the configuration the other flags override (see the list below)")
    parser.add_argument("--config", help="YAML file over the preset")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one value, e.g. --set optim.epochs=40 (repeatable)")
    parser.add_argument("--epochs", type=int, help="training epochs (optim.epochs); default: the preset's")
    parser.add_argument("--ablation", choices=["baseline", "kdem", "kdem_div", "kdem_con", "full"],
                        help="the loss terms of the paper's ablation rows (loss.ablation); default: the preset's")
    parser.add_argument("--backbone", choices=["torchvision", "keras"],
                        help="ResNet-50 v1.5 as torchvision (AGW) or v1 as keras.applications (model.backbone); "
                             "default: the preset's")
    parser.add_argument("--backbone-weights", metavar="torchvision|imagenet|FILE|none",
                        help='"torchvision" (download; fits --backbone torchvision), "imagenet" (Keras\' '
                             'download; fits --backbone keras), a weights file (.safetensors / .pth: '
                             'torchvision; .h5: Keras), or "none" (random init: the only choice at width < 1, '
                             "e.g. the demo and tiny presets); default: the preset's")
    parser.add_argument("--mixed-precision", choices=["auto", "float32", "mixed_bfloat16", "mixed_float16"],
                        help="compute precision; auto: mixed_float16 on GPUs, mixed_bfloat16 on CPUs with bf16 "
                             "units, else float32; default: the preset's")
    parser.add_argument("--init-from", metavar="RUN_DIR|CHECKPOINT",
                        help="start from a run folder's weights or an AGW checkpoint (the KDEM layer starts fresh)")
    parser.add_argument("--max-steps", type=int,
                        help="stop after this many optimizer steps in all (the schedule is kept); default: the "
                             "whole schedule")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved configuration and its image contract as YAML, and exit")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or per-phase times; the summary only")
    args = parser.parse_args(argv)
    missing = [f"--{name}" for name in ("dataset", "data", "out") if getattr(args, name, None) is None]
    args.__dict__.update({name: getattr(args, name, None) for name in ("dataset", "data", "out")})
    if missing and not args.print_config:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    return args


def _overrides(args: argparse.Namespace) -> list:
    overrides = list(args.set)
    for flag, key in (("epochs", "optim.epochs"), ("ablation", "loss.ablation"), ("backbone", "model.backbone"),
                      ("backbone_weights", "model.backbone_weights"), ("mixed_precision", "mixed_precision"),
                      ("init_from", "model.init_from")):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    return overrides


def resolved_config_yaml(config: config_lib.TrainConfig) -> str:
    """The configuration and the image contract it implies, as YAML (`--print-config`)."""
    import yaml
    from kdem_tf.image_contract import ImageContract

    document = dict(config_lib.to_dict(config), image_contract=ImageContract.from_config(config).to_dict())
    return yaml.safe_dump(document, sort_keys=False)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parse_args(argv)
    try:
        config = config_lib.load_config(args.preset, args.config, _overrides(args))
        if args.print_config:
            print(resolved_config_yaml(config), end="")
            return 0
        weights = config.model.backbone_weights
        if weights not in ("torchvision", "imagenet", "none") and not os.path.exists(weights):
            raise TrainingError(f"--backbone-weights {weights}: no such file")
        from kdem_tf import console

        console.log_beside(os.path.join(args.out, "console.log"))  # library messages of this run
        summary = train(config, args.dataset, args.data, args.out, args.max_steps, verbose=0 if args.quiet else 1)
    except (config_lib.ConfigError, TrainingError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ValueError as error:  # InputError, DatasetError, ContractError and BackboneWeightsError
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in summary.items() if k != "metrics"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
