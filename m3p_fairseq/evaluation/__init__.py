"""Evaluation and analysis: translation of test splits, scores and tables, probes (incongruent
images, source masking, off-target language) and the paper's figures. The command-line entry
points are cli.py (m3p-evaluate) and figures_cli.py (m3p-figures), with the choice of checkpoints
and directions they share in selection.py."""
