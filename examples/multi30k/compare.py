"""The recipe against the plain fairseq a user would otherwise run, in one command:

    python examples/multi30k/compare.py --work-dir work/multi30k --hours 1 [--config cpu-text-only]
    python examples/multi30k/compare.py --work-dir work/multi30k --minutes 3 --max-update 20   # a trial

1. writes the baseline's data (baseline.py: WORK/data-bin-fairseq) from the prepared data;
2. trains the recipe's CPU configuration (train.py) and the fairseq baseline **at the same time**,
   one thread each, with the same wall-clock budget (fairseq's --stop-time-hours), so both see
   the same machine;
3. picks each system's checkpoint on the validation split only: the last one, or the average of
   the last --average-last interval checkpoints when its validation loss (fairseq-validate) is
   lower;
4. translates every test set the data has (beam 5), in every trained direction the test set has,
   and scores both systems with the same scorer (m3p-evaluate's: detokenized sacreBLEU BLEU and
   chrF against the normalised raw references);
5. writes OUT (default WORK/compare-CONFIG): comparison.md (budget, updates, checkpoint choice, the
   paper's Multi30k tables with the row recipe / baseline), multi30k.md, table.md (every
   direction), table.csv, results.json, and the hypotheses (hyp/, ref/), so
   ``m3p-evaluate --rescore OUT --references-dir WORK/raw`` re-scores them.

Anything after ``--`` goes to both fairseq-train commands (e.g. smaller sizes in a trial).
Re-running resumes: fairseq-train continues from its last checkpoint (the budget counts the
time already trained) and directions already translated are kept while the checkpoint choice is
unchanged.
"""

import argparse
import filecmp
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import baseline  # noqa: E402
import train  # noqa: E402
from averaging import average_checkpoints  # noqa: E402
from prepare import REPO  # noqa: E402

from m3p_fairseq.atomic_io import atomic_write_text
from m3p_fairseq.evaluation import hypotheses as saved_hypotheses
from m3p_fairseq.evaluation.cli import evaluate, rescore, source_commit, write_reports
from m3p_fairseq.evaluation.tables import multi30k_tables
from m3p_fairseq.logging_setup import setup_logging

_LOSS = re.compile(r"valid on '\w+' subset \| loss ([0-9.]+)")
_UPDATES = re.compile(r"num_updates (\d+)")
AVERAGED = "checkpoint_averaged.pt"


def one_thread_env(system: str) -> Dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    if system == baseline.NAME:
        env.update(baseline.PLAIN_FAIRSEQ_ENV)
    return env


def train_both(commands: Dict[str, List[str]], logs: Path) -> None:
    """Run the training commands at the same time, each with one thread, output to
    LOGS/{system}.log; an error names the failed system and shows its log's end."""
    logs.mkdir(parents=True, exist_ok=True)
    running = {}
    for system, cmd in commands.items():
        print(f"[{system}] $ " + " ".join(shlex.quote(part) for part in cmd), flush=True)
        log = open(logs / f"{system}.log", "a", encoding="utf-8")
        running[system] = (subprocess.Popen(cmd, cwd=REPO, env=one_thread_env(system), stdout=log,
                                            stderr=subprocess.STDOUT), log)
    failed = []
    for system, (process, log) in running.items():
        if process.wait() != 0:
            failed.append(system)
        log.close()
    for system in failed:
        tail = (logs / f"{system}.log").read_text(encoding="utf-8", errors="replace")[-3000:]
        raise RuntimeError(f"fairseq-train of {system} failed (log {logs / f'{system}.log'}):\n{tail}")


def updates_reached(log: Path) -> Optional[int]:
    found = _UPDATES.findall(log.read_text(encoding="utf-8", errors="replace")) if log.is_file() else []
    return int(found[-1]) if found else None


def validation_losses(jobs: Dict[Tuple[str, str], Tuple[Path, List[str]]]) -> Dict[Tuple[str, str], float]:
    """{(system, candidate): fairseq-validate's loss on the valid split} (the training criterion,
    label smoothing included) of every (checkpoint, task options) job, all at once, one thread each."""
    running = {}
    for job, (checkpoint, task_args) in jobs.items():
        cmd = ["fairseq-validate", "--path", str(checkpoint), "--valid-subset", "valid", "--max-tokens", "4096",
               "--num-workers", "0", *task_args]
        running[job] = subprocess.Popen(cmd, cwd=REPO, env=one_thread_env(job[0]), stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
    losses = {}
    for job, process in running.items():
        output = process.communicate()[0]
        found = _LOSS.findall(output)
        if process.returncode != 0 or not found:
            raise RuntimeError(f"fairseq-validate {jobs[job][0]} failed:\n{output[-3000:]}")
        losses[job] = float(found[-1])
    return losses


def interval_checkpoints(save_dir: Path) -> List[Path]:
    """checkpoint_{epoch}_{update}.pt, oldest first."""
    found = [(int(m.group(1)), p) for p in save_dir.glob("checkpoint_*_*.pt")
             if (m := re.fullmatch(r"checkpoint_\d+_(\d+)\.pt", p.name))]
    return [p for _, p in sorted(found)]


def candidates(save_dir: Path, average_last: int) -> Tuple[Dict[str, Path], List[Path]]:
    """The last checkpoint and, with ``average_last`` > 1 and at least two interval checkpoints,
    the average of the last ``average_last`` of them (the last checkpoint instead of the
    oldest when training stopped after the last interval checkpoint); and the averaged files."""
    last = save_dir / "checkpoint_last.pt"
    found = {"last": last}
    inputs = interval_checkpoints(save_dir)[-average_last:] if average_last > 1 else []
    if inputs and not filecmp.cmp(last, inputs[-1], shallow=False):  # fairseq copies the one it saved
        inputs = inputs[1:] + [last] if len(inputs) == average_last else inputs + [last]
    if len(inputs) > 1:
        average_checkpoints(inputs, save_dir / AVERAGED)
        found[f"average of {len(inputs)}"] = save_dir / AVERAGED
    return found, inputs if len(inputs) > 1 else []


def choose_checkpoints(save_dirs: Dict[str, Path], task_args: Dict[str, List[str]], average_last: int) -> dict:
    """{system: the candidate (:func:`candidates`) with the lowest validation loss, the last one
    on a tie}. Only the validation split decides."""
    options = {system: candidates(save_dir, average_last) for system, save_dir in save_dirs.items()}
    losses = validation_losses({(system, name): (path, task_args[system])
                                for system, (found, _) in options.items() for name, path in found.items()})
    chosen = {}
    for system, (found, averaged) in options.items():
        by_name = {name: losses[(system, name)] for name in found}
        best = min(by_name, key=lambda name: (by_name[name], name != "last"))
        chosen[system] = {"checkpoint": str(found[best]), "chosen": best, "validation_loss": by_name,
                          "averaged": [p.name for p in averaged]}
    return chosen


def forget_stale_hypotheses(out: Path, systems: Dict[str, dict]) -> None:
    """Hypotheses of an earlier run are kept only while the system's checkpoint choice (files,
    validation losses, updates) is what it was then; otherwise they are translated again."""
    selection = out / "selection.json"
    before = json.loads(selection.read_text(encoding="utf-8")) if selection.is_file() else {}
    for system, chosen in systems.items():
        stale = out / "hyp" / system
        if before.get(system) != chosen and stale.is_dir():
            shutil.rmtree(stale)


def test_directions(work: Path, pairs: List[str]) -> Dict[str, List[str]]:
    """{test split: the trained directions it has}, for every test set prepare.py wrote."""
    splits = baseline.raw_splits(work / "raw")
    return {split: [p for p in pairs if set(p.split("-")) <= set(langs)]
            for split, langs in splits.items() if split.startswith("test")}


def translate_all(systems: Dict[str, dict], work: Path, out: Path, tests: Dict[str, List[str]], beam: int,
                  batch_size: int, max_len_b: int) -> None:
    """Hypotheses of every system, test split and direction into OUT/hyp (kept if already there)."""
    raw = work / "raw"
    for system, chosen in systems.items():
        for split, pairs in tests.items():
            for pair in pairs:
                if saved_hypotheses.hypothesis_path(out, system, split, pair).is_file():
                    continue
                began = time.time()
                src, tgt = pair.split("-")
                if system == baseline.NAME:
                    hypotheses = baseline.translate(Path(chosen["checkpoint"]), work / baseline.DATA_DIR, split,
                                                    src, tgt, beam, batch_size, max_len_b)
                    references = saved_hypotheses.read_lines(raw / f"{split}.{tgt}")
                    saved_hypotheses.save(out, system, split, pair, hypotheses, references)
                else:
                    evaluate({system: chosen["checkpoint"]}, str(work / "data-bin"), [split], pair, beam,
                             batch_size, max_len_b, references_dir=raw, output_dir=out)
                print(f"{system} {split} {pair}: translated in {time.time() - began:.0f} s", flush=True)


def translate_and_score(systems: Dict[str, dict], work: Path, out: Path, config: str, beam: int, batch_size: int,
                        max_len_b: int) -> dict:
    """Translate (:func:`translate_all`) every test set the data has in the configuration's
    directions, score every kept hypothesis and write OUT's tables with the row recipe / baseline;
    the results."""
    translate_all(systems, work, out, test_directions(work, train.lang_pairs(config)), beam, batch_size, max_len_b)
    results = rescore(out, references_dir=work / "raw")
    write_reports(results, out, ["bleu", "chrf"], ratio=(config, baseline.NAME))
    return results


def add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    """The beam search options, shared by the scripts that translate a comparison's checkpoints."""
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-len-b", type=int, default=200, help="longest hypothesis, in tokens")


def report(out: Path, config: str, budget_hours: float, systems: Dict[str, dict], results: dict,
           argv: List[str]) -> str:
    lines = [f"# {config} against {baseline.NAME}", "",
             "$ python examples/multi30k/compare.py " + " ".join(shlex.quote(a) for a in argv), "",
             f"Wall-clock budget {budget_hours * 60:g} min each, trained at the same time, one thread each; "
             f"commit `{source_commit()}`.", "",
             "| system | updates | checkpoint | validation loss (last / averaged) |", "|---|---:|---|---|"]
    for system, chosen in systems.items():
        losses = " / ".join(f"{name} {loss:.3f}" for name, loss in chosen["validation_loss"].items())
        lines.append(f"| {system} | {chosen['updates']} | {chosen['chosen']} | {losses} |")
    text = "\n".join(lines) + "\n\n" + multi30k_tables(results, ("bleu", "chrf"), source_commit(),
                                                       (config, baseline.NAME))
    atomic_write_text(out / "comparison.md", text)
    return text


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=REPO / "work" / "multi30k", help="prepare.py's work dir")
    parser.add_argument("--out-dir", type=Path, help="default: WORK/compare-CONFIG")
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--hours", type=float, help="wall-clock training budget of each system")
    budget.add_argument("--minutes", type=float, help="the same in minutes (trials, tests)")
    parser.add_argument("--max-update", type=int, help="also stop both after this many updates")
    parser.add_argument("--config", default="cpu-text-only",
                        choices=[c for c in train.CONFIGS if c.startswith("cpu")],
                        help="the recipe's configuration; the baseline trains the same directions")
    parser.add_argument("--average-last", type=int, default=5,
                        help="try the average of the last N interval checkpoints; kept if it lowers "
                             "the validation loss (0 or 1: never average)")
    add_decoding_arguments(parser)
    parser.add_argument("--dry-run", action="store_true", help="print the two training commands and exit")
    args = parser.parse_args(own)
    setup_logging()
    work = args.work_dir.resolve()
    out = (args.out_dir or work / f"compare-{args.config}").resolve()
    hours = args.hours if args.hours is not None else args.minutes / 60
    both = [*(["--max-update", str(args.max_update)] if args.max_update else []), *extra]
    pairs = train.lang_pairs(args.config)
    save = {args.config: out / "checkpoints" / args.config, baseline.NAME: out / "checkpoints" / baseline.NAME}
    commands = {args.config: train.command(args.config, work, hours, both, save_dir=save[args.config]),
                baseline.NAME: baseline.command(work, hours, pairs, save[baseline.NAME], both)}
    if args.dry_run:
        for system, cmd in commands.items():
            print(f"[{system}] $ " + " ".join(shlex.quote(part) for part in cmd))
        return
    baseline.write_data(work)
    train_both(commands, out / "logs")
    task_args = {args.config: [str(work / "data-bin"), "--user-dir", str(REPO / "m3p_fairseq"),
                               "--task", "multimodal_translation", "--lang-pairs", ",".join(pairs)],
                 baseline.NAME: [str(work / baseline.DATA_DIR), *baseline.task_options(pairs)]}
    systems = choose_checkpoints(save, task_args, args.average_last)
    for system in systems:
        systems[system]["updates"] = updates_reached(out / "logs" / f"{system}.log")
    forget_stale_hypotheses(out, systems)
    atomic_write_text(out / "selection.json", json.dumps(systems, indent=1))
    results = translate_and_score(systems, work, out, args.config, args.beam, args.batch_size, args.max_len_b)
    print(report(out, args.config, hours, systems, results, argv))


if __name__ == "__main__":
    main()
