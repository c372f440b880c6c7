"""`create_pipeline`: the kdem-tf TFX pipeline, as a pure function of its settings.

    ReidExampleGen ─┬─ StatisticsGen ─┬─ ExampleValidator ── ReidDataCheck ┐ (gate)
                    │  (Import)SchemaGen ┘                                 ▼
                    ├─────────────────────────────────────────────────── Trainer ─┐
                    │        PreviousBlessedModelStrategy Resolver (baseline) ─┐  │
                    └──────────────────────────────────────────────── ReidEvaluator
                                                                             │ blessing
                                                     Pusher (blessed only) ◄─┘
                                                        └─ ReidGalleryIndex (ScaNN)

With the curated schema (ImportSchemaGen, the default) the schema also feeds StatisticsGen, so
the encoded images (`image_domain`) get byte-size statistics rather than string sketches.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

from tfx.types import standard_artifacts

from pipeline import components, tfx_api
from pipeline.configs import PipelineSettings

TRAINER_RUN_FN = "pipeline.trainer_module.run_fn"


def create_pipeline(settings: PipelineSettings, beam_pipeline_args: Sequence[str],
                    metadata_connection_config=None,
                    baseline_strategy=components.PreviousBlessedModelStrategy) -> tfx_api.dsl.Pipeline:
    """Returns the pipeline; builds nothing and touches no file.

    Args:
        settings: resolved settings (`local_runner.resolve_settings`): data_root set,
            fingerprints computed.
        beam_pipeline_args: flags of every Beam-based component (configs.beam_pipeline_args).
        metadata_connection_config: ML Metadata connection; None lets the orchestrator decide
            (Kubeflow/Vertex bring their own).
        baseline_strategy: the Resolver strategy of the evaluator's baseline model. The default
            resolves the last blessed model other than the Trainer's (a cached re-run stays
            cached); Kubeflow v2 compiles only TFX's own strategies, so pipeline/kubeflow_v2_runner.py
            passes LatestBlessedModelStrategy (its resolver runs before the Trainer).
    """
    if not settings.data_root:
        raise ValueError("settings.data_root is empty: resolve the settings first")

    example_gen = components.ReidExampleGen(
        dataset=settings.dataset, data_root=settings.data_root, trial=settings.trial,
        num_shards=settings.num_shards,
        input_fingerprint=settings.data_fingerprint)
    if settings.schema_path:
        # The curated schema also informs the statistics: its image feature (image_domain) gets
        # byte-size statistics instead of string sketches of every image's bytes.
        schema_gen = tfx_api.components.ImportSchemaGen(schema_file=settings.schema_path)
        statistics_gen = tfx_api.components.StatisticsGen(examples=example_gen.outputs["examples"],
                                                          schema=schema_gen.outputs["schema"])
    else:
        statistics_gen = tfx_api.components.StatisticsGen(examples=example_gen.outputs["examples"])
        schema_gen = tfx_api.components.SchemaGen(statistics=statistics_gen.outputs["statistics"],
                                                  infer_feature_shape=True)
    example_validator = tfx_api.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"])
    data_check = components.ReidDataCheck(
        examples=example_gen.outputs["examples"], anomalies=example_validator.outputs["anomalies"],
        dataset=settings.dataset, min_train_identities=_min_train_identities(settings))

    trainer = tfx_api.components.Trainer(
        run_fn=TRAINER_RUN_FN,
        examples=example_gen.outputs["examples"],
        schema=schema_gen.outputs["schema"],
        train_args=tfx_api.proto.TrainArgs(splits=["train"], num_steps=int(settings.train_steps or 0)),
        eval_args=tfx_api.proto.EvalArgs(splits=[settings.query_split], num_steps=0),
        custom_config={"dataset": settings.dataset, "preset": settings.preset,
                       "config_path": settings.train_config or "", "overrides": list(settings.train_overrides),
                       "code_fingerprint": settings.code_fingerprint, "verbose": int(settings.train_verbose),
                       "workers": int(settings.train_workers)})
    trainer.add_upstream_node(data_check)  # a failed data check stops the run before training

    baseline_inputs = dict(model=tfx_api.dsl.Channel(type=standard_artifacts.Model),
                           model_blessing=tfx_api.dsl.Channel(type=standard_artifacts.ModelBlessing))
    if baseline_strategy is components.PreviousBlessedModelStrategy:
        baseline_inputs["current"] = trainer.outputs["model"]  # excluded from the candidates
    baseline = tfx_api.dsl.Resolver(strategy_class=baseline_strategy, **baseline_inputs
                                    ).with_id("previous_blessed_model_resolver")

    evaluator = components.ReidEvaluator(
        examples=example_gen.outputs["examples"], model=trainer.outputs["model"],
        baseline_model=baseline.outputs["model"], dataset=settings.dataset,
        query_split=settings.query_split, gallery_split=settings.gallery_split,
        min_map=float(settings.min_map), max_map_drop=float(settings.max_map_drop),
        trials=int(settings.eval_trials), eval_mode=settings.eval_mode)

    pusher = tfx_api.components.Pusher(
        model=trainer.outputs["model"], model_blessing=evaluator.outputs["blessing"],
        push_destination=tfx_api.proto.PushDestination(filesystem=tfx_api.proto.PushDestination.Filesystem(
            base_directory=settings.serving_model_dir)))

    gallery_index = components.ReidGalleryIndex(
        pushed_model=pusher.outputs["pushed_model"], examples=example_gen.outputs["examples"],
        gallery_split=settings.gallery_split, index_base_dir=settings.index_base_dir)

    return tfx_api.dsl.Pipeline(
        pipeline_name=settings.pipeline_name,
        pipeline_root=settings.pipeline_root,
        components=[example_gen, statistics_gen, schema_gen, example_validator, data_check, trainer,
                    baseline, evaluator, pusher, gallery_index],
        enable_cache=settings.enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=list(beam_pipeline_args),
    )


def _min_train_identities(settings: PipelineSettings) -> int:
    """P of the P×K batches of the training config (identities with both modalities needed)."""
    from kdem_tf import config as config_lib

    config = config_lib.load_config(settings.preset, settings.train_config or None, settings.train_overrides)
    return int(config.data.num_identities)


def metadata_config(settings: PipelineSettings):
    """SQLite ML Metadata under the pipeline root."""
    os.makedirs(os.path.dirname(settings.metadata_path), exist_ok=True)
    return tfx_api.orchestration.metadata.sqlite_metadata_connection_config(settings.metadata_path)
