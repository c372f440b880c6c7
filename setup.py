"""kdem-tf: the KDEM method for visible-infrared person re-identification in TensorFlow/Keras 3."""
from setuptools import find_packages, setup

setup(
    name="kdem-tf",
    version="0.1.0",
    description="Knowledge-driven Enhanced Module (KDEM) for visible-infrared person ReID, with Beam, TFX and serving",
    python_requires=">=3.10,<3.11",
    packages=find_packages(include=["kdem_tf", "kdem_tf.*", "pipeline", "pipeline.*", "serving", "serving.*", "benchmarks"]),
    install_requires=[
        "tensorflow==2.16.2",
        "keras>=3.12,<3.13",
        "tfx==1.16.0",
        "kfp-pipeline-spec>=0.2.2,<0.3",  # TFX's KubeflowV2DagRunner; 0.3+ needs protobuf>=4.21 (locked: 3.20.3)
        "apache-beam",  # the version TFX 1.16 resolves; pinned in constraints.txt
        "scann==1.3.2",
        "tensorflow-serving-api>=2.16,<2.17",
        "dill",
        "numpy<2",
        "pillow",
        "pyyaml",
        "tqdm",
        "matplotlib",
        "fastapi",
        "uvicorn",
        "prometheus-client==0.26.0",  # serving.server.metrics (as in constraints.txt)
        "requests",
        "orjson",
    ],
    package_data={"pipeline": ["schema/*.pbtxt"]},
    extras_require={"dev": ["pytest", "pytest-timeout", "pytest-xdist", "httpx"]},
)
