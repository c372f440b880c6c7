"""One worker of the two-process MultiWorkerMirroredStrategy test (TF_CONFIG set by the test)."""
import sys

import numpy as np

from kdem_tf import config as config_lib
from kdem_tf.train import train

data_dir, run_dir, out_file = sys.argv[1:4]
config = config_lib.load_config("tiny", overrides=["model.non_local=false", "mixed_precision=float32",
                                                   "optim.epochs=1", "optim.steps_per_epoch=2"])
result = train(config, "sysu", data_dir, run_dir, verbose=0, return_models=True)
model = result["train_model"]
np.savez(out_file, **{f"w{i:04d}:{v.path}": np.asarray(v) for i, v in enumerate(model.weights)},
         loss=np.float64(result["metrics"]["loss"]), replicas=result["replicas"])
