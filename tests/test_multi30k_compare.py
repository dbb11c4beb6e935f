"""examples/multi30k on a fabricated copy with all four test sets (the machine's copy has only
test_2016_flickr, and Multi30k may not be copied into the repository): preparation of every test
set, the plain-fairseq baseline's data read by fairseq without the plugin, a tiny
recipe-against-baseline run, checkpoint averaging and the paper's table layouts."""

import gzip
import json
import random
import shutil
import subprocess
import sys

import pytest
import torch

from helpers import REPO, import_script, setup_task, write_random_features
from m3p_fairseq.data.image_features import read_image_ids
from m3p_fairseq.evaluation.cli import main as evaluate_main
from m3p_fairseq.evaluation.tables import multi30k_tables

prepare = import_script(REPO / "examples" / "multi30k" / "prepare.py")
import_script(REPO / "examples" / "multi30k" / "train.py")  # baseline.py imports it
baseline = import_script(REPO / "examples" / "multi30k" / "baseline.py")
import_script(REPO / "examples" / "multi30k" / "averaging.py")  # compare.py imports it
import_script(REPO / "examples" / "multi30k" / "compare.py")  # same_weights.py imports it

WORDS = {"en": "a man dog runs in the park with two women ball".split(),
         "de": "ein mann hund läuft im park mit zwei frauen ball".split(),
         "fr": "un homme chien court dans le parc avec deux femmes".split(),
         "cs": "muž pes běží v parku se dvěma ženami červený míč".split()}
SIZES = {"train": 60, "val": 12, "test_2016_flickr": 10, "test_2017_flickr": 8, "test_2018_flickr": 7,
         "test_2017_mscoco": 6}
NO_CZECH = {"test_2017_flickr", "test_2017_mscoco"}
TOY = ["--encoder-embed-dim", 16, "--decoder-embed-dim", 16, "--encoder-ffn-embed-dim", 32,
       "--decoder-ffn-embed-dim", 32, "--encoder-layers", 1, "--decoder-layers", 1, "--max-tokens", 400,
       "--encoder-attention-heads", 2, "--decoder-attention-heads", 2, "--num-workers", 0]


def fabricate(root, czech_2017=False):
    """A Multi30k clone's layout (data/task1/raw, .gz text) with made-up captions; Czech only
    for 2016 and 2018 unless ``czech_2017`` (a stray file prepare must ignore)."""
    raw, splits = root / "data" / "task1" / "raw", root / "data" / "task1" / "image_splits"
    raw.mkdir(parents=True)
    splits.mkdir(parents=True)
    rng = random.Random(0)
    for split, n in SIZES.items():
        order = [rng.sample(range(10), 5) for _ in range(n)]
        (splits / f"{split}.txt").write_text("".join(f"{split}_{i}.jpg\n" for i in range(n)))
        langs = ["en", "de", "fr"] + ([] if split in NO_CZECH and not czech_2017 else ["cs"])
        for lang in langs:
            text = "".join(" ".join(WORDS[lang][j] for j in words).capitalize() + ".\n" for words in order)
            with gzip.open(raw / f"{split}.{lang}.gz", "wt", encoding="utf-8") as f:
                f.write(text)
    return root


def run(command):
    result = subprocess.run([str(c) for c in command], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    copy = fabricate(tmp_path_factory.mktemp("multi30k-clone"), czech_2017=True)
    work = tmp_path_factory.mktemp("work")
    run([sys.executable, "examples/multi30k/prepare.py", "--multi30k", copy, "--work-dir", work,
         "--spm-vocab-size", 60])
    return work


def test_prepare_writes_every_test_set_with_its_languages(prepared):
    raw, data = prepared / "raw", prepared / "data-bin"
    for split, n in SIZES.items():
        ours = "valid" if split == "val" else split
        langs = ["en", "de", "fr"] + ([] if split in NO_CZECH else ["cs"])
        for lang in langs:
            assert len((raw / f"{ours}.{lang}").read_text(encoding="utf-8").splitlines()) == n
            assert (data / f"{ours}.{lang}.idx").is_file()
        if split in NO_CZECH:  # the stray Czech file of 2017 is not used
            assert not (raw / f"{ours}.cs").exists() and not (data / f"{ours}.cs.idx").exists()
    task, _ = setup_task(data, lang_pairs="en-de,de-en,en-fr,fr-en")
    task.cfg.source_lang, task.cfg.target_lang = "de", "en"
    task.load_dataset("test_2017_mscoco")
    assert len(task.dataset("test_2017_mscoco")) == SIZES["test_2017_mscoco"]


def test_an_incomplete_test_set_is_named(tmp_path):
    copy = fabricate(tmp_path / "copy")
    (copy / "data" / "task1" / "raw" / "test_2018_flickr.de.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"test set test_2018_flickr is incomplete, missing .*"
                                                r"test_2018_flickr\.de\(\.gz\)"):
        prepare.split_languages(copy)
    # a copy with only test_2016_flickr (as ../shared/data/multi30k) has no later test sets
    for name in (copy / "data" / "task1" / "raw").glob("test_201[78]*"):
        name.unlink()
    for name in (copy / "data" / "task1" / "image_splits").glob("test_201[78]*"):
        name.unlink()
    assert list(prepare.split_languages(copy)) == ["train", "valid", "test_2016_flickr"]


def test_baseline_data_has_the_recipes_vocabulary_and_pieces(prepared, tmp_path):
    # (plain fairseq-train reads it in test_compare_trains_both_and_tables_every_test_set)
    fairseq_dir, recipe_dir = baseline.write_data(prepared, tmp_path / "fairseq"), prepared / "data-bin"
    # the same vocabulary: the recipe's dictionary without its language tags
    recipe_dict = (recipe_dir / "dict.txt").read_text(encoding="utf-8").splitlines()
    expected = [line for line in recipe_dict if not line.startswith(("__en__", "__de__", "__fr__", "__cs__"))]
    assert (fairseq_dir / "dict.en.txt").read_text(encoding="utf-8").splitlines() == expected
    # the same pieces, so the same ids, in both data directories
    from fairseq.data import data_utils
    for split, pair, lang in (("train", "en-de", "de"), ("test_2017_mscoco", "de-fr", "fr"),
                              ("test_2018_flickr", "fr-cs", "cs")):
        ours = data_utils.load_indexed_dataset(str(recipe_dir / f"{split}.{lang}"), None, "mmap")
        theirs = data_utils.load_indexed_dataset(str(fairseq_dir / f"{split}.{pair}.{lang}"), None, "mmap")
        assert len(ours) == len(theirs) > 0 and all(torch.equal(ours[i], theirs[i]) for i in range(len(ours)))
    assert not list(fairseq_dir.glob("test_2017_flickr.*cs*"))


def test_compare_trains_both_and_tables_every_test_set(prepared, tmp_path):
    out = tmp_path / "compare"
    printed = run([sys.executable, "examples/multi30k/compare.py", "--work-dir", prepared, "--out-dir", out,
                   "--minutes", 5, "--max-update", 2, "--average-last", 2, "--beam", 2, "--max-len-b", 4, "--",
                   "--save-interval-updates", 1, "--validate-interval-updates", 1, *TOY])
    # the baseline is plain fairseq: no plugin on its command line
    baseline_command = next(line for line in printed.splitlines() if line.startswith("[fairseq-baseline] $"))
    assert "--user-dir" not in baseline_command and "m3p" not in baseline_command
    assert "--task translation_multi_simple_epoch" in baseline_command
    selection = json.loads((out / "selection.json").read_text())
    assert set(selection) == {"cpu-text-only", "fairseq-baseline"}
    for system, chosen in selection.items():
        assert chosen["updates"] == 2
        assert chosen["averaged"] == ["checkpoint_1_1.pt", "checkpoint_1_2.pt"]
        assert set(chosen["validation_loss"]) == {"last", "average of 2"}
    results = json.loads((out / "results.json").read_text())
    six = {"en-de", "de-en", "en-fr", "fr-en", "en-cs", "cs-en"}
    for system in selection:
        assert {split: set(scores) for split, scores in results[system].items()} == {
            "test_2016_flickr": six, "test_2018_flickr": six,
            "test_2017_flickr": six - {"en-cs", "cs-en"}, "test_2017_mscoco": six - {"en-cs", "cs-en"}}
        assert len((out / "hyp" / system / "test_2017_mscoco.de-en.txt").read_text().splitlines()) == 6
    table = (out / "comparison.md").read_text()
    for heading in ("Table 1: test2016 (Flickr): BLEU", "Table 2: test2017 (Flickr) and MSCOCO: chrF",
                    "test2018 (Flickr): BLEU"):
        assert f"### {heading}" in table and heading in printed
    assert "| system | 2017 en-de | 2017 en-fr | 2017 de-en | 2017 fr-en | 2017 Avg4 | MSCOCO en-de |" in table
    assert table.count("| ratio cpu-text-only / fairseq-baseline |") == 6  # 3 tables x 2 metrics
    assert "sacreBLEU signature `nrefs:1|case:mixed|eff:no|tok:13a" in table and "commit `" in table

    # the averaged checkpoint is the parameters' mean, worked out here from the two inputs
    saved = [torch.load(out / "checkpoints" / "fairseq-baseline" / name, weights_only=False)["model"]
             for name in ("checkpoint_1_1.pt", "checkpoint_1_2.pt", "checkpoint_averaged.pt")]
    name = "encoder.layers.0.fc1.weight"
    assert not torch.equal(saved[0][name], saved[1][name])
    assert torch.allclose(saved[2][name], (saved[0][name] + saved[1][name]) / 2)

    # the kept hypotheses re-score to the same numbers without translating
    (out / "results.json").unlink()
    evaluate_main(["--rescore", str(out), "--references-dir", str(prepared / "raw")])
    assert json.loads((out / "results.json").read_text()) == results

    # same_weights.py: the baseline's weights in the recipe's model, through the recipe's
    # evaluation, give the hypotheses of fairseq's own task (two updates leave them empty here)
    printed = run([sys.executable, "examples/multi30k/same_weights.py", "--work-dir", prepared, "--out-dir", out,
                   "--split", "test_2018_flickr", "--directions", "en-cs,de-en", "--beam", 2, "--max-len-b", 4])
    assert "test_2018_flickr en-cs: 7 of 7 hypotheses equal" in printed
    assert "test_2018_flickr de-en: 7 of 7 hypotheses equal" in printed
    # score_checkpoint.py: both systems at an earlier checkpoint, beside the chosen one
    printed = run([sys.executable, "examples/multi30k/score_checkpoint.py", "--work-dir", prepared, "--out-dir", out,
                   "--checkpoint", "checkpoint_1_1.pt", "--beam", 2, "--max-len-b", 4])
    earlier = json.loads((out / "at-checkpoint_1_1" / "results.json").read_text())
    assert {system: set(splits) for system, splits in earlier.items()} == {
        system: set(results[system]) for system in selection}
    assert "| ratio cpu-text-only / fairseq-baseline |" in printed
    missing = subprocess.run([sys.executable, "examples/multi30k/score_checkpoint.py", "--work-dir", str(prepared),
                              "--out-dir", str(out), "--checkpoint", "checkpoint_9_9.pt"], cwd=REPO,
                             capture_output=True, text=True)
    assert missing.returncode != 0
    assert f"{out / 'checkpoints' / 'cpu-text-only' / 'checkpoint_9_9.pt'}: no such checkpoint" in missing.stderr

    assert_same_logits_with_the_baselines_weights(prepared, out / "checkpoints")


def assert_same_logits_with_the_baselines_weights(work, checkpoints):
    """The plugin's text-only path is fairseq's: with the baseline's weights, random ones so that
    every parameter matters (except the version buffers, which decide whether fairseq keeps the
    final layer norm), the recipe's model gives the baseline's logits on a padded batch of a test
    set with its language tags, over every symbol both dictionaries have."""
    from m3p_fairseq.evaluation.translation import direction_dataset
    same_weights = import_script(REPO / "examples" / "multi30k" / "same_weights.py")
    theirs_path = checkpoints / "fairseq-baseline" / "checkpoint_last.pt"
    state = torch.load(theirs_path, weights_only=False)
    generator = torch.Generator().manual_seed(0)
    state["model"] = {name: value if name.endswith(".version") else torch.randn(value.shape, generator=generator)
                      for name, value in state["model"].items()}
    for shared in ("decoder.embed_tokens.weight", "decoder.output_projection.weight"):  # --share-all-embeddings
        state["model"][shared] = state["model"]["encoder.embed_tokens.weight"]
    torch.save(state, theirs_path)
    models, task = same_weights.baseline_weights_in_recipe_model(checkpoints / "cpu-text-only" / "checkpoint_last.pt",
                                                                 theirs_path, work)
    theirs, their_task = baseline.load(theirs_path, work / baseline.DATA_DIR, "en", "cs")
    their_task.load_dataset("test_2018_flickr")
    ours_data, their_data = direction_dataset(task, "test_2018_flickr", "en", "cs"), their_task.dataset("test_2018_flickr")
    ours_batch, their_batch = ours_data.collater([ours_data[i] for i in range(7)]), their_data.collater(
        [their_data[i] for i in range(7)])
    assert ours_batch["net_input"]["src_tokens"].eq(task.source_dictionary.pad()).any()  # padding is exercised
    ours_dict, their_dict = task.target_dictionary, their_task.target_dictionary
    symbols = [ours_dict[i] for i in range(len(ours_dict)) if their_dict.index(ours_dict[i]) != their_dict.unk()
               or ours_dict[i] == "<unk>"]
    assert len(symbols) == len(their_dict) and "__cs__" in symbols
    # the same sources (fairseq pads them on the right here, the plugin on the left: the
    # encoder masks padding and counts positions without it, so the side does not matter)
    tokens = [[ours_dict[i] for i in row if i != ours_dict.pad()] for row in ours_batch["net_input"]["src_tokens"].tolist()]
    assert tokens == [[their_dict[i] for i in row if i != their_dict.pad()]
                      for row in their_batch["net_input"]["src_tokens"].tolist()]
    with torch.no_grad():
        ours = models[0](**ours_batch["net_input"])[0][..., [ours_dict.index(x) for x in symbols]]
        expected = theirs[0](**their_batch["net_input"])[0][..., [their_dict.index(x) for x in symbols]]
    assert ours.abs().max() > 1 and torch.allclose(ours, expected, atol=1e-4, rtol=1e-4)


def test_compare_runs_the_m3p_configuration_with_features(prepared, tmp_path):
    """cpu-m3p against the same baseline, on a copy of the data with (random) image features:
    there are no Flickr30k images on this machine, so only that the comparison runs is checked."""
    work = tmp_path / "work"
    shutil.copytree(prepared, work, ignore=shutil.ignore_patterns("compare-*"))
    data = work / "data-bin"
    ids = sorted({i for path in data.glob("*.image_ids") for i in read_image_ids(path)})
    write_random_features(data / "image_features.h5", ids, num_patches=4, feature_dim=8)
    out = tmp_path / "compare"
    printed = run([sys.executable, "examples/multi30k/compare.py", "--work-dir", work, "--out-dir", out,
                   "--config", "cpu-m3p", "--minutes", 5, "--max-update", 2, "--average-last", 1, "--beam", 2,
                   "--max-len-b", 4, "--", "--save-interval-updates", 1, "--validate-interval-updates", 1, *TOY])
    recipe_command = next(line for line in printed.splitlines() if line.startswith("[cpu-m3p] $"))
    assert "--fusion cvlm" in recipe_command and "--criterion m3p_loss" in recipe_command
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"cpu-m3p", "fairseq-baseline"}
    assert set(results["cpu-m3p"]["test_2016_flickr"]) == {"en-de", "de-en", "en-fr", "fr-en", "en-cs", "cs-en"}
    assert "| ratio cpu-m3p / fairseq-baseline |" in (out / "comparison.md").read_text()


def entry(bleu, chrf=50.0):
    return {"bleu": bleu, "chrf": chrf, "signature": "nrefs:1|BLEU", "chrf_signature": "nrefs:1|chrF"}


def test_multi30k_tables_follow_the_papers_layouts():
    table1 = dict(zip(["en-de", "en-fr", "en-cs", "de-en", "fr-en", "cs-en"], [30, 40, 20, 35, 38, 27]))
    results = {"recipe": {"test_2016_flickr": {d: entry(v) for d, v in table1.items()},
                          "test_2017_mscoco": {d: entry(10) for d in ("en-de", "en-fr", "de-en")}},
               "baseline": {"test_2016_flickr": {d: entry(v / 2) for d, v in table1.items()}}}
    text = multi30k_tables(results, ("bleu",), commit="abc1234", ratio=("recipe", "baseline"))
    # Avg6 = (30 + 40 + 20 + 35 + 38 + 27) / 6 = 31.67; the baseline has half of each
    assert "| recipe | 30.0 | 40.0 | 20.0 | 35.0 | 38.0 | 27.0 | 31.7 |" in text
    assert "| baseline | 15.0 | 20.0 | 10.0 | 17.5 | 19.0 | 13.5 | 15.8 |" in text
    assert "| ratio recipe / baseline | 2.00 | 2.00 | 2.00 | 2.00 | 2.00 | 2.00 | 2.00 |" in text
    # MSCOCO without fr-en has no Avg4 (an average over 3 is not the paper's), and no test2017
    assert "| recipe | - | - | - | - | - | 10.0 | 10.0 | 10.0 | - | - |" in text
    assert "test2018" not in text and "sacreBLEU signature `nrefs:1|BLEU`; commit `abc1234`" in text
