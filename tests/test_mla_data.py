"""MLA data: dictionaries that grow without moving old words, one language per batch, clear errors."""

import gzip

import pytest
import torch
from fairseq.data import Dictionary

from m3p_fairseq.data.mla_dataset import (
    MlaCaptionDataset,
    MlaDataError,
    MlaMultilingualDataset,
    build_nonnative_dictionary,
    check_dictionary_extends,
    load_caption_dataset,
    read_lines,
)
from test_mla_encoders import make_native


def test_extended_dictionary_keeps_old_indices(tmp_path):
    (tmp_path / "train.de").write_text("ein roter kreis\nein blauer kreis\n")
    (tmp_path / "train.cs").write_text("červený kruh\nmodrý kruh\n")
    old = build_nonnative_dictionary([tmp_path / "train.de"], tmp_path / "dict.de.txt")
    new = build_nonnative_dictionary([tmp_path / "train.cs"], tmp_path / "dict.decs.txt", extend=tmp_path / "dict.de.txt")
    assert new.symbols[: len(old)] == old.symbols
    assert old.symbols[old.nspecial:] == ["ein", "kreis", "blauer", "roter"]  # most frequent, then alphabetical
    assert new.symbols[len(old):] == ["kruh", "modrý", "červený"]
    assert Dictionary.load(str(tmp_path / "dict.decs.txt")).symbols == new.symbols
    check_dictionary_extends(old.symbols, new, "test")
    with pytest.raises(MlaDataError, match=r"test: the non-native dictionary does not extend .* \(index 4 was 'ein'\)"):
        check_dictionary_extends(old.symbols, build_nonnative_dictionary([tmp_path / "train.cs"], tmp_path / "x"), "test")


def test_lines_are_read_in_place_and_checked(tmp_path):
    with gzip.open(tmp_path / "test.de.gz", "wt", encoding="utf-8") as f:
        f.write("eins\nzwei\n")
    assert read_lines(tmp_path / "test.de") == ["eins", "zwei"]  # the .gz beside it
    (tmp_path / "bad.de").write_text("eins\n\ndrei\n")
    with pytest.raises(MlaDataError, match=r"bad\.de:2: empty line"):
        read_lines(tmp_path / "bad.de")
    with pytest.raises(MlaDataError, match="file not found"):
        read_lines(tmp_path / "missing.de")


def test_batches_hold_one_language(tmp_path):
    d = Dictionary()
    for w in "a b c".split():
        d.add_symbol(w)

    def captions(n):
        return [torch.tensor([d.bos(), d.index("a"), d.eos()])] * n

    datasets = {lang: MlaCaptionDataset(lang, captions(n), d, None, 1, None, None) for lang, n in (("de", 5), ("fr", 3))}
    joint = MlaMultilingualDataset(datasets)
    batches = joint.batch_by_size(joint.ordered_indices(), max_sentences=4)
    assert sorted(len(b) for b in batches) == [1, 3, 4]
    for batch in batches:
        langs = {joint.collater([joint[i] for i in batch])["net_input"]["lang"] for i in batch}
        assert len(langs) == 1
    with pytest.raises(MlaDataError, match=r"a batch mixes languages \['de', 'fr'\]"):
        joint.collater([joint[0], joint[7]])


def test_translation_pairs_must_align(tmp_path):
    native = make_native(tmp_path)
    (tmp_path / "train.de").write_text("a red circle\nsmall square\n")
    (tmp_path / "train.en").write_text("a red circle\n")
    with pytest.raises(MlaDataError, match=r"train\.en: 1 lines but .*train\.de has 2"):
        load_caption_dataset(tmp_path, "train", "de", native.dictionary, native, "en", None, 12)
    (tmp_path / "train.en").write_text("a red circle\nsmall square\n")
    dataset = load_caption_dataset(tmp_path, "train", "de", native.dictionary, native, "en", None, 12)
    batch = dataset.collater([dataset[0], dataset[1]])
    assert batch["net_input"]["native_tokens"].tolist()[1][:4] == native.tokenize(["small square"])[0].tolist()


def test_task_takes_the_native_model_from_the_built_model(tmp_path):
    """The task imports no model: fairseq builds the model (which loads --native-checkpoint) before
    any split, and the task tokenizes native captions with the model's native encoder."""
    from omegaconf import OmegaConf

    import m3p_fairseq.models.mla_model  # noqa: F401 (registers --arch mla_acquisition)
    from m3p_fairseq.tasks.mla_acquisition import MlaAcquisitionConfig, MlaAcquisitionTask

    native = make_native(tmp_path)
    (tmp_path / "train.de").write_text("ein roter kreis\nein blauer kreis\n")
    (tmp_path / "train.en").write_text("a red circle\na blue circle\n")
    (tmp_path / "train.image_ids").write_text("1.png\n2.png\n")
    build_nonnative_dictionary([tmp_path / "train.de"], tmp_path / "dict.nonnative.txt")
    task = MlaAcquisitionTask.setup_task(MlaAcquisitionConfig(data=str(tmp_path), langs="de",
                                                              native_checkpoint=str(tmp_path / "tiny-en-0.pt")))
    with pytest.raises(RuntimeError, match="no native model yet: build the model"):
        task.load_dataset("train")
    model = task.build_model(OmegaConf.create({"_name": "mla_acquisition"}))  # fairseq fills in the defaults
    assert task.native is model.native
    assert task.native.identity == native.identity  # the very checkpoint --native-checkpoint names
    task.load_dataset("train")
    assert len(task.dataset("train")) == 2
