"""The export room: what is written once, before serving (see docs/serving.md).

- `saved_model`: the embedder SavedModel (`python -m serving.export`, CLI in `cli`);
- `run_folder`: a training run folder as the exports read it (model, run_info, contract);
- `tflite`: one TFLite model per modality (`python -m serving.export --tflite`);
- `embedder`: loads an exported SavedModel and runs it from Python;
- `gallery_index`: a gallery's ScaNN index (`python -m serving.index`);
- `search_signature`: the `search` signature's inputs, outputs and SignatureDef;
- `retrieval`: the embedder and the ScaNN index in one SavedModel.

File, folder and signature names, version folders and atomic publishing: `kdem_tf.artifacts`.
"""
