"""The export's TF Serving warm-up file (issue #24 item 7): PredictionLog records that fit the signatures."""
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from kdem_tf.artifacts import ASSETS_EXTRA_DIR, SERVING_SIGNATURE
from serving.export.warmup import WARMUP_FILE, WARMUP_SIGNATURES
from serving.server.rest import signature_def_map
from serving.export.warmup import WarmupError, read_warmup_requests


def test_the_warmup_file_holds_prediction_logs_with_the_signatures_inputs(model_base, embedder):
    version_dir = os.path.join(model_base, "1")
    path = os.path.join(version_dir, ASSETS_EXTRA_DIR, WARMUP_FILE)
    records = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(path)]
    assert len(records) == 4 and all(r.WhichOneof("log_type") == "predict_log" for r in records)
    defs = signature_def_map(version_dir)
    signatures = sorted(r.predict_log.request.model_spec.signature_name for r in records)
    assert signatures == sorted(WARMUP_SIGNATURES * 2)
    for record in records:
        request = record.predict_log.request
        signature_def = defs[request.model_spec.signature_name]
        assert set(request.inputs) == set(signature_def.inputs)
        for name, proto in request.inputs.items():
            assert proto.dtype == signature_def.inputs[name].dtype
            assert [d.size for d in proto.tensor_shape.dim] == [1]
    modalities = sorted(r.predict_log.request.inputs["modality"].string_val[0] for r in records
                        if r.predict_log.request.model_spec.signature_name == SERVING_SIGNATURE)
    assert modalities == [b"infrared", b"visible"]
    image = records[0].predict_log.request.inputs["image_bytes"].string_val[0]
    assert embedder.decode(image).shape == (*embedder.image_size, 3)  # decodable at the contract's size
    assert np.isfinite(embedder.embed_bytes([image], ["visible"])).all()


def test_a_garbage_warmup_file_fails_naming_the_file(tmp_path):
    folder = tmp_path / "7" / ASSETS_EXTRA_DIR
    folder.mkdir(parents=True)
    (folder / WARMUP_FILE).write_bytes(b"this is not a TFRecord file at all")
    with pytest.raises(WarmupError, match=f"{WARMUP_FILE}: not a TFRecord file of PredictionLog"):
        read_warmup_requests(str(tmp_path / "7"))


def test_a_version_without_a_warmup_file_has_nothing_to_replay(tmp_path):
    assert read_warmup_requests(str(tmp_path)) == []
