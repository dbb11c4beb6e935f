"""preprocess.binarize against bad input and faults: a lone carriage return, empty lines, a
changed input, a pair left inconsistent by a crash, and a binarize process killed with SIGKILL."""

import filecmp
import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sentencepiece as spm
from fairseq.data import Dictionary, data_utils

from helpers import REPO
from preprocess.binarize import binarize

COLOURS = ["red", "blue", "green", "yellow", "black", "white"]
SHAPES = ["circle", "square", "triangle", "star"]
PLACES = ["left", "right", "middle", "top"]
GERMAN = {"red": "rote", "blue": "blaue", "green": "grüne", "yellow": "gelbe", "black": "schwarze",
          "white": "weiße", "circle": "Kreis", "square": "Quadrat", "triangle": "Dreieck", "star": "Stern",
          "left": "links", "right": "rechts", "middle": "mittig", "top": "oben"}


def sentences(n: int, offset: int = 0):
    combos = list(itertools.product(COLOURS, SHAPES, PLACES))
    english, german = [], []
    for i in range(offset, offset + n):
        colour, shape, place = combos[i % len(combos)]
        english.append(f"a {colour} {shape} at the {place} number {i}")
        german.append(f"der {GERMAN[colour]} {GERMAN[shape]} {GERMAN[place]} nummer {i}")
    return english, german


def write_raw(raw: Path, sizes=None) -> Path:
    raw.mkdir(parents=True, exist_ok=True)
    offset = 0
    for split, n in (sizes or {"train": 40, "valid": 6, "test": 6}).items():
        english, german = sentences(n, offset)
        offset += n
        (raw / f"{split}.en").write_text("".join(s + "\n" for s in english), encoding="utf-8")
        (raw / f"{split}.de").write_text("".join(s + "\n" for s in german), encoding="utf-8")
        (raw / f"{split}.image_ids").write_text("".join(f"{split}_{i}.jpg\n" for i in range(n)), encoding="utf-8")
    return raw


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory) -> Path:
    """A SentencePiece model given to every run, so runs compare byte for byte."""
    work = tmp_path_factory.mktemp("spm")
    english, german = sentences(300)
    (work / "text").write_text("\n".join(english + german) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(work / "text"), model_prefix=str(work / "spm"), vocab_size=80, hard_vocab_limit=False,
                                   model_type="unigram", bos_id=-1, eos_id=-1, unk_id=0, minloglevel=2,
                                   num_threads=1, character_coverage=1.0)
    return work / "spm.model"


def decoded(data: Path, prefix: str, sp_model: Path):
    """The binarized sentences of ``prefix`` decoded back to text with the SentencePiece model."""
    dictionary = Dictionary.load(str(data / "dict.txt"))
    dataset = data_utils.load_indexed_dataset(str(data / prefix), dictionary, "mmap")
    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    return [sp.decode([dictionary[int(t)] for t in dataset[i][:-1]]) for i in range(len(dataset))]


def visible_files(directory: Path):
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))


def same_directories(a: Path, b: Path) -> bool:
    names = visible_files(a)
    if names != visible_files(b):
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    return not mismatch and not errors


PAIRS = [("en", "de")]
SPLITS = ["train", "valid", "test"]


def test_lone_carriage_return_does_not_shift_later_sentences(tmp_path, spm_model):
    raw = write_raw(tmp_path / "raw")
    english = (raw / "valid.en").read_text(encoding="utf-8").splitlines()
    english[1] = english[1].replace(" at the ", " at\rthe ")  # a lone \r inside line 2
    (raw / "valid.en").write_bytes(("\n".join(english) + "\n").encode())
    german = (raw / "valid.de").read_text(encoding="utf-8").splitlines()
    (raw / "valid.de").write_bytes(("\r\n".join(german) + "\r\n").encode())  # Windows line ends
    binarize(raw, tmp_path / "data", PAIRS, SPLITS, spm_model=spm_model)
    expected_english, expected_german = sentences(6, offset=40)
    assert decoded(tmp_path / "data", "valid.en", spm_model) == expected_english  # \r read as a space
    assert decoded(tmp_path / "data", "valid.de", spm_model) == expected_german


def test_empty_lines_are_reported_with_file_and_line(tmp_path, spm_model):
    raw = write_raw(tmp_path / "raw")
    german = (raw / "valid.de").read_text(encoding="utf-8").splitlines()
    german[2] = "  "
    (raw / "valid.de").write_text("\n".join(german) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"1 empty source/target line\(s\): \S*valid\.de:3 .*--allow-empty-lines"):
        binarize(raw, tmp_path / "data", PAIRS, SPLITS, spm_model=spm_model)
    assert not (tmp_path / "data").exists()  # nothing written before the inputs are checked
    binarize(raw, tmp_path / "data", PAIRS, SPLITS, spm_model=spm_model, allow_empty_lines=True)
    assert decoded(tmp_path / "data", "valid.de", spm_model)[2] == ""


def test_a_changed_input_rebuilds_what_depends_on_it(tmp_path, spm_model):
    raw, data = write_raw(tmp_path / "raw"), tmp_path / "data"
    assert sorted(binarize(raw, data, PAIRS, SPLITS, spm_model=spm_model)) == [
        "test.de", "test.en", "train.de", "train.en", "valid.de", "valid.en"]
    assert binarize(raw, data, PAIRS, SPLITS, spm_model=spm_model) == {}  # nothing changed
    before = {name: (data / name).read_bytes() for name in visible_files(data)}

    german = (raw / "valid.de").read_text(encoding="utf-8").splitlines()
    german[4] = "der rote Kreis oben nummer 99"
    (raw / "valid.de").write_text("\n".join(german) + "\n", encoding="utf-8")
    ids = (raw / "valid.image_ids").read_text(encoding="utf-8").replace("valid_0.jpg", "other.jpg")
    (raw / "valid.image_ids").write_text(ids, encoding="utf-8")
    assert binarize(raw, data, PAIRS, SPLITS, spm_model=spm_model) == {"valid.de": 6}
    assert decoded(data, "valid.de", spm_model)[4] == "der rote Kreis oben nummer 99"
    assert (data / "valid.image_ids").read_text(encoding="utf-8") == ids
    changed = {name for name in visible_files(data) if (data / name).read_bytes() != before[name]}
    assert changed == {"valid.de.bin", "valid.de.idx", "valid.de.manifest.json", "valid.image_ids"}


def test_changed_training_text_refuses_to_replace_the_vocabulary_without_overwrite(tmp_path, spm_model):
    raw, data = write_raw(tmp_path / "raw"), tmp_path / "data"
    binarize(raw, data, PAIRS, SPLITS, spm_model=spm_model)
    english = (raw / "train.en").read_text(encoding="utf-8").replace("number 7\n", "number 7 and more\n")
    (raw / "train.en").write_text(english, encoding="utf-8")
    dictionary = (data / "dict.txt").read_bytes()
    with pytest.raises(ValueError, match=r"dict\.txt exists but is not the dictionary of the training text .*--overwrite"):
        binarize(raw, data, PAIRS, SPLITS, spm_model=spm_model)
    assert (data / "dict.txt").read_bytes() == dictionary
    written = binarize(raw, data, PAIRS, SPLITS, spm_model=spm_model, overwrite=True)
    assert len(written) == 6 and (data / "dict.txt").read_bytes() != dictionary


def test_learned_sentencepiece_model_is_kept_until_its_training_text_changes(tmp_path):
    raw, data = write_raw(tmp_path / "raw"), tmp_path / "data"
    binarize(raw, data, PAIRS, SPLITS, spm_vocab_size=60)
    model = (data / "spm.model").read_bytes()
    assert binarize(raw, data, PAIRS, SPLITS, spm_vocab_size=60) == {}
    (raw / "train.de").write_text((raw / "train.de").read_text(encoding="utf-8").replace("nummer 3\n", "nummer drei\n"),
                                  encoding="utf-8")
    with pytest.raises(ValueError, match=r"spm\.model was trained on other input \(changed: \S*train\.de\).*--overwrite"):
        binarize(raw, data, PAIRS, SPLITS, spm_vocab_size=60)
    assert (data / "spm.model").read_bytes() == model


def test_a_pair_left_inconsistent_between_its_two_renames_is_rebuilt(tmp_path, spm_model):
    # What a kill between renaming .bin and .idx leaves: the new .bin beside an old .idx.
    raw, data, reference = write_raw(tmp_path / "raw"), tmp_path / "data", tmp_path / "reference"
    binarize(raw, reference, PAIRS, SPLITS, spm_model=spm_model)
    other_raw = write_raw(tmp_path / "other", {"train": 40, "valid": 9, "test": 6})
    binarize(other_raw, data, PAIRS, SPLITS, spm_model=spm_model)
    (data / "valid.en.bin").write_bytes((reference / "valid.en.bin").read_bytes())
    assert "valid.en" in binarize(raw, data, PAIRS, SPLITS, spm_model=spm_model)
    assert same_directories(data, reference)


def binarize_command(raw: Path, data: Path, spm_model: Path = None):
    vocabulary = ["--spm-model", str(spm_model)] if spm_model else ["--spm-vocab-size", "60"]
    return [sys.executable, "-m", "preprocess.binarize", "--raw-dir", str(raw), "--dest-dir", str(data),
            "--lang-pairs", "en-de", "--splits", "train,valid,test", *vocabulary]


@pytest.mark.parametrize("kill_when", ["first pair complete", "a pair half written", "vocabulary just trained"])
def test_binarize_killed_with_sigkill_resumes_to_the_uninterrupted_result(tmp_path, spm_model, kill_when):
    raw = write_raw(tmp_path / "raw", {"train": 5000, "valid": 5000, "test": 5000})
    reference, data = tmp_path / "reference", tmp_path / "data"
    given = None if kill_when == "vocabulary just trained" else spm_model  # else SentencePiece is trained
    binarize(raw, reference, PAIRS, SPLITS, spm_model=given, spm_vocab_size=60)  # uninterrupted

    def moment_reached():
        names = [p.name for p in data.iterdir()] if data.exists() else []
        if kill_when == "first pair complete":
            return any(n.endswith((".en.manifest.json", ".de.manifest.json")) for n in names)
        if kill_when == "vocabulary just trained":
            return "spm.model" in names
        return any(n.startswith(".") and ".bin." in n and n.endswith(".tmp") for n in names)

    process = subprocess.Popen(binarize_command(raw, data, given), cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not moment_reached():
        assert process.poll() is None, "binarize ended before the moment to kill it"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    pairs_done = [n for n in visible_files(data) if n.endswith((".en.manifest.json", ".de.manifest.json"))]
    assert len(pairs_done) < 6, "the kill came after the last pair: nothing was interrupted"
    assert not same_directories(data, reference)

    subprocess.run(binarize_command(raw, data, given), cwd=REPO, check=True, capture_output=True)
    assert same_directories(data, reference)
    assert not [p.name for p in data.iterdir() if p.name.startswith(".")]  # the killed run's temporaries went


def test_two_binarize_processes_on_one_directory_give_the_single_run_result(tmp_path, spm_model):
    raw = write_raw(tmp_path / "raw", {"train": 3000, "valid": 3000, "test": 3000})
    reference, data = tmp_path / "reference", tmp_path / "data"
    binarize(raw, reference, PAIRS, SPLITS, spm_model=spm_model)
    processes = [subprocess.Popen(binarize_command(raw, data, spm_model), cwd=REPO, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for process in processes:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]
    assert same_directories(data, reference)
    assert not [p.name for p in data.iterdir() if p.name.startswith(".")]
