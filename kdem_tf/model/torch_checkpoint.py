"""PyTorch checkpoint files as NumPy arrays, read without PyTorch (and never as an arbitrary pickle).

`read_checkpoint(path)` returns `(state, stored)`: the state dict (name → array) and the
scalars stored beside it (AGW's `train.py` saves `{'net': state_dict, 'cmc': ..., 'mAP': ...,
'mINP': ..., 'epoch': ...}`). It accepts:

- torch's zip format (`torch.save` since PyTorch 1.6): a zip archive whose entries share one
  folder, `PREFIX/data.pkl` (a pickle of the object in which every tensor is a call of
  `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` and every storage a
  persistent id `('storage', torch.<Type>Storage, key, location, numel)`), one file
  `PREFIX/data/<key>` of raw bytes per storage, `PREFIX/version` and, in recent versions,
  `PREFIX/byteorder`. The pickle is read by `_RestrictedUnpickler`: it rebuilds tensors from
  storages, OrderedDicts and numeric NumPy scalars/arrays (AGW stores its metrics as NumPy
  values, whose bytes protocol 2 writes as `_codecs.encode(text, 'latin1')`); any other global
  is refused, naming it, before anything of it runs;
- torch's legacy format (before 1.6: a sequence of pickles, not a zip), through PyTorch when it
  is importable, else an error naming the format and the one-line conversion;
- `.safetensors` files with the same keys (`kdem_tf.model.safetensors_io`).

The state dict is the object itself, its 'net' or its 'state_dict' entry; a `module.` prefix
(`torch.nn.DataParallel`) is removed.
"""
from __future__ import annotations

import collections
import io
import pickle
import zipfile
from typing import Dict, Tuple

import numpy as np

from kdem_tf.model.safetensors_io import read_safetensors

# torch.<Name>Storage → NumPy dtype of its elements (little-endian unless PREFIX/byteorder says "big").
STORAGE_DTYPES = {"FloatStorage": "f4", "DoubleStorage": "f8", "HalfStorage": "f2", "BFloat16Storage": "u2",
                  "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1",
                  "ByteStorage": "u1", "BoolStorage": "?"}
STATE_KEYS = ("net", "state_dict", "model")  # where checkpoints keep their state dict, in this order
LEGACY_CONVERSION = ("python -c \"import torch; torch.save(torch.load('{path}', map_location='cpu', "
                     "weights_only=False), '{path}.zip')\"")


class TorchCheckpointError(ValueError):
    """A file that is not a readable PyTorch checkpoint; the message names the file and what is wrong."""


class _Storage:
    """One storage of a zip checkpoint: its elements as a flat NumPy array, read on first use."""

    def __init__(self, archive: zipfile.ZipFile, entry: str, dtype: np.dtype, source: str, bfloat16: bool = False):
        self.archive, self.entry, self.dtype, self.source = archive, entry, dtype, source
        self.bfloat16 = bfloat16  # stored as the top halves of float32s (dtype u2)
        self._array = None

    def array(self) -> np.ndarray:
        if self._array is None:
            try:
                raw = self.archive.read(self.entry)
            except KeyError:
                raise TorchCheckpointError(f"{self.source}: the pickle names storage {self.entry!r}, which the "
                                           f"archive lacks") from None
            if len(raw) % self.dtype.itemsize:
                raise TorchCheckpointError(f"{self.source}: {self.entry} holds {len(raw)} bytes, not a whole "
                                           f"number of {self.dtype} elements")
            self._array = np.frombuffer(raw, self.dtype)
        return self._array


def _rebuild_tensor(storage: _Storage, offset: int, size, stride, *_ignored) -> np.ndarray:
    """torch._utils._rebuild_tensor_v2 in NumPy: a strided view of the storage, copied, native byte order."""
    if not isinstance(storage, _Storage):
        raise TorchCheckpointError(f"_rebuild_tensor_v2 called on {type(storage).__name__}, not a storage")
    flat, size, stride = storage.array(), tuple(int(s) for s in size), tuple(int(s) for s in stride)
    last = int(offset) + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else int(offset) - 1
    if int(offset) < 0 or last >= flat.size:
        raise TorchCheckpointError(f"{storage.source}: a tensor of size {list(size)} at offset {offset} does not "
                                   f"fit its storage {storage.entry} of {flat.size} elements")
    view = np.lib.stride_tricks.as_strided(flat[int(offset):], size, [s * flat.itemsize for s in stride])
    array = np.array(view, dtype=flat.dtype.newbyteorder("="))
    if storage.bfloat16:
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array


def _numpy_scalar(dtype, data):
    if not isinstance(dtype, np.dtype) or not isinstance(data, bytes) or dtype.hasobject:
        raise TorchCheckpointError(f"numpy scalar of {dtype!r}: only plain numeric scalars are accepted")
    return np.frombuffer(data, dtype)[0]


def _numpy_dtype(name, align=False, copy=False):
    if not isinstance(name, str) or np.dtype(name).hasobject:
        raise TorchCheckpointError(f"numpy dtype {name!r}: only numeric dtypes are accepted")
    return np.dtype(name)


def _numpy_reconstruct(subtype, shape, dtype):
    if subtype is not np.ndarray:
        raise TorchCheckpointError(f"numpy array of type {subtype!r}: only numpy.ndarray is accepted")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _latin1_bytes(text, encoding="latin1"):
    """_codecs.encode as protocol-2 pickles write bytes (NumPy's scalar and array data)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise TorchCheckpointError(f"_codecs.encode({type(text).__name__}, {encoding!r}): only latin1 text is accepted")
    return text.encode("latin1")


_NUMPY_GLOBALS = {"scalar": _numpy_scalar, "dtype": _numpy_dtype, "_reconstruct": _numpy_reconstruct,
                  "ndarray": np.ndarray}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles data.pkl with only the globals a saved state dict needs; anything else is refused."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, byteorder: str, source: str):
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix, self.byteorder, self.source = archive, prefix, byteorder, source
        self.storages: Dict[str, _Storage] = {}

    def find_class(self, module: str, name: str):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch" and name in STORAGE_DTYPES:
            return name  # a storage type: persistent_load looks its dtype up
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "_codecs" and name == "encode":
            return _latin1_bytes
        if module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray") and name in _NUMPY_GLOBALS:
            return _NUMPY_GLOBALS[name]
        raise TorchCheckpointError(
            f"{self.source}: refused to unpickle the global {module}.{name}: a checkpoint read without PyTorch may "
            f"only hold tensors (torch._utils._rebuild_tensor_v2 over torch.*Storage), OrderedDicts, numbers and "
            f"NumPy values; convert the file to a plain state dict, or save its state dict as .safetensors")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and pid[1] in STORAGE_DTYPES):
            raise TorchCheckpointError(f"{self.source}: unknown persistent id {pid!r} in data.pkl "
                                       f"(expected ('storage', torch.<Type>Storage, key, location, numel))")
        _, storage_type, key, _location, _numel = pid
        if str(key) not in self.storages:
            dtype = np.dtype(("<" if self.byteorder == "little" else ">") + STORAGE_DTYPES[storage_type])
            self.storages[str(key)] = _Storage(self.archive, f"{self.prefix}data/{key}", dtype, self.source,
                                               bfloat16=storage_type == "BFloat16Storage")
        return self.storages[str(key)]


def read_zip_checkpoint(path: str):
    """The object saved in a torch zip-format file, tensors as NumPy arrays (see the module docstring)."""
    with zipfile.ZipFile(path) as archive:
        pickles = [name for name in archive.namelist() if name.endswith("data.pkl") and name.count("/") == 1]
        if len(pickles) != 1:
            raise TorchCheckpointError(f"{path}: a zip archive but not torch's format (expected one "
                                       f"PREFIX/data.pkl entry, found {len(pickles)})")
        prefix = pickles[0][: -len("data.pkl")]
        names = set(archive.namelist())
        byteorder = archive.read(f"{prefix}byteorder").decode().strip() if f"{prefix}byteorder" in names else "little"
        if byteorder not in ("little", "big"):
            raise TorchCheckpointError(f"{path}: {prefix}byteorder says {byteorder!r}, not little or big")
        unpickler = _RestrictedUnpickler(archive.read(pickles[0]), archive, prefix, byteorder, path)
        try:
            return unpickler.load()
        except TorchCheckpointError:
            raise
        except Exception as error:  # a truncated or corrupt pickle
            raise TorchCheckpointError(f"{path}: {prefix}data.pkl is not a readable pickle ({error})") from None


def read_legacy_checkpoint(path: str):
    """A legacy-format (pre-1.6, non-zip) torch file, through PyTorch; without it, an error with the conversion."""
    try:
        import torch
    except ImportError:
        raise TorchCheckpointError(
            f"{path}: torch's legacy (pre-1.6, non-zip) serialization format, which only PyTorch reads, and "
            f"PyTorch is not installed. Convert it once on a machine with PyTorch to the zip format, which is "
            f"read without it: " + LEGACY_CONVERSION.format(path=path)) from None
    # AGW's metrics are NumPy values: allowed beside the tensors (torch >= 2.5 lists extra safe globals).
    allowed = [np.core.multiarray.scalar, np.dtype, np.core.multiarray._reconstruct, np.ndarray]
    try:
        if hasattr(torch.serialization, "safe_globals"):
            with torch.serialization.safe_globals(allowed):
                loaded = torch.load(path, map_location="cpu", weights_only=True)
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise TorchCheckpointError(f"{path}: PyTorch refused to read it as weights only ({error})") from None

    def as_numpy(value):
        if isinstance(value, torch.Tensor):
            return value.detach().cpu().numpy()
        if isinstance(value, dict):
            return collections.OrderedDict((k, as_numpy(v)) for k, v in value.items())
        return value

    return as_numpy(loaded)


def _state_and_stored(loaded, path: str) -> Tuple[Dict[str, np.ndarray], dict]:
    """(state dict with any `module.` prefix removed, the scalars stored beside it)."""
    if not isinstance(loaded, dict):
        raise TorchCheckpointError(f"{path}: holds a {type(loaded).__name__}, not a state dict or a dict with 'net'")
    key = next((k for k in STATE_KEYS if isinstance(loaded.get(k), dict)), None)
    state = loaded[key] if key else loaded
    stored = {}
    if key:
        for name, value in loaded.items():
            if name != key and np.ndim(value) == 0 and isinstance(value, (int, float, np.number)):
                stored[name] = value.item() if isinstance(value, np.generic) else value
            elif name == "cmc" and np.ndim(value) == 1 and len(value):
                stored["rank1"] = float(np.asarray(value)[0])
    arrays = {}
    for name, value in state.items():
        if not isinstance(value, np.ndarray):
            raise TorchCheckpointError(f"{path}: state dict entry {name!r} is a {type(value).__name__}, not a tensor")
        arrays[name[len("module."):] if str(name).startswith("module.") else name] = value
    return arrays, stored


def read_checkpoint(path: str) -> Tuple[Dict[str, np.ndarray], dict]:
    """(state dict as NumPy arrays, stored scalars such as AGW's mAP and epoch) of a checkpoint file.

    Raises:
        FileNotFoundError: no such file.
        TorchCheckpointError: an unreadable or unsafe file (the message names it and the reason).
    """
    with open(path, "rb") as handle:
        head = handle.read(2)
    if str(path).lower().endswith(".safetensors"):
        return _state_and_stored(read_safetensors(path), path)
    if zipfile.is_zipfile(path):
        return _state_and_stored(read_zip_checkpoint(path), path)
    if head[:1] == b"\x80":  # a pickle protocol opcode: torch's legacy format starts with a pickled magic number
        return _state_and_stored(read_legacy_checkpoint(path), path)
    raise TorchCheckpointError(f"{path}: neither torch's zip format, its legacy pickle format, nor .safetensors")
