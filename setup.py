from setuptools import find_packages, setup

setup(
    name="escm2-paddle",
    version="0.1.0",
    description="ESCM2 (entire space counterfactual multi-task CVR estimation) for PaddlePaddle, PaddleRec-style",
    python_requires=">=3.9",
    # the runtime, the data sets' packages and the studies; model folders are imported by path
    # (rectools.model_loader), as PaddleRec's are
    packages=find_packages(include=["rectools", "datasets", "datasets.*", "studies", "studies.*"]),
    install_requires=["paddlepaddle==3.3.1", "pyyaml>=6", "numpy>=1.23"],
    extras_require={"bench": ["matplotlib>=3.6"], "visual": ["visualdl>=2.5"],
                    "test": ["pytest>=7", "matplotlib>=3.6", "visualdl>=2.5"]},
)
