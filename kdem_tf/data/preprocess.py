"""Beam preprocessing: a raw SYSU-MM01, RegDB or LLCM folder (or a CSV manifest) → sharded TFRecords.

    python -m kdem_tf.data.preprocess --dataset sysu|regdb|llcm --data-root DIR --output DIR \
        [--trial N] [--num-shards N] [--beam-arg=--runner=… ...] [-- Beam pipeline options]
    python -m kdem_tf.data.preprocess --dataset manifest --data-root FILE.csv --output DIR

Each image is read through Beam's filesystem API (local, gs://, hdfs://), validated
(PIL decodes it fully) and stored as it is, with its original height and width, in a
`tf.train.Example` of `kdem_tf.data.schema`: the file's own JPEG/PNG/BMP bytes when
TensorFlow decodes them, else a lossless PNG re-encoding. Nothing is resized here: every
later stage (training, evaluation, export, index, server) resizes with the one function
of `kdem_tf.image_contract`, so they all see the same pixels for the same file.
Unreadable images are skipped and reported, never fatal.

Output layout (written to OUTPUT.tmp-*, renamed to OUTPUT when complete)::

    OUTPUT/<split>/<split>-00000-of-00004.tfrecord.gz
    OUTPUT/summary.json      counts per split and modality, skipped files, settings
    OUTPUT/_SUCCESS          written last: a folder without it is incomplete

Shard contents are deterministic: a record's shard is a stable hash of its path
and records are sorted by path inside a shard, so re-runs give identical files.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import os
import sys
import time
import uuid
from collections import Counter
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

if __name__ == "__main__":  # --help, a typo or a refused runner answers before Beam and TensorFlow load
    from kdem_tf.data import preprocess_args as _early

    _early.parse_args()

import apache_beam as beam  # noqa: E402
from apache_beam.io.filesystems import FileSystems  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions  # noqa: E402

from kdem_tf import datasets  # noqa: E402
from kdem_tf.artifacts import publish_staged  # noqa: E402
from kdem_tf.data import beam_options, preprocess_args, schema  # noqa: E402
from kdem_tf.datasets.base import TRAIN  # noqa: E402
from kdem_tf.datasets.files import DatasetError, ImageRecord, identities, join  # noqa: E402

SUCCESS_MARKER = "_SUCCESS"
SUMMARY_FILE = "summary.json"
REENCODED = "reencoded_png"  # counter key: images stored as a lossless PNG instead of their own bytes
STORED_IMAGES = ("original encoded bytes (JPEG/PNG/BMP as read), a lossless PNG where TensorFlow cannot "
                 "decode the file; original height/width; resized by every stage with kdem_tf.image_contract")


# ----------------------------------------------------------------------------- split planning


def plan_splits(dataset: str, data_root: str, options: Optional[Mapping[str, object]] = None
                ) -> Dict[str, List[ImageRecord]]:
    """Lists every image of every split (`Dataset.read_splits`; `options`: the dataset's own preprocessing
    options, e.g. RegDB's {"trial": 3}). Layout errors raise `DatasetError` before Beam starts, and so
    does an identity in both train and an evaluation split."""
    try:
        owner = datasets.get(dataset)
    except KeyError as error:
        raise DatasetError(f"--dataset: {error.args[0]}") from None
    splits = owner.read_splits(data_root, dict(options or {}))
    train_ids = identities(splits[TRAIN])
    for name, records in splits.items():
        if not records:
            raise DatasetError(f"{data_root}: split {name!r} has no images")
        shared = train_ids & identities(records) if name != TRAIN else set()
        if shared:
            raise DatasetError(f"{data_root}: ids {sorted(shared)[:10]} are in both train and {name}")
    return splits


def image_root(dataset: str, data_root: str) -> str:
    """The folder record paths are relative to (`Dataset.image_root`: a manifest's is its CSV's folder)."""
    return datasets.get(dataset).image_root(data_root)


def shard_of(path: str, num_shards: int) -> int:
    """Stable shard index of a record (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.md5(path.encode()).digest()[:8], "little") % num_shards


def shard_name(split: str, index: int, num_shards: int, tfx_layout: bool = False) -> str:
    return f"{schema.split_dir(split, tfx_layout)}/{split}-{index:05d}-of-{num_shards:05d}.tfrecord.gz"


# ----------------------------------------------------------------------------- per-image work


# Formats kept as their original bytes: JPEG/PNG in these PIL modes always decode in TensorFlow as
# in PIL; a BMP is kept when tf.io.decode_image reads it at PIL's size (TF's BMP decoder misses some
# variants). CMYK/YCbCr JPEGs, 16-bit or other modes, other formats: a lossless PNG of PIL's RGB.
KEPT_FORMATS = ("JPEG", "PNG", "BMP")
KEPT_MODES = ("RGB", "L", "RGBA", "LA", "P")


@dataclasses.dataclass(frozen=True)
class StoredImage:
    """What a TFRecord holds of one image: encoded bytes and the original size."""
    data: bytes
    height: int
    width: int
    reencoded: bool  # True: a lossless PNG of the PIL-decoded RGB pixels, not the file's bytes


def original_image(data: bytes) -> StoredImage:
    """Validates one image file (PIL decodes it fully) and returns what to store: the file's own
    bytes when TensorFlow decodes them (JPEG/PNG/BMP), else a lossless PNG re-encoding.

    No resize and no lossy re-encoding: every stage resizes with the image contract.
    Raises whatever PIL raises on a corrupt or truncated file.
    """
    from PIL import Image  # imported in the worker

    with Image.open(io.BytesIO(data)) as image:
        image.load()  # truncated files fail here, not later in training
        file_format, mode, (width, height) = image.format, image.mode, image.size
        if file_format in KEPT_FORMATS and mode in KEPT_MODES and (
                file_format != "BMP" or _tf_decodes(data, height, width)):  # TF's BMP decoder is partial
            return StoredImage(data, height, width, reencoded=False)
        rgb = image.convert("RGB")
    out = io.BytesIO()
    rgb.save(out, format="PNG")
    return StoredImage(out.getvalue(), height, width, reencoded=True)


def _tf_decodes(data: bytes, height: int, width: int) -> bool:
    """Whether tf.io.decode_image (the decoder of every later stage) reads the bytes at PIL's size."""
    import tensorflow as tf

    try:
        shape = tf.io.decode_image(data, channels=3, expand_animations=False).shape
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
        return False
    return tuple(shape) == (height, width, 3)


class EncodeRecord(beam.DoFn):
    """(split, ImageRecord) → (shard key, (path, modality, serialized Example, re-encoded)), or `skipped`."""

    SKIPPED = "skipped"

    def __init__(self, data_root: str, num_shards: Dict[str, int]):
        self._data_root = data_root
        self._num_shards = num_shards

    def process(self, element):
        split, record = element
        full_path = join(self._data_root, record.path)
        try:
            with FileSystems.open(full_path, compression_type="uncompressed") as f:
                raw = f.read()
            stored = original_image(raw)
        except Exception as error:  # any unreadable or corrupt file is reported, not fatal
            yield beam.pvalue.TaggedOutput(self.SKIPPED, (record.path, f"{type(error).__name__}: {error}"))
            return
        example = schema.make_example(
            image=stored.data, person_id=record.person_id, label=record.label, camera=record.camera,
            modality=record.modality, split=split, path=record.path, height=stored.height, width=stored.width)
        key = (split, shard_of(record.path, self._num_shards[split]))
        yield key, (record.path, record.modality, example.SerializeToString(deterministic=True), stored.reencoded)


class WriteShard(beam.DoFn):
    """Writes one shard (records sorted by path) and yields its counts per modality."""

    def __init__(self, output_dir: str, num_shards: Dict[str, int], tfx_layout: bool):
        self._output_dir = output_dir
        self._num_shards = num_shards
        self._tfx_layout = tfx_layout

    def process(self, element):
        import tensorflow as tf  # imported in the worker

        (split, index), items = element
        items = sorted(items)
        path = join(self._output_dir, shard_name(split, index, self._num_shards[split], self._tfx_layout))
        counts = Counter()
        with tf.io.TFRecordWriter(path, options="GZIP") as writer:
            for _, modality, serialized, reencoded in items:
                writer.write(serialized)
                counts[modality] += 1
                counts[REENCODED] += int(reencoded)
        yield split, dict(counts)


def _empty_shards(output_dir: str, num_shards: Dict[str, int], written: Iterable[Tuple[str, int]],
                  tfx_layout: bool) -> None:
    """Writes the shards that got no record, so every split has its full, named set."""
    import tensorflow as tf

    written = set(written)
    for split, n in num_shards.items():
        for index in range(n):
            if (split, index) not in written:
                with tf.io.TFRecordWriter(join(output_dir, shard_name(split, index, n, tfx_layout)),
                                         options="GZIP"):
                    pass


# ----------------------------------------------------------------------------- driver


def default_num_shards(count: int) -> int:
    """About 2,000 images per shard (SYSU-MM01's originals: ~30 MB), at least 1."""
    return max(1, min(64, -(-count // 2000)))


def local_pipeline_options(argv: Sequence[str] = ()) -> PipelineOptions:
    """Beam options with the runner set explicitly.

    Without an explicit runner Beam's DirectRunner may try to download the Prism
    binary, which fails offline. Default: the DirectRunner's FnApiRunner in one
    process (`in_memory`). Measured on a 2-core machine, 7,020 images at 288x144:
    in_memory 989 images/s, multi_threading 1,016, multi_processing 654 (each worker
    process imports TensorFlow and every element crosses gRPC; measured when Beam still resized). multi_threading lost
    one record in one of four runs here (Beam 2.74), so it is not the default;
    `run_preprocess` checks the counts whatever the mode. `--direct_running_mode=...`
    and `--direct_num_workers=N` in argv choose another mode; any `--runner=...` wins
    (FlinkRunner, SparkRunner, DataflowRunner: see README).
    """
    argv = list(argv)
    if not any(a.startswith("--runner") for a in argv):
        defaults = ["--runner=DirectRunner"]
        if not any(a.startswith("--direct_running_mode") for a in argv):
            defaults.append("--direct_running_mode=in_memory")
        if not any(a.startswith("--direct_num_workers") for a in argv):
            in_memory = not any(a.startswith("--direct_running_mode") and not a.endswith("in_memory") for a in argv)
            defaults.append(f"--direct_num_workers={1 if in_memory else (os.cpu_count() or 1)}")
        argv = defaults + argv
    return PipelineOptions(argv)


def run_preprocess(splits: Dict[str, List[ImageRecord]], data_root: str, output_dir: str,
                   num_shards: Optional[int] = None,
                   pipeline_options: Optional[PipelineOptions] = None, overwrite: bool = False,
                   settings: Optional[dict] = None, tfx_layout: bool = False) -> dict:
    """Runs the Beam job and atomically publishes `output_dir`. Returns the summary dict.

    `tfx_layout` names split folders `Split-<split>` as a TFX Examples artifact expects.
    """
    if tf_exists(join(output_dir, SUCCESS_MARKER)) and not overwrite:
        raise FileExistsError(f"{output_dir}: already holds a complete preprocessing output (use --overwrite)")
    options = pipeline_options or local_pipeline_options()
    beam_options.check_runner(options.view_as(StandardOptions).runner or "")  # before anything is written
    shards = {split: num_shards or default_num_shards(len(records)) for split, records in splits.items()}
    staging = f"{output_dir.rstrip('/')}.tmp-{uuid.uuid4().hex[:8]}"
    import tensorflow as tf

    for split in splits:
        tf.io.gfile.makedirs(join(staging, schema.split_dir(split, tfx_layout)))
    elements = [(split, record) for split, records in splits.items() for record in records]
    started = time.time()
    with beam.Pipeline(options=options) as pipeline:
        encoded = (pipeline
                   | "ListImages" >> beam.Create(elements, reshuffle=True)
                   | "Encode" >> beam.ParDo(EncodeRecord(data_root, shards))
                   .with_outputs(EncodeRecord.SKIPPED, main="examples"))
        written = (encoded.examples
                   | "GroupByShard" >> beam.GroupByKey()
                   | "WriteShards" >> beam.ParDo(WriteShard(staging, shards, tfx_layout)))
        _ = (written | "CountsToJson" >> beam.Map(json.dumps)
             | "WriteCounts" >> beam.io.WriteToText(join(staging, "_counts/counts"), shard_name_template="-SS-of-NN"))
        _ = (encoded[EncodeRecord.SKIPPED] | "SkippedToJson" >> beam.Map(json.dumps)
             | "WriteSkipped" >> beam.io.WriteToText(join(staging, "_counts/skipped"), shard_name_template="-SS-of-NN"))
    seconds = time.time() - started

    summary = _summarise(staging, splits, shards, seconds, settings or {}, tfx_layout)
    _check_counts(summary, splits, staging)
    written_shards = {tuple(s) for s in summary.pop("_written")}
    _empty_shards(staging, shards, written_shards, tfx_layout)
    with tf.io.gfile.GFile(join(staging, SUMMARY_FILE), "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
    with tf.io.gfile.GFile(join(staging, SUCCESS_MARKER), "w") as f:
        f.write("ok\n")
    publish_staged(staging, output_dir)  # an old output is replaced only now
    return summary


class PreprocessError(RuntimeError):
    """The Beam job's output does not account for every planned image; nothing was published."""


def _check_counts(summary: dict, splits, staging: str) -> None:
    """Every planned image is either written or reported skipped, split by split: a runner that
    drops records must fail the job, never publish a silently smaller split."""
    skipped = Counter()
    by_path = {r.path: split for split, records in splits.items() for r in records}
    for item in summary["skipped"]:
        skipped[by_path.get(item["path"], "?")] += 1
    for split, records in splits.items():
        accounted = summary["splits"][split]["images"] + skipped[split]
        if accounted != len(records):
            raise PreprocessError(f"split {split!r}: {len(records)} images planned but {accounted} written or "
                                  f"skipped; the Beam runner lost records. Nothing was published; the partial "
                                  f"output is in {staging}")


def tf_exists(path: str) -> bool:
    import tensorflow as tf
    return tf.io.gfile.exists(path)


def _summarise(staging, splits, shards, seconds, settings, tfx_layout) -> dict:
    import tensorflow as tf

    counts: Dict[str, Counter] = {split: Counter() for split in splits}
    written = []
    for path in tf.io.gfile.glob(join(staging, "_counts/counts-*")):
        with tf.io.gfile.GFile(path) as f:
            for line in f:
                split, by_modality = json.loads(line)
                counts[split].update(by_modality)
    skipped = []
    for path in tf.io.gfile.glob(join(staging, "_counts/skipped-*")):
        with tf.io.gfile.GFile(path) as f:
            skipped += [json.loads(line) for line in f]
    tf.io.gfile.rmtree(join(staging, "_counts"))
    for split, n in shards.items():
        for index in range(n):
            if tf.io.gfile.exists(join(staging, shard_name(split, index, n, tfx_layout))):
                written.append((split, index))
    reencoded = {split: c.pop(REENCODED, 0) for split, c in counts.items()}
    total = sum(sum(c.values()) for c in counts.values())
    return {
        "splits": {split: {"images": sum(c.values()), "by_modality": dict(sorted(c.items())),
                           "reencoded_png": reencoded[split],
                           "identities": len(identities(splits[split])),
                           "num_shards": shards[split]} for split, c in counts.items()},
        "images_written": total,
        "skipped": [{"path": p, "reason": r} for p, r in sorted(skipped)],
        "seconds": round(seconds, 2),
        "images_per_second": round((total + len(skipped)) / max(seconds, 1e-9), 1),
        "stored_images": STORED_IMAGES,
        "settings": settings,
        "_written": written,
    }


def format_summary(summary: dict) -> str:
    lines = [f"{'split':<14}{'images':>8}{'visible':>9}{'infrared':>10}{'ids':>6}{'shards':>8}"]
    for split, s in summary["splits"].items():
        m = s["by_modality"]
        lines.append(f"{split:<14}{s['images']:>8}{m.get('visible', 0):>9}{m.get('infrared', 0):>10}"
                     f"{s['identities']:>6}{s['num_shards']:>8}")
    lines.append(f"written {summary['images_written']} images in {summary['seconds']:.1f} s "
                 f"({summary['images_per_second']:.1f} images/s), skipped {len(summary['skipped'])}")
    for item in summary["skipped"][:20]:
        lines.append(f"  skipped {item['path']}: {item['reason']}")
    if len(summary["skipped"]) > 20:
        lines.append(f"  ... and {len(summary['skipped']) - 20} more (see summary.json)")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, options, beam_args = preprocess_args.parse_args(argv)
    if "://" not in args.output:  # beside the output folder (which appears complete or not at all)
        from kdem_tf import console

        console.log_beside(os.path.abspath(args.output).rstrip("/") + ".console.log")
    try:
        splits = plan_splits(args.dataset, args.data_root, options)
        summary = run_preprocess(
            splits, image_root(args.dataset, args.data_root), args.output, args.num_shards,
            local_pipeline_options(beam_args), args.overwrite,
            settings={"dataset": args.dataset, "data_root": args.data_root, **options})
    except (DatasetError, FileExistsError, PreprocessError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    print(f"output: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
