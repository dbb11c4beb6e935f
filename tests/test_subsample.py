"""preprocess.subsample (m3p-subsample) on bad input: a message naming what is wrong and exit
code 2, never a traceback; nothing is left behind."""

import subprocess
import sys

import pytest

from helpers import REPO
from preprocess.subsample import main


def fails_with(capsys, argv, message):
    with pytest.raises(SystemExit) as stopped:
        main([str(a) for a in argv])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert message in err, err
    return err


def test_a_missing_data_directory_is_a_message_not_a_traceback(tmp_path):
    # the console script end to end: exit code 2, one usage line and the message
    result = subprocess.run([sys.executable, "-m", "preprocess.subsample", "--data", tmp_path / "absent",
                             "--output", tmp_path / "out", "--fraction", "0.5"], cwd=REPO, capture_output=True,
                            text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"error: --data {tmp_path / 'absent'}: no such directory" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fraction", ["0", "1.5", "-0.1"])
def test_a_fraction_out_of_range(data_dir, tmp_path, capsys, fraction):
    fails_with(capsys, ["--data", data_dir, "--output", tmp_path / "out", "--fraction", fraction],
               f"--fraction must be in (0, 1], got {float(fraction)}")
    assert not (tmp_path / "out").exists()


def test_a_folder_without_binarized_training_data(tmp_path, capsys):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "train.en").write_text("a sentence\n")
    fails_with(capsys, ["--data", tmp_path / "raw", "--output", tmp_path / "out", "--fraction", "0.5"],
               f"{tmp_path / 'raw'}: no binarized train.*.bin/.idx files")


def test_a_missing_dictionary(data_copy, tmp_path, capsys):
    (data_copy / "dict.txt").unlink()
    fails_with(capsys, ["--data", data_copy, "--output", tmp_path / "out", "--fraction", "0.5"],
               f"{data_copy / 'dict.txt'}: missing")


def test_sides_of_different_lengths(data_copy, tmp_path, capsys):
    # train.fr replaced by the valid split's French side: fewer sentences than train.en
    for suffix in (".bin", ".idx"):
        (data_copy / f"valid.fr{suffix}").replace(data_copy / f"train.fr{suffix}")
    err = fails_with(capsys, ["--data", data_copy, "--output", tmp_path / "out", "--fraction", "0.5"],
                     "train: sides are not aligned, sentence counts")
    assert "train.en.bin=60" in err and "train.fr.bin=12" in err
    assert list(tmp_path.glob("*out*")) == []  # the half-built output was removed


def test_a_damaged_index(data_copy, tmp_path, capsys):
    (data_copy / "train.de.idx").write_bytes(b"not an index")
    fails_with(capsys, ["--data", data_copy, "--output", tmp_path / "out", "--fraction", "0.5"],
               f"{data_copy / 'train.de'}.idx/.bin: not a readable fairseq mmap dataset")


def test_a_truncated_data_file(data_copy, tmp_path, capsys):
    data = (data_copy / "train.de.bin").read_bytes()
    (data_copy / "train.de.bin").write_bytes(data[: len(data) // 3])
    fails_with(capsys, ["--data", data_copy, "--output", tmp_path / "out", "--fraction", "1"],
               f"{data_copy / 'train.de'}.bin: sentence")


def test_an_id_list_of_another_length(data_copy, tmp_path, capsys):
    ids = (data_copy / "train.image_ids").read_text().splitlines()
    (data_copy / "train.image_ids").write_text("\n".join(ids[:-1]) + "\n")
    fails_with(capsys, ["--data", data_copy, "--output", tmp_path / "out", "--fraction", "0.5"],
               f"{data_copy / 'train.image_ids'} has 59 ids but train has 60 sentences")
