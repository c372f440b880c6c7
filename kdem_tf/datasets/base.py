"""What a dataset plug-in is: its splits, readers, protocol, options and synthetic stand-in.

A dataset is one module of `kdem_tf.datasets` holding one `Dataset` subclass and an instance
registered in the package's registry (`kdem_tf.datasets.register`). Preprocessing, training,
evaluation (raw folders and TFRecords), the report and the TFX components ask the registry;
no other module names a dataset. docs/datasets.md, "Add a dataset", walks through one.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from kdem_tf.datasets.files import DatasetError, ImageRecord
from kdem_tf.evaluation.trials import EvalOptions, EvaluationError, RankingRule, Trial

TRAIN = "train"  # every dataset's training split


@dataclasses.dataclass(frozen=True)
class SplitSpec:
    """A split preprocessing writes: its name and the one modality of its images (None: both)."""
    name: str
    modality: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class CliOption:
    """A command-line option a dataset owns: `flag`, argparse's keyword arguments, and the
    evaluation field it sets (an `EvalOptions` field; "" for a preprocessing option)."""
    flag: str
    kwargs: Mapping[str, Any]
    field: str = ""

    @property
    def dest(self) -> str:
        return self.kwargs.get("dest") or self.flag.lstrip("-").replace("-", "_")


@dataclasses.dataclass(frozen=True)
class SplitSide:
    """One stored evaluation split of a preprocessed dataset, as its trials read it."""
    paths: Sequence[str]
    person_ids: Sequence[int]
    cameras: Sequence[int]
    modalities: Sequence[str]


class Dataset:
    """Base class of a dataset plug-in. Set the class attributes and implement the readers."""

    name: str = ""                       # the --dataset value
    title: str = ""                      # e.g. "SYSU-MM01"
    data_root_help: str = "dataset root in its published layout"
    splits: Tuple[SplitSpec, ...] = ()   # the splits preprocessing writes, train first
    eval_splits: Tuple[str, str] = ("query", "gallery")  # (query side, gallery side) of the TFRecords
    ranking: RankingRule = RankingRule("plain")
    preprocess_options: Tuple[CliOption, ...] = ()
    eval_options: Tuple[CliOption, ...] = ()
    default_direction: Optional[str] = None
    sampling: str = "single"             # the gallery-sampling label of its results
    max_trials: int = 10
    train_identities: Optional[int] = None  # identities of the published training set (names a model's data)
    synthetic_defaults: Optional[Dict[str, int]] = None  # identities, images_per_camera; None: no stand-in
    # fn(out, identities, seed, image_size, images_per_camera, overwrite, progress) -> root; None: no stand-in
    synthetic_writer = None

    # ------------------------------------------------------------------ preprocessing

    def read_splits(self, root: str, options: Mapping[str, Any]) -> Dict[str, List[ImageRecord]]:
        """{split name: records} of the raw data; layout errors raise DatasetError naming the file."""
        raise NotImplementedError

    def image_root(self, root: str) -> str:
        """The folder record paths are relative to (a manifest: the CSV's folder)."""
        return root

    def split_modalities(self) -> Dict[str, Optional[str]]:
        """{split: its one modality, or None when it may hold both}."""
        return {s.name: s.modality for s in self.splits}

    def split_names(self) -> Tuple[str, ...]:
        return tuple(s.name for s in self.splits)

    # ------------------------------------------------------------------ evaluation

    def trials_from_folder(self, root: str, options: EvalOptions) -> List[Trial]:
        """The protocol's trials from the raw folder."""
        raise NotImplementedError

    def trials_from_records(self, sides: Tuple[SplitSide, SplitSide], options: EvalOptions,
                            settings: Mapping[str, Any], where: str) -> List[Trial]:
        """The protocol's trials from the two evaluation splits of a preprocessed dataset; `settings`
        are the preprocessing settings recorded in its summary.json, `where` names it in errors."""
        raise NotImplementedError

    def check_options(self, options: EvalOptions) -> EvalOptions:
        """Validated options with this dataset's defaults filled in (direction)."""
        if not 1 <= options.trials <= self.max_trials:
            raise EvaluationError(f"{self.name}: trials must be 1..{self.max_trials}, got {options.trials}")
        if options.direction is None and self.default_direction is not None:
            options = dataclasses.replace(options, direction=self.default_direction)
        return options

    def describe(self, options: EvalOptions, source: str) -> str:
        """The title of result tables (`source`: the data root or the TFRecords folder)."""
        return self.title or self.name

    def sampling_label(self, options: EvalOptions) -> str:
        """How its galleries are drawn, as result rows are labelled (kdem_tf.evaluation.variants)."""
        return options.sampling or self.sampling

    def eval_settings(self, options: EvalOptions) -> Dict[str, Any]:
        """The protocol settings recorded in metrics.json."""
        return {"direction": options.direction} if self.default_direction else {}

    def recorded_trials(self, trials: Sequence[Trial]) -> int:
        return len(trials)

    # ------------------------------------------------------------------ synthetic stand-in

    def generate_synthetic(self, out: str, identities: Optional[int] = None, seed: int = 0,
                           image_size: Tuple[int, int] = (64, 32), images_per_camera: Optional[int] = None,
                           overwrite: bool = False, progress: bool = True) -> str:
        """Writes a synthetic dataset in this layout (kdem_tf.data.synthetic_people renders the people);
        unset counts take `synthetic_defaults`. Returns its absolute path."""
        if self.synthetic_writer is None or not self.synthetic_defaults:
            raise DatasetError(f"dataset {self.name!r} has no synthetic stand-in: give a data root")
        return self.synthetic_writer(out, identities or self.synthetic_defaults["identities"], seed, image_size,
                                     images_per_camera or self.synthetic_defaults["images_per_camera"], overwrite,
                                     progress)

    def montage(self, root: str, rows: int) -> List[List[str]]:
        """Image files of a synthetic stand-in to show side by side, one list per row ([]: none)."""
        return []


def direction_option(directions: Sequence[str]) -> CliOption:
    """The --direction option of datasets searched both ways (each sets its `default_direction`)."""
    return CliOption("--direction", dict(choices=tuple(sorted(directions)),
                                         help="query -> gallery: v2i (visible queries) or i2v (infrared queries); "
                                              "default: the dataset's (RegDB v2i, LLCM i2v; LLCM v2i is "
                                              "DEEN/test.py's [2, 1] mode, see docs/evaluation.md)"), "direction")
