"""A FairseqDataset whose examples are batched by one length per example (``self.sizes``), in
an order shuffled per (seed, epoch) and then stably sorted by length, as fairseq's own
language-pair datasets do."""

import numpy as np
from fairseq.data import FairseqDataset


class LengthSortedDataset(FairseqDataset):
    """Subclasses set ``self.sizes`` (numpy, one length per example) and ``self.shuffle``."""

    sizes: np.ndarray
    shuffle: bool

    def num_tokens(self, index):
        return int(self.sizes[index])

    def size(self, index):
        return int(self.sizes[index])

    def ordered_indices(self):
        # fairseq's iterator seeds numpy around this call: a permutation per (seed, epoch)
        order = np.random.permutation(len(self)) if self.shuffle else np.arange(len(self))
        return order[np.argsort(self.sizes[order], kind="mergesort")]
