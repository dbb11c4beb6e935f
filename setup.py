"""m3p-fairseq: multimodal multilingual machine translation (m3P) as a fairseq plugin.

Install with ``bash scripts/install.sh`` (see README). ``install_requires`` gives the ranges the
code supports; requirements.txt pins the exact set the tests ran with. fairseq-fixed is not
listed: it asks for a torchaudio that no release pairs with our torch, so install.sh installs it
with --no-deps (its other dependencies are below).
"""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent


def version() -> str:
    """m3p_fairseq/version.py's string, read without importing the package (which needs fairseq)."""
    text = (HERE / "m3p_fairseq" / "version.py").read_text(encoding="utf-8")
    return re.search(r'^__version__ = "([^"]+)"', text, re.MULTILINE).group(1)


setup(
    name="m3p-fairseq",
    version=version(),
    description="Multimodal multilingual machine translation with a multimodal prompt (m3P), as a fairseq plugin",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["m3p_fairseq", "m3p_fairseq.*", "preprocess", "preprocess.*"]),
    install_requires=[
        "torch>=2.14,<3",
        "torchvision>=0.29,<1",  # built for the torch beside it
        # fairseq-fixed's own dependencies, minus torchaudio
        "cffi",
        "cython",
        "hydra-core>=1.3.2,<1.4",
        "omegaconf>=2.3,<2.4",
        "numpy>=1.21.3,<3",
        "regex",
        "sacrebleu>=2.0,<3",
        "tqdm",
        "bitarray",
        "scikit-learn>=1.0",
        "packaging",
        # m3p-fairseq
        "h5py>=3.8,<4",
        "timm>=1.0,<2",
        "open_clip_torch>=3.3,<4",
        "sentencepiece>=0.1.99,<0.3",
        "tensorboardX>=2.6,<3",
        "submitit>=1.5,<2",
        "pyyaml>=6.0,<7",
        "pillow>=9",
        # evaluation and figures
        "py3langid>=0.2.2,<0.4",
        "matplotlib>=3.7,<4",
    ],
    extras_require={"test": ["pytest>=8", "ruff>=0.6"],
                    # captioning's CIDEr (its PTB tokenizer needs a Java runtime)
                    "captioning": ["pycocoevalcap>=1.2,<1.3"]},
    entry_points={
        "console_scripts": [
            "m3p-binarize=preprocess.binarize:main",
            "m3p-extract-features=preprocess.extract_image_features:main",
            "m3p-subsample=preprocess.subsample:main",
            "m3p-evaluate=m3p_fairseq.evaluation.cli:main",
            "m3p-figures=m3p_fairseq.evaluation.figures_cli:main",
            "m3p-sweep=m3p_fairseq.sweep.cli:main",
            "m3p-repair-checkpoints=m3p_fairseq.checkpoints:main",
            "m3p-mla=m3p_fairseq.mla.cli:main",
        ],
    },
)
