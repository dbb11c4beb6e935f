#!/usr/bin/env bash
# Install m3p-fairseq and its pinned dependencies into the active Python environment.
# Re-running is cheap: pip skips everything already installed at the pinned version.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python -m pip install -r requirements.txt
# fairseq-fixed asks for a torchaudio that no release pairs with our torch pin, and fairseq only
# imports torchaudio in its speech examples: install it without dependencies (the others are in
# requirements.txt), compiled against the torch installed above (no build isolation).
python -m pip install --no-deps --no-build-isolation fairseq-fixed==0.12.3.1
python -m pip install --no-deps --no-build-isolation -e .
