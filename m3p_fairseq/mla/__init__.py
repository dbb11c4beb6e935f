"""MLA's commands (``scripts/mla.py``): training the stand-in native model, building the
non-native dictionary, retrieval evaluation. Commands sit above every layer they use."""
