"""AGW checkpoints for the tests, written without PyTorch: AGW's state-dict names and torch's zip format.

`agw_state` writes out the names and shapes of AGW's `embed_net` (mangye16/Cross-Modal-Re-ID-baseline,
model.py + resnet.py) from their structure, not from kdem_tf's mapping, so a mapping error cannot hide:
per modality a whole ResNet-50 (`visible_module.visible.*`, `thermal_module.thermal.*`, of which AGW
uses conv1/bn1), `base_resnet.base.*` (a whole ResNet-50 again: its conv1/bn1 unused), `NL_2.k` /
`NL_3.k` `Non_local` blocks (g.0, theta, phi, W.0 conv, W.1 BN), `bottleneck` (BatchNorm1d, bias 0)
and `classifier` (Linear without bias). Widths and depths are parameters so tests can use the tiny
network (a stage of n blocks keeps min(n, AGW's count) non-local blocks, as kdem_tf's trunk does).

`write_torch_zip` writes what `torch.save` writes (protocol-2 pickle `PREFIX/data.pkl` in which a
tensor is `torch._utils._rebuild_tensor_v2(persistent storage id, offset, size, stride,
requires_grad, OrderedDict())`, the storages as raw little-endian `PREFIX/data/<key>` files,
`PREFIX/version` and `PREFIX/byteorder`), emitting the pickle opcodes itself: the torch globals it
names cannot be imported here, so Python's pickler cannot write them. NumPy values (AGW's cmc, mAP)
are written as NumPy pickles them under protocol 2 (bytes as `_codecs.encode(text, 'latin1')`).
"""
from __future__ import annotations

import collections
import struct
import zipfile
from typing import Dict, Sequence

import numpy as np

TORCH_STORAGES = {np.dtype("float32"): "FloatStorage", np.dtype("float64"): "DoubleStorage",
                  np.dtype("int64"): "LongStorage", np.dtype("float16"): "HalfStorage"}
AGW_NON_LOCAL = {2: 2, 3: 3}  # AGW's non_layers=[0, 2, 3, 0]: NL_2 (layer2) and NL_3 (layer3)


class Tensor:
    """An array to be saved as a torch tensor (a plain np.ndarray is saved as a NumPy array)."""

    def __init__(self, array: np.ndarray):
        self.array = np.array(array, order="C")  # np.ascontiguousarray would make a 0-d array 1-d


def _channels(channels: int, width: float) -> int:
    return max(8, int(round(channels * width)))


def _resnet(state, prefix, rng, width, stage_blocks):
    def conv(name, out_channels, in_channels, kernel):
        scale = np.sqrt(2.0 / (in_channels * kernel * kernel))
        state[f"{prefix}{name}.weight"] = (rng.standard_normal((out_channels, in_channels, kernel, kernel))
                                           * scale).astype(np.float32)

    def bn(name, channels):
        _batch_norm(state, f"{prefix}{name}", channels, rng)

    stem = _channels(64, width)
    conv("conv1", stem, 3, 7)
    bn("bn1", stem)
    in_channels = stem
    for layer, (planes, blocks) in enumerate(zip((64, 128, 256, 512), stage_blocks), start=1):
        planes = _channels(planes, width)
        for block in range(blocks):
            p = f"layer{layer}.{block}"
            conv(f"{p}.conv1", planes, in_channels, 1), bn(f"{p}.bn1", planes)
            conv(f"{p}.conv2", planes, planes, 3), bn(f"{p}.bn2", planes)
            conv(f"{p}.conv3", 4 * planes, planes, 1), bn(f"{p}.bn3", 4 * planes)
            if block == 0:
                conv(f"{p}.downsample.0", 4 * planes, in_channels, 1), bn(f"{p}.downsample.1", 4 * planes)
            in_channels = 4 * planes
    return in_channels


def _batch_norm(state, name, channels, rng, bias=True):
    state[f"{name}.weight"] = rng.uniform(0.5, 1.5, channels).astype(np.float32)
    state[f"{name}.bias"] = (rng.normal(0.0, 0.1, channels) if bias else np.zeros(channels)).astype(np.float32)
    state[f"{name}.running_mean"] = rng.normal(0.0, 0.1, channels).astype(np.float32)
    state[f"{name}.running_var"] = rng.uniform(0.5, 2.0, channels).astype(np.float32)
    state[f"{name}.num_batches_tracked"] = np.array(1234, np.int64)


def agw_state(width: float = 1.0, stage_blocks: Sequence[int] = (3, 4, 6, 3), num_classes: int = 395,
              inner_channels: int = 1, seed: int = 0) -> Dict[str, np.ndarray]:
    """Random values under AGW's embed_net state-dict names (torch layout), see the module docstring."""
    rng = np.random.default_rng(seed)
    state: Dict[str, np.ndarray] = collections.OrderedDict()
    _resnet(state, "thermal_module.thermal.", rng, width, stage_blocks)  # AGW's construction order
    _resnet(state, "visible_module.visible.", rng, width, stage_blocks)
    features = _resnet(state, "base_resnet.base.", rng, width, stage_blocks)
    for layer, count in AGW_NON_LOCAL.items():
        channels = 4 * _channels((64, 128, 256, 512)[layer - 1], width)
        for k in range(min(count, stage_blocks[layer - 1])):
            p = f"NL_{layer}.{k}"
            for name, (out_channels, in_channels) in (("g.0", (inner_channels, channels)),
                                                      ("W.0", (channels, inner_channels)),
                                                      ("theta", (inner_channels, channels)),
                                                      ("phi", (inner_channels, channels))):
                state[f"{p}.{name}.weight"] = (rng.standard_normal((out_channels, in_channels, 1, 1))
                                               / np.sqrt(in_channels)).astype(np.float32)
                state[f"{p}.{name}.bias"] = rng.normal(0.0, 0.1, out_channels).astype(np.float32)
            _batch_norm(state, f"{p}.W.1", channels, rng)  # trained: no longer AGW's zero init
    _batch_norm(state, "bottleneck", features, rng, bias=False)
    state["classifier.weight"] = rng.normal(0.0, 0.01, (num_classes, features)).astype(np.float32)
    return state


class _NdarrayType:
    """Stands for the class numpy.ndarray in a pickle (written as a GLOBAL)."""


class _PickleWriter:
    """Protocol-2 pickle opcodes for the values a torch checkpoint holds."""

    def __init__(self):
        self.out = bytearray(b"\x80\x02")  # PROTO 2
        self.storages: Dict[str, np.ndarray] = {}

    def global_(self, module: str, name: str) -> None:
        self.out += b"c" + f"{module}\n{name}\n".encode()  # GLOBAL

    def call(self, module: str, name: str, *args) -> None:
        self.global_(module, name)
        self.value(tuple(args))
        self.out += b"R"  # REDUCE

    def value(self, obj) -> None:
        if obj is None:
            self.out += b"N"
        elif isinstance(obj, bool):
            self.out += b"\x88" if obj else b"\x89"
        elif isinstance(obj, _NdarrayType):
            self.global_("numpy", "ndarray")
        elif isinstance(obj, Tensor):
            self.tensor(obj.array)
        elif isinstance(obj, np.ndarray):
            self.numpy_array(obj)
        elif isinstance(obj, np.generic):
            self.call("numpy.core.multiarray", "scalar", obj.dtype, obj.tobytes())
        elif isinstance(obj, np.dtype):
            self.call("numpy", "dtype", obj.str[1:], False, True)
            self.value((3, "<" if obj.itemsize > 1 else "|", None, None, None, -1, -1, 0))
            self.out += b"b"  # BUILD
        elif isinstance(obj, int):
            self.out += b"J" + struct.pack("<i", obj) if -2 ** 31 <= obj < 2 ** 31 else self._long(obj)
        elif isinstance(obj, float):
            self.out += b"G" + struct.pack(">d", obj)
        elif isinstance(obj, str):
            data = obj.encode("utf-8")
            self.out += b"X" + struct.pack("<I", len(data)) + data
        elif isinstance(obj, bytes):  # protocol 2 has no bytes opcode
            self.call("_codecs", "encode", obj.decode("latin1"), "latin1")
        elif isinstance(obj, tuple):
            self.out += b"("
            for item in obj:
                self.value(item)
            self.out += b"t"
        elif isinstance(obj, dict):
            if isinstance(obj, collections.OrderedDict):
                self.call("collections", "OrderedDict")
            else:
                self.out += b"}"
            if obj:
                self.out += b"("
                for key, item in obj.items():
                    self.value(key)
                    self.value(item)
                self.out += b"u"  # SETITEMS
            if getattr(obj, "_metadata", None) is not None:  # a state dict's module versions, as torch pickles them
                self.value({"_metadata": obj._metadata})
                self.out += b"b"  # BUILD
        else:
            raise TypeError(f"cannot write {type(obj).__name__}")

    @staticmethod
    def _long(obj: int) -> bytes:
        data = obj.to_bytes((obj.bit_length() + 8) // 8, "little", signed=True)
        return b"\x8a" + bytes([len(data)]) + data

    def tensor(self, array: np.ndarray) -> None:
        key = str(len(self.storages))
        self.storages[key] = array
        self.global_("torch._utils", "_rebuild_tensor_v2")
        self.out += b"("
        self.out += b"("  # the persistent id: ('storage', torch.<Type>Storage, key, location, numel)
        self.value("storage")
        self.global_("torch", TORCH_STORAGES[array.dtype])
        for item in (key, "cpu", int(array.size)):
            self.value(item)
        self.out += b"tQ"  # TUPLE, BINPERSID
        strides = tuple(int(s // array.itemsize) for s in array.strides)
        for item in (0, tuple(int(d) for d in array.shape), strides, False, collections.OrderedDict()):
            self.value(item)
        self.out += b"tR"

    def numpy_array(self, array: np.ndarray) -> None:
        self.call("numpy.core.multiarray", "_reconstruct", _NdarrayType(), (0,), b"b")
        self.value((1, tuple(array.shape), array.dtype, False, array.astype(array.dtype.newbyteorder("<")).tobytes()))
        self.out += b"b"


def write_torch_zip(path, obj, prefix: str = "archive", byteorder: str = "little") -> None:
    """Writes `obj` (dicts, Tensor(...), numbers, NumPy values) in torch's zip serialization format."""
    writer = _PickleWriter()
    writer.value(obj)
    writer.out += b"."  # STOP
    order = "<" if byteorder == "little" else ">"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{prefix}/data.pkl", bytes(writer.out))
        archive.writestr(f"{prefix}/byteorder", byteorder)
        for key, array in writer.storages.items():
            archive.writestr(f"{prefix}/data/{key}", array.astype(array.dtype.newbyteorder(order)).tobytes())
        archive.writestr(f"{prefix}/version", "3\n")


def agw_checkpoint(state: Dict[str, np.ndarray], epoch: int = 61, m_ap: float = 0.4765, prefix: str = "") -> dict:
    """The dict AGW's train.py saves: {'net': state_dict, 'cmc', 'mAP', 'mINP', 'epoch'}, with NumPy metrics."""
    net = collections.OrderedDict((prefix + k, Tensor(v)) for k, v in state.items())
    net._metadata = collections.OrderedDict([("", {"version": 1}), ("bottleneck", {"version": 2})])
    cmc = np.linspace(0.475, 0.95, 20).astype(np.float32)
    return {"net": net, "cmc": cmc, "mAP": np.float64(m_ap), "mINP": np.float64(0.353), "epoch": epoch}
