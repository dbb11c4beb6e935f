# Training objectives beyond fairseq's label_smoothed_cross_entropy (MMCL) land here.
