"""kdem_tf.console: library noise leaves the console for a log file; our lines stay; --verbose shows all."""
import os
import re
import subprocess
import sys

from kdem_tf import console

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NOISE = [
    "2026-12-01 09:13:45.881893: E external/local_xla/xla/stream_executor/cuda/cuda_fft.cc:479] Unable to register cuFFT factory",
    "2026-12-01 09:13:45.867029: I tensorflow/core/util/port.cc:113] oneDNN custom operations are on.",
    "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow",
    "/x/.venv/lib/python3.10/site-packages/google/api_core/_python_version_support.py:246: FutureWarning: You are using a non-supported Python version",
    "  warnings.warn(message, FutureWarning)",
    "WARNING:absl:ArtifactQuery.property_predicate is not supported.",
    "WARNING:apache_beam.runners.portability.local_job_service:Worker: severity: WARN",
    "/work/main/.venv/bin/python: No module named build",
    "I0000 00:00:1733044000.123456   12345 grpc_server.cc:12] Server listening",
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "fully_quantize: 0, inference_type: 6, input_inference_type: UINT8, output_inference_type: FLOAT32",
    "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
]
KEPT = [
    "/work/main/kdem_tf/train.py:120: UserWarning: our own warning stays visible",
    "Traceback (most recent call last):",
    "error: /data/train: no TFRecord shards for split 'train'",
    "ERROR:apache_beam.runners.worker:a real failure inside Beam",
    "2026-12-01 09:13:45.881893: F tensorflow/core/framework/tensor.cc:1] Check failed: fatal lines stay",
    "\rembedding:  45%|████▌     | 45/100 [00:01<00:01, 30.0img/s]",
    "epoch 3/30 75s loss 4.97",
]


def test_noise_patterns_sort_library_lines_from_ours():
    assert [line for line in NOISE if not console.is_noise(line)] == []
    assert [line for line in KEPT if console.is_noise(line)] == []


def _run(args, **env):
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=REPO, **env))


def test_entry_point_console_has_no_library_noise_and_keeps_it_in_a_log(tmp_path):
    # serving.export imports TensorFlow and Keras (C++ start-up lines, library warnings), then fails
    # on a missing run folder: the error must reach the console, the noise only the log file.
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run([sys.executable, "-m", "serving.export", "--run", str(tmp_path / "missing"),
                             "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True,
                            timeout=300, env=dict(env, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="0"))
    assert result.returncode != 0
    lines = (result.stdout + result.stderr).splitlines()
    assert [line for line in lines if console.is_noise(line)] == []
    assert any("missing" in line for line in lines), result.stderr   # our error names the folder
    logs = [m.group(1) for line in lines for m in [re.search(r"library messages of this run: (\S+)\)", line)] if m]
    assert logs, result.stderr
    with open(logs[0]) as f:
        logged = f.read().splitlines()
    assert any(console.is_noise(line) for line in logged)            # the C++ lines went there
    assert any("missing" in line for line in logged)                 # and the log holds everything

    verbose = subprocess.run([sys.executable, "-m", "serving.export", "--verbose", "--run", str(tmp_path / "missing"),
                              "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True,
                             timeout=300, env=dict(env, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="0"))
    assert any(console.is_noise(line) for line in verbose.stderr.splitlines())
    assert "library messages of this run" not in verbose.stderr


def test_log_moves_beside_the_outputs(tmp_path):
    code = ("import sys; sys.argv[0] = '-m'; from kdem_tf import console; console.start('t'); "
            "import tensorflow as tf; print(console.log_beside(sys.argv[1]))")
    target = tmp_path / "run" / "console.log"
    result = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="0"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(target)
    assert target.exists()
    assert [line for line in result.stderr.splitlines() if console.is_noise(line)] == []
