"""kdem_tf.artifacts: numeric version order, atomic publishing (even under SIGKILL), the names and
signatures the writers really put on disk."""
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from kdem_tf import artifacts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _folder(path, files: dict):
    os.makedirs(path)
    for name, text in files.items():
        with open(os.path.join(path, name), "w") as f:
            f.write(text)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ----------------------------------------------------------------------------- versions


def test_versions_are_numbers_in_numeric_order(tmp_path):
    base = tmp_path / "kdem"
    for name in ("2", "10", "9", "1", ".3.tmp-1-abc", "old", "0x4"):
        (base / name).mkdir(parents=True)
    (base / "11").write_text("a file, not a version folder")
    assert artifacts.list_versions(str(base)) == [1, 2, 9, 10]
    assert artifacts.latest_version(str(base)) == 10
    assert artifacts.resolve_version_dir(str(base)) == os.path.join(str(base), "10")
    assert artifacts.resolve_version_dir(str(base), 2) == os.path.join(str(base), "2")
    assert artifacts.version_of(os.path.join(str(base), "10") + os.sep) == 10
    assert artifacts.version_of(str(base)) is None
    with pytest.raises(FileNotFoundError, match=r"no version 3 \(have \[1, 2, 9, 10\]\)"):
        artifacts.resolve_version_dir(str(base), 3)
    assert artifacts.list_versions(str(tmp_path / "absent")) == []
    with pytest.raises(FileNotFoundError, match="no SavedModel and no numbered version folders"):
        artifacts.resolve_version_dir(str(tmp_path / "absent"))
    (base / "10" / artifacts.SAVED_MODEL_FILE).write_bytes(b"")
    assert artifacts.resolve_version_dir(str(base / "10")) == str(base / "10")  # a SavedModel folder itself


def test_publish_version_numbers_after_the_highest_numerically(tmp_path):
    base = str(tmp_path / "kdem")
    for version in (2, 10):
        os.makedirs(os.path.join(base, str(version)))
    assert artifacts.publish_version(os.makedirs, base) == os.path.join(base, "11")
    with pytest.raises(FileExistsError, match="version 10 already exists"):
        artifacts.publish_version(os.makedirs, base, 10)


def test_the_local_runner_reports_versions_in_numeric_order(tmp_path):
    from pipeline import local_runner
    from pipeline.configs import PipelineSettings

    settings = PipelineSettings(home=str(tmp_path))
    for version in ("2", "10", "1"):
        os.makedirs(os.path.join(settings.serving_model_dir, version))
    line = [l for l in local_runner.format_report(settings, {}).splitlines() if l.startswith("serving:")][0]
    assert line.endswith("versions [1, 2, 10]"), line


# ----------------------------------------------------------------------------- publishing


def test_publish_writes_new_and_replaces_only_when_asked(tmp_path):
    target = str(tmp_path / "index")
    assert artifacts.publish_folder(target, lambda path: _folder(path, {"a": "1"})) == target
    with pytest.raises(FileExistsError, match="index: already exists"):
        artifacts.publish_folder(target, lambda path: _folder(path, {"a": "2"}))
    artifacts.publish_folder(target, lambda path: _folder(path, {"b": "2"}), replace=True)
    assert os.listdir(target) == ["b"] and os.listdir(tmp_path) == ["index"]  # the old one deleted


def test_publish_without_renameat2_also_replaces(tmp_path, monkeypatch):
    monkeypatch.setattr(artifacts, "_renameat2", lambda source, target, flags: False)
    target = str(tmp_path / "out")
    artifacts.publish_folder(target, lambda path: _folder(path, {"a": "1"}))
    artifacts.publish_folder(target, lambda path: _folder(path, {"b": "2"}), replace=True)
    assert os.listdir(target) == ["b"] and os.listdir(tmp_path) == ["out"]
    with pytest.raises(FileExistsError):
        artifacts.publish_folder(target, lambda path: _folder(path, {"c": "3"}))


def test_a_failing_writer_leaves_the_old_folder_and_no_temporary(tmp_path):
    target = str(tmp_path / "out")
    artifacts.publish_folder(target, lambda path: _folder(path, {"a": "old"}))

    def crash(path):
        _folder(path, {"a": "half"})
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        artifacts.publish_folder(target, crash, replace=True)
    with pytest.raises(FileNotFoundError, match="the writer wrote nothing"):
        artifacts.publish_folder(str(tmp_path / "nothing"), lambda path: None)
    assert sorted(os.listdir(tmp_path)) == ["out"]
    assert open(os.path.join(target, "a")).read() == "old"


def test_stale_temporaries_of_dead_publishes_are_removed_live_ones_kept(tmp_path):
    dead, alive = _dead_pid(), os.getpid()
    _folder(tmp_path / f".out.tmp-{dead}-abc", {"half": ""})
    _folder(tmp_path / f".out.tmp-{alive}-def", {"writing": ""})
    _folder(tmp_path / f".other.tmp-{dead}-ghi", {"half": ""})
    _folder(tmp_path / ".tmp-2-crashed", {"not ours": ""})
    artifacts.publish_folder(str(tmp_path / "out"), lambda path: _folder(path, {"a": "1"}))
    assert sorted(os.listdir(tmp_path)) == [f".other.tmp-{dead}-ghi", f".out.tmp-{alive}-def", ".tmp-2-crashed",
                                            "out"]
    # A publish killed between its two renames (no renameat2) moved the old folder aside: put back.
    _folder(tmp_path / f".gone.old-{dead}-jkl", {"a": "old"})
    assert artifacts.remove_stale_temporaries(str(tmp_path)) == [str(tmp_path / f".other.tmp-{dead}-ghi")]
    assert open(tmp_path / "gone" / "a").read() == "old"


PUBLISHER = textwrap.dedent("""
    import os, sys, time
    from kdem_tf import artifacts

    target, first = sys.argv[1], int(sys.argv[2])

    def write(generation, slow):
        def writer(path):
            os.makedirs(path)
            for i in range(40):
                with open(os.path.join(path, f"part-{i:02d}"), "w") as f:
                    f.write(str(generation))
                if slow:
                    time.sleep(0.01)
        return writer

    generation = first
    while True:
        artifacts.publish_folder(target, write(generation, slow=generation % 2 == 0), replace=True)
        print(generation, flush=True)
        generation += 1
""")


def _generation_of(folder) -> int:
    """The one generation every file of a complete folder holds (fails on a half-written one)."""
    names = sorted(os.listdir(folder))
    assert names == [f"part-{i:02d}" for i in range(40)], names
    generations = {open(os.path.join(folder, n)).read() for n in names}
    assert len(generations) == 1, generations
    return int(generations.pop())


def test_sigkill_during_publish_leaves_the_old_folder_or_the_new_one(tmp_path):
    """A publisher replaces the folder again and again (one generation per publish) and is SIGKILLed
    at random moments: the folder is always complete, of one generation, and the next publisher
    cleans the dead one's temporaries."""
    target = str(tmp_path / "gallery")
    script = tmp_path / "publisher.py"
    script.write_text(PUBLISHER)
    env = dict(os.environ, PYTHONPATH=REPO)
    rng = random.Random(0)
    last, kills = 0, 0
    for round_ in range(12):
        process = subprocess.Popen([sys.executable, str(script), target, str(last + 1)], env=env,
                                   stdout=subprocess.PIPE, text=True)
        if round_ == 0:
            assert process.stdout.readline().strip() == "1"  # a first complete folder exists
            last = 1
        time.sleep(rng.uniform(0.05, 0.6))
        process.send_signal(signal.SIGKILL)
        printed = [int(line) for line in process.stdout.read().split()]
        process.wait()
        kills += process.returncode == -signal.SIGKILL
        generation = _generation_of(target)
        # the last publish it reported done, or the one after it (renamed, then killed before printing)
        assert generation in ((printed or [last])[-1], (printed or [last])[-1] + 1), (generation, printed)
        last = generation
    assert kills == 12
    artifacts.publish_folder(target, lambda path: _folder(path, {f"part-{i:02d}": "0" for i in range(40)}),
                             replace=True)
    assert sorted(os.listdir(tmp_path)) == ["gallery", "publisher.py"]  # the dead ones' temporaries gone


def test_atomic_write_text(tmp_path):
    path = str(tmp_path / "sub" / "ready.json")
    artifacts.atomic_write_text(path, json.dumps({"port": 1}))
    artifacts.atomic_write_text(path, json.dumps({"port": 2}))
    assert json.load(open(path)) == {"port": 2} and os.listdir(tmp_path / "sub") == ["ready.json"]


# ----------------------------------------------------------------------------- names and signatures


def test_the_other_modules_take_their_names_from_artifacts():
    """Modules that expose a file or signature name under their own name hold artifacts' object itself."""
    from kdem_tf import image_contract, tta
    from kdem_tf.evaluation import tflite_embedder

    assert image_contract.CONTRACT_FILE is artifacts.IMAGE_CONTRACT_FILE
    assert tflite_embedder.INFO_FILE is artifacts.TFLITE_INFO_FILE
    assert (tta.FLIP_SIGNATURE, tta.FLIP_IMAGES_SIGNATURE) == (artifacts.FLIP_SIGNATURE,
                                                               artifacts.FLIP_IMAGES_SIGNATURE)
    assert tta.FLIP_SIGNATURE is artifacts.FLIP_SIGNATURE


def test_the_exported_savedmodel_exposes_exactly_the_signature_table(tmp_path):
    """A small stand-in inference model (the export's input/output contract, not ResNet-50) through
    the real export: its SavedModel has exactly EMBEDDER_SIGNATURES, recorded in kdem_info.json."""
    import keras
    import tensorflow as tf

    from serving.export.saved_model import export_embedder, read_info

    image = keras.Input((16, 8, 3), name="image")
    modality = keras.Input((), dtype="int32", name="modality")
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, name="conv")(image))
    shift = keras.layers.Lambda(lambda m: tf.cast(m[:, None], "float32"))(modality)
    embedding = keras.layers.UnitNormalization(name="embedding")(keras.layers.Concatenate()([features, shift]))
    model = keras.Model({"image": image, "modality": modality}, {"embedding": embedding})

    version_dir = export_embedder(model, str(tmp_path / "kdem"))
    loaded = tf.saved_model.load(version_dir)
    assert set(loaded.signatures) == set(artifacts.EMBEDDER_SIGNATURES)
    assert read_info(version_dir)["signatures"] == list(artifacts.EMBEDDER_SIGNATURES)
    assert artifacts.SERVING_SIGNATURE == tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY
    assert os.path.isfile(os.path.join(version_dir, artifacts.ASSETS_EXTRA_DIR, artifacts.KDEM_INFO_FILE))
    out = loaded.signatures[artifacts.FLIP_IMAGES_SIGNATURE](images=tf.zeros([2, 16, 8, 3]),
                                                             modality=tf.constant(["visible", "infrared"]))
    assert out["embedding"].shape == (2, 5)
