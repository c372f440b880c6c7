"""Import a released PyTorch model as a run folder: `python -m kdem_tf.import_checkpoint --from agw CKPT --out RUN_DIR`.

Reads an AGW checkpoint (mangye16/Cross-Modal-Re-ID-baseline's `train.py` saves
`{'net': state_dict, 'cmc': ..., 'mAP': ..., 'mINP': ..., 'epoch': ...}`; a bare state dict and a
`module.` prefix are accepted too) in torch's zip format without PyTorch, in its legacy format with
PyTorch, or as `.safetensors` (`kdem_tf.model.torch_checkpoint`), maps AGW's names onto the `paper`
network (`kdem_tf.model.agw_weights`) and writes a run folder as `kdem_tf.train` leaves one::

    RUN_DIR/config.yaml            the paper preset (AGW's settings; non-local width as the file says)
    RUN_DIR/image_contract.json    the preset's contract: 288x144, torchvision normalisation (AGW's)
    RUN_DIR/run_info.json          dataset, num_classes, image_size, embedding_dim, ablation "baseline",
                                   and "imported_from": the file, its sha256, AGW's stored mAP/mINP/rank-1/epoch
    RUN_DIR/inference_model.keras  the inference model (AGW's test-time `feat`, L2-normalised)
    RUN_DIR/classifier.npy         the identity classifier's kernel [2048, classes] (for --init-from)

`serving.export --run RUN_DIR`, `kdem_tf.evaluate --model RUN_DIR` (after that export, into
RUN_DIR/export) and `kdem_tf.train --init-from RUN_DIR` (also via the TFX pipeline's
`--set model.init_from=RUN_DIR`) take it. The folder is written beside RUN_DIR under a temporary
name and renamed when complete; a file whose keys or shapes do not fit is refused naming the first
offending key and its expected shape, and leaves nothing.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from typing import Optional, Sequence

import numpy as np

from kdem_tf import config as config_lib
from kdem_tf import datasets
from kdem_tf import cli_help
from kdem_tf.artifacts import (CLASSIFIER_FILE, CONFIG_FILE, INFERENCE_MODEL_FILE, RUN_INFO_FILE, atomic_write_text,
                               publish_folder)
from kdem_tf.image_contract import ImageContract

FORMATS = ("agw",)
# AGW's training identities per dataset (its data_manager): a class count names the dataset.


class CheckpointImportError(ValueError):
    """The checkpoint cannot become a run folder; the message names the file and the reason."""


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def imported_config(architecture: dict, base: Optional[config_lib.TrainConfig] = None) -> config_lib.TrainConfig:
    """`base` (the paper preset) with the non-local blocks the weights hold, as the baseline (AGW) row."""
    base = base or config_lib.load_config("paper")
    model = dataclasses.replace(base.model, non_local=architecture["non_local"],
                                non_local_inner_channels=architecture["non_local_inner_channels"])
    return dataclasses.replace(base, model=model, loss=dataclasses.replace(base.loss, ablation="baseline"))


def _dataset_of(num_classes: int, dataset: Optional[str], path: str) -> str:
    if dataset:
        return dataset
    known = {datasets.get(name).train_identities: name for name in datasets.names()
             if datasets.get(name).train_identities}
    if num_classes not in known:
        sizes = ", ".join(f"{datasets.get(name).title} {count}" for count, name in known.items())
        raise CheckpointImportError(f"{path}: {num_classes} classes is the training set of no known dataset ({sizes}); "
                                    f"say which data it was trained on with --dataset")
    return known[num_classes]


def build_imported_models(state: dict, config: config_lib.TrainConfig, source: str):
    """(train_model, inference_model) of `config` without KDEM, holding AGW's weights from `state`."""
    import tensorflow as tf

    from kdem_tf.model.agw_weights import agw_architecture, load_agw_state
    from kdem_tf.architecture import ABLATION_ROWS
    from kdem_tf.training.models import build_models

    num_classes = agw_architecture(state, source)["num_classes"]
    no_download = dataclasses.replace(config, model=dataclasses.replace(
        config.model, backbone_weights="none"))  # AGW's weights replace ImageNet's: nothing to download
    train_model, inference_model = build_models(no_download, num_classes, ABLATION_ROWS["baseline"],
                                                tf.distribute.get_strategy())
    load_agw_state(train_model, state, source)
    return train_model, inference_model


def _write_run_folder(folder: str, config, contract: ImageContract, run_info: dict, inference_model,
                      classifier_kernel: np.ndarray) -> None:
    atomic_write_text(os.path.join(folder, CONFIG_FILE), config_lib.to_yaml(config))
    contract.save(folder)
    atomic_write_text(os.path.join(folder, RUN_INFO_FILE), json.dumps(run_info, indent=2))
    np.save(os.path.join(folder, CLASSIFIER_FILE), classifier_kernel)
    inference_model.save(os.path.join(folder, INFERENCE_MODEL_FILE))


def import_agw_checkpoint(checkpoint: str, out_dir: str, dataset: Optional[str] = None,
                          base_config: Optional[config_lib.TrainConfig] = None) -> dict:
    """Writes the run folder `out_dir` from an AGW checkpoint; returns its run_info.

    Args:
        checkpoint: AGW's `.t`/`.pth` (zip or legacy format) or a `.safetensors` of its state dict.
        out_dir: the run folder to create (must not exist, or be empty).
        dataset: "sysu", "regdb", ...; default from the class count (395 SYSU-MM01, 206 RegDB).
        base_config: the config to build (default the paper preset; tests pass the tiny one).
    """
    from kdem_tf.model.agw_weights import agw_architecture
    from kdem_tf.model.torch_checkpoint import read_checkpoint

    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise CheckpointImportError(f"--out {out_dir}: exists and is not an empty folder; choose a new run folder")
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"{checkpoint}: no such checkpoint file")
    state, stored = read_checkpoint(checkpoint)
    architecture = agw_architecture(state, checkpoint)
    dataset = _dataset_of(architecture["num_classes"], dataset, checkpoint)
    config = imported_config(architecture, base_config)
    contract = ImageContract.from_config(config)
    train_model, inference_model = build_imported_models(state, config, checkpoint)
    run_info = {
        "dataset": dataset, "data_dir": None,
        "num_classes": architecture["num_classes"], "image_size": list(contract.image_size),
        "image_contract": contract.to_dict(), "embedding_dim": int(inference_model.output["embedding"].shape[-1]),
        "ablation": "baseline", "steps_per_epoch": 0, "total_steps": 0,
        "imported_from": {"format": "agw", "checkpoint": os.path.abspath(checkpoint),
                          "sha256": sha256_of(checkpoint), "stored": stored}}
    classifier_kernel = np.asarray(train_model.get_layer("classifier").kernel.numpy())

    def write(folder: str) -> None:
        os.makedirs(folder)
        _write_run_folder(folder, config, contract, run_info, inference_model, classifier_kernel)
    publish_folder(out_dir, write, replace=True)  # an empty folder (checked above) or none: whole or not at all
    return run_info


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = cli_help.parser("kdem_tf.import_checkpoint", "Import a released PyTorch re-ID model as a kdem-tf run folder.")
    parser.add_argument("--from", dest="source_format", choices=FORMATS, **cli_help.required(
        "the checkpoint's code base (agw: mangye16/Cross-Modal-Re-ID-baseline's embed_net)"))
    parser.add_argument("checkpoint", help="the checkpoint file: .t/.pth (torch zip or legacy format) or .safetensors")
    parser.add_argument("--out", **cli_help.required("the run folder to write (must not exist)"))
    parser.add_argument("--dataset", choices=datasets.names(),
                        help="the data it was trained on (default: from the class count, the registered datasets' "
                             "training identities)")
    args = parser.parse_args(argv)
    try:
        info = import_agw_checkpoint(args.checkpoint, args.out, args.dataset)
    except (OSError, ValueError) as error:  # TorchCheckpointError, BackboneWeightsError, CheckpointImportError, ...
        print(f"error: {error}", file=sys.stderr)
        return 2
    stored = info["imported_from"]["stored"]
    print(f"imported {args.checkpoint} ({info['num_classes']} classes, {info['dataset']}; AGW stored "
          + (", ".join(f"{k} {v:.4g}" for k, v in stored.items()) or "no metrics") + f") into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
