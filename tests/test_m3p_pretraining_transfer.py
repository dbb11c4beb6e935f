"""Pre-training weights carried into a multimodal_translation model
(m3p_fairseq/models/m3p_pretraining_transfer.py): the carried layers compute what they computed
in the pre-training model, and mismatches are refused."""

import pytest
import torch
from fairseq import tasks

from helpers import parse_train_args, setup_task
from m3p_fairseq.models.m3p_pretraining_transfer import load_pretraining_into_translation

SIZES = ["--dropout", "0", "--attention-dropout", "0", "--activation-dropout", "0"]


def pretraining_model(data):
    cfg = parse_train_args([data, "--task", "m3p_pretraining", "--arch", "m3p_pretraining_tiny", "--embed-dim", "128",
                            "--ffn-embed-dim", "256", "--attention-heads", "4", "--generation-layers", "3",
                            "--dropout", "0"])
    return tasks.setup_task(cfg.task).build_model(cfg.model).eval()


def translation_model(data, *extra):
    task, cfg = setup_task(data, *SIZES, *extra)
    return task.build_model(cfg.model).eval()


def test_carried_layers_compute_the_same(data_dir):
    source, target = pretraining_model(data_dir), translation_model(data_dir, "--activation-fn", "gelu")
    copied, kept = load_pretraining_into_translation(source, target)
    assert "encoder.text_encoder.layers.2.self_attn.k_proj.weight" in copied
    assert "decoder.layers.0.encoder_attn.v_proj.bias" in copied
    assert any(name.startswith("encoder.fusion") or "contrastive" in name for name in kept)
    torch.manual_seed(0)
    x, memory = torch.randn(2, 5, 128), torch.randn(2, 4, 128)  # [B, T, C]
    padding = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    with torch.no_grad():
        for i in range(3):
            expected = source.generation_encoder.layers[i](x, src_key_padding_mask=padding)
            got = target.encoder.text_encoder.layers[i](x.transpose(0, 1), padding).transpose(0, 1)
            assert torch.allclose(got[~padding], expected[~padding], atol=1e-5)
        causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
        expected = source.generation_decoder.layers[1](x, memory, tgt_mask=causal)
        got, _, _ = target.decoder.layers[1](x.transpose(0, 1), memory.transpose(0, 1), None,
                                             self_attn_mask=torch.zeros(5, 5).masked_fill(causal, float("-inf")))
        assert torch.allclose(got.transpose(0, 1), expected, atol=1e-5)
    assert torch.equal(target.encoder.text_encoder.embed_tokens.weight, source.embeddings.tokens.weight)


def test_mismatches_are_refused(data_dir):
    source = pretraining_model(data_dir)
    with pytest.raises(ValueError, match="train it with --activation-fn gelu"):
        load_pretraining_into_translation(source, translation_model(data_dir))
    with pytest.raises(ValueError, match="layer counts differ: the translation model has 2 encoder"):
        load_pretraining_into_translation(source, translation_model(data_dir, "--activation-fn", "gelu",
                                                                    "--encoder-layers", "2"))


def test_pretrain_then_fine_tune_translation_through_the_clis(data_dir, tmp_path):
    import os
    import subprocess
    import sys

    from helpers import REPO

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}

    def run(*command):
        result = subprocess.run([str(c) for c in command], cwd=REPO, capture_output=True, text=True, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout + result.stderr

    common = ["--cpu", "--num-workers", "0", "--no-progress-bar", "--optimizer", "adam", "--lr", "1e-3",
              "--disable-validation"]
    run("fairseq-train", data_dir, "--user-dir", REPO / "m3p_fairseq", "--task", "m3p_pretraining", "--arch",
        "m3p_pretraining_tiny", "--criterion", "m3p_pretraining", "--batch-size", "4", "--updates-per-epoch", "2",
        "--max-update", "2", "--objectives", "xdae,ic", "--save-dir", tmp_path / "pre", *common)
    translation = [data_dir, "--user-dir", REPO / "m3p_fairseq", "--task", "multimodal_translation", "--lang-pairs",
                   "en-de", "--arch", "m3p_transformer_tiny", "--activation-fn", "gelu", "--encoder-embed-dim", "32",
                   "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64",
                   "--encoder-attention-heads", "2", "--decoder-attention-heads", "2", "--encoder-layers", "1",
                   "--decoder-layers", "1"]
    out = run(sys.executable, REPO / "scripts" / "pretraining_to_translation.py", tmp_path / "pre" / "checkpoint_last.pt",
              tmp_path / "init.pt", *translation)
    assert "tensors carried over" in out
    pre = torch.load(tmp_path / "pre" / "checkpoint_last.pt", weights_only=False)["model"]
    init = torch.load(tmp_path / "init.pt", weights_only=False)["model"]
    q, k, v = pre["generation_encoder.layers.0.self_attn.in_proj_weight"].chunk(3)
    assert torch.equal(init["encoder.text_encoder.layers.0.self_attn.k_proj.weight"], k)
    assert torch.equal(init["decoder.layers.0.fc2.weight"], pre["generation_decoder.layers.0.linear2.weight"])
    log = run("fairseq-train", *translation, "--finetune-from-model", tmp_path / "init.pt", "--max-tokens", "500",
              "--max-update", "1", "--criterion", "m3p_loss", "--save-dir", tmp_path / "ft", "--log-interval", "1",
              *common)
    assert "Loaded checkpoint" in log and "num_updates=1" in log
