"""Runs the per-modality TFLite embedders written by `serving.export.tflite` (evaluation, device checks).

A TFLite folder holds `visible.tflite`, `infrared.tflite` and `tflite_info.json` (image
contract, quantisation, tensor dtypes). Images are uint8 [N, H, W, 3] RGB at the contract's
size; `TFLiteEmbedder.embed_bytes` decodes and resizes encoded files with the contract first.
The interpreter runs XNNPACK (TFLite's default CPU delegate) on all cores.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Optional, Sequence

import numpy as np

from kdem_tf.artifacts import TFLITE_INFO_FILE
from kdem_tf.image_contract import MODALITIES, ContractError, ImageContract

INFO_FILE = TFLITE_INFO_FILE  # the file name is kdem_tf.artifacts'
# none: float32; float16: float16 weights; int8: integer stem + trunk, float head (pooling, BN-neck,
# L2: the layers TFLite's quantisation debugger found sensitive); int8-full: every op in int8.
QUANTIZATIONS = ("none", "float16", "int8", "int8-full")
DEFAULT_CALIBRATION_IMAGES = 64  # per modality, for the int8 quantisations


class TFLiteEmbedderError(ValueError):
    """A TFLite folder or an input that does not fit it; the message names the file and what was expected."""


def model_file(modality: str) -> str:
    """"visible" → "visible.tflite"."""
    return f"{modality}.tflite"


def is_tflite_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, INFO_FILE))


def read_tflite_info(folder: str) -> dict:
    path = os.path.join(folder, INFO_FILE)
    if not os.path.isfile(path):
        raise TFLiteEmbedderError(f"{path}: missing (write it with python -m serving.export --tflite)")
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as error:
            raise TFLiteEmbedderError(f"{path}: not JSON ({error})") from None


class TFLiteEmbedder:
    """The TFLite models of a folder, one interpreter per modality, loaded on first use.

    Args:
        folder: a folder written by `python -m serving.export --tflite`.
        num_threads: interpreter threads (default: all cores).
    """

    def __init__(self, folder: str, num_threads: Optional[int] = None):
        self.folder = folder
        self.info = read_tflite_info(folder)
        try:
            self.contract = ImageContract.from_dict(self.info["contract"], where=os.path.join(folder, INFO_FILE))
        except (KeyError, ContractError) as error:
            raise TFLiteEmbedderError(f"{os.path.join(folder, INFO_FILE)}: bad or missing 'contract' ({error})") from None
        self.image_size = self.contract.image_size
        self.embedding_dim = int(self.info.get("embedding_dim", 0))
        self.num_threads = num_threads or os.cpu_count() or 1
        self._interpreters: Dict[str, object] = {}
        self._allocated: Dict[str, tuple] = {}  # modality -> input shape the interpreter is allocated for

    def path(self, modality: str) -> str:
        return os.path.join(self.folder, model_file(modality))

    def interpreter(self, modality: str):
        if modality not in MODALITIES:
            raise TFLiteEmbedderError(f"{self.folder}: modality must be one of {list(MODALITIES)}, got {modality!r}")
        if modality not in self._interpreters:
            import tensorflow as tf

            path = self.path(modality)
            if not os.path.isfile(path):
                raise TFLiteEmbedderError(f"{path}: missing; this folder has no {modality} model")
            interpreter = tf.lite.Interpreter(model_path=path, num_threads=self.num_threads)
            interpreter.allocate_tensors()
            self._interpreters[modality] = interpreter
        return self._interpreters[modality]

    def embed_images(self, images: np.ndarray, modality: str, source: str = "images") -> np.ndarray:
        """uint8 [N, H, W, 3] RGB at the contract's size, all of one modality → float32 [N, D]."""
        images = np.asarray(images)
        expected = (*self.image_size, 3)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise TFLiteEmbedderError(f"{source}: shape {tuple(images.shape)}, expected [N, {expected[0]}, "
                                      f"{expected[1]}, 3] uint8 ({self.path(modality)} takes the contract's size)")
        if images.dtype != np.uint8:
            raise TFLiteEmbedderError(f"{source}: dtype {images.dtype}, expected uint8 0..255")
        interpreter = self.interpreter(modality)
        inp = interpreter.get_input_details()[0]
        fixed = int(inp["shape"][0])  # the export's static batch (1); -1 in models with a dynamic one
        if fixed > 0 and len(images) != fixed:
            return np.concatenate([self.embed_images(images[i:i + fixed], modality, source)
                                   for i in range(0, len(images), fixed)]) if len(images) else \
                np.zeros((0, self.embedding_dim), np.float32)
        if fixed <= 0 and self._allocated.get(modality) != images.shape:  # dynamic batch: size it to N
            interpreter.resize_tensor_input(inp["index"], images.shape)
            interpreter.allocate_tensors()
            self._allocated[modality] = images.shape
        out = interpreter.get_output_details()[0]
        interpreter.set_tensor(inp["index"], self._quantize_input(images, inp))
        interpreter.invoke()
        embedding = interpreter.get_tensor(out["index"])
        scale, zero_point = out.get("quantization", (0.0, 0))
        if out["dtype"] != np.float32 and scale:
            embedding = (embedding.astype(np.float32) - zero_point) * scale
        return np.array(embedding, dtype=np.float32)

    @staticmethod
    def _quantize_input(images: np.ndarray, detail: dict) -> np.ndarray:
        scale, zero_point = detail.get("quantization", (0.0, 0))
        if detail["dtype"] == np.uint8 and scale and (abs(scale - 1.0) > 1e-9 or zero_point != 0):
            quantized = np.round(images.astype(np.float32) / scale + zero_point)
            return np.clip(quantized, 0, 255).astype(np.uint8)
        return images.astype(detail["dtype"])

    def decode(self, encoded: bytes, source: str = "image") -> np.ndarray:
        """Encoded JPEG/PNG/BMP → uint8 [H, W, 3] at the contract's size (contract.decode, rounded)."""
        import tensorflow as tf

        try:
            image = self.contract.decode(tf.constant(encoded))
        except (tf.errors.InvalidArgumentError, ValueError) as error:
            raise TFLiteEmbedderError(f"{source}: not a decodable image ({str(error).splitlines()[0]})") from None
        return np.round(image.numpy()).astype(np.uint8)

    def embed_bytes(self, encoded: Sequence[bytes], modalities: Sequence[str],
                    sources: Optional[Sequence[str]] = None, flip: bool = False) -> np.ndarray:
        """Encoded images of any modalities → float32 [N, D], in input order (one invoke per modality);
        flip: L2(e(x) + e(mirror(x))) (kdem_tf.tta)."""
        sources = list(sources) if sources is not None else [f"image {i}" for i in range(len(encoded))]
        if len(modalities) != len(encoded):
            raise TFLiteEmbedderError(f"{len(encoded)} images but {len(modalities)} modalities")
        parts = {}
        for modality in sorted(set(modalities)):
            rows = [i for i, m in enumerate(modalities) if m == modality]
            images = np.stack([self.decode(encoded[i], sources[i]) for i in rows])
            source = f"{sources[rows[0]]} and the other {len(rows) - 1} {modality} images"
            embedding = self.embed_images(images, modality, source)
            if flip:
                from kdem_tf.tta import combine_flip

                embedding = combine_flip(embedding, self.embed_images(np.ascontiguousarray(images[:, :, ::-1]),
                                                                      modality, source))
            parts[modality] = (rows, embedding)
        dim = next(iter(parts.values()))[1].shape[1]
        out = np.zeros((len(encoded), dim), np.float32)
        for rows, embedding in parts.values():
            out[rows] = embedding
        return out


def embed_batches(folder: str, batches, total: int, flip: bool = False,
                  error_type=TFLiteEmbedderError) -> np.ndarray:
    """Embeds (encoded images, modalities) batches with the TFLite models of `folder`: [N, D] float32
    in input order. Images are decoded and resized with the folder's contract and cast to uint8;
    flip: flip test-time augmentation (kdem_tf.tta), L2(e(x) + e(mirror(x))), as the SavedModel's
    serving_flip. Errors are raised as `error_type` (the evaluator's own)."""
    import sys
    from tqdm import tqdm

    try:
        embedder = TFLiteEmbedder(folder)
        out = []
        with tqdm(total=total, desc=f"embedding (TFLite, {embedder.num_threads} threads)", unit="img",
                  file=sys.stderr) as bar:
            for encoded, modalities in batches:
                out.append(embedder.embed_bytes(encoded, modalities, flip=flip))
                bar.update(len(encoded))
    except TFLiteEmbedderError as error:
        raise error_type(str(error)) from None
    return np.concatenate(out)
