from setuptools import setup

setup(
    name="escm2-paddle",
    version="0.1.0",
    description="ESCM2 (entire space counterfactual multi-task CVR estimation) for PaddlePaddle, PaddleRec-style",
    python_requires=">=3.9",
    packages=["rectools"],
    install_requires=["paddlepaddle==3.3.1", "pyyaml>=6", "numpy>=1.23"],
    extras_require={"bench": ["matplotlib>=3.6"], "visual": ["visualdl>=2.5"],
                    "test": ["pytest>=7", "matplotlib>=3.6", "visualdl>=2.5"]},
)
