"""Translate test splits with fairseq's beam search and score each direction with sacreBLEU.

    python scripts/evaluate.py --data DATA --checkpoint text=ckpt_text.pt --checkpoint cvlm=ckpt_cvlm.pt \
        --splits test,test_degraded --beam 5 --output results.json

Each checkpoint is loaded once and run over every direction it was trained on (or those of
them named by --lang-pairs). Hypotheses and references are detokenized (SentencePiece pieces
joined), so the score is case-sensitive detokenized sacreBLEU, as in the paper; with
--references-dir the references are the raw target text. Prints a Markdown table of BLEU per
direction and split, and writes the scores (and hypotheses) as JSON.
"""

import argparse
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import sacrebleu
import torch

# fairseq's loader asks for pinned memory even without a GPU (torch warns once per direction),
# and fairseq still calls torch.jit.script at import
warnings.filterwarnings("ignore", message=".*pin_memory.*")
warnings.filterwarnings("ignore", message=".*torch.jit.script.*is deprecated")
from fairseq import checkpoint_utils, utils  # noqa: E402
from fairseq.dataclass.configs import GenerationConfig  # noqa: E402

# importing fairseq attached a DEBUG-level root handler; keep the output to warnings
logging.basicConfig(level=logging.WARNING, force=True)
import m3p_fairseq  # noqa: E402,F401  (registers the task and models)
from m3p_fairseq.tasks.multimodal_translation import parse_lang_pairs  # noqa: E402


def load(checkpoint: str, data: str):
    models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task([checkpoint], arg_overrides={"data": data})
    use_cuda = torch.cuda.is_available()
    for model in models:
        model.eval()
        if use_cuda:
            model.cuda()
    return models, task


@torch.no_grad()
def translate(models, task, split: str, src: str, tgt: str, beam: int, batch_size: int,
              max_len_b: int = 200) -> Tuple[List[str], List[str]]:
    """(hypotheses, references) of one direction, detokenized, in corpus order."""
    task.cfg.source_lang, task.cfg.target_lang = src, tgt
    task.load_dataset(split)
    dataset = task.dataset(split)
    generator = task.build_generator(models, GenerationConfig(beam=beam, max_len_b=max_len_b))
    iterator = task.get_batch_iterator(
        dataset=dataset, max_sentences=batch_size,
        max_positions=utils.resolve_max_positions(task.max_positions(), *[m.max_positions() for m in models]),
    ).next_epoch_itr(shuffle=False)
    hypotheses: Dict[int, str] = {}
    references: Dict[int, str] = {}
    pad = task.target_dictionary.pad()
    for sample in iterator:
        if torch.cuda.is_available():
            sample = utils.move_to_cuda(sample)
        outputs = task.inference_step(generator, models, sample)
        for i, sample_id in enumerate(sample["id"].tolist()):
            hypotheses[sample_id] = task.target_dictionary.string(outputs[i][0]["tokens"].int().cpu(), "sentencepiece")
            references[sample_id] = task.target_dictionary.string(
                utils.strip_pad(sample["target"][i], pad).int().cpu(), "sentencepiece")
    order = sorted(hypotheses)
    return [hypotheses[i] for i in order], [references[i] for i in order]


def raw_references(references_dir: Path, split: str, src: str, tgt: str, expected: int) -> List[str]:
    """The original target sentences (as given to preprocess.binarize), not the ones decoded
    back from SentencePiece pieces, whose normalisation (NFKC) may differ."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # preprocess/ lives beside scripts/
    from preprocess.binarize import raw_text_path, read_lines

    path, _ = raw_text_path(Path(references_dir), split, src, tgt, tgt)
    lines = read_lines(path)
    if len(lines) != expected:
        raise ValueError(f"{path} has {len(lines)} lines but split {split!r} has {expected} sentences")
    return lines


def evaluate(checkpoints: Dict[str, str], data: str, splits: List[str], lang_pairs=None,
             beam: int = 5, batch_size: int = 64, references_dir: Optional[Path] = None,
             max_len_b: int = 200) -> dict:
    results = {}
    for name, checkpoint in checkpoints.items():
        models, task = load(checkpoint, data)
        pairs = [pair for pair in task.lang_pairs if lang_pairs is None or pair in lang_pairs]
        for split in splits:
            for src, tgt in pairs:
                began = time.time()
                hypotheses, references = translate(models, task, split, src, tgt, beam, batch_size, max_len_b)
                if references_dir is not None:
                    references = raw_references(references_dir, split, src, tgt, len(hypotheses))
                metric = sacrebleu.BLEU()
                bleu = metric.corpus_score(hypotheses, [references])
                print(f"{name} {split} {src}-{tgt}: BLEU {bleu.score:.1f} ({len(hypotheses)} sentences, "
                      f"{time.time() - began:.0f} s)", file=sys.stderr, flush=True)
                results.setdefault(name, {}).setdefault(split, {})[f"{src}-{tgt}"] = {
                    "bleu": round(bleu.score, 2), "signature": str(metric.get_signature()),
                    "sentences": len(hypotheses), "hypotheses": hypotheses,
                }
    return results


def markdown_table(results: dict) -> str:
    """Directions as rows, (model, split) as columns; "-" where a model lacks the direction. The
    average row is the unweighted mean over the directions the column has (the paper's Avg101)."""
    columns = [(name, split) for name, by_split in results.items() for split in by_split]
    directions = list(dict.fromkeys(d for by_split in results.values() for scores in by_split.values() for d in scores))
    lines = ["| direction | " + " | ".join(f"{name} {split}" for name, split in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for direction in directions + ["average"]:
        cells = []
        for name, split in columns:
            scores = results[name][split]
            if direction == "average":
                cells.append(f"{sum(s['bleu'] for s in scores.values()) / len(scores):.1f}")
            else:
                cells.append(f"{scores[direction]['bleu']:.1f}" if direction in scores else "-")
        lines.append(f"| {direction} | " + " | ".join(cells) + " |")
    # how many directions each average covers (e.g. 101 on InstrMulti102; columns may differ)
    lines.append("| directions averaged | " + " | ".join(str(len(results[name][split])) for name, split in columns) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="data directory (as for fairseq-generate)")
    parser.add_argument("--checkpoint", action="append", required=True,
                        help="NAME=PATH (or PATH); repeat to compare models")
    parser.add_argument("--splits", default="test", help="comma-separated splits")
    parser.add_argument("--lang-pairs", help="score only these of the directions each model was trained on; "
                                             "default: all of them")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-len-b", type=int, default=200, help="longest hypothesis, in tokens")
    parser.add_argument("--output", type=Path, help="write scores and hypotheses as JSON here")
    parser.add_argument("--references-dir", type=Path,
                        help="score against the raw target text in this folder (the --raw-dir given to "
                             "preprocess.binarize) instead of the references decoded from the data")
    args = parser.parse_args(argv)
    checkpoints = {}
    for item in args.checkpoint:
        name, sep, path = item.partition("=")
        name, path = (name, path) if sep else (Path(item).stem, item)
        if not os.path.isfile(path):
            parser.error(f"--checkpoint {path}: file not found")
        checkpoints[name] = path
    results = evaluate(checkpoints, args.data, args.splits.split(","),
                       parse_lang_pairs(args.lang_pairs) if args.lang_pairs else None, args.beam, args.batch_size,
                       args.references_dir, args.max_len_b)
    print(markdown_table(results))
    if args.output:
        tmp = args.output.with_name(args.output.name + ".tmp")
        tmp.write_text(json.dumps(results, indent=1, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, args.output)


if __name__ == "__main__":
    main()
