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
import json
import os
import sys
import time
from typing import Optional, Sequence

import numpy as np

from kdem_tf import config as config_lib
from kdem_tf.image_contract import ImageContract
from kdem_tf.train_utils import (TrainingError, atomic_write_text, choose_mixed_precision, choose_jit,
                                 make_strategy, latest_checkpoint, save_checkpoint, read_json,
                                 resume_history, write_history, PhaseTimes, RunProgress, SHOWN_METRICS,
                                 kill_self, sigkill_step)

FIRST_STEP = "first step (tracing)"  # the PhaseTimes key of the traced first step


def build_models(config, num_classes: int, row: dict, strategy):
    """(train_model, inference_model) for the config's ablation row, under the strategy's scope."""
    from kdem_tf.model.model import build_kdem_models

    weights = None if config.model.backbone_weights in ("none", "", None) else config.model.backbone_weights
    with strategy.scope():
        train_model, inference_model = build_kdem_models(
            num_classes=num_classes, image_size=config.data.image_size, kdem=row["kdem"],
            non_local=config.model.non_local, non_local_subsample=config.model.non_local_subsample,
            non_local_inner_channels=config.model.non_local_inner_channels, backbone=config.model.backbone,
            fused_batch_norm=config.model.fused_batch_norm, gem=config.model.gem, bn_neck=config.model.bn_neck,
            shared_fc=config.model.shared_fc, fc_units=config.model.fc_units, mlp_units=config.model.mlp_units,
            last_stride=config.model.last_stride, backbone_weights=weights, width=config.model.width,
            stage_blocks=config.model.stage_blocks)
    return train_model, inference_model


def train(config: config_lib.TrainConfig, dataset: str, data_dir: str, run_dir: str,
          max_steps: Optional[int] = None, log_dir: Optional[str] = None, verbose: int = 1,
          return_models: bool = False) -> dict:
    """Trains (or resumes) a run. Returns a summary dict (steps, epochs, last metrics, paths).

    Args:
        config: the resolved TrainConfig.
        dataset: "sysu", "regdb", "llcm" or "manifest" (recorded; selects the evaluation protocol).
        data_dir: preprocessing output (our layout or a TFX Examples artifact uri).
        run_dir: the run folder (created; resumed when it holds checkpoints).
        max_steps: cap on total optimizer steps (TFX TrainArgs.num_steps); None: the schedule.
        log_dir: TensorBoard folder (default RUN_DIR/logs).
        verbose: 0 silent; 1 a Keras progress bar per epoch (the CLI); 2 one line per epoch (logs:
            the TFX Trainer); 3 one progress bar for the whole run (the demo's console).
        return_models: add "train_model" and "inference_model" to the result.
    """
    import tensorflow as tf
    import keras
    from kdem_tf.data import input_pipeline
    from kdem_tf.model.optim import build_optimizer
    from kdem_tf.model.trainer import ABLATION_ROWS, KDEMTrainer

    times = PhaseTimes()
    started = times.clock()
    kill_at_step = sigkill_step()  # None unless a resume test injects a crash
    os.makedirs(run_dir, exist_ok=True)
    log_dir = log_dir or os.path.join(run_dir, "logs")
    keras.utils.set_random_seed(config.seed)
    policy = choose_mixed_precision(config.mixed_precision)
    keras.mixed_precision.set_global_policy(policy)
    strategy = make_strategy()
    replicas = strategy.num_replicas_in_sync
    is_chief = _is_chief(strategy)

    contract = ImageContract.from_config(config)  # the one contract of this run
    split = input_pipeline.load_split(data_dir, "train")
    num_classes = input_pipeline.num_classes(split)
    info_path = os.path.join(run_dir, "run_info.json")
    previous = read_json(info_path)
    if previous and previous.get("num_classes") != num_classes:
        raise TrainingError(f"{run_dir}: the run was started with {previous.get('num_classes')} classes but "
                            f"{data_dir} has {num_classes}; use a new --out folder for different data")
    row = ABLATION_ROWS[config.loss.ablation]
    train_model, inference_model = build_models(config, num_classes, row, strategy)

    sampler = input_pipeline.IdentitySampler(split.labels, split.modalities, config.data.num_identities,
                                             config.data.num_instances, config.seed)
    steps_per_epoch = config.optim.steps_per_epoch or sampler.batches_per_epoch
    total_steps = config.optim.epochs * steps_per_epoch
    if max_steps is not None:
        total_steps = min(total_steps, int(max_steps))
    with strategy.scope():
        setup = build_optimizer(base_lr=config.optim.base_lr, backbone_lr=config.optim.backbone_lr,
                                momentum=config.optim.momentum, nesterov=config.optim.nesterov,
                                weight_decay=config.optim.weight_decay, warmup_epochs=config.optim.warmup_epochs,
                                milestones=config.optim.milestones, steps_per_epoch=steps_per_epoch)
        trainer = KDEMTrainer(train_model, loss_weights=(config.loss.id_weight, config.loss.wrt_weight,
                                                         config.loss.div_weight, config.loss.con_weight),
                              use_diversity_loss=row["use_diversity_loss"],
                              use_consistency_loss=row["use_consistency_loss"],
                              backbone_lr_scale=setup.backbone_lr_scale, weight_decay=setup.weight_decay)
        trainer.compile(optimizer=setup.optimizer, jit_compile=choose_jit(config.jit_compile))
        setup.optimizer.build(trainer.trainable_variables)
        # The metrics' running means too: an epoch cut by --max-steps resumes its means.
        checkpoint = tf.train.Checkpoint(model=train_model, optimizer=setup.optimizer, epoch_metrics={
            tracker.name: list(tracker.variables) for tracker in trainer.metrics})

    ckpt_dir = os.path.join(run_dir, "checkpoints")
    history_path = os.path.join(run_dir, "history.jsonl")
    latest = latest_checkpoint(ckpt_dir)
    if latest:
        checkpoint.read(latest["prefix"]).assert_existing_objects_matched()
        if verbose:
            print(f"resumed from {latest['prefix']} (epoch {latest['epoch']}, step {int(setup.optimizer.iterations.numpy())})")
    history = resume_history(latest, history_path) if is_chief else []
    step = int(setup.optimizer.iterations.numpy())
    if is_chief:
        atomic_write_text(os.path.join(run_dir, "config.yaml"), config_lib.to_yaml(config))
        contract.save(run_dir)
        atomic_write_text(info_path, json.dumps({
            "dataset": dataset, "data_dir": data_dir, "num_classes": num_classes,
            "image_size": list(contract.image_size), "image_contract": contract.to_dict(),
            "embedding_dim": int(inference_model.output["embedding"].shape[-1]),
            "steps_per_epoch": steps_per_epoch, "total_steps": total_steps, "replicas": replicas,
            "mixed_precision": policy, "ablation": config.loss.ablation}, indent=2))

    def replica_dataset(context, start_step: int = 0):
        # One whole P×K batch per element; each input pipeline draws its own batches and
        # hands one to each of its replicas per step, so it has drawn step * that many.
        pipeline_seed = config.seed + 1000 * context.input_pipeline_id
        replicas_per_pipeline = max(1, context.num_replicas_in_sync // max(1, context.num_input_pipelines))
        dataset, _ = input_pipeline.train_dataset(
            split, config.data.image_size, config.data.num_identities, config.data.num_instances, 1,
            pipeline_seed, start_batch=start_step * replicas_per_pipeline, erasing=config.data.random_erasing,
            channel_augmentation=config.data.channel_augmentation, contract=contract)
        return dataset

    iterator = iter(strategy.distribute_datasets_from_function(
        lambda context, start_step=step: replica_dataset(context, start_step)))
    distributed_step = make_distributed_step(strategy, trainer)

    writer = tf.summary.create_file_writer(log_dir) if is_chief else tf.summary.create_noop_writer()
    metrics = {}
    epoch = -(-step // steps_per_epoch)  # epochs begun; the last one may be partial
    times.since("setup", started)  # up to here: models, optimizer, data, run folder (not the evaluation below)
    if config.eval_every and step == 0 and is_chief:
        # Epoch 0: the untrained model, the reference for what training achieved.
        with times("evaluations"):
            record = {"epoch": 0, "step": 0, "eval": _evaluate(inference_model, dataset, data_dir,
                                                               contract, verbose, "untrained ")}
        _write_eval_summaries(writer, 0, record["eval"])
        history = [record]
        write_history(history_path, history)
    run_bar = RunProgress(total_steps, step, config.optim.epochs) if verbose == 3 else None
    while step < total_steps:
        if step % steps_per_epoch == 0:  # a new epoch; a partial one goes on with its restored means
            for tracker in trainer.metrics:
                tracker.reset_state()
            epoch += 1
        steps_now = min(steps_per_epoch - step % steps_per_epoch, total_steps - step)
        # The trainer's metrics are running means already: show them as they are.
        # verbose 1: a progress bar per epoch; 2 (logs, the TFX Trainer): one line per epoch, at its
        # end; 3 (the demo): one progress bar for the whole run, evaluation lines above it.
        bar = keras.utils.Progbar(steps_now, stateful_metrics=[m.name for m in trainer.metrics],
                                  verbose=1, unit_name="step") if verbose == 1 else None
        if verbose == 1:
            print(f"epoch {epoch}/{config.optim.epochs}")
        started = time.time()
        for done in range(1, steps_now + 1):
            # The first call traces the step function: timed apart from the others.
            with times(FIRST_STEP if FIRST_STEP not in times.seconds else "steps"):
                metrics = {k: float(v) for k, v in distributed_step(next(iterator)).items()}
            if not np.isfinite(metrics["loss"]):
                raise TrainingError(f"loss became {metrics['loss']} at step {step + 1} (epoch {epoch}); "
                                    f"no checkpoint was written for this epoch. Lower optim.base_lr/backbone_lr, "
                                    f"check the data, or resume from {ckpt_dir}")
            step += 1
            if step == kill_at_step:
                kill_self()
            if bar:
                bar.update(done, values=[(k, metrics[k]) for k in SHOWN_METRICS if k in metrics])
            if run_bar:
                run_bar.update(epoch, metrics)
        seconds = time.time() - started
        if verbose == 2:
            print(f"epoch {epoch}/{config.optim.epochs} {seconds:.0f}s " + " ".join(
                f"{k} {metrics[k]:.4g}" for k in SHOWN_METRICS if k in metrics), flush=True)
        lr = float(setup.optimizer.learning_rate)  # the schedule's value at the current step
        record = {"epoch": epoch, "step": step, "seconds": round(seconds, 2), "lr": lr, **metrics}
        with writer.as_default(step=step):
            for k, v in metrics.items():
                tf.summary.scalar(f"train/{k}", v)
            tf.summary.scalar("train/learning_rate", lr)
        if config.eval_every and (epoch % config.eval_every == 0 or step >= total_steps) and is_chief:
            with times("evaluations"):
                record["eval"] = _evaluate(inference_model, dataset, data_dir, contract, verbose,
                                           write=run_bar.write if run_bar else print)
            _write_eval_summaries(writer, step, record["eval"])
        # An epoch completed after a resume replaces the record of its first, partial part.
        history = [r for r in history if r["epoch"] != epoch] + [record]
        if epoch % max(1, config.checkpoint_every) == 0 or step >= total_steps:
            with times("checkpoints"):
                save_checkpoint(checkpoint, ckpt_dir, epoch, step, is_chief, history)
        # Between checkpoints history.jsonl runs ahead of the latest checkpoint; a resume rebuilds it
        # from the checkpoint (resume_history) and trains those epochs again, so the two stay consistent.
        if is_chief:
            write_history(history_path, history)
    if run_bar:
        run_bar.close()
    writer.flush()

    if is_chief:
        with times("final save"):
            _save_inference_model(inference_model, os.path.join(run_dir, "inference_model.keras"))
            if "influence_factors" in train_model.output:
                np.save(os.path.join(run_dir, "influence_factors.npy"),
                        _influence_factors(train_model, replica_dataset(tf.distribute.InputContext(), 0)))
    if verbose:
        print(times.summary(), flush=True)
    result = {"run_dir": run_dir, "steps": step, "epochs": epoch, "metrics": metrics, "num_classes": num_classes,
              "replicas": replicas, "mixed_precision": policy, "seconds": times.as_dict()}
    if return_models:
        result.update(train_model=train_model, inference_model=inference_model)
    return result


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
    tmp = path + ".tmp.keras"
    model.save(tmp)
    os.replace(tmp, path)


def _influence_factors(train_model, dataset, batches: int = 8) -> np.ndarray:
    values = []
    for inputs, _ in dataset.take(batches):
        values.append(train_model(inputs, training=False)["influence_factors"].numpy()[:, 0])
    return np.concatenate(values)


def _evaluate(inference_model, dataset: str, data_dir: str, contract, verbose: int, label: str = "",
              write=print) -> dict:
    from kdem_tf.record_evaluation import evaluate_keras_model

    result = evaluate_keras_model(inference_model, dataset, data_dir, contract)
    if verbose:
        write(f"{label}eval: " + ", ".join(f"{k} {v:.2f}" for k, v in result.items() if isinstance(v, float)))
    return result


def _write_eval_summaries(writer, step: int, result: dict) -> None:
    import tensorflow as tf

    with writer.as_default(step=step):
        for k, v in result.items():
            if isinstance(v, (int, float)):
                tf.summary.scalar(f"eval/{k}", v)


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train KDEM on preprocessed TFRecords.")
    from kdem_tf.data.schema import DATASETS

    parser.add_argument("--dataset", choices=DATASETS)
    parser.add_argument("--data", help="preprocessing output folder (kdem_tf.data.preprocess)")
    parser.add_argument("--out", help="run folder (resumed when it holds checkpoints)")
    parser.add_argument("--preset", default="paper", choices=sorted(config_lib.PRESETS))
    parser.add_argument("--config", help="YAML file over the preset")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one value, e.g. --set optim.epochs=40 (repeatable)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--ablation", choices=["baseline", "kdem", "kdem_div", "kdem_con", "full"])
    parser.add_argument("--backbone", choices=["torchvision", "keras"],
                        help="ResNet-50 v1.5 as torchvision (AGW) or v1 as keras.applications")
    parser.add_argument("--backbone-weights",
                        help='"torchvision" (download), "imagenet" (Keras\' download), a weights file '
                             '(.safetensors / .pth: torchvision; .h5: Keras), or "none"')
    parser.add_argument("--mixed-precision", choices=["auto", "float32", "mixed_bfloat16", "mixed_float16"])
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved configuration and its image contract as YAML, and exit")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if not args.print_config:
        missing = [f"--{name}" for name in ("dataset", "data", "out") if getattr(args, name) is None]
        if missing:
            parser.error(f"the following arguments are required: {', '.join(missing)}")
    return args


def _overrides(args: argparse.Namespace) -> list:
    overrides = list(args.set)
    for flag, key in (("epochs", "optim.epochs"), ("ablation", "loss.ablation"), ("backbone", "model.backbone"),
                      ("backbone_weights", "model.backbone_weights"), ("mixed_precision", "mixed_precision")):
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
