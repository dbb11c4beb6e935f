"""What the pre-training recipes (captioning.py, retrieval.py, translation.py) share: the
quickstart's command runner (examples/quickstart/run.py, imported as ``quickstart``), step 1
(the synthetic corpus in every caption language, its image features and one shared
dictionary) and, for captioning.py and translation.py, the pre-training command with the model
sizes that the models initialised from it repeat."""

import importlib.util
import sys
from pathlib import Path

from m3p_fairseq.data.vocabulary import MASK_WORD

# examples/quickstart/run.py, loaded from its file (examples/ is not a package, and nothing here
# puts a folder on sys.path)
_spec = importlib.util.spec_from_file_location("quickstart_run", Path(__file__).resolve().parents[1] / "quickstart" / "run.py")
quickstart = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(quickstart)

PYTHON = sys.executable


def prepare(work: Path, args, langs) -> Path:
    """Step 1 (every part skipped when its output exists); returns the binarized data directory.
    ``args``: num_train, num_valid, num_test, image_size, seed, spm_vocab_size."""
    raw, data = work / "raw", work / "data-bin"
    work.mkdir(parents=True, exist_ok=True)
    if not (raw / "test.image_ids").exists():
        quickstart.run([PYTHON, "-m", "preprocess.make_synthetic_corpus", "--output-dir", raw,
                        "--langs", ",".join(langs), "--num-train", args.num_train, "--num-valid", args.num_valid,
                        "--num-test", args.num_test, "--image-size", args.image_size, "--seed", args.seed])
    quickstart.extract_features(raw, data / "image_features.h5", ["train", "valid", "test"], args.image_size,
                                work / "extract.log")
    if not (data / f"test.{langs[-1]}.bin").exists():
        # English paired with each other language: binarize then writes every language multi-way
        pairs = ",".join(f"{langs[0]}-{lang}" for lang in langs[1:]) or f"{langs[0]}-{langs[0]}"
        quickstart.run([PYTHON, "-m", "preprocess.binarize", "--raw-dir", raw, "--dest-dir", data,
                        "--lang-pairs", pairs, "--splits", "train,valid,test", "--spm-vocab-size", args.spm_vocab_size,
                        "--spm-user-defined-symbols", MASK_WORD], log_file=work / "binarize.log")
    return data


def model_sizes(args) -> list:
    """The pre-training model's sizes (``args.embed_dim``, ``args.layers``); a model initialised
    from it must have the same ones (its checkpoint fits by name and shape)."""
    return ["--embed-dim", args.embed_dim, "--ffn-embed-dim", 4 * args.embed_dim, "--attention-heads", 4,
            "--understanding-layers", args.layers, "--generation-layers", args.layers]


def training_options(args, save_dir: Path, updates: int) -> list:
    """Optimizer, schedule (``args.lr``, ``args.warmup_updates``, ``args.seed``), dropout 0.1 and
    the model sizes of a pre-training or captioning run of ``updates`` updates."""
    return [*quickstart.optimizer_options(args, save_dir, updates, args.warmup_updates, log_interval=50),
            "--dropout", "0.1", *model_sizes(args)]


def pretraining_command(data: Path, save_dir: Path, args, objectives=None) -> list:
    """``fairseq-train --task m3p_pretraining`` for ``args.pretraining_updates`` updates of
    ``args.pretraining_batch_size`` examples; ``objectives`` (names) default to every one."""
    chosen = ["--objectives", ",".join(objectives)] if objectives else []
    return ["fairseq-train", data, "--task", "m3p_pretraining", "--arch", "m3p_pretraining_tiny", "--criterion",
            "m3p_pretraining", "--batch-size", args.pretraining_batch_size, "--updates-per-epoch", 100, *chosen,
            *training_options(args, save_dir, args.pretraining_updates)]
