"""kdem_tf.import_checkpoint: AGW checkpoints (torch's zip format read without PyTorch, the legacy format,
.safetensors) into run folders that serving.export and kdem_tf.evaluate take, against a NumPy AGW forward.

The checkpoints are written by tests/agw_checkpoints.py (AGW's names from its model.py/resnet.py, random
values, torch's zip format emitted opcode by opcode); `np_agw_embedding` follows AGW's `embed_net.forward`
in test mode (NCHW, float64) with the NumPy ResNet pieces of tests/model/test_resnet.py.
"""
from __future__ import annotations

import collections
import glob
import importlib.util
import json
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest

from kdem_tf import config as config_lib
from kdem_tf.image_contract import ImageContract
from kdem_tf.import_checkpoint import import_agw_checkpoint, main as import_main
from kdem_tf.model.agw_weights import agw_tensors
from kdem_tf.model.backbone_weights import BackboneWeightsError
from kdem_tf.model.torch_checkpoint import TorchCheckpointError, read_checkpoint
from tests.agw_checkpoints import AGW_NON_LOCAL, Tensor, agw_checkpoint, agw_state, write_torch_zip
from tests.conftest import agw_tiny_state
from tests.model.conftest import write_safetensors
from tests.model.test_resnet import np_bn, np_bottleneck, np_conv, np_stem

TINY = config_lib.load_config("tiny")
STEM_PREFIX = {0: "visible_module.visible.", 1: "thermal_module.thermal."}
# float32 TF vs float64 NumPy through the tiny network, on unit vectors (measured: 3.1e-6).
EMBEDDING_TOLERANCE = 1e-5


def _conv1x1(x, state, name):
    return np_conv(x, state[f"{name}.weight"]) + state[f"{name}.bias"][None, :, None, None]


def np_non_local(x, state, prefix):
    """AGW's Non_local.forward: f = theta(x)^T phi(x) / N, y = f g(x), z = BN(W(y)) + x."""
    batch, _, height, width = x.shape
    theta = _conv1x1(x, state, f"{prefix}.theta").reshape(batch, -1, height * width).transpose(0, 2, 1)
    phi = _conv1x1(x, state, f"{prefix}.phi").reshape(batch, -1, height * width)
    g = _conv1x1(x, state, f"{prefix}.g.0").reshape(batch, -1, height * width).transpose(0, 2, 1)
    y = (theta @ phi / (height * width)) @ g
    y = y.transpose(0, 2, 1).reshape(batch, -1, height, width)
    return np_bn(_conv1x1(y, state, f"{prefix}.W.0"), state, f"{prefix}.W.1") + x


def np_agw_embedding(state, images_nhwc, modality, stage_blocks):
    """AGW's test-time `feat` (l2norm(bottleneck(gem(x)))) for normalised images of one modality."""
    x = images_nhwc.transpose(0, 3, 1, 2).astype(np.float64)
    stem_state = {k[len(STEM_PREFIX[modality]):]: v for k, v in state.items() if k.startswith(STEM_PREFIX[modality])}
    x = np_stem(x, stem_state)
    for layer, (blocks, stride) in enumerate(zip(stage_blocks, (1, 2, 2, 1)), start=1):  # last stride 1
        non_local = min(AGW_NON_LOCAL.get(layer, 0), blocks)
        for block in range(blocks):
            x = np_bottleneck(x, state, f"base_resnet.base.layer{layer}.{block}", stride if block == 0 else 1)
            if block >= blocks - non_local:
                x = np_non_local(x, state, f"NL_{layer}.{block - (blocks - non_local)}")
    pooled = (np.mean(x.reshape(x.shape[0], x.shape[1], -1) ** 3, axis=-1) + 1e-12) ** (1 / 3)
    feat = (pooled - state["bottleneck.running_mean"]) / np.sqrt(state["bottleneck.running_var"] + 1e-5) \
        * state["bottleneck.weight"] + state["bottleneck.bias"]
    return feat / np.linalg.norm(feat, axis=1, keepdims=True)


def _normalised(images_0_255, contract):
    return ((images_0_255 / 255.0 - np.array(contract["mean"])) / np.array(contract["std"])).astype(np.float32)


# ----------------------------------------------------------------------------- reading the files

def test_zip_checkpoint_reads_agws_dict_without_torch(tmp_path):
    state = agw_tiny_state()
    path = tmp_path / "agw.t"
    write_torch_zip(path, agw_checkpoint(state, epoch=61, m_ap=0.4765, prefix="module."))
    loaded, stored = read_checkpoint(str(path))
    assert list(loaded) == list(state)  # module. removed, order kept
    for key, value in state.items():
        assert loaded[key].dtype == value.dtype and loaded[key].shape == value.shape, key
        np.testing.assert_array_equal(loaded[key], value)
    assert stored == {"rank1": pytest.approx(0.475), "mAP": 0.4765, "mINP": 0.353, "epoch": 61}


def test_zip_checkpoint_bare_state_dict_big_endian_and_strided_tensor(tmp_path):
    matrix = np.arange(12, dtype=np.float32).reshape(3, 4)
    obj = collections.OrderedDict([("a", Tensor(matrix)), ("b", Tensor(np.array([1.5, -2.0], np.float64)))])
    path = tmp_path / "bare.pth"
    write_torch_zip(path, obj, prefix="bare", byteorder="big")
    loaded, stored = read_checkpoint(str(path))
    np.testing.assert_array_equal(loaded["a"], matrix)
    assert loaded["b"].dtype == np.float64 and loaded["b"].dtype.isnative and stored == {}


def test_a_pickle_global_outside_tensors_is_refused_by_name(tmp_path):
    command = f"touch {tmp_path / 'ran'}".encode()
    payload = b"\x80\x02cos\nsystem\nX" + struct.pack("<I", len(command)) + command + b"\x85R."  # os.system(...)
    path = tmp_path / "evil.t"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/version", "3\n")
    with pytest.raises(TorchCheckpointError, match=r"refused to unpickle the global os\.system"):
        read_checkpoint(str(path))
    assert not (tmp_path / "ran").exists()
    pickle.loads(payload)  # the same pickle, unrestricted, does run it: the check above means something
    assert (tmp_path / "ran").exists()


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="PyTorch is installed: legacy files load")
def test_legacy_format_without_torch_names_the_format_and_the_conversion(tmp_path):
    path = tmp_path / "sysu_agw_p4_n8_lr_0.1_seed_0_best.t"
    # torch's legacy format: pickled magic number, protocol version, system info, the object, storage keys, data
    path.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2))
    with pytest.raises(TorchCheckpointError, match=r"legacy \(pre-1\.6, non-zip\) serialization format") as error:
        read_checkpoint(str(path))
    assert f"torch.save(torch.load('{path}'" in str(error.value)


def test_not_a_checkpoint_is_named(tmp_path):
    path = tmp_path / "notes.t"
    path.write_text("hello")
    with pytest.raises(TorchCheckpointError, match="neither torch's zip format"):
        read_checkpoint(str(path))


# ----------------------------------------------------------------------------- the mapping

def test_paper_network_expects_exactly_agws_keys_and_shapes():
    """Every tensor of AGW's ResNet-50 embed_net that its forward uses maps to the paper network, shape for shape."""
    from kdem_tf.config import ModelConfig
    from kdem_tf.model.model import build_kdem_models

    train_model, _ = build_kdem_models(ModelConfig(backbone_weights="none"), 395, (64, 32), kdem=False)
    expected = agw_tensors(train_model)
    state = agw_state()  # ResNet-50, 395 classes, 1 inner channel: AGW's released SYSU-MM01 model
    used = {k for k in state if not k.endswith("num_batches_tracked") and k != "bottleneck.bias"
            and not k.startswith(("visible_module.visible.layer", "thermal_module.thermal.layer",
                                  "base_resnet.base.conv1", "base_resnet.base.bn1"))}
    assert set(expected) == used
    assert [k for k in used if expected[k][1] != state[k].shape] == []
    assert sum(k.startswith("NL_2.") for k in expected) == 2 * 12  # g.0, theta, phi, W.0: weight + bias; W.1: BN
    assert sum(k.startswith("NL_3.") for k in expected) == 3 * 12


def test_import_writes_a_complete_run_folder(agw_tiny_run):
    checkpoint, run = agw_tiny_run
    assert sorted(os.listdir(run)) == ["classifier.npy", "config.yaml", "image_contract.json",
                                       "inference_model.keras", "run_info.json"]
    info = json.loads(open(os.path.join(run, "run_info.json")).read())
    import hashlib
    assert info["imported_from"]["sha256"] == hashlib.sha256(open(checkpoint, "rb").read()).hexdigest()
    assert info["imported_from"]["stored"]["mAP"] == 0.4765 and info["imported_from"]["stored"]["epoch"] == 61
    assert (info["num_classes"], info["embedding_dim"], info["dataset"]) == (4, 512, "sysu")
    assert info["image_contract"]["normalization"] == "torchvision"
    config = config_lib.from_yaml_text(open(os.path.join(run, "config.yaml")).read())
    assert config.model.non_local_inner_channels == 1 and config.loss.ablation == "baseline"
    np.testing.assert_array_equal(np.load(os.path.join(run, "classifier.npy")),
                                  agw_tiny_state()["classifier.weight"].T)


def test_exported_import_embeds_as_agws_forward_and_evaluates(agw_tiny_run, tiny_sysu, tmp_path):
    import tensorflow as tf
    from kdem_tf import evaluate
    from serving.export import cli as export

    _, run = agw_tiny_run
    export.main(["--run", run, "--out", str(tmp_path / "run" / "export")])
    signature = tf.saved_model.load(str(tmp_path / "run" / "export" / "1")).signatures["embed_images"]
    contract = json.loads(open(os.path.join(run, "image_contract.json")).read())
    state = agw_tiny_state()
    images = np.random.default_rng(5).uniform(0, 255, (3, 64, 32, 3)).astype(np.float32)
    for modality, name in ((0, "visible"), (1, "infrared")):
        ours = signature(images=tf.constant(images), modality=tf.constant([name] * 3))["embedding"].numpy()
        reference = np_agw_embedding(state, _normalised(images, contract), modality, TINY.model.stage_blocks)
        assert np.max(np.abs(ours - reference)) < EMBEDDING_TOLERANCE, name
    # kdem_tf.evaluate on the run folder (its export/) equals it on AGW's NumPy features of the same pixels
    paths = sorted(os.path.relpath(p, tiny_sysu) for p in glob.glob(os.path.join(tiny_sysu, "cam*", "*", "*.jpg")))
    decode = ImageContract.from_dict(contract).decode  # the pixels the export's serving_default sees
    pixels = [decode(tf.constant(open(os.path.join(tiny_sysu, p), "rb").read())).numpy()[None] for p in paths]
    features = np.concatenate([np_agw_embedding(state, _normalised(pixels[i], contract),
                                                1 if p.split("/")[0] in ("cam3", "cam6") else 0,
                                                TINY.model.stage_blocks) for i, p in enumerate(paths)])
    np.savez(tmp_path / "agw.npz", paths=np.array(paths), features=features)
    metrics = {}
    for source in (["--model", str(tmp_path / "run")], ["--features", str(tmp_path / "agw.npz")]):
        output = tmp_path / f"{source[0][2:]}.json"
        assert evaluate.main(["--dataset", "sysu", "--data-root", tiny_sysu, "--trials", "1",
                              "--output", str(output)] + source) == 0
        metrics[source[0]] = json.loads(output.read_text())
    for key in ("rank1", "mAP", "mINP"):
        assert metrics["--model"][key] == pytest.approx(metrics["--features"][key], abs=1e-3), key


# ----------------------------------------------------------------------------- refusals

def _import(tmp_path, state, name="bad.t"):
    write_torch_zip(tmp_path / name, agw_checkpoint(state))
    return import_agw_checkpoint(str(tmp_path / name), str(tmp_path / "run"), dataset="sysu", base_config=TINY)


@pytest.mark.parametrize("change, message", [
    (lambda s: s.update({"NL_3.0.W.0.weight": s["NL_3.0.W.0.weight"][:, :, :, :0]}),
     r"key 'NL_3.0.W.0.weight' has shape \[256, 1, 1, 0\]; this backbone expects \[256, 1, 1, 1\]"),
    (lambda s: s.update({"base_resnet.base.layer9.0.conv1.weight": np.zeros((1,), np.float32)}),
     r"key 'base_resnet.base.layer9.0.conv1.weight' is not a tensor of AGW's embed_net"),
    (lambda s: s.pop("visible_module.visible.bn1.running_var"),
     r"missing key 'visible_module.visible.bn1.running_var' \(expected shape \[16\]\)"),
    (lambda s: s.update({"bottleneck.bias": np.full(512, 0.25, np.float32)}),
     r"key 'bottleneck.bias' is non-zero \(max \|bias\| 0.25\)"),
], ids=["shape", "unknown-key", "missing-key", "neck-bias"])
def test_bad_checkpoints_are_refused_by_key_and_leave_no_folder(tmp_path, change, message):
    state = agw_tiny_state()
    change(state)
    with pytest.raises(BackboneWeightsError, match=message):
        _import(tmp_path, state)
    assert sorted(os.listdir(tmp_path)) == ["bad.t"]  # neither the run folder nor its temporary sibling


def test_safetensors_with_agws_keys_imports_like_the_zip_file(tmp_path, agw_tiny_run):
    import keras

    write_safetensors(tmp_path / "agw.safetensors", agw_tiny_state())
    assert import_main(["--from", "agw", str(tmp_path / "agw.safetensors"), "--out", str(tmp_path / "run"),
                        "--dataset", "sysu"]) == 2  # the paper network: ResNet-50 widths, not the tiny ones
    info = import_agw_checkpoint(str(tmp_path / "agw.safetensors"), str(tmp_path / "run"), dataset="sysu",
                                 base_config=TINY)
    assert info["imported_from"]["stored"] == {}
    ours = keras.saving.load_model(str(tmp_path / "run" / "inference_model.keras"))
    theirs = keras.saving.load_model(os.path.join(agw_tiny_run[1], "inference_model.keras"))
    for a, b in zip(ours.weights, theirs.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def test_cli_refuses_an_existing_folder_and_an_unknown_class_count(tmp_path, capsys):
    write_torch_zip(tmp_path / "agw.t", agw_checkpoint(agw_tiny_state()))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("")
    assert import_main(["--from", "agw", str(tmp_path / "agw.t"), "--out", str(tmp_path / "taken")]) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err
    assert import_main(["--from", "agw", str(tmp_path / "agw.t"), "--out", str(tmp_path / "new")]) == 2
    assert "4 classes is the training set of no known dataset (SYSU-MM01 395, RegDB 206)" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
