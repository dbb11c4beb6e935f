"""Evaluation and analysis: translation of test splits, scores and tables, probes (incongruent
images, source masking, off-target language) and the paper's figures. The command-line entry
points are scripts/evaluate.py and scripts/figures.py."""
