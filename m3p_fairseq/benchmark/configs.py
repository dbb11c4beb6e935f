"""What the benchmark measures: the table's rows (fairseq's ``transformer`` and every m3P
fusion, with and without MMCL / MDropNet) and the sizes of data, models and runs."""

from dataclasses import dataclass, field
from typing import List, Optional

BASELINE = "transformer"
UNTAGGED_BASELINE = "transformer untagged"  # what the one extra source token costs
LANGS = ("en", "de")


@dataclass(frozen=True)
class ModelConfig:
    """One row of the table: what is trained, with which options."""
    name: str
    fusion: Optional[str]  # None: fairseq's transformer with --task translation (the baseline)
    mmcl: bool = False
    mdropnet: bool = False
    # fusion None only: start every source with the target-language tag, as the m3P task does
    # (Eq. 2; fairseq's --encoder-langtok tgt), so that both read identical batches
    source_tag: bool = True

    def train_options(self) -> List[str]:
        if self.fusion is None:
            return ["--task", "translation", "--arch", "transformer", "--share-all-embeddings",
                    "--criterion", "label_smoothed_cross_entropy"]
        options = ["--task", "multimodal_translation", "--arch", "m3p_transformer", "--fusion", self.fusion]
        options += (["--criterion", "m3p_loss", "--mmcl-weight", "0.1"] if self.mmcl
                    else ["--criterion", "label_smoothed_cross_entropy"])
        options += (["--mdropnet-text-only", "0.25", "--mdropnet-image-only", "0.25"] if self.mdropnet
                    else ["--mdropnet-text-only", "0", "--mdropnet-image-only", "0"])
        return options


def _configs() -> List[ModelConfig]:
    configs = [ModelConfig(BASELINE, None), ModelConfig(UNTAGGED_BASELINE, None, source_tag=False),
               ModelConfig("m3p none", "none")]
    for fusion in ("gated", "concat", "selective", "cvlm"):
        configs.append(ModelConfig(f"m3p {fusion}", fusion))
        if fusion == "cvlm":
            configs += [ModelConfig("m3p cvlm +MMCL", fusion, mmcl=True),
                        ModelConfig("m3p cvlm +MDropNet", fusion, mdropnet=True)]
        configs.append(ModelConfig(f"m3p {fusion} +MMCL +MDropNet", fusion, mmcl=True, mdropnet=True))
    return configs


CONFIGS = {config.name: config for config in _configs()}
SWEEP_CONFIGS = [BASELINE, "m3p cvlm +MMCL +MDropNet"]
TARGET_CONFIG = "m3p cvlm +MMCL"  # the training target: CVLM with MMCL
KEY_CONFIGS = [BASELINE, TARGET_CONFIG, "m3p cvlm +MMCL +MDropNet"]
# issue 16's goals: (row, "train" or "generation", least ratio to the baseline)
SPEED_GOALS = [("m3p none", "train", 0.98), ("m3p none", "generation", 0.99), (TARGET_CONFIG, "train", 0.90),
               (TARGET_CONFIG, "generation", 0.95), ("m3p cvlm +MMCL +MDropNet", "train", 0.88)]


@dataclass
class Settings:
    # data: synthetic captions (make_synthetic_corpus), one direction
    train_sentences: int = 1000
    test_sentences: int = 200
    num_patches: int = 49  # CLIP ViT-B/32 at 224 px
    feature_dim: int = 768
    # model: the same dimensions for the baseline and m3P
    embed_dim: int = 256
    ffn_dim: int = 1024
    heads: int = 4
    layers: int = 3  # encoder and decoder each
    # training
    batch_size: int = 32  # sentences per update
    sweep_batch_sizes: List[int] = field(default_factory=lambda: [8, 16, 32, 64])
    warmup_steps: int = 2
    # False: random sentences per batch (the goals' method); True: as fairseq-train, length-sorted
    length_sorted_batches: bool = False
    timed_steps: int = 6
    # generation
    gen_batch_size: int = 20
    gen_batches: int = 9  # 180 timed sentences: with 2 batches the ratios swung by ±3 % on a quiet machine
    gen_length: int = 20
    beam: int = 5
    # protocol: every row once, the key rows (KEY_CONFIGS) in this many rounds in all
    repeats: int = 1
    key_repeats: int = 3
    sweep_repeats: int = 1
    threads: int = 1
    # reader: generated feature files of these sizes; every image read once, in random order
    reader_sizes: List[int] = field(default_factory=lambda: [1000, 10000, 50000])
    reader_patches: int = 49
    reader_dim: int = 512


TINY = Settings(train_sentences=40, test_sentences=12, num_patches=4, feature_dim=16, embed_dim=32,
                ffn_dim=64, heads=2, layers=1, batch_size=4, sweep_batch_sizes=[2, 4], warmup_steps=1,
                timed_steps=2, gen_batch_size=4, gen_batches=1, gen_length=4, repeats=1, key_repeats=2, sweep_repeats=1,
                reader_sizes=[50, 100, 200], reader_patches=4, reader_dim=16)
