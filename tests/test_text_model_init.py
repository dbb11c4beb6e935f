"""--init-from-text-model: an m3P model whose text side starts from a text-only checkpoint."""

import pytest
import torch

from helpers import setup_task
from m3p_fairseq.models.mdropnet import TEXT_ONLY
from m3p_fairseq.models.text_model_init import TextModelInitError


def _text_only_checkpoint(data_dir, path, *sizes):
    """A text-only model with weights unlike a fresh init (so a copy shows), saved as fairseq does."""
    task, cfg = setup_task(data_dir, "--fusion", "none", *sizes)
    torch.manual_seed(1)
    model = task.build_model(cfg.model)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    torch.save({"model": model.state_dict(), "cfg": None}, path)
    return task, model


def _m3p_from(data_dir, path, *extra):
    task, cfg = setup_task(data_dir, "--fusion", "cvlm", "--init-from-text-model", path, "--dropout", "0", *extra)
    return task, cfg, task.build_model(cfg.model)


def test_the_text_side_is_copied_and_its_text_path_translates_as_the_text_only_model(data_dir, tmp_path):
    path = tmp_path / "text-only.pt"
    _, text_only = _text_only_checkpoint(data_dir, path, "--dropout", "0")
    task, cfg, model = _m3p_from(data_dir, path)
    copied = text_only.state_dict()
    for name, value in model.state_dict().items():
        if name in copied:
            assert torch.equal(value, copied[name]), name
    fusion = model.encoder.fusion.attention.out_proj
    assert fusion.weight.abs().sum() == 0 and fusion.bias.abs().sum() == 0  # the image side starts fresh
    assert cfg.model.text_model_loaded is True  # saved with the checkpoint: a rebuild does not read the file

    task.load_dataset("valid")
    dataset = task.dataset("valid")
    net_input = dataset.collater([dataset[i] for i in range(5)])["net_input"]
    text_only.eval()
    model.eval()
    with torch.no_grad():
        expected, _ = text_only(**net_input)
        text_path, _ = model(**net_input, modalities=torch.full((5,), TEXT_ONLY))
    torch.testing.assert_close(text_path, expected, rtol=0, atol=1e-6)


def test_a_rebuilt_model_does_not_read_the_checkpoint_again(data_dir, tmp_path):
    path = tmp_path / "text-only.pt"
    _text_only_checkpoint(data_dir, path)
    task, cfg, _ = _m3p_from(data_dir, path)
    path.unlink()
    task.build_model(cfg.model)  # as fairseq-generate rebuilds from the checkpoint's config


def test_a_missing_file_is_named(data_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--init-from-text-model .*nowhere\.pt: no such file"):
        _m3p_from(data_dir, tmp_path / "nowhere.pt")


def test_another_size_is_refused_with_both_shapes(data_dir, tmp_path):
    path = tmp_path / "wide.pt"
    _text_only_checkpoint(data_dir, path, "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64")
    with pytest.raises(TextModelInitError, match=r"other shapes: decoder\.layers\.0\.fc1\.bias: checkpoint "
                                                 r"\(64,\), model \(256,\)"):
        _m3p_from(data_dir, path)


def test_a_checkpoint_of_another_model_lists_what_does_not_fit(data_dir, tmp_path):
    path = tmp_path / "other.pt"
    _, text_only = _text_only_checkpoint(data_dir, path)
    weights = text_only.state_dict()
    weights["encoder.layers.0.fc1.weight"] = weights.pop("encoder.text_encoder.layers.0.fc1.weight")
    torch.save({"model": weights}, path)
    with pytest.raises(TextModelInitError) as error:
        _m3p_from(data_dir, path)
    message = str(error.value)
    assert "not in this model: encoder.layers.0.fc1.weight" in message
    assert "missing from the checkpoint: encoder.text_encoder.layers.0.fc1.weight" in message


def test_a_file_that_is_no_checkpoint_is_named(data_dir, tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(TextModelInitError, match=r"weights\.pt: not a fairseq checkpoint \(no 'model' state dict"):
        _m3p_from(data_dir, path)
