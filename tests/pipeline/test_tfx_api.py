"""pipeline.tfx_api: the very objects of TFX's public `tfx.v1`, without importing `tfx.v1`.

One fresh process checks both (this test process may have imported tfx.v1 already): the pipeline
modules leave `tfx.v1` and the Google Cloud clients unloaded, and each name is `tfx.v1`'s object.
"""
import json
import subprocess
import sys

from pipeline import configs

CHECK = """
import json, sys
import pipeline.demo, pipeline.local_runner, pipeline.pipeline
from pipeline import tfx_api
loaded = sorted(m for m in sys.modules if m == "tfx.v1" or m.startswith("google.cloud.aiplatform"))
from tfx import v1

def resolve(root, dotted):
    for part in dotted.split("."):
        root = getattr(root, part)
    return root

print(json.dumps({"loaded": loaded, "names": len(tfx_api.NAMES),
                  "different": [n for n in tfx_api.NAMES if resolve(tfx_api, n) is not resolve(v1, n)]}))
"""


def test_the_pipeline_modules_use_tfx_v1s_objects_without_importing_it():
    finished = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, cwd=configs.REPO_ROOT,
                              timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    result = json.loads(finished.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []  # what the module exists for (6 s of client libraries a process)
    assert result["names"] == 14  # 6 components, 3 dsl, 3 proto, 2 orchestration
    assert result["different"] == []
