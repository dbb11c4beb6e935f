"""scripts/evaluate.py and scripts/figures.py on two tiny models trained here (text-only and
CVLM): the table files, saved hypotheses and --rescore, the incongruent-image and without-images
probes, and every figure command producing a PNG."""

import json
import math
import subprocess

import pytest
import sacrebleu

from helpers import REPO
from m3p_fairseq.evaluation import cli as evaluate
from m3p_fairseq.evaluation import figures_cli as figures

# The commands run in this process (their main(argv)): loading torch and fairseq once keeps the
# tests fast; the training that makes the checkpoints uses the real fairseq-train.


def run(command):
    result = subprocess.run([str(c) for c in command], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, f"{command[:3]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def cli(capsys, script, argv):
    """Run a script's main(argv) here; returns what it printed."""
    script.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return captured.out + captured.err


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, data_dir):
    work = tmp_path_factory.mktemp("evaluation")
    found = {}
    for name, fusion in (("text-only", "none"), ("cvlm", "cvlm")):
        run(["fairseq-train", data_dir, "--user-dir", REPO / "m3p_fairseq", "--task", "multimodal_translation",
             "--lang-pairs", "en-de,de-en,en-fr", "--arch", "m3p_transformer_tiny", "--fusion", fusion,
             "--encoder-layers", 1, "--decoder-layers", 1, "--encoder-embed-dim", 32, "--encoder-ffn-embed-dim", 64,
             "--encoder-attention-heads", 2, "--optimizer", "adam", "--lr", 3e-3, "--max-tokens", 600,
             "--max-update", 4, "--save-dir", work / name, "--no-epoch-checkpoints", "--no-save-optimizer-state",
             "--disable-validation", "--num-workers", 0, "--seed", 2])
        found[name] = work / name / "checkpoint_last.pt"
    return found


def test_evaluate_writes_tables_hypotheses_and_the_probes(checkpoints, data_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    printed = cli(capsys, evaluate, ["--data", data_dir, "--checkpoint", f"text-only={checkpoints['text-only']}",
                   "--checkpoint", f"cvlm={checkpoints['cvlm']}", "--lang-pairs", "en-de,de-en", "--beam", 2, "--max-len-b", 6,
                   "--output-dir", out, "--incongruent-images", "--without-images", "--off-target",
                   "--output", tmp_path / "r.json"])
    assert "sacreBLEU signatures: BLEU nrefs:1|case:mixed|eff:no|tok:13a" in printed
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert json.loads((tmp_path / "r.json").read_text(encoding="utf-8")) == results
    assert set(results["text-only"]) == {"test"}  # a text-only model has no images to shuffle or withhold
    assert set(results["cvlm"]) == {"test", "test-incongruent", "test-without-images"}
    for system, by_split in results.items():
        for split, scores in by_split.items():
            for direction in ("en-de", "de-en"):
                hyps = (out / "hyp" / system / f"{split}.{direction}.txt").read_text(encoding="utf-8").splitlines()
                refs = (out / "ref" / f"{split}.{direction}.txt").read_text(encoding="utf-8").splitlines()
                assert hyps == scores[direction]["hypotheses"] and len(refs) == 40
                assert scores[direction]["bleu"] == round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2)
                assert "off_target" in scores[direction]  # its values: the hand-made files below
    table = (out / "table.md").read_text(encoding="utf-8")
    assert "| system | en-de | de-en | average |" in table and "### test: off-target %" in table
    csv_lines = (out / "table.csv").read_text(encoding="utf-8").splitlines()
    assert csv_lines[0] == "split,metric,system,en-de,de-en,average,directions_averaged"
    awareness = (out / "image_awareness.md").read_text(encoding="utf-8")
    assert "| cvlm | test | **average** |" in awareness and "text-only" not in awareness

    # --rescore: the same numbers from the saved files, without a model
    (out / "results.json").unlink()
    cli(capsys, evaluate, ["--rescore", out, "--off-target"])
    rescored = json.loads((out / "results.json").read_text(encoding="utf-8"))
    for system, by_split in results.items():
        for split, scores in by_split.items():
            for direction, entry in scores.items():
                assert rescored[system][split][direction] == entry

    # hand-made hypotheses whose scores are known: identical -> 100; a prefix of every reference
    # keeps every n-gram precision at 1, so BLEU is 100 * the brevity penalty exp(1 - r/c),
    # here r = 15 reference and c = 13 hypothesis words; German where English is expected is
    # off-target, English is not
    english = ["a red circle in the top left corner", "two blue squares next to a green triangle"]
    german = ["ein roter Kreis in der oberen linken Ecke", "zwei blaue Quadrate neben einem grünen Dreieck"]
    prefixes = [" ".join(line.split()[:-1]) for line in german]
    hand_made = {("ref", "test.en-de.txt"): german, ("hyp/text-only", "test.en-de.txt"): german,
                 ("hyp/cvlm", "test.en-de.txt"): prefixes, ("ref", "test.de-en.txt"): english,
                 ("hyp/text-only", "test.de-en.txt"): german, ("hyp/cvlm", "test.de-en.txt"): english}
    for (folder, name), lines in hand_made.items():
        (out / folder / name).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    cli(capsys, evaluate, ["--rescore", out, "--off-target"])
    known = json.loads((out / "results.json").read_text(encoding="utf-8"))
    text_only, cvlm = known["text-only"]["test"], known["cvlm"]["test"]
    assert (text_only["en-de"]["bleu"], text_only["en-de"]["chrf"], text_only["en-de"]["off_target"]) == (100, 100, 0)
    assert cvlm["en-de"]["bleu"] == pytest.approx(100 * math.exp(1 - 15 / 13), abs=0.01)
    assert text_only["de-en"]["off_target"] == 100 and cvlm["de-en"]["off_target"] == 0
    assert known["cvlm"]["test-incongruent"] == results["cvlm"]["test-incongruent"]  # untouched files


def png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    return json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))


def test_source_masking_figure(checkpoints, data_dir, tmp_path, capsys):
    output = tmp_path / "masking.png"
    cli(capsys, figures, ["source-masking", "--data", data_dir, "--checkpoint",
         f"text-only={checkpoints['text-only']}", "--checkpoint", f"cvlm={checkpoints['cvlm']}",
         "--lang-pairs", "en-de", "--ratios", "0,0.5,1", "--max-sentences", 8, "--beam", 1, "--max-len-b", 6, "--output", output])
    points = png(output)
    assert [ratio for ratio, _ in points["average_bleu"]["cvlm"]] == [0, 0.5, 1]
    assert set(points["bleu"]["text-only"]["1.0"]) == {"en-de"}


def test_low_resource_figure(checkpoints, data_dir, tmp_path, capsys):
    output = tmp_path / "low.png"
    cli(capsys, figures, ["low-resource", "--data", data_dir, "--lang-pairs", "de-en",
         "--run", "cvlm", 0.5, checkpoints["cvlm"], "--run", "cvlm", 1.0, checkpoints["cvlm"],
         "--run", "text-only", 1.0, checkpoints["text-only"], "--max-sentences", 6, "--beam", 1, "--max-len-b", 6, "--output", output])
    points = png(output)
    half, full = points["average_bleu"]["cvlm"]
    assert half[0] == 0.5 and full[0] == 1.0 and half[1] == full[1]  # the same checkpoint twice


def test_tsne_figure(checkpoints, data_dir, tmp_path, capsys):
    output = tmp_path / "tsne.png"
    cli(capsys, figures, ["tsne", "--data", data_dir, "--checkpoint", f"text-only={checkpoints['text-only']}",
         "--checkpoint", f"cvlm={checkpoints['cvlm']}", "--max-sentences", 12, "--output", output])
    points = png(output)
    # sources of en-de,de-en,en-fr: en and de, 12 sentences each
    assert sorted(set(points["cvlm"]["languages"])) == ["de", "en"] and len(points["cvlm"]["points"]) == 24
    expected = same_language_neighbours_by_hand(checkpoints["text-only"], data_dir, [("en", "de"), ("de", "en")], 12)
    assert points["text-only"]["same_language_neighbours"] == pytest.approx(expected, abs=1e-4)


def same_language_neighbours_by_hand(checkpoint, data_dir, directions, count, k=10):
    """Fig. 4's number for a text-only model, worked out here: each sentence's text-encoder
    states averaged over its tokens without padding and the language tag, then the share of
    its k nearest neighbours (Euclidean, itself excluded) with its source language."""
    import torch

    from m3p_fairseq.evaluation.translation import direction_dataset, load

    models, task = load(checkpoint, data_dir)
    dictionary = task.source_dictionary
    vectors, languages = [], []
    for src, tgt in directions:
        dataset = direction_dataset(task, "test", src, tgt)
        for i in range(count):
            tokens = dataset[i]["source"]
            with torch.no_grad():
                states = models[0].encoder(tokens[None], src_lengths=torch.tensor([len(tokens)]))["encoder_out"][0]
            keep = [t != dictionary.pad() and not dictionary[t].startswith("__") for t in tokens.tolist()]
            rows = [states[t, 0].double().tolist() for t in range(len(tokens)) if keep[t]]
            vectors.append([sum(column) / len(rows) for column in zip(*rows)])
            languages.append(src)
    same = 0
    for i, vector in enumerate(vectors):
        distances = sorted((sum((a - b) ** 2 for a, b in zip(vector, other)), j)
                           for j, other in enumerate(vectors) if j != i)
        same += sum(languages[j] == languages[i] for _, j in distances[:k])
    return same / (k * len(vectors))


def test_cvlm_attention_figure(checkpoints, data_dir, raw_corpus, tmp_path, capsys):
    output = tmp_path / "attention.png"
    cli(capsys, figures, ["cvlm-attention", "--data", data_dir, "--checkpoint", checkpoints["cvlm"],
         "--index", 3, "--max-words", 5, "--images-dir", raw_corpus / "images", "--output", output])
    points = png(output)
    assert points["grid"] == [2, 2]  # 4 patches per image in the test data
    for lang in ("en", "de"):
        weights = points["languages"][lang]["weights"]
        assert len(weights) == len(points["languages"][lang]["words"]) == 5
        assert all(sum(row) == pytest.approx(1, abs=1e-3) for row in weights)  # a distribution over patches
    grid_only = tmp_path / "grid.png"
    cli(capsys, figures, ["cvlm-attention", "--data", data_dir, "--checkpoint", checkpoints["cvlm"],
         "--output", grid_only])
    png(grid_only)
    with pytest.raises(ValueError, match="needs a model trained with --fusion cvlm"):
        figures.main(["cvlm-attention", "--data", str(data_dir), "--checkpoint", str(checkpoints["text-only"]),
                      "--output", str(tmp_path / "x.png")])


def test_a_direction_the_model_was_not_trained_on_is_an_error(checkpoints, data_dir, tmp_path, capsys):
    # trained on en-de,de-en,en-fr: fr-en is asked for, and must not be dropped silently
    for command, argv in ((evaluate, ["--checkpoint", f"cvlm={checkpoints['cvlm']}", "--output-dir", tmp_path]),
                          (figures, ["low-resource", "--run", "cvlm", "1.0", checkpoints["cvlm"],
                                     "--output", tmp_path / "x.png"])):
        with pytest.raises(SystemExit) as stopped:
            command.main([str(a) for a in [*argv, "--data", data_dir, "--lang-pairs", "en-de,fr-en"]])
        assert stopped.value.code == 2
        err = capsys.readouterr().err
        assert "was not trained on fr-en; its directions are en-de,de-en,en-fr" in err
        assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing translated, nothing written
