"""The custom TFX components of the kdem-tf pipeline: thin adapters over `kdem_tf`.

* `ReidExampleGen`   Beam: raw SYSU-MM01/RegDB folder → Examples with identity-disjoint splits
                     (kdem_tf.data.preprocess; never TFX's hash split, which mixes identities).
* `ReidDataCheck`    fails the run on ExampleValidator anomalies and on the ReID rules TFDV
                     cannot express (both modalities, contiguous labels, disjoint identities...).
* `ReidEvaluator`    the SYSU/RegDB protocol metrics of the trained SavedModel (TFMA has no
                     retrieval metrics) → metrics.json + a ModelBlessing for the Pusher.
* `ReidGalleryIndex` embeds the gallery with the pushed model and builds its ScaNN index.
* `PreviousBlessedModelStrategy` resolves the last blessed model other than the current one
                     (the baseline the evaluator must not fall below).
"""

import json
import os
from typing import Dict, List, Optional

from absl import logging
from tfx import types
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.dsl.components.base import base_beam_executor, base_component, executor_spec
from tfx.dsl.input_resolution import strategies  # noqa: F401  (registers the standard strategies)
from tfx.dsl.components.common import resolver
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

BLESSED_KEY = "blessed"                  # read by Pusher and LatestBlessedModelStrategy
CURRENT_MODEL_KEY = "current_model"
CURRENT_MODEL_ID_KEY = "current_model_id"
BASELINE_MODEL_ID_KEY = "baseline_model_id"
METRICS_FILE = "metrics.json"
REPORT_FILE = "data_report.json"
INDEX_SUBDIR = "index"


# Custom artifact type names are `namespace.Name`: the form Kubeflow Pipelines v2 schema titles need
# (TFX's KubeflowV2DagRunner refuses other names; pipeline/kubeflow_v2_runner.py compiles these).
class ScannIndex(types.Artifact):
    """A ScaNN gallery index (serving/export/gallery_index.py) built for one pushed model version."""
    TYPE_NAME = "kdem.ScannIndex"


class DataCheckReport(types.Artifact):
    """ReidDataCheck's report (REPORT_FILE): counts per split and the rules checked."""
    TYPE_NAME = "kdem.DataCheckReport"


# ----------------------------------------------------------------------------- example generation


class ReidExampleGenSpec(ComponentSpec):
    PARAMETERS = {
        "dataset": ExecutionParameter(type=str),
        "data_root": ExecutionParameter(type=str),
        "trial": ExecutionParameter(type=int),
        "num_shards": ExecutionParameter(type=int),       # 0 = automatic
        "input_fingerprint": ExecutionParameter(type=str, optional=True),  # cache key of the raw data
    }
    INPUTS = {}
    OUTPUTS = {"examples": ChannelParameter(type=standard_artifacts.Examples)}


class ReidExampleGenExecutor(base_beam_executor.BaseBeamExecutor):
    """Runs `kdem_tf.data.preprocess` with this component's Beam arguments."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict) -> None:
        from apache_beam.options.pipeline_options import PipelineOptions
        import tensorflow as tf

        from kdem_tf import datasets
        from kdem_tf.data import preprocess
        from kdem_tf.datasets.files import DatasetError

        examples = artifact_utils.get_single_instance(output_dict["examples"])
        dataset = exec_properties["dataset"]
        data_root = exec_properties["data_root"]
        trial = int(exec_properties.get("trial") or 1)
        owned = {o.dest for o in datasets.get(dataset).preprocess_options}
        options = {"trial": trial} if "trial" in owned else {}  # the dataset's own options it reads
        num_shards = int(exec_properties.get("num_shards") or 0) or None
        try:
            if not tf.io.gfile.exists(data_root):
                raise DatasetError(f"{data_root}: the data root does not exist")
            splits = preprocess.plan_splits(dataset, data_root, options)
        except DatasetError as error:
            message = str(error)
            if data_root not in message:
                message = f"{message} (data root {data_root})"
            raise DatasetError(f"ReidExampleGen: cannot read the {dataset} dataset at {data_root}: "
                                        f"{message}") from error
        logging.info("ReidExampleGen: %s at %s, trial %d → %s (Beam args %s)", dataset, data_root, trial,
                     examples.uri, self._beam_pipeline_args)
        summary = preprocess.run_preprocess(
            splits, preprocess.image_root(dataset, data_root), examples.uri, num_shards, PipelineOptions(self._beam_pipeline_args),
            overwrite=True, settings={"dataset": dataset, "data_root": data_root, **options},
            tfx_layout=True)
        if summary["skipped"] and not summary["images_written"]:
            raise DatasetError(f"ReidExampleGen: {data_root}: no image could be read")
        examples.split_names = artifact_utils.encode_split_names(list(splits))
        examples.set_string_custom_property("dataset", dataset)
        examples.set_string_custom_property("data_root", data_root)
        examples.set_int_custom_property("trial", trial)
        for split, info in summary["splits"].items():
            examples.set_int_custom_property(f"num_images_{split}", info["images"])
            examples.set_int_custom_property(f"num_identities_{split}", info["identities"])
        examples.set_int_custom_property("num_skipped", len(summary["skipped"]))
        logging.info("ReidExampleGen:\n%s", preprocess.format_summary(summary))


class ReidExampleGen(base_component.BaseComponent):
    """Raw SYSU-MM01 / RegDB folder → an Examples artifact with identity-disjoint splits.

    Splits: train, query, gallery (SYSU) or train, test_visible, test_thermal (RegDB),
    as `kdem_tf.data.preprocess.plan_splits` defines them.
    """
    SPEC_CLASS = ReidExampleGenSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(ReidExampleGenExecutor)

    def __init__(self, dataset: str, data_root: str, trial: int = 1, num_shards: int = 0,
                 input_fingerprint: str = ""):
        super().__init__(spec=ReidExampleGenSpec(
            dataset=dataset, data_root=data_root, trial=int(trial), num_shards=int(num_shards),
            input_fingerprint=input_fingerprint,
            examples=types.Channel(type=standard_artifacts.Examples)))


# ----------------------------------------------------------------------------- data checks


class DataCheckError(ValueError):
    """The examples break a rule training or evaluation relies on; the message lists each."""


def _read_columns(examples_uri: str, split: str) -> Dict[str, list]:
    """Every field but the image of one split, as Python lists."""
    import tensorflow as tf

    from kdem_tf.data import input_pipeline, schema

    spec = {k: v for k, v in schema.FEATURE_SPEC.items() if k != schema.IMAGE}
    columns: Dict[str, list] = {k: [] for k in spec}
    try:
        files = input_pipeline.list_shards(examples_uri, split)
    except input_pipeline.InputError:
        return columns
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(1024).map(
        lambda s: tf.io.parse_example(s, spec))
    for batch in dataset.as_numpy_iterator():
        for key in spec:
            values = batch[key].tolist()
            columns[key] += [v.decode() if isinstance(v, bytes) else v for v in values]
    return columns


def read_anomalies(anomalies: types.Artifact) -> Dict[str, List[str]]:
    """{split: ["feature: short description", ...]} of an ExampleAnomalies artifact (empty lists: none)."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2
    import tensorflow as tf

    out = {}
    for split in artifact_utils.decode_split_names(anomalies.split_names):
        path = os.path.join(artifact_utils.get_split_uri([anomalies], split), "SchemaDiff.pb")
        proto = anomalies_pb2.Anomalies()
        if tf.io.gfile.exists(path):
            with tf.io.gfile.GFile(path, "rb") as f:
                proto.ParseFromString(f.read())
        items = [f"{name}: {info.short_description} ({info.description})"
                 for name, info in sorted(proto.anomaly_info.items())]
        if proto.HasField("dataset_anomaly_info"):
            info = proto.dataset_anomaly_info
            items.append(f"<dataset>: {info.short_description} ({info.description})")
        out[split] = items
    return out


def _train_split_problems(cols: Dict[str, list], split_report: dict, min_train_identities: int) -> List[str]:
    """The train split's rules: both modalities, contiguous labels 0..N-1 one per identity, enough
    identities with both modalities for P×K batches (their count goes into `split_report`)."""
    from kdem_tf.data import schema

    problems = []
    for m in schema.MODALITIES:
        if m not in set(cols[schema.MODALITY]):
            problems.append(f"train split has no {m} images (both modalities are needed)")
    labels = cols[schema.LABEL]
    unique = sorted(set(labels))
    if unique[0] < 0 or unique != list(range(len(unique))):
        problems.append(f"train labels must be contiguous 0..N-1, got {len(unique)} labels "
                        f"from {unique[0]} to {unique[-1]}")
    by_label: Dict[int, set] = {}
    both: Dict[int, set] = {}
    for label, pid, m in zip(labels, cols[schema.PERSON_ID], cols[schema.MODALITY]):
        by_label.setdefault(label, set()).add(pid)
        both.setdefault(pid, set()).add(m)
    shared = {label: pids for label, pids in by_label.items() if len(pids) > 1}
    if shared:
        label, pids = sorted(shared.items())[0]
        problems.append(f"train label {label} is given to several identities {sorted(pids)}")
    paired = sum(1 for ms in both.values() if len(ms) == 2)
    split_report["identities_with_both_modalities"] = paired
    if paired < min_train_identities:
        problems.append(f"only {paired} train identities have both visible and infrared images; "
                        f"P×K batches need at least {min_train_identities}")
    return problems


def check_examples(examples_uri: str, split_names: List[str], dataset: str,
                   min_train_identities: int = 2) -> dict:
    """Checks the ReID rules on an Examples artifact. Returns a report; raises DataCheckError.

    Rules: every split non-empty; the train split has both modalities, contiguous labels
    0..N-1 (one per identity) and at least `min_train_identities` identities with both
    modalities (the P of P×K batches); evaluation splits have label -1 and the one modality
    the dataset gives them (`Dataset.splits`: e.g. SYSU's query infrared, gallery visible); no identity is both in train and in an evaluation split; the
    query and gallery share identities. Image sizes are reported, not checked (originals).
    """
    from kdem_tf import datasets
    from kdem_tf.data import schema

    expected = datasets.get(dataset).split_names()
    # The one modality of each evaluation split (None: it may mix both, e.g. a manifest's).
    modality_of = {split: m for split, m in datasets.get(dataset).split_modalities().items()
                   if m is not None and split != schema.TRAIN}
    problems: List[str] = []
    missing = [s for s in expected if s not in split_names]
    if missing:
        problems.append(f"splits {missing} are missing (have {split_names})")
    report = {"dataset": dataset, "splits": {}}
    identity_sets = {}
    sizes = set()
    for split in [s for s in expected if s in split_names]:
        cols = _read_columns(examples_uri, split)
        n = len(cols[schema.LABEL])
        modalities = sorted(set(cols[schema.MODALITY]))
        ids = sorted(set(cols[schema.PERSON_ID]))
        identity_sets[split] = set(ids)
        sizes |= set(zip(cols[schema.HEIGHT], cols[schema.WIDTH]))
        report["splits"][split] = {
            "images": n, "identities": ids,
            "by_modality": {m: cols[schema.MODALITY].count(m) for m in schema.MODALITIES},
            "cameras": sorted(set(cols[schema.CAMERA]))}
        if n == 0:
            problems.append(f"split {split!r} is empty")
            continue
        bad_split_field = {s for s in cols[schema.SPLIT] if s != split}
        if bad_split_field:
            problems.append(f"split {split!r} holds records marked split={sorted(bad_split_field)}")
        if split == schema.TRAIN:
            problems += _train_split_problems(cols, report["splits"][split], min_train_identities)
        else:
            if any(label != -1 for label in cols[schema.LABEL]):
                problems.append(f"split {split!r} holds training labels (expected -1 outside train)")
            want = modality_of.get(split)
            if want and modalities != [want]:
                problems.append(f"split {split!r} must hold only {want} images, found {modalities}")
    for split, ids in identity_sets.items():
        if split != schema.TRAIN and schema.TRAIN in identity_sets:
            shared = identity_sets[schema.TRAIN] & ids
            if shared:
                problems.append(f"identities {sorted(shared)[:10]} are in both train and {split}")
    query_split, gallery_split = datasets.get(dataset).eval_splits
    if query_split in identity_sets and gallery_split in identity_sets:
        query_ids, gallery_ids = identity_sets[query_split], identity_sets[gallery_split]
        if query_ids and gallery_ids and not query_ids & gallery_ids:
            problems.append(f"no identity of {query_split} appears in {gallery_split}: nothing to retrieve")
        report["query_identities_without_gallery"] = sorted(query_ids - gallery_ids)
    # Originals keep their own sizes (every stage resizes with the image contract): reported only.
    report["num_image_sizes"] = len(sizes)
    report["image_sizes"] = sorted(list(s) for s in sizes)[:20]
    report["problems"] = problems
    return report


@component
def ReidDataCheck(
    examples: InputArtifact[standard_artifacts.Examples],
    anomalies: InputArtifact[standard_artifacts.ExampleAnomalies],
    report: OutputArtifact[DataCheckReport],
    dataset: Parameter[str],
    min_train_identities: Parameter[int] = 2,
) -> None:
    """Gates training: fails on ExampleValidator anomalies or on a broken ReID rule."""
    import tensorflow as tf

    split_names = artifact_utils.decode_split_names(examples.split_names)
    result = check_examples(examples.uri, split_names, dataset, min_train_identities)
    found = read_anomalies(anomalies)
    result["anomalies"] = found
    for split, items in found.items():
        result["problems"] += [f"ExampleValidator anomaly in split {split!r}: {item}" for item in items]
    tf.io.gfile.makedirs(report.uri)
    with tf.io.gfile.GFile(os.path.join(report.uri, REPORT_FILE), "w") as f:
        json.dump(result, f, indent=2, sort_keys=True)
    report.set_int_custom_property("num_problems", len(result["problems"]))
    if result["problems"]:
        raise DataCheckError(f"ReidDataCheck: the examples at {examples.uri} cannot be trained on:\n  - "
                             + "\n  - ".join(result["problems"]) + f"\n(report: {report.uri}/{REPORT_FILE})")
    logging.info("ReidDataCheck: %s passed: %s", examples.uri,
                 {s: (v["images"], len(v["identities"])) for s, v in result["splits"].items()})


# ----------------------------------------------------------------------------- evaluation


def evaluate_saved_model(model_dir: str, examples_uri: str, dataset: str, query_split: str,
                         gallery_split: str, mode: str = "all", trials: int = 10) -> dict:
    """Protocol metrics (percent) of an exported embedder on the evaluation splits: the stored
    bytes through its `serving_default`, the trials and metrics of `kdem_tf.evaluation`
    (`kdem_tf.evaluation.records`, as `python -m kdem_tf.evaluate --tfrecords`)."""
    from kdem_tf.evaluation import EvalOptions
    from kdem_tf.evaluation import records as record_evaluation

    return record_evaluation.evaluate_saved_model(model_dir, dataset, examples_uri,
                                                  EvalOptions(mode=mode, trials=trials),
                                                  split_names=(query_split, gallery_split))


def format_metrics(name: str, metrics: dict) -> str:
    keys = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")
    return (f"{name:<10}" + "".join(f"{k:>8}" for k in keys) + "\n" + " " * 10
            + "".join(f"{metrics[k]:>8.2f}" for k in keys))


@component
def ReidEvaluator(
    examples: InputArtifact[standard_artifacts.Examples],
    model: InputArtifact[standard_artifacts.Model],
    evaluation: OutputArtifact[standard_artifacts.ModelEvaluation],
    blessing: OutputArtifact[standard_artifacts.ModelBlessing],
    dataset: Parameter[str],
    query_split: Parameter[str],
    gallery_split: Parameter[str],
    min_map: Parameter[float],
    baseline_model: InputArtifact[standard_artifacts.Model] = None,
    max_map_drop: Parameter[float] = 0.0,
    trials: Parameter[int] = 10,
    eval_mode: Parameter[str] = "all",
) -> None:
    """SYSU-MM01 / RegDB protocol metrics of the trained SavedModel; blesses it when good enough.

    SYSU: the infrared query split against `trials` single-shot galleries drawn from the
    gallery split exactly as the protocol draws them (random.Random(trial) over sorted file
    names per identity and camera); RegDB: test_visible → test_thermal of the trial.
    Blessed when mAP ≥ min_map and mAP ≥ (the baseline's mAP on the same data) − max_map_drop.
    """
    import tensorflow as tf
    from tfx.utils import path_utils

    current = evaluate_saved_model(path_utils.serving_model_path(model.uri), examples.uri, dataset,
                                   query_split, gallery_split, eval_mode, trials)
    reasons = []
    if current["mAP"] < min_map:
        reasons.append(f"mAP {current['mAP']:.2f} is below the threshold {min_map:.2f}")
    baseline = None
    if baseline_model is not None and baseline_model.id != model.id:
        baseline = evaluate_saved_model(path_utils.serving_model_path(baseline_model.uri), examples.uri,
                                        dataset, query_split, gallery_split, eval_mode, trials)
        if current["mAP"] < baseline["mAP"] - max_map_drop:
            reasons.append(f"mAP {current['mAP']:.2f} is worse than the last blessed model's "
                           f"{baseline['mAP']:.2f} (allowed drop {max_map_drop:.2f})")
    blessed = not reasons
    result = {"dataset": dataset, "protocol": {"query": query_split, "gallery": gallery_split,
                                               "trials": current["num_trials"], "eval_mode": eval_mode},
              "current": current, "current_model": model.uri, "current_model_id": model.id,
              "baseline": baseline, "baseline_model": baseline_model.uri if baseline_model else None,
              "baseline_model_id": baseline_model.id if baseline_model else None,
              "min_map": min_map, "max_map_drop": max_map_drop, "blessed": blessed, "reasons": reasons}
    tf.io.gfile.makedirs(evaluation.uri)
    with tf.io.gfile.GFile(os.path.join(evaluation.uri, METRICS_FILE), "w") as f:
        json.dump(result, f, indent=2)
    tf.io.gfile.makedirs(blessing.uri)
    with tf.io.gfile.GFile(os.path.join(blessing.uri, "BLESSED" if blessed else "NOT_BLESSED"), "w") as f:
        f.write("\n".join(reasons) + "\n")
    for artifact in (evaluation, blessing):
        artifact.set_float_custom_property("mAP", current["mAP"])
        artifact.set_float_custom_property("rank1", current["rank1"])
        artifact.set_float_custom_property("mINP", current["mINP"])
    blessing.set_int_custom_property(BLESSED_KEY, int(blessed))
    blessing.set_string_custom_property(CURRENT_MODEL_KEY, model.uri)
    blessing.set_int_custom_property(CURRENT_MODEL_ID_KEY, model.id)
    if baseline_model is not None:
        blessing.set_int_custom_property(BASELINE_MODEL_ID_KEY, baseline_model.id)
    table = format_metrics("current", current)
    if baseline is not None:
        table += "\n" + format_metrics("baseline", baseline)
    logging.info("ReidEvaluator (%s, %s → %s):\n%s\n%s", dataset, query_split, gallery_split, table,
                 "BLESSED" if blessed else "NOT BLESSED: " + "; ".join(reasons))


# ----------------------------------------------------------------------------- baseline resolution


class PreviousBlessedModelStrategy(resolver.ResolverStrategy):
    """The latest blessed Model that is not the model being evaluated now.

    Inputs: `model` (every Model: Channel(type=Model)), `model_blessing` (every ModelBlessing)
    and `current` (the Trainer's model). Excluding the current model keeps an unchanged re-run
    cacheable: a cached Trainer yields the same model, whose own blessing must not become its
    baseline.
    """

    def resolve_artifacts(self, store, input_dict: Dict[str, List[types.Artifact]]
                          ) -> Optional[Dict[str, List[types.Artifact]]]:
        current_ids = {a.id for a in input_dict.get("current", [])}
        blessed = {b.get_int_custom_property(CURRENT_MODEL_ID_KEY) for b in input_dict.get("model_blessing", [])
                   if b.get_int_custom_property(BLESSED_KEY) == 1}
        candidates = sorted((m for m in input_dict.get("model", []) if m.id in blessed and m.id not in current_ids),
                            key=lambda m: m.id, reverse=True)
        out = {key: list(value) for key, value in input_dict.items()}
        out["model"] = candidates[:1]
        out["model_blessing"] = [b for b in input_dict.get("model_blessing", [])
                                 if candidates and b.get_int_custom_property(CURRENT_MODEL_ID_KEY) == candidates[0].id
                                 and b.get_int_custom_property(BLESSED_KEY) == 1][-1:]
        return out


# ----------------------------------------------------------------------------- gallery index


@component
def ReidGalleryIndex(
    pushed_model: InputArtifact[standard_artifacts.PushedModel],
    examples: InputArtifact[standard_artifacts.Examples],
    index: OutputArtifact[ScannIndex],
    gallery_split: Parameter[str],
    index_base_dir: Parameter[str] = "",
) -> None:
    """Embeds the gallery split with the pushed model and builds its ScaNN index.

    The index lands in this artifact and, when `index_base_dir` is set, is copied to
    `index_base_dir/<pushed version>/` beside the model's `serving_base/<version>/`.
    Nothing is built when the Pusher pushed nothing (model not blessed).
    """
    import tensorflow as tf

    tf.io.gfile.makedirs(index.uri)
    pushed = pushed_model.get_int_custom_property("pushed") == 1
    index.set_int_custom_property("built", 0)
    if not pushed:
        with tf.io.gfile.GFile(os.path.join(index.uri, "NOT_BUILT"), "w") as f:
            f.write("the model was not pushed (not blessed)\n")
        logging.info("ReidGalleryIndex: model not pushed, no index built")
        return
    from serving.export import gallery_index as index_lib

    model_dir = pushed_model.get_string_custom_property("pushed_destination")
    version = pushed_model.get_string_custom_property("pushed_version")
    gallery = artifact_utils.get_split_uri([examples], gallery_split)
    out = os.path.join(index.uri, INDEX_SUBDIR)
    built = index_lib.build_index(model_dir, gallery, out, progress=False)
    index.set_int_custom_property("built", 1)
    index.set_int_custom_property("count", len(built))
    index.set_string_custom_property("model_version", str(version))
    index.set_string_custom_property("model_dir", model_dir)
    if index_base_dir:
        target = os.path.join(index_base_dir, str(version))
        _copy_tree(out, target)
        index.set_string_custom_property("published_to", target)
    logging.info("ReidGalleryIndex: %d gallery images of %s indexed at %s%s", len(built), model_dir, out,
                 f" and {os.path.join(index_base_dir, str(version))}" if index_base_dir else "")


def _copy_tree(source: str, target: str) -> None:
    import tensorflow as tf

    from kdem_tf.artifacts import publish_folder

    def copy(staging: str) -> None:
        for folder, _, files in tf.io.gfile.walk(source):
            relative = os.path.relpath(folder, source)
            tf.io.gfile.makedirs(os.path.join(staging, relative))
            for name in files:
                tf.io.gfile.copy(os.path.join(folder, name), os.path.join(staging, relative, name), overwrite=True)

    publish_folder(target, copy, replace=True)
