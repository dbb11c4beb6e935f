"""Per-direction image-id lists in batches that mix directions, and fairseq-interactive's bad lines.

The bilingual fixture gives en-de and de-en their own text and their own image-id lists: line i
of en-de and line i of de-en are different sentences with different images, and both
directions number their examples 0..n-1, so every id of a mixed batch collides with one of the
other direction."""

import re
import subprocess

import h5py
import numpy as np
import pytest
import torch

from helpers import REPO, as_if_trained, setup_task, write_random_features
from m3p_fairseq.data.image_features import ImageFeatureError
from m3p_fairseq.data.multimodal_pair_dataset import images_per_row
from preprocess.binarize import binarize

# direction -> (first line, last line) of the multi-way raw corpus that direction gets, per split
SLICES = {"train": {"en-de": (0, 40), "de-en": (20, 60)},
          "valid": {"en-de": (0, 8), "de-en": (4, 12)},
          "test": {"en-de": (0, 20), "de-en": (20, 40)}}


@pytest.fixture(scope="module")
def bilingual(tmp_path_factory, raw_corpus):
    raw, data = tmp_path_factory.mktemp("raw-bilingual"), tmp_path_factory.mktemp("data-bilingual")
    expected = {}  # (split, direction) -> [(source sentence, image id)] in line order
    for split, directions in SLICES.items():
        multiway = {name: (raw_corpus / f"{split}.{name}").read_text(encoding="utf-8").splitlines()
                    for name in ("en", "de", "image_ids")}
        for direction, (start, end) in directions.items():
            src, tgt = direction.split("-")
            for name in (src, tgt, "image_ids"):
                (raw / f"{split}.{direction}.{name}").write_text(
                    "".join(line + "\n" for line in multiway[name][start:end]), encoding="utf-8")
            expected[split, direction] = list(zip(multiway[src][start:end], multiway["image_ids"][start:end]))
    binarize(raw, data, [("en", "de"), ("de", "en")], list(SLICES), spm_vocab_size=200)
    ids = sorted({i for split in SLICES for i in (raw_corpus / f"{split}.image_ids").read_text().splitlines()})
    write_random_features(data / "image_features.h5", ids)
    with h5py.File(data / "image_features.h5", "r") as f:  # read here, not through the task
        stored = f["image_ids"].asstr()[()]
        global_of = dict(zip(stored, f["global"][()]))
        patches_of = dict(zip(stored, f["patches"][()]))
    return {"raw": raw, "data": data, "expected": expected, "global_of": global_of, "patches_of": patches_of}


def row_identity(task, batch, row, expected, split):
    """(direction, line, image id) of a collated row: the direction from its target-language tag,
    the line from its id, checked against the row's own text."""
    tokens = batch["net_input"]["src_tokens"][row]
    tokens = tokens[tokens != task.src_dict.pad()]
    direction = {"__de__": "en-de", "__en__": "de-en"}[task.src_dict[int(tokens[0])]]
    line = int(batch["id"][row])
    sentence, image_id = expected[split, direction][line]
    assert task.src_dict.string(tokens[1:-1], "sentencepiece") == sentence
    return direction, line, image_id


def test_mixed_direction_training_batches_give_each_sentence_its_own_image(bilingual):
    task, _ = setup_task(bilingual["data"], "--max-tokens", "400", lang_pairs="en-de,de-en")
    task.load_dataset("train")
    iterator = task.get_batch_iterator(dataset=task.dataset("train"), max_tokens=400, seed=1, epoch=1)
    mixed = checked = 0
    for batch in iterator.next_epoch_itr(shuffle=True):
        directions = set()
        for row in range(len(batch["id"])):
            direction, line, image_id = row_identity(task, batch, row, bilingual["expected"], "train")
            directions.add(direction)
            np.testing.assert_array_equal(images_per_row(batch["net_input"])[1][row].numpy(),
                                          bilingual["global_of"][image_id])
            checked += 1
        mixed += len(directions) == 2
    assert checked == 80 and mixed >= 1  # every example once; some batches hold both directions


def test_mixed_direction_generation_matches_each_sentence_alone_with_its_image(bilingual):
    task, cfg = setup_task(bilingual["data"], "--fusion", "cvlm", lang_pairs="en-de,de-en")
    task.load_dataset("valid")
    dataset = task.dataset("valid")  # both directions, concatenated
    model = as_if_trained(task.build_model(cfg.model)).eval()
    cfg.generation.beam, cfg.generation.max_len_a, cfg.generation.max_len_b = 2, 0, 12  # an untrained model
    generator = task.build_generator([model], cfg.generation)
    batch = dataset.collater([dataset[i] for i in range(len(dataset))])
    assert len(set(batch["id"].tolist())) < len(dataset)  # ids collide across the two directions
    hypotheses = task.inference_step(generator, [model], batch)

    def alone(tokens, image_id):
        sample = {"net_input": {"src_tokens": tokens[None], "src_lengths": torch.tensor([len(tokens)]),
                                "image_patches": torch.from_numpy(bilingual["patches_of"][image_id])[None].float(),
                                "image_global": torch.from_numpy(bilingual["global_of"][image_id])[None].float()}}
        return task.inference_step(generator, [model], sample)[0][0]["tokens"].tolist()

    differs = 0
    for row, tokens in enumerate(batch["net_input"]["src_tokens"]):
        direction, line, image_id = row_identity(task, batch, row, bilingual["expected"], "valid")
        tokens = tokens[tokens != task.src_dict.pad()]
        own = alone(tokens, image_id)
        assert hypotheses[row][0]["tokens"].tolist() == own
        other = bilingual["expected"]["valid", direction][(line + 1) % 8][1]
        differs += alone(tokens, other) != own
    assert differs > 0  # the image changes the output, so a swapped image would have been seen


def test_collater_refuses_a_batch_mixing_examples_with_and_without_images(bilingual):
    task, _ = setup_task(bilingual["data"], lang_pairs="en-de,de-en")
    task.load_dataset("valid")
    with_images = task.dataset("valid").datasets[0]
    sample = dict(with_images[3])
    del sample["image_patches"], sample["image_global"], sample["image_usable"]
    with pytest.raises(ImageFeatureError, match=r"example id\(s\) \[3\] have none"):
        with_images.collater([with_images[0], sample])


# ---- fairseq-interactive ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(bilingual, tmp_path_factory):
    """A tiny CVLM trained by fairseq-train on batches that mix the two directions."""
    save_dir = tmp_path_factory.mktemp("checkpoints")
    result = subprocess.run(
        [str(c) for c in ["fairseq-train", bilingual["data"], "--user-dir", REPO / "m3p_fairseq",
                          "--task", "multimodal_translation", "--lang-pairs", "en-de,de-en",
                          "--arch", "m3p_transformer_tiny", "--fusion", "cvlm", "--encoder-layers", 1,
                          "--decoder-layers", 1, "--optimizer", "adam", "--lr", 3e-3, "--max-tokens", 600,
                          "--max-update", 3, "--save-dir", save_dir, "--no-epoch-checkpoints",
                          "--no-save-optimizer-state", "--num-workers", 0, "--seed", 2]],
        cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return save_dir / "checkpoint_last.pt"


def interactive(bilingual, checkpoint, lines, *extra):
    data = bilingual["data"]
    result = subprocess.run(
        ["fairseq-interactive", str(data), "--user-dir", str(REPO / "m3p_fairseq"),
         "--task", "multimodal_translation", "-s", "en", "-t", "de", "--image-features", str(data / "image_features.h5"),
         "--path", str(checkpoint), "--beam", "2", "--bpe", "sentencepiece",
         "--sentencepiece-model", str(data / "spm.model"), *map(str, extra)],
        cwd=REPO, input="".join(line + "\n" for line in lines), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def hypotheses(output):
    return {int(i): text for i, text in re.findall(r"^H-(\d+)\t\S+\t(.*)$", output, flags=re.M)}


@pytest.mark.parametrize("buffer_size", [1, 4])
def test_interactive_reports_bad_lines_and_translates_the_rest(bilingual, checkpoint, buffer_size):
    good = [f"{image_id}\t{sentence}" for sentence, image_id in bilingual["expected"]["test", "en-de"][:3]]
    clean = hypotheses(interactive(bilingual, checkpoint, good))
    assert sorted(clean) == [0, 1, 2]
    lines = [good[0], "", "no_such_image.jpg\tA small red circle.", "A line without an image id.", good[1], good[2]]
    output = interactive(bilingual, checkpoint, lines, "--buffer-size", buffer_size, "--batch-size", buffer_size)
    assert "input line 2 skipped: blank line" in output
    assert re.search(r"input line 3 skipped: image id 'no_such_image\.jpg' is not in \S*image_features\.h5", output)
    assert "input line 4 skipped: expected IMAGE_ID<TAB>sentence" in output
    # the later lines are translated, numbered by their input line, exactly as without the bad ones
    assert hypotheses(output) == {0: clean[0], 4: clean[1], 5: clean[2]}


def test_collater_raises_instead_of_guessing_when_a_row_does_not_hold_its_sample(bilingual, monkeypatch):
    from fairseq.data import LanguagePairDataset

    task, _ = setup_task(bilingual["data"], lang_pairs="en-de,de-en")
    task.load_dataset("valid")
    dataset = task.dataset("valid")
    collate = LanguagePairDataset.collater

    def ids_out_of_step(self, samples, pad_to_length=None):  # a collate whose ids do not follow its rows
        batch = collate(self, samples, pad_to_length)
        batch["id"] = batch["id"].flip(0)
        return batch

    monkeypatch.setattr(LanguagePairDataset, "collater", ids_out_of_step)
    with pytest.raises(RuntimeError, match=r"collated row 0 does not hold example id \d+ \(batch ids \[.*\]\): its image "
                                           r"would go to another sentence"):
        dataset.collater([dataset[i] for i in range(len(dataset))])
