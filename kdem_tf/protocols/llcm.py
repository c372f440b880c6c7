"""The LLCM protocol exactly as the authors' DEEN/test.py computes it (ZYK100/LLCM).

test.py evaluates with `test_mode`: [1, 2] "IR to VIS" (its default) or [2, 1] "VIS to IR".
`process_query_llcm(mode=test_mode[1])` lists every test image of one modality (mode 1:
test_vis/cam1..cam9, mode 2: test_nir/cam1,2,4..9), `process_gallery_llcm(mode=test_mode[0],
trial)` draws, after `random.seed(trial)`, one `random.choice` of the sorted files of each
test id (ascending) and camera (that list's order) of the other modality; trials 0..9.

- i2v ([1, 2]): queries = every test_nir image, gallery = the trial's draw from test_vis;
  `eval_llcm(-q·gᵀ, query, gallery)`.
- v2i ([2, 1]): the "query" pool is every test_vis image and the draw is from test_nir, but
  the script scores `eval_llcm(-g·qᵀ, gallery, query)`: the drawn infrared images are the
  queries and the whole visible pool is the gallery. Its "VIS to IR" numbers are therefore
  infrared queries (one per id and camera, redrawn per trial) searching every visible image;
  `llcm_trials(direction="v2i")` builds exactly that.

eval_llcm drops, for each query, the gallery images of the same id and the same camera
number (an LLCM camera films both modalities), then scores mAP / mINP on the kept list and
a CMC over ids collapsed to their first kept image (`kdem_tf.protocols.same_camera`).
"""
from __future__ import annotations

import random
from typing import Dict, List, Sequence, Tuple

from kdem_tf import evaluation as ev
from kdem_tf.image_contract import INFRARED, VISIBLE

DIRECTIONS = ("i2v", "v2i")
TRIALS = 10

Entry = Tuple[int, int, str]  # (person id, camera, dataset-relative path)


def _datasets():
    from kdem_tf.data import datasets  # imports TensorFlow: only the folder readers need it
    return datasets


def protocol_order(entries: Sequence[Entry]) -> List[Entry]:
    """Entries in the authors' listing order: id as zero-padded string, camera, file name."""
    return sorted(entries, key=lambda e: (f"{e[0]:04d}", e[1], e[2].rsplit("/", 1)[-1]))


def draw_one_per_camera(entries: Sequence[Entry], trial: int) -> List[Entry]:
    """One image per (id, camera) as process_gallery_llcm draws it after random.seed(trial).

    `entries` is a whole pool; the draw walks ids and cameras in protocol order and picks
    `random.choice` of each folder's sorted files.
    """
    folders: Dict[Tuple[int, int], List[Entry]] = {}
    for entry in protocol_order(entries):
        folders.setdefault((entry[0], entry[1]), []).append(entry)
    rng = random.Random(trial)  # the stream of random.seed(trial) + random.choice
    return [rng.choice(files) for files in folders.values()]


def _split(entries: Sequence[Entry], modality: str, what: str) -> ev.Split:
    return ev._split([e[2] for e in entries], [e[0] for e in entries], [e[1] for e in entries],
                     modality, what)


def trials_from_pools(pools: Dict[str, Sequence[Entry]], direction: str = "i2v",
                      trials: int = TRIALS) -> List[ev.Trial]:
    """LLCM trials 0..trials-1 from the test pools {visible: entries, infrared: entries}."""
    if direction not in DIRECTIONS:
        raise ev.EvaluationError(f"LLCM direction must be one of {DIRECTIONS}, got {direction!r}")
    visible, infrared = protocol_order(pools[VISIBLE]), protocol_order(pools[INFRARED])
    out = []
    for t in range(trials):
        if direction == "i2v":
            query = _split(infrared, INFRARED, "LLCM infrared pool (test_nir)")
            gallery = _split(draw_one_per_camera(visible, t), VISIBLE, f"LLCM trial {t} test_vis draw")
        else:  # test.py's [2, 1]: the infrared draw is scored as the queries (see the module doc)
            query = _split(draw_one_per_camera(infrared, t), INFRARED, f"LLCM trial {t} test_nir draw")
            gallery = _split(visible, VISIBLE, "LLCM visible pool (test_vis)")
        out.append(ev.Trial(t, query, gallery))
    return out


def llcm_trials(root: str, direction: str = "i2v", trials: int = TRIALS) -> List[ev.Trial]:
    """LLCM trials from the raw folder (idx/test_id.txt, test_vis/, test_nir/)."""
    datasets = _datasets()
    try:
        records = datasets.llcm_test_records(root)
    except datasets.DatasetError as e:
        raise ev.EvaluationError(str(e)) from e
    pools = {m: [(r.person_id, r.camera, r.path) for r in rs] for m, rs in records.items()}
    return trials_from_pools(pools, direction, trials)
