"""What the pre-training recipes (captioning.py, retrieval.py) share: the quickstart's command
runner (examples/quickstart/run.py, imported as ``quickstart``) and step 1, the synthetic corpus
in every caption language, its image features and one shared dictionary."""

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
