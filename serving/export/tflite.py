"""Edge embedder: one TFLite model per modality (float32, float16 or full-integer int8).

    python -m serving.export --run RUN_DIR --tflite OUT_DIR --quantize none|float16|int8 \
        [--calibration TFRECORDS] [--calibration-images N]

writes, atomically (a hidden temp folder beside OUT_DIR, then one rename):

- `visible.tflite`, `infrared.tflite`: each is ONLY its modality's stem + the shared
  trunk + pooling + BN-neck + L2 normalisation (an infrared camera carries no visible
  stem). Input `image` [1, H, W, 3] RGB 0..255 at the contract's size, uint8 (float32 for
  `int8`, below) (batch fixed at 1:
  a camera embeds frame by frame, and with every shape static XNNPACK takes the whole
  graph; with a dynamic batch the non-local blocks' SHAPE/RESHAPE ops made tensors
  dynamic and TFLite ran without XNNPACK); the contract's normalisation runs inside the
  model. Output `embedding` float32 [1, D], L2-normalised.
- `tflite_info.json`: the image contract, the quantisation settings, each file's input and
  output dtype/shape/quantisation parameters, and the batch dimension.

Two integer variants, both post-training quantisation calibrated on that modality's
training-split images from the TFRecords (both modalities must be in the calibration split):

- `int8`: the stem and the trunk (every convolution, residual add and pooling inside
  ResNet-50) in int8, the head in float32: the pooling (GeM/avg), the BN-neck and the L2
  normalisation. TFLite's quantisation debugger (`int8_layer_errors`, printed by
  `benchmarks/bench_edge.py`) puts the largest per-layer errors there: the BN-neck's
  affine output (a few channels with a tiny running variance stretch its int8 range)
  and the L2 norm's sum of squares; fully quantised, the embedding of a trained model
  lost its direction (cosine 0.09 to float on the demo model) while every convolution's
  error stayed below 0.3 quantisation steps. The input is float32 0..255 (quantised to
  int8 inside, first op), the output float32.
- `int8-full`: every op in int8 (TFLITE_BUILTINS_INT8), for integer-only accelerators; the
  uint8 image is the quantised input (scale/zero point in tflite_info.json, applied by
  `kdem_tf.evaluation.tflite_embedder`), the output float32. Much less accurate (see docs/serving.md).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Dict, Optional, Sequence

import numpy as np
import tensorflow as tf

from kdem_tf.artifacts import IMAGE_CONTRACT_FILE, TFLITE_INFO_FILE, publish_folder
from kdem_tf.image_contract import INFRARED, MODALITIES, VISIBLE, ContractError, ImageContract
from kdem_tf.evaluation.tflite_embedder import DEFAULT_CALIBRATION_IMAGES, QUANTIZATIONS, model_file
from serving.export.run_folder import load_run

BATCH = 1  # the batch dimension of the exported models (static: see the module docstring)


# Layer names of kdem_tf.model.model's inference model; `find_embedder_parts` is the only reader.
STEM_LAYER_NAMES = {VISIBLE: "visible_stem", INFRARED: "infrared_stem"}
TRUNK_LAYER_NAME = "trunk"
POOLING_LAYER_NAMES = ("gem_pooling", "avg_pooling")
BN_NECK_LAYER_NAME = "bn_neck"
L2_LAYER_NAME = "embedding"


class TFLiteExportError(ValueError):
    """The run, the calibration data or the options cannot give a TFLite embedder."""


@dataclasses.dataclass
class EmbedderParts:
    """The layers one modality's embedder runs, in order: stem, trunk, pooling, BN-neck (optional), L2."""
    stem: object
    trunk: object
    pooling: object
    bn_neck: Optional[object]
    l2: object


def find_embedder_parts(inference_model, modality: str) -> EmbedderParts:
    """Resolves, by name, the layers of one modality's path through `inference_model`.

    This is the one place that knows kdem_tf.model.model's layer names (the constants above):
    adapt it when those change. A missing name raises TFLiteExportError naming it and the
    layers the model does have.
    """
    names = [layer.name for layer in inference_model.layers]

    def layer(name: str, required: bool = True):
        if name in names:
            return inference_model.get_layer(name)
        if required:
            raise TFLiteExportError(f"inference model {inference_model.name!r}: no layer {name!r} "
                                    f"(needed for the {modality} TFLite embedder); it has {names}")
        return None

    pooling = next((layer(n) for n in POOLING_LAYER_NAMES if n in names), None)
    if pooling is None:
        raise TFLiteExportError(f"inference model {inference_model.name!r}: no pooling layer "
                                f"(one of {list(POOLING_LAYER_NAMES)}); it has {names}")
    return EmbedderParts(stem=layer(STEM_LAYER_NAMES[modality]), trunk=layer(TRUNK_LAYER_NAME),
                         pooling=pooling, bn_neck=layer(BN_NECK_LAYER_NAME, required=False),
                         l2=layer(L2_LAYER_NAME))


class ModalityEmbedder(tf.Module):
    """uint8 (or float 0..255) images → L2-normalised embeddings through one modality's layers."""

    def __init__(self, parts: EmbedderParts, contract: ImageContract):
        super().__init__(name="modality_embedder")
        self.parts = parts
        self.contract = contract

    def embed(self, images):
        x = self.contract.normalize(images)
        x = self.parts.trunk(self.parts.stem(x, training=False), training=False)
        x = self.parts.pooling(x, training=False)
        if self.parts.bn_neck is not None:
            x = self.parts.bn_neck(x, training=False)
        return {"embedding": self.parts.l2(x)}

    def concrete_function(self, input_dtype):
        height, width = self.contract.image_size
        spec = tf.TensorSpec([BATCH, height, width, 3], input_dtype, name="image")
        return tf.function(self.embed, input_signature=[spec]).get_concrete_function()


def load_contract(run_dir: str, run_info: dict) -> ImageContract:
    """The run's image_contract.json; runs written before it existed: torchvision at run_info's size."""
    try:
        return ImageContract.load(run_dir)
    except ContractError:
        if not os.path.exists(os.path.join(run_dir, IMAGE_CONTRACT_FILE)):
            return ImageContract(tuple(run_info["image_size"]), "torchvision")
        raise


def calibration_images(tfrecord_dir: str, contract: ImageContract, per_modality: int) -> Dict[str, np.ndarray]:
    """{modality: uint8 [n, H, W, 3]}: up to `per_modality` training-split images of each modality,
    evenly spread over the split, decoded and resized with the contract."""
    from kdem_tf.data.input_pipeline import InputError, load_split

    try:
        split = load_split(tfrecord_dir, "train")
    except InputError as error:
        raise TFLiteExportError(f"--calibration {tfrecord_dir}: {error}") from None
    out = {}
    for modality in MODALITIES:
        index = np.flatnonzero(split.modalities == MODALITIES.index(modality))
        if len(index) == 0:
            counts = {m: int(np.sum(split.modalities == i)) for i, m in enumerate(MODALITIES)}
            raise TFLiteExportError(f"--calibration {tfrecord_dir}: the train split has no {modality} images "
                                    f"(counts {counts}); int8 calibration needs images of both modalities")
        picks = index[np.unique(np.linspace(0, len(index) - 1, min(per_modality, len(index))).round().astype(int))]
        images = [contract.decode(tf.constant(split.images[i])) for i in picks]
        out[modality] = np.stack([np.round(im.numpy()).astype(np.uint8) for im in images])
    return out


# The head `int8` keeps in float: ops of these layers (tensor names "<layer>[_N]/...").
FLOAT_HEAD_LAYERS = POOLING_LAYER_NAMES + (BN_NECK_LAYER_NAME, L2_LAYER_NAME)


def _int8_converter(embedder: ModalityEmbedder, calibration: Optional[np.ndarray], full: bool):
    """A converter set up for post-training integer quantisation on `calibration` (uint8 images)."""
    if calibration is None or len(calibration) == 0:
        raise TFLiteExportError("--quantize int8 needs calibration images (--calibration TFRECORDS)")
    # The graph takes float 0..255; int8-full lets the converter quantise that input to uint8.
    converter = tf.lite.TFLiteConverter.from_concrete_functions([embedder.concrete_function(tf.float32)], embedder)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image[None].astype(np.float32)] for image in calibration)
    if full:
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.float32
    return converter


def head_tensor_names(model_content: bytes) -> list:
    """Output tensor names of the head's ops (FLOAT_HEAD_LAYERS) in a converted (e.g. calibrated)
    model, plus the model's output: the nodes `int8` keeps in float."""
    interpreter = tf.lite.Interpreter(model_content=model_content)
    pattern = re.compile(r"^(%s)(_\d+)?/" % "|".join(map(re.escape, FLOAT_HEAD_LAYERS)))
    names = [d["name"] for d in interpreter.get_tensor_details() if pattern.match(d["name"])]
    if not names:
        raise TFLiteExportError(f"no op of the head layers {list(FLOAT_HEAD_LAYERS)} in the converted model")
    return names + [d["name"] for d in interpreter.get_output_details()]


def _int8_float_head(embedder: ModalityEmbedder, calibration: Optional[np.ndarray]) -> bytes:
    """int8 with the head in float: one calibration, then the quantiser with the head's nodes
    denylisted. This is what tf.lite.experimental.QuantizationDebugger does for its
    `denylisted_nodes` (calibrate only, then `mlir_quantize`), without building its debug model."""
    from tensorflow.lite.python import convert as tflite_convert

    converter = _int8_converter(embedder, calibration, full=False)
    converter.experimental_mlir_quantizer = True
    converter._experimental_calibrate_only = True  # noqa: SLF001  (the debugger's own switch)
    calibrated = converter.convert()
    return tflite_convert.mlir_quantize(calibrated, denylisted_nodes=head_tensor_names(calibrated))


def int8_layer_errors(embedder: ModalityEmbedder, calibration: np.ndarray, debug_images: int = 16) -> list:
    """Per-op error of the fully quantised model (TFLite's quantisation debugger): a list of
    {op, tensor, rmse_over_scale} (root-mean-square error in quantisation steps), worst first."""
    import csv
    import io

    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=_int8_converter(embedder, calibration, full=False),
        debug_dataset=lambda: ([image[None].astype(np.float32)] for image in calibration[:debug_images]))
    debugger.run()
    buffer = io.StringIO()
    debugger.layer_statistics_dump(buffer)
    rows = []
    for row in csv.DictReader(io.StringIO(buffer.getvalue())):
        scale = float(row["scale"])
        rows.append({"op": row["op_name"], "tensor": row["tensor_name"],
                     "rmse_over_scale": float(np.sqrt(float(row["mean_squared_error"])) / scale) if scale else 0.0})
    return sorted(rows, key=lambda r: -r["rmse_over_scale"])


def convert(embedder: ModalityEmbedder, quantize: str, calibration: Optional[np.ndarray] = None) -> bytes:
    """One modality's .tflite bytes for a `quantize` of QUANTIZATIONS (see the module docstring)."""
    if quantize not in QUANTIZATIONS:
        raise TFLiteExportError(f"--quantize: must be one of {list(QUANTIZATIONS)}, got {quantize!r}")
    if quantize == "int8-full":
        return _int8_converter(embedder, calibration, full=True).convert()
    if quantize == "int8":
        return _int8_float_head(embedder, calibration)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([embedder.concrete_function(tf.uint8)], embedder)
    if quantize == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    return converter.convert()


def tensor_description(detail: dict) -> dict:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return {"name": detail["name"], "dtype": np.dtype(detail["dtype"]).name,
            "shape": [int(v) for v in detail.get("shape_signature", detail["shape"])],
            "quantization": {"scale": float(scale), "zero_point": int(zero_point)}}


def describe_model(path: str) -> dict:
    interpreter = tf.lite.Interpreter(model_path=path)
    return {"file": os.path.basename(path), "bytes": os.path.getsize(path),
            "input": tensor_description(interpreter.get_input_details()[0]),
            "output": tensor_description(interpreter.get_output_details()[0])}


def export_tflite(inference_model, contract: ImageContract, out_dir: str, quantize: str = "none",
                  calibration_dir: Optional[str] = None,
                  calibration_per_modality: int = DEFAULT_CALIBRATION_IMAGES,
                  extra_info: Optional[dict] = None, modalities: Sequence[str] = MODALITIES) -> str:
    """Writes OUT_DIR/{visible,infrared}.tflite + tflite_info.json atomically; returns out_dir.

    `modalities` limits the export to some cameras (e.g. only "infrared": one file).

    Raises TFLiteExportError when out_dir exists, int8 lacks calibration data, or a layer is missing.
    """
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir):
        raise FileExistsError(f"{out_dir}: already exists (the TFLite export writes a new folder)")
    if quantize not in QUANTIZATIONS:
        raise TFLiteExportError(f"--quantize: must be one of {list(QUANTIZATIONS)}, got {quantize!r}")
    calibration: Dict[str, np.ndarray] = {}
    if quantize.startswith("int8"):
        if not calibration_dir:
            raise TFLiteExportError("--quantize int8 needs --calibration TFRECORDS (training-split images)")
        calibration = calibration_images(calibration_dir, contract, calibration_per_modality)
    # (both modalities must be in the calibration split even when one is exported)
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown or not modalities:
        raise TFLiteExportError(f"modalities: expected some of {list(MODALITIES)}, got {list(modalities)}")
    parts = {m: find_embedder_parts(inference_model, m) for m in modalities}

    def write(folder: str) -> None:
        os.makedirs(folder)
        models = {}
        for modality in modalities:
            data = convert(ModalityEmbedder(parts[modality], contract), quantize, calibration.get(modality))
            path = os.path.join(folder, model_file(modality))
            with open(path, "wb") as f:
                f.write(data)
            models[modality] = describe_model(path)
        info = tflite_info(contract, quantize, calibration_dir, calibration, models)
        info.update(extra_info or {})
        with open(os.path.join(folder, TFLITE_INFO_FILE), "w") as f:
            json.dump(info, f, indent=2)

    return publish_folder(out_dir, write)


def tflite_info(contract: ImageContract, quantize: str, calibration_dir: Optional[str],
                calibration: Dict[str, np.ndarray], models: Dict[str, dict]) -> dict:
    """The content of tflite_info.json: contract, batch, embedding size, quantisation, each model."""
    first = next(iter(models.values()))
    return {"format": "kdem-tflite/1", "contract": contract.to_dict(), "channel_order": contract.channel_order,
            "batch": BATCH, "embedding_dim": int(first["output"]["shape"][-1]),
            "quantization": {"mode": quantize,
                             "weights": {"none": "float32", "float16": "float16"}.get(quantize, "int8"),
                             "activations": "int8" if quantize.startswith("int8") else "float32",
                             "float_layers": list(FLOAT_HEAD_LAYERS) if quantize == "int8" else [],
                             "calibration": None if not quantize.startswith("int8") else {
                                 "tfrecords": os.path.abspath(calibration_dir), "split": "train",
                                 "images": {m: int(len(v)) for m, v in calibration.items()}}},
            "models": models}


def export_run_tflite(run_dir: str, out_dir: str, quantize: str = "none", calibration_dir: Optional[str] = None,
                      calibration_per_modality: int = DEFAULT_CALIBRATION_IMAGES,
                      modalities: Sequence[str] = MODALITIES) -> str:
    """`export_tflite` of a training run folder (its inference_model.keras and image contract)."""
    model, run_info = load_run(run_dir)
    contract = load_contract(run_dir, run_info)
    extra = {k: run_info[k] for k in ("dataset", "num_classes") if k in run_info}
    extra["run_dir"] = os.path.abspath(run_dir)
    return export_tflite(model, contract, out_dir, quantize, calibration_dir, calibration_per_modality, extra,
                         modalities)


def run_cli(args) -> int:
    """Runs the --tflite export of parsed arguments; prints the files, or one error line (exit 2)."""
    import sys

    if args.calibration_images < 1:
        print("error: --calibration-images must be >= 1", file=sys.stderr)
        return 2
    try:
        out = export_run_tflite(args.run, args.tflite, args.quantize, args.calibration, args.calibration_images)
    except (TFLiteExportError, ContractError, FileNotFoundError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    with open(os.path.join(out, TFLITE_INFO_FILE)) as f:
        info = json.load(f)
    for modality, model in info["models"].items():
        print(f"exported {os.path.join(out, model['file'])} ({model['bytes'] / 1e6:.1f} MB, {args.quantize}, "
              f"input {model['input']['dtype']} {model['input']['shape']})")
    return 0
