"""The one owner of kdem-tf's on-disk formats: file and folder names, SavedModel signature names,
the version-folder rule, and publishing a folder atomically.

A leaf module (the standard library only; TensorFlow's gfile is imported on demand, for URIs such
as gs://... alone), so that every floor (kdem_tf, serving, pipeline, benchmarks) can import it.

- Names: a training run folder, an exported SavedModel version, a TFLite folder, a gallery index.
- Signatures: every signature name of the embedder and retrieval SavedModels, and `search`.
- Versions: TF Serving's base path of all-digit version folders (`BASE/1/`, `BASE/2/`, ...),
  in numeric order ("10" after "2"): `list_versions`, `resolve_version_dir`, `version_of`.
- Publishing: `publish_folder` writes a folder under a hidden temporary sibling
  `.NAME.tmp-PID-XXXXXXXX`, flushes it to disk and renames it into place, so a reader (or a
  crash, even SIGKILL) sees the old folder or the new one, never a half-written one;
  `publish_version` does it for the next version of a base path; `atomic_write_text` for one file.
"""
from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import tempfile
from typing import Callable, List, Optional

# ----------------------------------------------------------------------------- names

# A training run folder (kdem_tf.train).
RUN_INFO_FILE = "run_info.json"
INFERENCE_MODEL_FILE = "inference_model.keras"
HISTORY_FILE = "history.jsonl"
CONFIG_FILE = "config.yaml"
IMAGE_CONTRACT_FILE = "image_contract.json"
INFLUENCE_FACTORS_FILE = "influence_factors.npy"
TRAIN_SUMMARY_FILE = "train_summary.json"
CLASSIFIER_FILE = "classifier.npy"  # an imported run's identity classifier (Dense kernel [D, classes])
CHECKPOINTS_DIR = "checkpoints"
LATEST_CHECKPOINT_FILE = "latest.json"  # in CHECKPOINTS_DIR
LOGS_DIR = "logs"

# An exported SavedModel version folder (serving.export).
SAVED_MODEL_FILE = "saved_model.pb"
ASSETS_EXTRA_DIR = "assets.extra"
KDEM_INFO_FILE = "kdem_info.json"                 # in ASSETS_EXTRA_DIR of the embedder
RETRIEVAL_INFO_FILE = "kdem_retrieval_info.json"  # in ASSETS_EXTRA_DIR of the retrieval model

# A TFLite folder (serving.export --tflite): one model per modality + its description.
TFLITE_INFO_FILE = "tflite_info.json"

# A gallery index folder (serving.index).
INDEX_MANIFEST_FILE = "manifest.json"
INDEX_ENTRIES_FILE = "entries.npz"
INDEX_EMBEDDINGS_FILE = "embeddings.npy"
INDEX_SCANN_DIR = "scann"

# ----------------------------------------------------------------------------- signatures

SERVING_SIGNATURE = "serving_default"        # image_bytes + modality -> embedding (TF Serving's default key)
IMAGES_SIGNATURE = "embed_images"            # decoded images + modality -> embedding
FLIP_SIGNATURE = "serving_flip"              # as serving_default, flip test-time augmentation (kdem_tf.tta)
FLIP_IMAGES_SIGNATURE = "embed_images_flip"  # as embed_images, flip test-time augmentation
SEARCH_SIGNATURE = "search"                  # gallery search, served beside the embedder (serving.server)

# What each SavedModel exposes, in this order.
EMBEDDER_SIGNATURES = (SERVING_SIGNATURE, IMAGES_SIGNATURE, FLIP_SIGNATURE, FLIP_IMAGES_SIGNATURE)
RETRIEVAL_SIGNATURES = (SERVING_SIGNATURE,)

# ----------------------------------------------------------------------------- version folders


def _is_uri(path: str) -> bool:
    return "://" in path


def _gfile():
    import tensorflow as tf  # only for URIs (gs://...): local paths never import TensorFlow here

    return tf.io.gfile


def _exists(path: str) -> bool:
    return _gfile().exists(path) if _is_uri(path) else os.path.exists(path)


def _isdir(path: str) -> bool:
    return _gfile().isdir(path) if _is_uri(path) else os.path.isdir(path)


def version_number(name: str) -> Optional[int]:
    """The version of a folder name ("7" -> 7); None for any other name (temporaries, files)."""
    name = name.strip("/")
    return int(name) if name.isdigit() and name.isascii() else None


def list_versions(model_base: str) -> List[int]:
    """The version numbers under a TF Serving base path, in numeric order (2 before 10).

    Only all-digit folders count (what TF Serving loads); [] when the base path does not exist.
    Local paths and gfile URIs (gs://...) both work."""
    base = model_base.rstrip("/") or "/"
    if not _isdir(base):
        return []
    names = [name.strip("/") for name in (_gfile().listdir(base) if _is_uri(base) else os.listdir(base))]
    return sorted(version_number(name) for name in names
                  if version_number(name) is not None and _isdir(f"{base}/{name}"))


def latest_version(model_base: str) -> Optional[int]:
    """The highest version under a base path (None when there is none)."""
    versions = list_versions(model_base)
    return versions[-1] if versions else None


def version_of(version_dir: str) -> Optional[int]:
    """The version number of a version folder (None when its name is not a number)."""
    return version_number(os.path.basename(os.path.normpath(version_dir)))


def resolve_version_dir(model: str, version: Optional[int] = None) -> str:
    """A version folder from a TF Serving base path (its highest version, or `version`) or a
    SavedModel folder itself (when no version is asked).

    Raises FileNotFoundError naming the path and the versions it has."""
    if version is None and _exists(f"{model.rstrip('/')}/{SAVED_MODEL_FILE}"):
        return model
    versions = list_versions(model)
    if not versions:
        raise FileNotFoundError(f"{model}: no SavedModel and no numbered version folders")
    chosen = versions[-1] if version is None else version
    if chosen not in versions:
        raise FileNotFoundError(f"{model}: no version {chosen} (have {versions})")
    return os.path.join(model, str(chosen))


# ----------------------------------------------------------------------------- publishing

_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-[A-Za-z0-9_]+$")
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2  # linux/fs.h


def _temporary_prefix(name: str, kind: str = "tmp") -> str:
    return f".{name}.{kind}-{os.getpid()}-"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _renameat2(source: str, target: str, flags: int) -> bool:
    """Linux renameat2(2): True when done, False when this system or file system lacks it."""
    libc = ctypes.CDLL(None, use_errno=True)
    function = getattr(libc, "renameat2", None)
    if function is None:
        return False
    at_cwd = -100
    if function(at_cwd, os.fsencode(source), at_cwd, os.fsencode(target), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), source, None, target)


def _rename_new(source: str, target: str) -> None:
    """Renames `source` to a `target` that must not exist (FileExistsError naming it otherwise)."""
    try:
        if _renameat2(source, target, _RENAME_NOREPLACE):
            return
    except FileExistsError:
        raise FileExistsError(f"{target}: already exists") from None
    if os.path.lexists(target):  # no renameat2 here: checked, then renamed
        raise FileExistsError(f"{target}: already exists")
    os.rename(source, target)


def _swap_in(source: str, target: str) -> str:
    """Puts `source` at an existing `target`; returns where the old content now lies (to delete).

    One atomic exchange where the system has renameat2; else two renames, old aside first (a crash
    between them leaves `.NAME.old-PID-X`, which `remove_stale_temporaries` puts back)."""
    if _renameat2(source, target, _RENAME_EXCHANGE):
        return source
    parent, name = os.path.split(target)
    aside = tempfile.mkdtemp(prefix=_temporary_prefix(name, "old"), dir=parent)
    os.rmdir(aside)
    os.rename(target, aside)
    os.rename(source, target)
    return aside


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: str) -> None:
    """Flushes every file and folder under `path` (and `path` itself) to disk."""
    if not os.path.isdir(path):
        _fsync_path(path)
        return
    for folder, _, files in os.walk(path, topdown=False):
        for name in files:
            if not os.path.islink(os.path.join(folder, name)):
                _fsync_path(os.path.join(folder, name))
        _fsync_path(folder)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def remove_stale_temporaries(parent: str, name: Optional[str] = None) -> List[str]:
    """Removes the temporaries of publishes that died (`.NAME.tmp-PID-X` whose process is gone) in
    `parent`, for `name` or every name; puts back an old folder moved aside by a publish killed
    before its new folder was renamed in. Returns the removed paths. Live publishes are left alone
    (their process runs: a temporary of another machine on a shared disk looks alive or dead by
    its pid here, so share a parent folder between machines only for reading)."""
    if not os.path.isdir(parent):
        return []
    removed = []
    for entry in sorted(os.listdir(parent)):
        match = _TEMPORARY.match(entry)
        if not match or (name is not None and match["name"] != name) or _process_alive(int(match["pid"])):
            continue
        path, target = os.path.join(parent, entry), os.path.join(parent, match["name"])
        if match["kind"] == "old" and not os.path.lexists(target):
            os.rename(path, target)
            continue
        _remove(path)
        removed.append(path)
    return removed


def publish_folder(target: str, write: Callable[[str], object], replace: bool = False) -> str:
    """Runs `write(path)` (it creates `path`: a folder, or a file) under a hidden temporary sibling
    of `target`, then puts it at `target` in one rename; returns `target`.

    Local paths: the files are flushed to disk (fsync) before the rename, a replaced folder is
    swapped out atomically (renameat2 RENAME_EXCHANGE) and deleted after; stale temporaries of
    dead publishes of `target` are removed first. A failing `write` leaves `target` as it was and
    no temporary. URIs (gs://...): the same steps through tf.io.gfile (no fsync; an object store's
    rename is a copy, not atomic).

    Raises FileExistsError naming `target` when it exists and not `replace`.
    """
    target = target.rstrip("/") if _is_uri(target) else os.path.abspath(target)
    if _exists(target) and not replace:
        raise FileExistsError(f"{target}: already exists")
    if _is_uri(target):
        return _publish_uri(target, write, replace)
    parent, name = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    remove_stale_temporaries(parent, name)
    reservation = tempfile.mkdtemp(prefix=_temporary_prefix(name), dir=parent)
    try:
        payload = os.path.join(reservation, name)
        write(payload)
        if not os.path.lexists(payload):
            raise FileNotFoundError(f"{target}: the writer wrote nothing at {payload}")
        _move_into_place(payload, target, replace)
    finally:
        shutil.rmtree(reservation, ignore_errors=True)
    return target


def _move_into_place(payload: str, target: str, replace: bool) -> None:
    """Local: flushes `payload` to disk, then puts it at `target` in one rename (swapping out and
    deleting a replaced one)."""
    fsync_tree(payload)
    if replace and os.path.lexists(target):
        _remove(_swap_in(payload, target))
    else:
        _rename_new(payload, target)
    _fsync_path(os.path.dirname(target))


def publish_staged(staging: str, target: str, replace: bool = True) -> str:
    """Puts a folder that a writer has finished at `staging` (a sibling of `target`, kept by the writer
    for inspection when it fails) at `target`, as `publish_folder` does its own temporary. For writers
    that cannot write through a callback (a Beam job's output, a checkpoint); returns `target`."""
    if _is_uri(target):
        gfile = _gfile()
        target = target.rstrip("/")
        if gfile.exists(target):
            if not replace:
                raise FileExistsError(f"{target}: already exists")
            parent, name = target.rsplit("/", 1)
            aside = f"{parent}/{_temporary_prefix(name, 'old')}{os.urandom(4).hex()}"
            gfile.rename(target, aside)
            gfile.rename(staging, target)
            gfile.rmtree(aside)
        else:
            gfile.makedirs(target.rsplit("/", 1)[0])
            gfile.rename(staging, target)
        return target
    target = os.path.abspath(target)
    if os.path.lexists(target) and not replace:
        raise FileExistsError(f"{target}: already exists")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    _move_into_place(os.path.abspath(staging), target, replace)
    return target


def _publish_uri(target: str, write: Callable[[str], object], replace: bool) -> str:
    gfile = _gfile()
    parent, name = target.rsplit("/", 1)
    gfile.makedirs(parent)
    staging = f"{parent}/{_temporary_prefix(name)}{os.urandom(4).hex()}"
    try:
        write(staging)
        if replace and gfile.exists(target):
            aside = f"{parent}/{_temporary_prefix(name, 'old')}{os.urandom(4).hex()}"
            gfile.rename(target, aside)
            gfile.rename(staging, target)
            gfile.rmtree(aside)
        else:
            gfile.rename(staging, target)
    finally:
        if gfile.exists(staging):
            gfile.rmtree(staging)
    return target


def publish_version(write: Callable[[str], object], model_base: str, version: Optional[int] = None) -> str:
    """`publish_folder` of `model_base/<version>/` (TF Serving's layout; created if absent).

    Args:
        write: callable writing a complete SavedModel into the folder path it is given.
        version: default the highest existing + 1 (1 for an empty base).

    Returns:
        the version folder. Raises FileExistsError for an existing version, ValueError below 1.
    """
    if version is None:
        version = (latest_version(model_base) or 0) + 1
    if version < 1:
        raise ValueError(f"version must be >= 1, got {version}")
    final = os.path.join(model_base, str(version))
    if _exists(final):
        raise FileExistsError(f"{final}: version {version} already exists")
    if not _is_uri(model_base):
        remove_stale_temporaries(model_base)  # of every version: a crashed export of any number
    return publish_folder(final, write)


def atomic_write_text(path: str, text: str) -> None:
    """Writes a text file so that readers see the old or the new content, never a partial one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=_temporary_prefix(os.path.basename(path)), dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
