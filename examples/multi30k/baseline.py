"""The baseline a fairseq user would otherwise run: plain fairseq ``translation_multi_simple_epoch``
(no plugin, no --user-dir) on the same Multi30k text, the same SentencePiece model and
dictionary, the same directions and the same model size and optimiser as the recipe's CPU
configuration (train.py), with the warm-up (1000 updates) and dropout (0.3) issue 17 measured it
with (train.py's BASELINE_SCHEDULE), fairseq's own language tags (``--encoder-langtok tgt``: the
target language's tag before the source; ``--decoder-langtok``: the target language's tag as the
decoder's first token; the recipe's CPU configurations do both) and temperature sampling of
language pairs.

    python examples/multi30k/baseline.py --work-dir work/multi30k [--hours 1] [--dry-run] [-- EXTRA FAIRSEQ ARGS]

It first writes WORK/data-bin-fairseq, the layout fairseq-preprocess writes for a
multilingual task: ``dict.{lang}.txt`` (the recipe's dictionary without its language tags;
fairseq adds its own ``__lang__`` tags) and ``{split}.{a}-{b}.{lang}.bin/.idx`` per language
pair, binarized with fairseq's FileBinarizer from the recipe's normalised text
(WORK/raw) encoded with the recipe's WORK/data-bin/spm.model.
"""

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
from itertools import combinations
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from prepare import LANGS, REPO  # noqa: E402
from train import BASELINE_SCHEDULE, CPU_MODEL, CPU_OPTIMISATION, CPU_TEMPERATURE, lang_pairs  # noqa: E402

from m3p_fairseq.atomic_io import atomic_write_text
from m3p_fairseq.data.data_dir import DICTIONARY_FILE, SPM_MODEL_FILE
from m3p_fairseq.data.vocabulary import tag_lang

NAME = "fairseq-baseline"
# fairseq 0.12 stores its argparse namespace in every checkpoint, which torch >= 2.6 refuses to
# unpickle by default; without the plugin (which allow-lists it) a fairseq user resumes and
# validates with torch's documented switch back to full unpickling of their own checkpoints
PLAIN_FAIRSEQ_ENV = {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
DATA_DIR = "data-bin-fairseq"
TASK = ["--task", "translation_multi_simple_epoch", "--encoder-langtok", "tgt", "--decoder-langtok"]
BASELINE = [
    *TASK, "--sampling-method", "temperature", "--sampling-temperature", str(CPU_TEMPERATURE),
    "--arch", "transformer", *CPU_MODEL, "--share-all-embeddings",
    "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
    "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr-scheduler", "inverse_sqrt",
    *CPU_OPTIMISATION, *BASELINE_SCHEDULE, "--no-epoch-checkpoints", "--log-format", "simple", "--log-interval", "100",
]


def raw_splits(raw_dir: Path) -> Dict[str, List[str]]:
    """{split: its languages} of the recipe's normalised text (prepare.py's WORK/raw)."""
    found = {}
    for ids in sorted(Path(raw_dir).glob("*.image_ids")):
        split = ids.name[: -len(".image_ids")]
        found[split] = [lang for lang in LANGS if (raw_dir / f"{split}.{lang}").is_file()]
    if "train" not in found or "valid" not in found:
        raise FileNotFoundError(f"{raw_dir}: no train/valid text; run examples/multi30k/prepare.py first")
    return found


def dictionary_without_tags(recipe_dict: Path) -> str:
    """The recipe's dict.txt without its ``__lang__`` lines: the same pieces at the same indices;
    fairseq appends its own language tags after them."""
    lines = Path(recipe_dict).read_text(encoding="utf-8").splitlines(keepends=True)
    return "".join(line for line in lines if tag_lang(line.split(" ", 1)[0]) is None)


def write_data(work: Path, dest: Path = None) -> Path:
    """WORK/data-bin-fairseq from WORK/raw and the vocabulary in WORK/data-bin. Each .bin/.idx
    pair is written under a temporary name and renamed (the .idx last), and kept on a re-run
    while the dictionary is unchanged; a changed dictionary rebuilds everything."""
    import sentencepiece as spm
    from fairseq.binarizer import FileBinarizer, VocabularyDatasetBinarizer
    from fairseq.data import Dictionary

    work = Path(work)
    dest = Path(dest or work / DATA_DIR)
    raw, recipe = work / "raw", work / "data-bin"
    dict_text = dictionary_without_tags(recipe / DICTIONARY_FILE)
    splits = raw_splits(raw)
    langs = sorted({lang for split_langs in splits.values() for lang in split_langs})
    dest.mkdir(parents=True, exist_ok=True)
    stale = any(not (dest / f"dict.{lang}.txt").is_file()
                or (dest / f"dict.{lang}.txt").read_text(encoding="utf-8") != dict_text for lang in langs)
    for lang in langs:
        atomic_write_text(dest / f"dict.{lang}.txt", dict_text)
    dictionary = Dictionary.load(str(dest / f"dict.{langs[0]}.txt"))
    sp = spm.SentencePieceProcessor(model_file=str(recipe / SPM_MODEL_FILE))
    binarizer = VocabularyDatasetBinarizer(dictionary, append_eos=True)
    with tempfile.TemporaryDirectory() as tmp:
        for split, split_langs in splits.items():
            for lang in split_langs:
                prefixes = [dest / f"{split}.{a}-{b}.{lang}" for a, b in combinations(split_langs, 2) if lang in (a, b)]
                todo = [p for p in prefixes if stale or not Path(f"{p}.idx").is_file()]
                if not todo:
                    continue
                pieces = Path(tmp) / f"{split}.{lang}"
                lines = (raw / f"{split}.{lang}").read_text(encoding="utf-8").splitlines()
                pieces.write_text("".join(" ".join(p) + "\n" for p in sp.encode(lines, out_type=str)),
                                  encoding="utf-8")
                for prefix in todo:
                    partial = f"{prefix}.partial{os.getpid()}"
                    FileBinarizer.multiprocess_dataset(str(pieces), "mmap", binarizer, partial,
                                                       vocab_size=len(dictionary), num_workers=1)
                    os.replace(f"{partial}.bin", f"{prefix}.bin")
                    os.replace(f"{partial}.idx", f"{prefix}.idx")
    return dest


def task_options(directions: Sequence[str]) -> List[str]:
    """The task's options, as fairseq-validate / fairseq-generate need them beside --path."""
    return [*TASK, "--lang-pairs", ",".join(directions)]


def command(work: Path, hours: float, directions: Sequence[str], save_dir: Path, extra=()) -> list:
    """The fairseq-train command of the baseline: no --user-dir."""
    return ["fairseq-train", str(Path(work) / DATA_DIR), "--lang-pairs", ",".join(directions), *BASELINE,
            "--stop-time-hours", str(hours), "--save-dir", str(save_dir), *map(str, extra)]


def load(checkpoint: Path, data: Path, src: Optional[str] = None, tgt: Optional[str] = None):
    """(models in eval mode, task) of a baseline checkpoint with fairseq's own task reading
    ``data``; ``src``/``tgt`` as fairseq-generate's --source-lang/--target-lang."""
    from fairseq import checkpoint_utils

    overrides = {"data": str(data), **({"source_lang": src, "target_lang": tgt} if src else {})}
    models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(checkpoint)], arg_overrides=overrides)
    for model in models:
        model.eval()
    return models, task


def translate(checkpoint: Path, data: Path, split: str, src: str, tgt: str, beam: int = 5,
              batch_size: int = 64, max_len_b: int = 200) -> List[str]:
    """Beam-search hypotheses of one direction, in corpus order, detokenized, as fairseq-generate
    --source-lang SRC --target-lang TGT --gen-subset SPLIT --remove-bpe sentencepiece gives them
    (fairseq's task puts the language tags in and strips them from the output)."""
    from m3p_fairseq.evaluation.translation import translate_dataset

    models, task = load(checkpoint, data, src, tgt)
    task.load_dataset(split)
    hypotheses, _references = translate_dataset(models, task, task.dataset(split), beam, batch_size, max_len_b)
    # fairseq-generate drops the target tag (the decoder's first token) when it writes a
    # hypothesis (extra_symbols_to_ignore); the tag has no word-boundary mark, so dropping its
    # text after the pieces are joined gives the same sentence
    tag = task.data_manager.get_decoder_langtok(tgt, task.args.langtoks["main"][1])
    symbol = task.target_dictionary[tag]
    return [h.replace(symbol, "").strip() for h in hypotheses]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=REPO / "work" / "multi30k")
    parser.add_argument("--hours", type=float, default=1.0, help="wall-clock budget (--stop-time-hours)")
    parser.add_argument("--directions", choices=["6", "12"], default="6",
                        help="6: en<->{de,fr,cs} (the paper's Table 1); 12: all directions")
    parser.add_argument("--dry-run", action="store_true", help="print the fairseq-train command and exit")
    args = parser.parse_args(own)
    work = args.work_dir.resolve()
    pairs = lang_pairs("cpu-text-only" + ("-12" if args.directions == "12" else ""))
    cmd = command(work, args.hours, pairs, work / "checkpoints" / NAME, extra)
    print("$ " + " ".join(shlex.quote(part) for part in cmd), flush=True)
    if not args.dry_run:
        write_data(work)
        sys.exit(subprocess.run(cmd, cwd=REPO, env={**os.environ, **PLAIN_FAIRSEQ_ENV}).returncode)


if __name__ == "__main__":
    main()
