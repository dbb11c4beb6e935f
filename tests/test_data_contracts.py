"""The conventions defined once: language tags and special symbols, the data directory's file
names, and the one line reader."""

import pytest

from m3p_fairseq.data.data_dir import DataDirectory
from m3p_fairseq.data.image_features import ImageFeatureError
from m3p_fairseq.data.languages import parse_lang_pairs, split_languages
from m3p_fairseq.data.text_lines import TextFileError, read_lines
from m3p_fairseq.data.vocabulary import MASK_SYMBOL, MASK_WORD, is_lang_tag, lang_tag, tag_lang, tagged_languages


def test_language_tags():
    assert lang_tag("zh_tw") == "__zh_tw__"
    assert tag_lang("__zh_tw__") == "zh_tw" and tag_lang("__en__") == "en"
    for symbol in ("__", "____", "_en_", "__en", "▁__en__", "<mask>", "__e n__"):
        assert not is_lang_tag(symbol), symbol
    assert tagged_languages(["<s>", "__fr__", "▁a", "__de__"]) == ["de", "fr"]
    assert (MASK_SYMBOL, MASK_WORD) == ("<mask>", "[MASK]")


def test_lang_pairs_syntax():
    assert parse_lang_pairs("en-de, de-en") == [("en", "de"), ("de", "en")]
    with pytest.raises(ValueError, match="lists a direction twice"):
        parse_lang_pairs("en-de,en-de")


def test_language_list_syntax():
    assert split_languages(" en, de,,fr ") == ["en", "de", "fr"]
    assert split_languages("") == [] and split_languages(None) == []
    with pytest.raises(ValueError, match="--caption-langs lists a language twice: en,de,en"):
        split_languages("en,de,en", "--caption-langs")


def test_file_names(tmp_path):
    data = DataDirectory(tmp_path)
    assert (data.dictionary.name, data.spm_model.name) == ("dict.txt", "spm.model")
    assert data.stems("train", "en", "de") == ["train.en-de", "train.de-en", "train"]
    assert data.binarized_files("train.en-de", "de") == (tmp_path / "train.en-de.de.bin", tmp_path / "train.en-de.de.idx")
    assert DataDirectory.manifest(tmp_path / "train.de") == tmp_path / "train.de.manifest.json"
    assert DataDirectory.of_task_data(f"{tmp_path}/a:{tmp_path}/b", epoch=2).path == tmp_path / "b"
    assert data.image_ids("test_degraded") == tmp_path / "test_degraded.image_ids"
    assert data.shared_features == tmp_path / "image_features.h5"
    assert DataDirectory.bad_images_report(tmp_path / "f.h5") == tmp_path / "f.h5.bad_images.tsv"


def test_text_of_a_direction_comes_from_one_stem(tmp_path):
    data = DataDirectory(tmp_path)
    (tmp_path / "train.en").write_text("x\n")
    (tmp_path / "train.de-en.de").write_text("y\n")  # only one side of the pair file
    with pytest.raises(FileNotFoundError, match=r"no raw text for split 'train' \(en-de\): expected .*train\.en-de\.\{en,de\}"):
        data.raw_stem("train", "en", "de")
    (tmp_path / "train.de").write_text("z\n")
    assert data.raw_stem("train", "en", "de") == "train"  # not train.de-en.de beside train.en
    (tmp_path / "train.de-en.en").write_text("w\n")
    assert data.raw_stem("train", "en", "de") == "train.de-en"  # the other direction's pair serves too


def test_image_id_list_and_feature_file_lookup(tmp_path):
    data = DataDirectory(tmp_path)
    assert data.image_id_list("valid.en-de") is None and data.feature_file("valid") is None
    (tmp_path / "valid.image_ids").write_text("a\n")
    assert data.image_id_list("valid.en-de") == tmp_path / "valid.image_ids"
    (tmp_path / "valid.en-de.image_ids").write_text("b\n")
    assert data.image_id_list("valid.en-de") == tmp_path / "valid.en-de.image_ids"
    (tmp_path / "image_features.h5").write_bytes(b"")
    assert data.feature_file("valid") == tmp_path / "image_features.h5"
    (tmp_path / "valid.image_features.h5").write_bytes(b"")
    assert data.feature_file("valid") == tmp_path / "valid.image_features.h5"
    assert data.feature_file("valid", str(tmp_path / "image_features.h5")) == tmp_path / "image_features.h5"
    with pytest.raises(ImageFeatureError, match=r"--image-features \S*nope\.h5: file not found"):
        data.feature_file("valid", str(tmp_path / "nope.h5"))


def test_line_reader(tmp_path, caplog):
    path = tmp_path / "text"
    path.write_bytes(b"one\r\ntwo\rhalf\nthree")  # CRLF, a lone CR, no final newline
    assert read_lines(path) == ["one", "two half", "three"]
    assert "inside line(s) 2, read as a space" in caplog.text
    path.write_bytes(b"")
    assert read_lines(path) == []
    path.write_bytes(b"\n\n")
    assert read_lines(path) == ["", ""]
    path.write_bytes(b"fine\nbad \xff byte\n")
    with pytest.raises(TextFileError, match=r"text:2: not UTF-8"):
        read_lines(path)


def test_line_writer_round_trips_refuses_line_breaks_and_reads_gzip(tmp_path):
    import gzip

    from m3p_fairseq.data.text_lines import write_lines

    path = tmp_path / "sub" / "test.de"
    write_lines(path, ["Ein Hund.", "", "Zwei Katzen."])
    assert path.read_bytes() == "Ein Hund.\n\nZwei Katzen.\n".encode()
    assert read_lines(path) == ["Ein Hund.", "", "Zwei Katzen."]
    for bad in ("a\nb", "a\rb"):
        with pytest.raises(ValueError, match=r"test.de: sentence 2 contains a line break"):
            write_lines(path, ["ok", bad])
        assert read_lines(path) == ["Ein Hund.", "", "Zwei Katzen."]  # the old file is kept whole
    assert [p.name for p in path.parent.iterdir()] == ["test.de"]  # no temporary left behind
    (tmp_path / "ids.gz").write_bytes(gzip.compress(b"a.jpg\r\nb.jpg\n"))
    assert read_lines(tmp_path / "ids.gz") == ["a.jpg", "b.jpg"]


def test_write_if_changed_leaves_an_equal_file_alone(tmp_path):
    import os

    from m3p_fairseq.atomic_io import write_if_changed

    path = tmp_path / "a.png"
    assert write_if_changed(path, b"\x89PNG one") is True
    os.utime(path, (1_000_000, 1_000_000))
    assert write_if_changed(path, b"\x89PNG one") is False
    assert path.stat().st_mtime == 1_000_000
    assert write_if_changed(path, b"\x89PNG two") is True
    assert path.read_bytes() == b"\x89PNG two" and sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]
