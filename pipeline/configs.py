"""Names, paths, steps and thresholds of the kdem-tf TFX pipeline (the TFX template's configs.py).

Every value here is a default: `python -m pipeline.local_runner --help` overrides each one
with a flag, and a `KDEM_*` environment variable overrides the default itself (that is how
`tfx run create`, which runs pipeline/local_runner.py without arguments, is configured).

Layout under HOME (default: <repo>/outputs/pipeline)::

    HOME/tfx/<PIPELINE_NAME>/                    pipeline root: one folder per component
    HOME/tfx/<PIPELINE_NAME>/metadata.sqlite     ML Metadata (SQLite)
    HOME/serving/<PIPELINE_NAME>/<version>/      pushed SavedModels (TF Serving's layout)
    HOME/serving/<PIPELINE_NAME>-index/<version>/ the ScaNN gallery index of each pushed version
    HOME/data/sysu_synth/                        the synthetic dataset (generated on first use)
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional, Tuple

from kdem_tf import datasets

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIPELINE_DIR = os.path.join(REPO_ROOT, "pipeline")


def _env(name: str, default):
    value = os.environ.get(f"KDEM_{name}")
    if value is None or value == "":
        return default
    if isinstance(default, bool):
        return value.lower() in ("1", "true", "yes", "on")
    if isinstance(default, int):
        return int(value)
    if isinstance(default, float):
        return float(value)
    return value


PIPELINE_NAME = _env("PIPELINE_NAME", "kdem-reid")
HOME = os.path.abspath(_env("PIPELINE_HOME", os.path.join(REPO_ROOT, "outputs", "pipeline")))

# ----------------------------------------------------------------------------- inputs
DATASET = _env("DATASET", datasets.DEFAULT)      # kdem_tf.datasets.names(): sysu, regdb, llcm, manifest, plug-ins
DATA_ROOT = _env("DATA_ROOT", "")                # "" = the synthetic dataset below (generated when absent)
TRIAL = _env("TRIAL", 1)                         # the dataset's --trial, where it has one (RegDB 1..10)
NUM_SHARDS = _env("NUM_SHARDS", 0)               # TFRecord shards per split; 0 = ~2,000 images a shard

# The built-in synthetic dataset (kdem_tf.data.synthetic), demo size: runs out of the box.
SYNTHETIC_IDENTITIES = _env("SYNTHETIC_IDENTITIES", 24)
SYNTHETIC_IMAGES_PER_CAMERA = _env("SYNTHETIC_IMAGES_PER_CAMERA", 4)
SYNTHETIC_SEED = _env("SYNTHETIC_SEED", 0)
SYNTHETIC_IMAGE_SIZE = (64, 32)                 # when no training size is known; resolve_settings renders at the preset's

# ----------------------------------------------------------------------------- training
PRESET = _env("PRESET", "demo")                  # kdem_tf.config presets: paper, demo, tiny
TRAIN_CONFIG = _env("TRAIN_CONFIG", "")          # optional YAML over the preset
TRAIN_OVERRIDES = tuple(s for s in _env("TRAIN_OVERRIDES", "").split(";") if s)  # "section.key=value;..."
TRAIN_STEPS = _env("TRAIN_STEPS", 0)             # TrainArgs.num_steps; 0 = the preset's whole schedule
TRAIN_WORKERS = _env("TRAIN_WORKERS", 1)         # training processes (MultiWorkerMirroredStrategy when > 1)

# ----------------------------------------------------------------------------- evaluation and blessing
MIN_MAP = _env("MIN_MAP", 10.0)                  # percent: mAP below this is never blessed
MAX_MAP_DROP = _env("MAX_MAP_DROP", 0.0)         # percent points a new model may lose to the last blessed one
EVAL_TRIALS = _env("EVAL_TRIALS", 10)            # SYSU single-shot gallery draws (trials 0..N-1)
EVAL_MODE = _env("EVAL_MODE", "all")             # the search mode of datasets that have one (SYSU: all or indoor)

# ----------------------------------------------------------------------------- execution
BEAM_MODE = _env("BEAM_MODE", "multi_processing")  # DirectRunner: multi_processing or in_memory
BEAM_WORKERS = _env("BEAM_WORKERS", 0)             # 0 = one per core
ENABLE_CACHE = _env("ENABLE_CACHE", True)
CODE_FINGERPRINT = _env("CODE_FINGERPRINT", "")  # "" = a hash of kdem_tf/ (a code change retrains)
SCHEMA_PATH = os.path.join(PIPELINE_DIR, "schema", "schema.pbtxt")  # the curated schema
PIPELINE_IMAGE = _env("PIPELINE_IMAGE", "kdem-tf-pipeline:latest")  # deploy/pipeline.Dockerfile's image


@dataclasses.dataclass(frozen=True)
class PipelineSettings:
    """Everything `create_pipeline` needs, resolved (paths absolute, image size known)."""
    pipeline_name: str = PIPELINE_NAME
    home: str = HOME
    dataset: str = DATASET
    data_root: str = DATA_ROOT
    trial: int = TRIAL
    num_shards: int = NUM_SHARDS
    image_size: Optional[Tuple[int, int]] = None   # synthetic data's render size; None: the preset's data.image_size
    preset: str = PRESET
    train_config: str = TRAIN_CONFIG
    train_overrides: Tuple[str, ...] = TRAIN_OVERRIDES
    train_steps: int = TRAIN_STEPS
    train_workers: int = TRAIN_WORKERS             # the Trainer's custom_config["workers"] (run_fn checks TF_CONFIG)
    train_verbose: int = 2                         # kdem_tf.train.train's verbose (2: a log line per epoch)
    min_map: float = MIN_MAP
    max_map_drop: float = MAX_MAP_DROP
    eval_trials: int = EVAL_TRIALS
    eval_mode: str = EVAL_MODE
    beam_mode: str = BEAM_MODE
    beam_workers: int = BEAM_WORKERS
    beam_args: Tuple[str, ...] = ()                # extra Beam flags; a --runner=... here replaces the default
    enable_cache: bool = ENABLE_CACHE
    schema_path: Optional[str] = SCHEMA_PATH       # None: infer the schema with SchemaGen
    serving_dir: str = ""                          # "" = HOME/serving/<name>
    index_dir: str = ""                            # "" = HOME/serving/<name>-index
    data_fingerprint: str = ""                     # changes when the raw data changes (cache key)
    root: str = ""                                 # pipeline root; "" = HOME/tfx/<name>
    code_fingerprint: str = CODE_FINGERPRINT       # changes when the training code changes (cache key)

    @property
    def pipeline_root(self) -> str:
        return self.root or os.path.join(self.home, "tfx", self.pipeline_name)

    @property
    def metadata_path(self) -> str:
        return os.path.join(self.pipeline_root, "metadata.sqlite")

    @property
    def serving_model_dir(self) -> str:
        return self.serving_dir or os.path.join(self.home, "serving", self.pipeline_name)

    @property
    def index_base_dir(self) -> str:
        return self.index_dir or os.path.join(self.home, "serving", f"{self.pipeline_name}-index")

    @property
    def synthetic_data_root(self) -> str:
        return os.path.join(self.home, "data", f"{self.dataset}_synth")

    @property
    def splits(self) -> Tuple[str, ...]:
        return datasets.get(self.dataset).split_names()

    @property
    def query_split(self) -> str:
        return datasets.get(self.dataset).eval_splits[0]

    @property
    def gallery_split(self) -> str:
        return datasets.get(self.dataset).eval_splits[1]


def beam_pipeline_args(mode: str = BEAM_MODE, workers: int = BEAM_WORKERS, extra=()) -> list:
    """Explicit Beam flags for every Beam-based component.

    Without `--runner`, Beam 2.7x picks the Prism runner and downloads its binary, which
    fails offline; so the DirectRunner is named with its running mode.

    Dependencies: TFX builds an ephemeral sdist of itself for every Beam component unless
    one of `--extra_packages`, `--setup_file`, `--requirements_file`, `--sdk_container_image`
    is set, and Beam's stager builds an sdist of the project for `--setup_file` (probing
    `python -m build` first: the "No module named build" lines). Local DirectRunner workers
    run in this very environment and need neither, so local runs name Beam's stock SDK
    image (`--sdk_container_image`, which only Docker environments read) and nothing is
    built; remote runners (any `--runner=...` in `extra`: Flink, Spark, Dataflow) get
    `--setup_file` so that their workers receive kdem_tf. A refused runner (DaskRunner:
    kdem_tf/data/beam_options.py says why) raises UnsupportedRunnerError here, before any run.
    """
    from kdem_tf.data import beam_options

    extra = list(extra)
    beam_options.check_beam_args(extra)
    if any(a.startswith("--runner") for a in extra):
        return [f"--setup_file={os.path.join(REPO_ROOT, 'setup.py')}"] + extra
    if mode not in ("multi_processing", "in_memory"):
        raise ValueError(f"Beam mode must be multi_processing or in_memory, got {mode!r}")
    import apache_beam

    args = [f"--sdk_container_image=apache/beam_python3.10_sdk:{apache_beam.__version__}",
            "--runner=DirectRunner", f"--direct_running_mode={mode}"]
    if mode == "multi_processing":
        args.append(f"--direct_num_workers={workers or os.cpu_count() or 1}")
    return args + extra
