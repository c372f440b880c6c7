"""tf.data input: identity-balanced P×K visible/infrared batches for training, plain batches for evaluation.

Training batches follow the paper's pairing (Sec. 3.2): P identities, K visible and
K infrared images of each, so that `visible[k]` and `infrared[k]` share an identity.
One batch is a dict of images plus a dict of labels::

    ({"visible": [P*K, H, W, 3], "infrared": [P*K, H, W, 3]},
     {"label_v": [P*K], "label_i": [P*K]})

The original encoded bytes of the train split are held in memory (SYSU-MM01's train
originals: about 0.7 GB); a seeded NumPy sampler draws indices and the decode + resize
+ augment work runs in parallel tf.data maps. Decoding, resizing and normalisation are
the image contract's (`kdem_tf.image_contract`), the same functions as in the export.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, Iterator, Optional, Tuple

import numpy as np
import tensorflow as tf

from kdem_tf.data import schema
from kdem_tf.image_contract import ImageContract, as_contract, modality_ids


class InputError(ValueError):
    """The TFRecords cannot feed training (missing, empty, one modality absent...)."""


@dataclasses.dataclass
class SplitArrays:
    """One split loaded into memory: encoded images and their metadata, index-aligned."""
    images: np.ndarray       # [N] object (bytes)
    labels: np.ndarray       # [N] int64
    person_ids: np.ndarray   # [N] int64
    cameras: np.ndarray      # [N] int64
    modalities: np.ndarray   # [N] int32 (0 visible, 1 infrared)
    paths: np.ndarray        # [N] object (str)

    def __len__(self) -> int:
        return len(self.labels)


def list_shards(tfrecord_dir: str, split: str) -> list:
    patterns = schema.split_file_patterns(tfrecord_dir, split)
    files = sorted(f for pattern in patterns for f in tf.io.gfile.glob(pattern))
    if not files:
        raise InputError(f"{tfrecord_dir}: no TFRecord shards for split {split!r} "
                         f"(expected {patterns[0]}); run `python -m kdem_tf.data.preprocess` first")
    return files


def load_split(tfrecord_dir: str, split: str) -> SplitArrays:
    """Reads every Example of one split into memory (order: shard, then path)."""
    dataset = (tf.data.TFRecordDataset(list_shards(tfrecord_dir, split), compression_type="GZIP")
               .batch(512).map(schema.parse_examples))
    columns = {k: [] for k in (schema.IMAGE, schema.LABEL, schema.PERSON_ID, schema.CAMERA,
                               schema.MODALITY, schema.PATH)}
    for batch in dataset.as_numpy_iterator():
        for key in columns:
            columns[key].append(batch[key])
    if not columns[schema.LABEL]:
        raise InputError(f"{tfrecord_dir}: split {split!r} has no examples")
    cat = {k: np.concatenate(v) for k, v in columns.items()}
    modality = np.array([schema.modality_index(m.decode(), f"{tfrecord_dir} split {split!r}: modality")
                         for m in cat[schema.MODALITY]], np.int32)
    return SplitArrays(images=cat[schema.IMAGE].astype(object), labels=cat[schema.LABEL],
                       person_ids=cat[schema.PERSON_ID], cameras=cat[schema.CAMERA], modalities=modality,
                       paths=np.array([p.decode() for p in cat[schema.PATH]], dtype=object))


# ----------------------------------------------------------------------------- P×K sampling


class IdentitySampler:
    """Draws P identities and K visible + K infrared image indices of each, per batch.

    Only identities with both modalities are drawn. K images are drawn without
    replacement when an identity has at least K of that modality, else with.
    An epoch has ceil(max(N_visible, N_infrared) / (P*K)) batches, as AGW's sampler.

    Args:
        labels: [N] training labels.
        modalities: [N] 0 visible / 1 infrared.
        num_identities: P.
        num_instances: K.
        seed: RNG seed; batch b of epoch e depends only on (seed, e, b).
    """

    def __init__(self, labels: np.ndarray, modalities: np.ndarray, num_identities: int = 8,
                 num_instances: int = 4, seed: int = 0):
        self.num_identities = num_identities
        self.num_instances = num_instances
        self.seed = seed
        by_label = {}
        for index, (label, modality) in enumerate(zip(labels, modalities)):
            by_label.setdefault(int(label), ([], []))[int(modality)].append(index)
        self.identities = sorted(l for l, (v, i) in by_label.items() if v and i)
        if len(self.identities) < num_identities:
            raise InputError(f"P={num_identities} identities per batch but only {len(self.identities)} "
                             f"training identities have both visible and infrared images")
        self._pools = {l: (np.array(v), np.array(i)) for l, (v, i) in by_label.items()}
        counts = np.bincount(modalities, minlength=2)
        self.batches_per_epoch = max(1, math.ceil(counts.max() / (num_identities * num_instances)))

    def batch(self, epoch: int, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """Indices [P*K] of the visible and of the infrared images of batch `index` of `epoch`."""
        rng = np.random.default_rng([self.seed, epoch, index])
        chosen = rng.choice(self.identities, self.num_identities, replace=False)
        visible, infrared = [], []
        for label in chosen:
            pool_v, pool_i = self._pools[label]
            visible.append(rng.choice(pool_v, self.num_instances, replace=len(pool_v) < self.num_instances))
            infrared.append(rng.choice(pool_i, self.num_instances, replace=len(pool_i) < self.num_instances))
        return np.concatenate(visible), np.concatenate(infrared)

    def batch_at(self, batch_number: int) -> Tuple[np.ndarray, np.ndarray]:
        """`batch` by global batch number: batch `n` is batch n % batches_per_epoch of epoch
        n // batches_per_epoch, whatever a training epoch's step count is."""
        epoch, index = divmod(int(batch_number), self.batches_per_epoch)
        return self.batch(epoch, index)

    def pairs(self, start_batch: int = 0) -> Iterator[Tuple[int, int, int]]:
        """Endless (visible index, infrared index, element number) triples from global batch
        `start_batch` on. The element number is global too (batch number * P*K + position), so
        the augmentation seeds derived from it are the same in a run resumed at any batch."""
        size = self.num_identities * self.num_instances
        batch_number = int(start_batch)
        while True:
            visible, infrared = self.batch_at(batch_number)
            for position, (v, i) in enumerate(zip(visible, infrared)):
                yield int(v), int(i), batch_number * size + position
            batch_number += 1


# ----------------------------------------------------------------------------- decode and augment


def random_erasing(image: tf.Tensor, seed: tf.Tensor, probability: float = 0.5,
                   area: Tuple[float, float] = (0.02, 0.4), aspect: Tuple[float, float] = (0.3, 3.3)) -> tf.Tensor:
    """Erases one random rectangle (to 0, the mean after normalisation), as AGW's RandomErasing."""
    height, width = image.shape[0], image.shape[1]
    seeds = tf.random.experimental.stateless_split(seed, 4)
    apply = tf.random.stateless_uniform([], seeds[0]) < probability
    target = tf.random.stateless_uniform([], seeds[1], area[0], area[1]) * height * width
    log_ratio = tf.random.stateless_uniform([], seeds[2], math.log(aspect[0]), math.log(aspect[1]))
    ratio = tf.exp(log_ratio)
    h = tf.clip_by_value(tf.cast(tf.round(tf.sqrt(target * ratio)), tf.int32), 1, height)
    w = tf.clip_by_value(tf.cast(tf.round(tf.sqrt(target / ratio)), tf.int32), 1, width)
    corner = tf.random.stateless_uniform([2], seeds[3], 0, 1)
    top = tf.cast(corner[0] * tf.cast(height - h + 1, tf.float32), tf.int32)
    left = tf.cast(corner[1] * tf.cast(width - w + 1, tf.float32), tf.int32)
    rows = tf.range(height)[:, None]
    cols = tf.range(width)[None, :]
    box = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
    mask = tf.logical_and(apply, box)[:, :, None]
    return tf.where(mask, tf.zeros_like(image), image)


def channel_augment(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """CAJ-style channel exchange for visible images: keep RGB, or one random channel replicated,
    or grey (each a third of the time). Applied before normalisation (0..255 input)."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    choice = tf.random.stateless_uniform([], seeds[0], 0, 3, dtype=tf.int32)
    channel = tf.random.stateless_uniform([], seeds[1], 0, 3, dtype=tf.int32)
    single = tf.repeat(image[:, :, channel:channel + 1], 3, axis=2)
    grey = tf.repeat(tf.image.rgb_to_grayscale(image), 3, axis=2)
    return tf.switch_case(choice, [lambda: image, lambda: single, lambda: grey])


def crop_padding(height: int) -> int:
    """Padding of the random crop: AGW's 10 pixels at height 288, in proportion (at least 1)."""
    return max(1, round(10 * height / 288))


def augment(image: tf.Tensor, seed: tf.Tensor, image_size: Tuple[int, int], erasing: float = 0.5,
            channel: bool = False, contract: Optional[ImageContract] = None) -> tf.Tensor:
    """Pad + random crop back, horizontal flip, [channel exchange], normalise, random erasing.

    `image` is at the contract's size in 0..255 RGB (`contract.decode`); the normalisation is
    the contract's (default: `as_contract(image_size)`).

    The padding is AGW's 10 pixels at 288x144, scaled with the image height
    (`crop_padding`): 10 pixels would shift a 64x32 person by a third of its width.
    """
    contract = contract or as_contract(image_size)
    height, width = contract.image_size
    seeds = tf.random.experimental.stateless_split(seed, 4)
    if channel:
        image = channel_augment(image, seeds[3])
    pad = crop_padding(height)
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    image = tf.image.stateless_random_crop(padded, [height, width, 3], seeds[0])
    image = tf.image.stateless_random_flip_left_right(image, seeds[1])
    image = contract.normalize(image)
    if erasing > 0:
        image = random_erasing(image, seeds[2], probability=erasing)
    return image


def train_dataset(split: SplitArrays, image_size: Tuple[int, int], num_identities: int = 8,
                  num_instances: int = 4, replicas: int = 1, seed: int = 0, start_batch: int = 0,
                  erasing: float = 0.5, channel_augmentation: bool = False,
                  contract: Optional[ImageContract] = None) -> Tuple[tf.data.Dataset, IdentitySampler]:
    """Endless dataset of P×K paired batches; `replicas` whole P×K batches are concatenated
    so that `strategy.experimental_distribute_dataset` hands each replica a complete one.
    Images are decoded, resized and normalised by `contract` (default: `as_contract(image_size)`).

    `start_batch` is the sampler's global batch number to begin at (a resumed run passes the
    number of batches already consumed): sampling and augmentation depend only on
    (seed, batch number), so a resumed dataset continues the uninterrupted one exactly."""
    sampler = IdentitySampler(split.labels, split.modalities, num_identities, num_instances, seed)
    images = tf.constant(list(split.images), dtype=tf.string)
    labels = tf.constant(split.labels, dtype=tf.int32)
    contract = contract or as_contract(image_size)
    size = contract.image_size
    # The visible augmentation may exchange channels; infrared images are grey already.
    def load(v, i, counter):
        seed_v = tf.stack([tf.cast(seed, tf.int64), counter * 2])
        seed_i = tf.stack([tf.cast(seed, tf.int64), counter * 2 + 1])
        visible = augment(contract.decode(tf.gather(images, v)), seed_v, size, erasing, channel_augmentation, contract)
        infrared = augment(contract.decode(tf.gather(images, i)), seed_i, size, erasing, False, contract)
        return visible, infrared, tf.gather(labels, v), tf.gather(labels, i)

    dataset = tf.data.Dataset.from_generator(
        lambda: sampler.pairs(start_batch),
        output_signature=(tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.int64)))
    batch = num_identities * num_instances * replicas
    dataset = (dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
               .batch(batch, drop_remainder=True)
               .map(lambda v, i, lv, li: ({"visible": v, "infrared": i}, {"label_v": lv, "label_i": li}))
               .prefetch(tf.data.AUTOTUNE))
    return dataset, sampler


def eval_dataset(tfrecord_dir: str, split: str, contract, batch_size: int = 64) -> tf.data.Dataset:
    """Batches of {"image", "modality", "person_id", "camera", "path"} in file order, no augmentation.

    `contract`: the ImageContract that decodes, resizes and normalises (or a bare (H, W), see
    `as_contract`)."""
    contract = as_contract(contract)

    def prepare(features):
        image = contract.preprocess(features[schema.IMAGE])
        modality = modality_ids(features[schema.MODALITY])
        return {"image": image, "modality": modality, "person_id": features[schema.PERSON_ID],
                "camera": features[schema.CAMERA], "path": features[schema.PATH]}

    return (tf.data.TFRecordDataset(list_shards(tfrecord_dir, split), compression_type="GZIP")
            .map(schema.parse_example, num_parallel_calls=tf.data.AUTOTUNE)
            .map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(batch_size).prefetch(tf.data.AUTOTUNE))


def num_classes(split: SplitArrays) -> int:
    labels = split.labels
    if labels.min() < 0:
        raise InputError("train split holds records without a training label (-1)")
    unique = np.unique(labels)
    if not np.array_equal(unique, np.arange(len(unique))):
        raise InputError(f"train labels must be contiguous from 0; found {len(unique)} labels up to {unique.max()}")
    return len(unique)
