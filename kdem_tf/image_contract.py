"""The image contract: the one definition of what pixels a kdem-tf model sees.

Every stage calls this module instead of holding its own constants: the Beam writer,
the tf.data training and evaluation pipelines, the raw-folder and TFRecord evaluators,
the SavedModel export, the gallery index and the server. It owns

- the modality vocabulary (`VISIBLE`, `INFRARED`: the only spelling of the two names),
- the image size (H, W) a model was trained at,
- the one resize implementation (`resize`): TensorFlow's antialiased resize, so that
  downscaling low-pass filters as AGW's PIL path does, in every stage the same op,
- the channel order and normalisation, which follow the backbone weights:
  `torchvision` (RGB, /255, ImageNet mean/std: torchvision's and timm's ResNet-50, AGW)
  or `caffe` (BGR, per-channel mean subtraction without scaling: Keras'
  `keras.applications.ResNet50(weights="imagenet")`, `resnet50.preprocess_input`).

A contract is built once from the training config (`ImageContract.from_config`),
written into the run folder (`image_contract.json`) and baked into the exported
SavedModel (`assets.extra/kdem_info.json` and the graph itself).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, Optional, Sequence, Tuple

from kdem_tf.artifacts import IMAGE_CONTRACT_FILE

# ----------------------------------------------------------------------------- modality vocabulary

VISIBLE = "visible"
INFRARED = "infrared"
MODALITIES = (VISIBLE, INFRARED)
MODALITY_INDEX = {VISIBLE: 0, INFRARED: 1}


class ContractError(ValueError):
    """A value outside the contract (unknown modality or normalisation, weights that do not fit)."""


def modality_index(name: str, where: str = "modality") -> int:
    """"visible" → 0, "infrared" → 1; anything else raises ContractError naming `where`."""
    try:
        return MODALITY_INDEX[name]
    except (KeyError, TypeError):
        raise ContractError(f"{where}: must be one of {list(MODALITIES)}, got {name!r}") from None


def modality_ids(modality):
    """The one encoder of modality names inside TensorFlow graphs: a string tensor of any shape →
    int32 ids of MODALITY_INDEX (visible 0, infrared 1); any other name fails with InvalidArgument."""
    import tensorflow as tf

    names = tf.constant(list(MODALITY_INDEX))
    known = tf.equal(tf.expand_dims(modality, -1), names)
    check = tf.debugging.Assert(tf.reduce_all(tf.reduce_any(known, axis=-1)),
                                [f"modality must be one of {list(MODALITIES)}"])
    with tf.control_dependencies([check]):
        return tf.reduce_sum(tf.cast(known, tf.int32) * tf.constant(list(MODALITY_INDEX.values()), tf.int32), -1)


# ----------------------------------------------------------------------------- normalisations

# name -> channel order, scale applied to 0..255 values, mean and std (after scaling, in the
# channel order of the model input).
NORMALIZATIONS: Dict[str, Dict[str, Any]] = {
    "torchvision": {"channel_order": "RGB", "scale": 1.0 / 255.0,
                    "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)},
    "caffe": {"channel_order": "BGR", "scale": 1.0,
              "mean": (103.939, 116.779, 123.68), "std": (1.0, 1.0, 1.0)},
}

# How each kind of backbone weights was trained. "none" (random init) uses torchvision's.
_WEIGHTS_NORMALIZATION = {"imagenet": "caffe", "keras": "caffe", "torchvision": "torchvision", "none": "torchvision"}
_KERAS_SUFFIXES = (".h5", ".keras", ".weights.h5")
_TORCH_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def normalization_for_weights(backbone_weights: Optional[str]) -> str:
    """The normalisation a kind of backbone weights was trained with.

    "imagenet" (Keras' download) and Keras weight files (.h5, .keras) → "caffe";
    "torchvision" (download) and PyTorch-side files (.safetensors, .pth) → "torchvision";
    "none"/None (random initialisation) → "torchvision".
    """
    if backbone_weights in (None, "", "none"):
        return "torchvision"
    if backbone_weights in _WEIGHTS_NORMALIZATION:
        return _WEIGHTS_NORMALIZATION[backbone_weights]
    lower = str(backbone_weights).lower()
    if lower.endswith(_KERAS_SUFFIXES):
        return "caffe"
    if lower.endswith(_TORCH_SUFFIXES):
        return "torchvision"
    raise ContractError(f"backbone weights {backbone_weights!r}: cannot tell how they were trained; expected "
                        f"'imagenet', 'torchvision', 'none' or a file ending in one of "
                        f"{list(_KERAS_SUFFIXES + _TORCH_SUFFIXES)}")


def resolve_normalization(requested: str, backbone_weights: Optional[str]) -> str:
    """"auto" → the weights' normalisation; an explicit name must equal it (else ContractError naming both)."""
    expected = normalization_for_weights(backbone_weights)
    if requested in (None, "", "auto"):
        return expected
    if requested not in NORMALIZATIONS:
        raise ContractError(f"data.normalization: unknown {requested!r}; known: auto, {', '.join(NORMALIZATIONS)}")
    if requested != expected and backbone_weights not in (None, "", "none"):
        raise ContractError(f"data.normalization={requested!r} does not fit model.backbone_weights="
                            f"{backbone_weights!r}, which were trained with {expected!r} normalisation; "
                            f"use data.normalization=auto")
    return requested


# ----------------------------------------------------------------------------- decoding

JPEG_DCT_METHOD = "INTEGER_ACCURATE"  # libjpeg's ISLOW: PIL's JPEG pixels (AGW's loader), bit for bit


def decode_rgb(encoded):
    """Encoded image bytes (scalar tf.string) → uint8 [h, w, 3] RGB at the file's own size.

    JPEGs are decoded with the accurate integer IDCT, which gives PIL's pixels exactly
    (TF's default fast IDCT differs by about 1 grey level on average); PNG/BMP/GIF are lossless."""
    import tensorflow as tf

    image = tf.cond(tf.io.is_jpeg(encoded),
                    lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method=JPEG_DCT_METHOD),
                    lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False))
    image.set_shape([None, None, 3])
    return image


# ----------------------------------------------------------------------------- the contract

CONTRACT_FILE = IMAGE_CONTRACT_FILE  # the file name is kdem_tf.artifacts'
LEGACY_NORMALIZATION = "torchvision"  # what a size without a recorded contract means (see as_contract)
RESIZE_METHOD = "lanczos3"  # tf.image.resize method, antialiased: PIL's LANCZOS (AGW's Image.ANTIALIAS) in TF


@dataclasses.dataclass(frozen=True)
class ImageContract:
    """What a model's input pixels are. Build with `from_config`; serialise with `to_dict`/`save`.

    Attributes:
        image_size: (H, W) the model takes.
        normalization: a key of NORMALIZATIONS.
        resize_method: the tf.image.resize method (always antialiased).
    """
    image_size: Tuple[int, int]
    normalization: str = LEGACY_NORMALIZATION
    resize_method: str = RESIZE_METHOD

    def __post_init__(self):
        object.__setattr__(self, "image_size", tuple(int(v) for v in self.image_size))
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ContractError(f"image_size must be (H, W) with positive values, got {self.image_size}")
        if self.normalization not in NORMALIZATIONS:
            raise ContractError(f"normalization: unknown {self.normalization!r}; known: {list(NORMALIZATIONS)}")

    # --- properties of the normalisation
    @property
    def height(self) -> int:
        return self.image_size[0]

    @property
    def width(self) -> int:
        return self.image_size[1]

    @property
    def channel_order(self) -> str:
        return NORMALIZATIONS[self.normalization]["channel_order"]

    @property
    def mean(self) -> Tuple[float, float, float]:
        return tuple(NORMALIZATIONS[self.normalization]["mean"])

    @property
    def std(self) -> Tuple[float, float, float]:
        return tuple(NORMALIZATIONS[self.normalization]["std"])

    @property
    def scale(self) -> float:
        return float(NORMALIZATIONS[self.normalization]["scale"])

    # --- TensorFlow functions: the only implementations of decode, resize and normalise
    def decode(self, encoded):
        """Encoded JPEG/PNG/BMP/GIF bytes (scalar tf.string) → float32 [H, W, 3] in 0..255 at the contract's size."""
        return self.resize(decode_rgb(encoded))

    def resize(self, image):
        """[h, w, 3] or [N, h, w, 3] (any dtype, 0..255) → float32 at (H, W), antialiased, clipped to 0..255.

        An image already at the size passes unchanged (no resampling)."""
        import tensorflow as tf

        image = tf.cast(image, tf.float32)
        shape = tf.shape(image)
        hw = shape[-3:-1]
        size = tf.constant(self.image_size, tf.int32)

        def resampled():
            out = tf.image.resize(image, self.image_size, method=self.resize_method, antialias=True)
            return tf.clip_by_value(out, 0.0, 255.0)

        return tf.cond(tf.reduce_all(tf.equal(hw, size)), lambda: image, resampled)

    def normalize(self, image):
        """float/uint8 [..., H, W, 3] RGB in 0..255 → the model's input (channel order, scale, mean, std)."""
        import tensorflow as tf

        image = tf.cast(image, tf.float32)
        if self.channel_order == "BGR":
            image = image[..., ::-1]
        return (image * self.scale - tf.constant(self.mean, tf.float32)) / tf.constant(self.std, tf.float32)

    def preprocess(self, encoded):
        """decode → resize → normalise: encoded bytes to one model input [H, W, 3]."""
        return self.normalize(self.decode(encoded))

    # --- serialisation
    def to_dict(self) -> Dict[str, Any]:
        return {"image_size": list(self.image_size), "normalization": self.normalization,
                "channel_order": self.channel_order, "scale": self.scale, "mean": list(self.mean),
                "std": list(self.std), "resize": {"method": self.resize_method, "antialias": True},
                "modalities": list(MODALITIES)}

    @classmethod
    def from_dict(cls, data: Dict[str, Any], where: str = "image contract") -> "ImageContract":
        try:
            contract = cls(image_size=tuple(data["image_size"]), normalization=data["normalization"],
                           resize_method=(data.get("resize") or {}).get("method", RESIZE_METHOD))
        except KeyError as missing:
            raise ContractError(f"{where}: missing field {missing}") from None
        if list(data.get("modalities", MODALITIES)) != list(MODALITIES):
            raise ContractError(f"{where}: modalities {data.get('modalities')} differ from {list(MODALITIES)}")
        return contract

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def save(self, folder: str) -> str:
        """Writes `folder/image_contract.json` atomically; returns its path."""
        from kdem_tf.artifacts import atomic_write_text

        path = os.path.join(folder, CONTRACT_FILE)
        atomic_write_text(path, self.to_json() + "\n")
        return path

    @classmethod
    def load(cls, path: str) -> "ImageContract":
        """Reads a contract from a JSON file, or from `image_contract.json` inside a folder."""
        if os.path.isdir(path):
            path = os.path.join(path, CONTRACT_FILE)
        if not os.path.exists(path):
            raise ContractError(f"{path}: no image contract (written by kdem_tf.train into the run folder)")
        with open(path) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as error:
                raise ContractError(f"{path}: not JSON ({error})") from None
        return cls.from_dict(data, where=path)

    @classmethod
    def from_config(cls, config) -> "ImageContract":
        """The contract of a `kdem_tf.config.TrainConfig`: its image size and its weights' normalisation."""
        requested = getattr(config.data, "normalization", "auto")
        return cls(image_size=config.data.image_size,
                   normalization=resolve_normalization(requested, config.model.backbone_weights))


def as_contract(size_or_contract) -> ImageContract:
    """An ImageContract as it is, or the contract of a bare (H, W): torchvision normalisation, the
    normalisation every kdem-tf stage used before contracts were recorded (old run folders, callers
    that only know a size)."""
    if isinstance(size_or_contract, ImageContract):
        return size_or_contract
    return ImageContract(image_size=tuple(size_or_contract), normalization=LEGACY_NORMALIZATION)


def parse_size(text: str) -> Tuple[int, int]:
    """"288x144" → (288, 144)."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ContractError(f"image size {text!r}: expected HxW, e.g. 288x144") from None
    return height, width


def sizes_equal(a: Sequence[int], b: Sequence[int]) -> bool:
    return tuple(int(v) for v in a) == tuple(int(v) for v in b)
