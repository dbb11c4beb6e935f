"""MLA's whole path at toy size through the real commands: synthetic corpus -> stand-in native
model -> image embeddings -> dictionaries -> fairseq-train NLT (resumed) -> LE -> adding cs ->
retrieval per language; and the refusals when a native model does not match."""

import importlib.util
import json
import re
import subprocess
import sys

import pytest
import torch

from helpers import REPO
from m3p_fairseq.models.native_dual_encoder import NativeModelMismatch

PYTHON = sys.executable
_spec = importlib.util.spec_from_file_location("mla_script", REPO / "scripts" / "mla.py")
mla_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mla_script)


def run(command):
    result = subprocess.run([str(c) for c in command], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, f"{command[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def fairseq_train(corpus, work, save_dir, criterion, langs, dictionary, *extra):
    return run(["fairseq-train", corpus, "--user-dir", REPO / "m3p_fairseq", "--task", "mla_acquisition",
                "--arch", "mla_acquisition", "--criterion", criterion, "--langs", langs,
                "--native-checkpoint", work / "native.pt", "--nonnative-dict", dictionary,
                "--image-embeddings", work / "emb.h5", "--acquirer-bottleneck", 8,
                "--optimizer", "adam", "--lr", 1e-3, "--batch-size", 16, "--save-dir", save_dir,
                "--no-epoch-checkpoints", "--num-workers", 0, "--log-format", "simple", "--log-interval", 1,
                "--cpu", "--seed", 1, *extra])


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    work = tmp_path_factory.mktemp("mla")
    corpus = work / "corpus"
    run([PYTHON, "-m", "preprocess.make_synthetic_corpus", "--output-dir", corpus, "--num-train", 48,
         "--num-valid", 12, "--num-test", 12, "--langs", "en,de,fr,cs", "--image-size", 32, "--seed", 3])
    for native, seed in (("native.pt", 1), ("other_native.pt", 2)):
        mla_script.main(["train-native", "--corpus", str(corpus), "--output", str(work / native), "--steps", "5",
                         "--batch-size", "16", "--image-size", "16", "--width", "16", "--embed-dim", "16",
                         "--seed", str(seed)])
    from preprocess.mla_image_embeddings import main as embed

    ids = [str(corpus / f"{split}.image_ids") for split in ("train", "valid", "test")]
    embed(["--native", str(work / "native.pt"), "--images-dir", str(corpus / "images"), "--image-ids", *ids,
           "--output", str(work / "emb.h5")])
    mla_script.main(["build-dict", "--captions", str(corpus / "train.de"), str(corpus / "train.fr"),
                     "--output", str(work / "dict.defr.txt")])
    mla_script.main(["build-dict", "--captions", str(corpus / "train.cs"), "--extend", str(work / "dict.defr.txt"),
                     "--output", str(work / "dict.defrcs.txt")])
    # a stand-in for M-BERT's embedding matrix: German articles and a word the corpus never has
    torch.save({"symbols": ["Ein", "Eine", "Zebra"], "weight": torch.randn(3, 16)}, work / "embeddings.pt")
    logs = {"nlt": fairseq_train(corpus, work, work / "nlt", "mla_nlt", "de,fr", work / "dict.defr.txt",
                                 "--max-update", 3, "--nonnative-embed-init", work / "embeddings.pt")}
    logs["nlt_resumed"] = fairseq_train(corpus, work, work / "nlt", "mla_nlt", "de,fr", work / "dict.defr.txt",
                                        "--max-update", 5)
    logs["le"] = fairseq_train(corpus, work, work / "le", "mla_le", "de,fr", work / "dict.defr.txt",
                               "--max-update", 3, "--init-from", work / "nlt" / "checkpoint_last.pt")
    logs["cs"] = fairseq_train(corpus, work, work / "cs", "mla_nlt", "de,fr,cs", work / "dict.defrcs.txt",
                               "--train-langs", "cs", "--max-update", 3,
                               "--init-from", work / "le" / "checkpoint_last.pt")
    return {"work": work, "corpus": corpus, "logs": logs}


def load_weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def test_stages_train_and_resume(toy):
    logs = toy["logs"]
    assert re.search(r"Loaded checkpoint .*checkpoint_last\.pt \(epoch \d+ @ 3 updates\)", logs["nlt_resumed"])
    assert "num_updates 5" in logs["nlt_resumed"]
    words = [line.split()[0] for line in (toy["work"] / "dict.defr.txt").read_text().splitlines()]
    found = len({"Ein", "Eine"} & set(words))
    assert found and re.search(rf"--nonnative-embed-init .*embeddings\.pt: {found} of {len(words)} words start", logs["nlt"])
    assert "in_batch_accuracy" in logs["le"]
    assert "init-from" in logs["le"] and "fresh acquirers for []" in logs["le"]
    assert "fresh acquirers for ['cs']" in logs["cs"]
    nlt, le = load_weights(toy["work"] / "nlt" / "checkpoint_last.pt"), load_weights(toy["work"] / "le" / "checkpoint_last.pt")
    assert not torch.equal(nlt["encoder.acquirers.de.0.up.weight"], le["encoder.acquirers.de.0.up.weight"])
    assert not any(k.startswith("encoder.native.") or ".clip." in k for k in le)  # frozen tower never saved


def test_adding_a_language_leaves_the_others_bitwise_unchanged(toy):
    before = load_weights(toy["work"] / "le" / "checkpoint_last.pt")
    after = load_weights(toy["work"] / "cs" / "checkpoint_last.pt")
    rows = before["encoder.embed_tokens.weight"].shape[0]
    assert after["encoder.embed_tokens.weight"].shape[0] > rows  # cs brought new words
    assert torch.equal(after["encoder.embed_tokens.weight"][:rows], before["encoder.embed_tokens.weight"])
    for key, value in before.items():
        if key != "encoder.embed_tokens.weight":
            assert torch.equal(after[key], value), key
    assert any(k.startswith("encoder.acquirers.cs.") for k in after)
    assert not torch.equal(after["encoder.acquirers.cs.0.up.weight"], torch.zeros_like(after["encoder.acquirers.cs.0.up.weight"]))


def test_retrieval_per_language(toy, capsys):
    work, corpus = toy["work"], toy["corpus"]
    common = ["evaluate", "--data", str(corpus), "--split", "test", "--langs", "de,fr,cs", "--native",
              str(work / "native.pt"), "--image-embeddings", str(work / "emb.h5")]
    mla_script.main(common + ["--output", str(work / "zero_shot.json")])
    mla_script.main(common + ["--checkpoint", str(work / "cs" / "checkpoint_last.pt"), "--output", str(work / "mla.json")])
    zero_shot = json.loads((work / "zero_shot.json").read_text())["scores"]
    mla = json.loads((work / "mla.json").read_text())["scores"]
    assert set(mla) == {"en", "de", "fr", "cs"}
    assert mla["en"] == zero_shot["en"]  # the native language is untouched by MLA
    for scores in mla.values():
        assert set(scores) == {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mR"}
        assert all(0 <= v <= 100 for v in scores.values())
    assert "cs: i2t R@1" in capsys.readouterr().out


def test_a_different_native_model_is_refused(toy):
    work, corpus = toy["work"], toy["corpus"]
    with pytest.raises(NativeModelMismatch, match=r"image-embedding file .*emb\.h5 was made with native model"):
        mla_script.main(["evaluate", "--data", str(corpus), "--split", "test", "--langs", "de",
                         "--native", str(work / "other_native.pt"), "--image-embeddings", str(work / "emb.h5")])
    with pytest.raises(NativeModelMismatch, match="this checkpoint of language acquirers was made with native model "
                                                  "'standin-en-corpus-seed1'"):
        mla_script.main(["evaluate", "--data", str(corpus), "--split", "test", "--langs", "de",
                         "--native", str(work / "other_native.pt"), "--image-embeddings", str(work / "emb.h5"),
                         "--checkpoint", str(work / "cs" / "checkpoint_last.pt")])
