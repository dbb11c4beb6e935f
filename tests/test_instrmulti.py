"""InstrMulti102: build a dozen pseudo-language directions from an English image-caption corpus,
binarize, train the decoder-only model briefly with temperature sampling and evaluate every
direction (the real command lines)."""

import json
import re
import subprocess
import sys

import pytest

from helpers import REPO, write_random_features
from m3p_fairseq.data.image_features import read_image_ids
from m3p_fairseq.data.languages import INSTRMULTI102_LANGUAGES, language_name
from preprocess.build_instrmulti import InstrMultiError, build, write_pseudo_translations
from preprocess.make_synthetic_corpus import make_corpus

SPLITS = ["train", "valid", "test"]
NUM_LANGUAGES = 12


def test_the_table_has_102_languages_with_english_names():
    assert len(INSTRMULTI102_LANGUAGES) == 102 and INSTRMULTI102_LANGUAGES["en"] == "English"
    assert language_name("de") == "German"
    with pytest.raises(ValueError, match=r"unknown language code 'xx'.*102 InstrMulti102 languages"):
        language_name("xx")


@pytest.fixture(scope="module")
def english(tmp_path_factory):
    raw = tmp_path_factory.mktemp("english")
    make_corpus(raw, num_train=48, num_valid=8, num_test=8, langs=["en"], image_size=32, seed=7)
    return raw


def test_build_writes_the_multiway_layout_and_the_directions(english, tmp_path):
    codes = write_pseudo_translations(english, tmp_path / "translations", SPLITS, NUM_LANGUAGES)
    assert len(codes) == NUM_LANGUAGES and "en" not in codes
    pairs = build(english, tmp_path / "translations", tmp_path / "raw", SPLITS, "both")
    assert pairs == [f"{c}-en" for c in sorted(codes)] + [f"en-{c}" for c in sorted(codes)]
    assert (tmp_path / "raw" / "lang_pairs.txt").read_text() == ",".join(pairs) + "\n"
    english_test = (english / "test.en").read_text().splitlines()
    for code in codes:
        translated = (tmp_path / "raw" / f"test.{code}").read_text().splitlines()
        assert len(translated) == len(english_test) and translated != english_test
    assert (tmp_path / "raw" / "test.image_ids").read_text() == (english / "test.image_ids").read_text()
    # deterministic substitution: the same English word gets the same pseudo-word
    substitution = {}
    for source, target in zip((english / "train.en").read_text().splitlines(),
                              (tmp_path / "raw" / "train.af").read_text().splitlines()):
        assert len(source.split()) == len(target.split())
        for word, pseudo in zip(source.rstrip(".").lower().split(), target.rstrip(".").lower().split()):
            assert substitution.setdefault(word, pseudo) == pseudo


def test_errors_name_the_file_line_and_code(english, tmp_path):
    translations = tmp_path / "translations"
    write_pseudo_translations(english, translations, SPLITS, 2)
    (translations / "test.xx").write_text("a\n")
    with pytest.raises(InstrMultiError, match=r"test\.xx: unknown language code 'xx'"):
        build(english, translations, tmp_path / "raw", SPLITS)
    (translations / "test.xx").unlink()
    lines = (translations / "valid.af").read_text().splitlines()
    (translations / "valid.af").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(InstrMultiError, match=r"valid\.af has 7 lines but .*valid\.en has 8"):
        build(english, translations, tmp_path / "raw", SPLITS)
    lines[2] = " "
    (translations / "valid.af").write_text("\n".join(lines) + "\n")
    with pytest.raises(InstrMultiError, match=r"valid\.af, line 3: empty translation"):
        build(english, translations, tmp_path / "raw", SPLITS)
    assert not (tmp_path / "raw").exists()  # nothing written before everything was checked


def run(command):
    result = subprocess.run([str(c) for c in command], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, f"{command[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def test_build_binarize_train_generate_evaluate(english, tmp_path):
    python = sys.executable
    raw, data, save_dir = tmp_path / "raw", tmp_path / "data-bin", tmp_path / "checkpoints"
    run([python, "-m", "preprocess.build_instrmulti", "--english-dir", english,
         "--translations-dir", tmp_path / "translations", "--pseudo-languages", NUM_LANGUAGES,
         "--output-dir", raw, "--directions", "many-to-one"])
    pairs = (raw / "lang_pairs.txt").read_text().strip()
    assert len(pairs.split(",")) == NUM_LANGUAGES
    run([python, "-m", "preprocess.binarize", "--raw-dir", raw, "--dest-dir", data, "--lang-pairs", pairs,
         "--spm-vocab-size", 300])
    ids = [i for split in SPLITS for i in read_image_ids(raw / f"{split}.image_ids")]
    write_random_features(data / "image_features.h5", ids)
    log = run(["fairseq-train", data, "--user-dir", REPO / "m3p_fairseq", "--task", "multimodal_translation",
               "--lang-pairs", pairs, "--sampling-temperature", 5, "--arch", "m3p_decoder_only_tiny",
               "--decoder-layers", 1, "--criterion", "m3p_loss", "--mmcl-weight", 0.1, "--label-smoothing", 0.1,
               "--optimizer", "adam", "--lr", 1e-3, "--max-tokens", 2000, "--max-update", 3,
               "--save-dir", save_dir, "--no-epoch-checkpoints", "--no-save-optimizer-state",
               "--log-format", "simple", "--log-interval", 1, "--num-workers", 0])
    mix = re.search(r"sampling temperature 5\.000, pair mix (.*)", log).group(1)
    assert len(mix.split(", ")) == NUM_LANGUAGES  # every direction in the sampled mix
    out = run(["fairseq-generate", data, "--user-dir", REPO / "m3p_fairseq", "--task", "multimodal_translation",
               "--lang-pairs", pairs, "--source-lang", "af", "--target-lang", "en",
               "--path", save_dir / "checkpoint_last.pt", "--gen-subset", "test", "--beam", 2,
               "--max-len-b", 10, "--batch-size", 4])
    hypotheses = [line for line in out.splitlines() if line.startswith("H-")]
    assert len(hypotheses) == 8
    assert not any("Please translate" in line for line in hypotheses)  # the prompt is not output
    sources = [line for line in out.splitlines() if line.startswith("S-")]
    assert len(sources) == 8 and all("__en__" in line for line in sources)
    table = run([python, "scripts/evaluate.py", "--data", data, "--checkpoint", f"tiny={save_dir / 'checkpoint_last.pt'}",
         "--beam", 1, "--max-len-b", 10, "--output", tmp_path / "scores.json"])
    scores = json.loads((tmp_path / "scores.json").read_text())["tiny"]["test"]
    assert sorted(scores) == sorted(pairs.split(","))
    average = sum(score["bleu"] for score in scores.values()) / NUM_LANGUAGES
    assert f"| average | {average:.1f} |" in table and f"| directions averaged | {NUM_LANGUAGES} |" in table
