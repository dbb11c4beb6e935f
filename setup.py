"""m3p-fairseq: multimodal multilingual machine translation (m3P) as a fairseq plugin.

Install with ``bash scripts/install.sh`` (see README): fairseq-fixed must be installed without
its dependencies, because it asks for a torchaudio that no release pairs with our torch pin.
"""

from pathlib import Path

from setuptools import find_packages, setup


def requirements():
    lines = Path(__file__).with_name("requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


setup(
    name="m3p-fairseq",
    version="0.1.0",
    description="Multimodal multilingual machine translation with a multimodal prompt (m3P), as a fairseq plugin",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["m3p_fairseq", "m3p_fairseq.*"]),
    install_requires=requirements(),
    extras_require={"test": ["pytest>=7"]},
)
