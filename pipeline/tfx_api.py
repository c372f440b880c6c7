"""The parts of TFX's public API (`tfx.v1`) this pipeline uses, imported from the modules that define
them, so that a process does not import `tfx.v1` itself.

Why: `from tfx import v1` imports `tfx.v1.extensions`, and with it the Google Cloud AI Platform
and Vertex client libraries (`google.cloud.aiplatform`), which nothing here uses: 6.3 s of the 17 s
that `python -X importtime -c "from tfx import v1"` showed (2-core Intel Xeon, #16); each pipeline
process (the demo, `tfx run create`, every test process with a pipeline) paid it. The names below are
the very objects `tfx.v1` exports (tests/pipeline/test_tfx_api.py checks each with `is`, so a TFX
upgrade that moves one fails there), used as `tfx_api.dsl.Pipeline`, `tfx_api.components.Trainer`, ...
as one would use `tfx.v1`.
"""
from __future__ import annotations

import types

from tfx.components.example_validator.component import ExampleValidator
from tfx.components.pusher.component import Pusher
from tfx.components.schema_gen.component import SchemaGen
from tfx.components.schema_gen.import_schema_gen.component import ImportSchemaGen
from tfx.components.statistics_gen.component import StatisticsGen
from tfx.components.trainer.component import Trainer
from tfx.dsl.components.common.resolver import Resolver
from tfx.orchestration import metadata as _metadata
from tfx.orchestration.local.local_dag_runner import LocalDagRunner
from tfx.orchestration.pipeline import Pipeline
from tfx.proto import pusher_pb2, trainer_pb2
from tfx.types.channel import Channel

components = types.SimpleNamespace(ExampleValidator=ExampleValidator, ImportSchemaGen=ImportSchemaGen,
                                   Pusher=Pusher, SchemaGen=SchemaGen, StatisticsGen=StatisticsGen,
                                   Trainer=Trainer)
dsl = types.SimpleNamespace(Channel=Channel, Pipeline=Pipeline, Resolver=Resolver)
proto = types.SimpleNamespace(EvalArgs=trainer_pb2.EvalArgs, PushDestination=pusher_pb2.PushDestination,
                              TrainArgs=trainer_pb2.TrainArgs)
orchestration = types.SimpleNamespace(
    LocalDagRunner=LocalDagRunner,
    metadata=types.SimpleNamespace(sqlite_metadata_connection_config=_metadata.sqlite_metadata_connection_config))

# Every name above, dotted as in tfx.v1 (tests/pipeline/test_tfx_api.py resolves each in both).
NAMES = tuple(f"{space}.{name}" for space, namespace in (("components", components), ("dsl", dsl), ("proto", proto))
              for name in vars(namespace)) + ("orchestration.LocalDagRunner",
                                              "orchestration.metadata.sqlite_metadata_connection_config")
