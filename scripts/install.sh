#!/usr/bin/env bash
# Install m3p-fairseq, its pinned dependencies and the test tools into the active Python
# environment (a virtual environment: see README "Set up").
# Re-running is cheap: pip skips everything already installed at the pinned version, and a
# fairseq-fixed wheel compiled once is reused from pip's cache.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# The exact pins, build tools (setuptools, wheel) and test tools (pytest, ruff) included: they
# must be there before fairseq-fixed is compiled below without build isolation.
python -m pip install -r requirements.txt
# fairseq-fixed asks for a torchaudio that no release pairs with our torch pin, and fairseq only
# imports torchaudio in its speech examples: install it without dependencies (the others are in
# requirements.txt), compiled against the torch installed above (no build isolation).
python -m pip install --no-deps --no-build-isolation fairseq-fixed==0.12.3.1
# The package itself (editable) with its console scripts; pip checks the installed pins against
# setup.py's ranges and installs nothing more.
python -m pip install --no-build-isolation -e ".[test,captioning]"
