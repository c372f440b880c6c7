"""Flip test-time augmentation (kdem_tf.tta): the SavedModel's serving_flip, the gallery index, evaluate --flip."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tests.serving.conftest import IMAGE_SIZE, png_bytes
from kdem_tf.datasets import sysu as sysu_ds
from kdem_tf.evaluation.embedding import embed_images

ATOL = 1e-5


def _keras_embedding(run_dir, pixels: np.ndarray, modality: int) -> np.ndarray:
    """The model's embedding of already-sized RGB pixels, normalised here (torchvision) — not by the export."""
    from serving.export.run_folder import load_run
    model, _ = load_run(run_dir)
    x = (pixels.astype(np.float32) / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    return model({"image": tf.constant(x[None], tf.float32), "modality": tf.constant([modality])},
                 training=False)["embedding"].numpy()[0]


def test_serving_flip_is_the_mean_of_the_image_and_its_mirror(run_dir, embedder):
    pixels = np.random.default_rng(7).integers(0, 256, (*IMAGE_SIZE, 3)).astype(np.uint8)
    plain = _keras_embedding(run_dir, pixels, 1)
    mirrored = _keras_embedding(run_dir, pixels[:, ::-1], 1)
    expected = (plain + mirrored) / np.linalg.norm(plain + mirrored)
    got = embedder.embed_bytes([png_bytes(pixels)], ["infrared"], flip=True)[0]
    np.testing.assert_allclose(got, expected, atol=ATOL)
    assert abs(np.linalg.norm(got) - 1.0) < 1e-5
    # it is not the plain embedding (a flip signature that ignored the mirror would pass the above only
    # for symmetric images; this one is random)
    assert np.abs(got - embedder.embed_bytes([png_bytes(pixels)], ["infrared"])[0]).max() > 1e-3
    images_flip = embedder.embed_images(pixels[None].astype(np.float32), ["infrared"], flip=True)[0]
    np.testing.assert_allclose(images_flip, expected, atol=ATOL)


def test_index_with_flip_records_it_and_stores_flip_embeddings(model_base, gallery_dir, embedder, tmp_path):
    from serving.export.gallery_index import build_index, read_gallery
    index = build_index(model_base, gallery_dir, str(tmp_path / "index"), batch_size=8, progress=False, flip=True)
    assert index.manifest["flip"] is True
    items = list(read_gallery(gallery_dir))[:4]
    expected = embedder.embed_bytes([b for b, _ in items], [e.modality for _, e in items], flip=True)
    np.testing.assert_allclose(np.asarray(index.embeddings[:4]), expected, atol=ATOL)


@pytest.fixture(scope="module")
def sysu_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("flip_sysu") / "SYSU"
    sysu_ds.generate_synthetic(str(root), identities=6, images_per_camera=2, image_size=(80, 40), seed=3,
                            progress=False)
    return str(root)


def test_evaluate_flip_rows_equal_features_computed_apart(model_base, embedder, sysu_root, tmp_path, capsys):
    """`--flip` rows = the protocol on flip-averaged features computed here from the plain signature on
    mirrored images (so the export's serving_flip and the evaluator's wiring are both checked)."""
    from kdem_tf import evaluate, evaluation
    from kdem_tf.tta import combine_flip

    out = tmp_path / "metrics.json"
    assert evaluate.main(["--dataset", "sysu", "--data-root", sysu_root, "--model", model_base, "--trials", "2",
                          "--flip", "--output", str(out)]) == 0
    stdout = capsys.readouterr().out
    metrics = json.loads(out.read_text())
    assert list(metrics["variants"]) == ["plain", "flip"] and metrics["flip"] is True
    assert "| flip on cosine" in stdout and "| plain" in stdout

    trials = sysu_ds.trials(sysu_root, "all", 2)
    paths = sorted({p for t in trials for p in t.query.paths + t.gallery.paths})
    modality = {p: t.query.modality for t in trials for p in t.query.paths}
    modality.update({p: t.gallery.modality for t in trials for p in t.gallery.paths})
    decoded = np.stack([embedder.decode(open(os.path.join(sysu_root, p), "rb").read()) for p in paths])
    mods = [modality[p] for p in paths]
    feats = combine_flip(embedder.embed_images(decoded, mods), embedder.embed_images(decoded[:, :, ::-1], mods))
    npz = tmp_path / "flip.npz"
    np.savez(npz, paths=np.array(paths), features=feats)
    out2 = tmp_path / "apart.json"
    assert evaluate.main(["--dataset", "sysu", "--data-root", sysu_root, "--features", str(npz), "--trials", "2",
                          "--output", str(out2)]) == 0
    apart = json.loads(out2.read_text())
    flip = metrics["variants"]["flip"]
    for key in ("rank1", "mAP", "mINP"):
        assert flip[key] == pytest.approx(apart[key], abs=1e-6)
    assert metrics["variants"]["plain"]["mAP"] == metrics["mAP"]


def test_flip_needs_a_model(sysu_root, tmp_path, capsys):
    from kdem_tf import evaluate
    npz = tmp_path / "f.npz"
    np.savez(npz, paths=np.array(["x"]), features=np.zeros((1, 4), np.float32))
    with pytest.raises(SystemExit) as stop:
        evaluate.main(["--dataset", "sysu", "--data-root", sysu_root, "--features", str(npz), "--flip"])
    assert stop.value.code == 2
    assert "--flip" in capsys.readouterr().err


def test_search_on_a_flip_index_embeds_the_query_with_flip(model_base, gallery_dir, embedder, tmp_path):
    """The serving core (shared by REST and gRPC) searches a `--flip` index with flip-averaged
    queries: its scores equal the dot products of serving_flip's query embedding with the gallery."""
    import asyncio

    from serving.server.core import ServingCore
    from serving.export.gallery_index import build_index, read_gallery

    index_dir = str(tmp_path / "flip_index")
    build_index(model_base, gallery_dir, index_dir, batch_size=8, progress=False, flip=True)
    query, entry = next(iter(read_gallery(gallery_dir)))
    expected = embedder.embed_bytes([query], ["infrared"], flip=True)[0]

    async def search():
        core = ServingCore(model_base, index_dir=index_dir)
        core.load()
        await core.start()
        try:
            return await core.search([query], ["infrared"], [3])
        finally:
            await core.stop()

    _, results = asyncio.run(search())
    index_embeddings = np.load(os.path.join(index_dir, "embeddings.npy"))
    scores = index_embeddings @ expected
    top = np.argsort(-scores)[:3]
    assert [round(r["score"], 4) for r in results[0]] == [round(float(scores[i]), 4) for i in top]
