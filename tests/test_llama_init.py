"""--pretrained-llama: a tiny random Llama-style checkpoint (safetensors shards, config.json,
tokenizer.model) written here lands in the decoder-only model, name for name and row by piece."""

import json

import pytest
import sentencepiece as spm
import torch
from safetensors.torch import save_file

from helpers import setup_task
from m3p_fairseq.models.llama_checkpoint import LlamaCheckpointError

CONFIG = {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "rope_theta": 500000.0, "tie_word_embeddings": False,
          "hidden_act": "silu", "model_type": "llama"}


def llama_tensors(vocab_size, config=CONFIG, seed=0):
    generator = torch.Generator().manual_seed(seed)
    width, ffn = config["hidden_size"], config["intermediate_size"]
    kv_width = width // config["num_attention_heads"] * config["num_key_value_heads"]
    shapes = {"model.embed_tokens.weight": (vocab_size, width), "model.norm.weight": (width,),
              "lm_head.weight": (vocab_size, width)}
    for i in range(config["num_hidden_layers"]):
        layer = f"model.layers.{i}."
        shapes.update({layer + "self_attn.q_proj.weight": (width, width), layer + "self_attn.k_proj.weight": (kv_width, width),
                       layer + "self_attn.v_proj.weight": (kv_width, width), layer + "self_attn.o_proj.weight": (width, width),
                       layer + "mlp.gate_proj.weight": (ffn, width), layer + "mlp.up_proj.weight": (ffn, width),
                       layer + "mlp.down_proj.weight": (width, ffn), layer + "input_layernorm.weight": (width,),
                       layer + "post_attention_layernorm.weight": (width,)})
    return {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}


def write_checkpoint(directory, tensors, tokenizer):
    directory.mkdir()
    names = sorted(tensors)
    half = len(names) // 2  # two shards, as large checkpoints come
    save_file({n: tensors[n] for n in names[:half]}, str(directory / "model-00001-of-00002.safetensors"))
    save_file({n: tensors[n] for n in names[half:]}, str(directory / "model-00002-of-00002.safetensors"))
    (directory / "config.json").write_text(json.dumps(CONFIG))
    (directory / "tokenizer.model").write_bytes(tokenizer.read_bytes())
    return directory


def build(data_dir, llama_dir):
    task, cfg = setup_task(data_dir, "--pretrained-llama", llama_dir, "--source-lang", "en", "--target-lang", "de",
                           arch="m3p_decoder_only_tiny")
    return task, cfg, task.build_model(cfg.model)


def test_every_tensor_lands_and_embedding_rows_match_by_piece(data_dir, tmp_path):
    sp = spm.SentencePieceProcessor(model_file=str(data_dir / "spm.model"))
    tensors = llama_tensors(sp.get_piece_size())
    llama_dir = write_checkpoint(tmp_path / "llama", tensors, data_dir / "spm.model")
    task, cfg, model = build(data_dir, llama_dir)
    stack = model.decoder.stack
    assert (cfg.model.decoder_embed_dim, cfg.model.decoder_layers, cfg.model.decoder_kv_heads) == (32, 2, 2)
    for name, parameter in stack.named_parameters():
        if name not in ("embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(parameter, tensors["model." + name if name != "lm_head.weight" else name]), name
    dictionary = task.source_dictionary
    matched = 0
    for index, symbol in enumerate(dictionary.symbols):
        piece = sp.piece_to_id(symbol)
        if sp.id_to_piece(piece) == symbol and not sp.is_unknown(piece):
            assert torch.equal(stack.embed_tokens.weight[index], tensors["model.embed_tokens.weight"][piece])
            assert torch.equal(stack.lm_head.weight[index], tensors["lm_head.weight"][piece])
            matched += 1
    assert matched > len(dictionary) // 2
    # the language tags are not pieces of the tokenizer: they keep their own rows
    tag = dictionary.index("__de__")
    assert not any(torch.equal(stack.embed_tokens.weight[tag], row) for row in tensors["model.embed_tokens.weight"])
    assert cfg.model.pretrained_llama_loaded  # saved with the config: generation needs no Llama files


def test_the_prompt_starts_with_llamas_beginning_of_sequence_row(data_dir, tmp_path):
    """A tokenizer with Llama's specials (<unk> 0, <s> 1, </s> 2): the prompt's first token is the
    dictionary's <s>, and its embedding row is the checkpoint's row 1."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(["a man rides a red bike", "Please translate the following sentence"] * 30))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "llama_sp"), vocab_size=60,
                                   hard_vocab_limit=False)
    tokenizer = tmp_path / "llama_sp.model"
    assert spm.SentencePieceProcessor(model_file=str(tokenizer)).id_to_piece(1) == "<s>"
    tensors = llama_tensors(60)
    task, _, model = build(data_dir, write_checkpoint(tmp_path / "llama", tensors, tokenizer))
    bos = task.source_dictionary.bos()
    assert model.encoder.prompt.layout(task.lang_tag_index("en"), task.lang_tag_index("de"))[0].tolist() == [bos]
    assert torch.equal(model.decoder.stack.embed_tokens.weight[bos], tensors["model.embed_tokens.weight"][1])


def test_a_missing_or_misshaped_tensor_is_listed_with_shapes(data_dir, tmp_path):
    sp = spm.SentencePieceProcessor(model_file=str(data_dir / "spm.model"))
    tensors = llama_tensors(sp.get_piece_size())
    del tensors["model.layers.1.mlp.up_proj.weight"]
    tensors["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(32, 32)
    llama_dir = write_checkpoint(tmp_path / "llama", tensors, data_dir / "spm.model")
    with pytest.raises(LlamaCheckpointError) as error:
        build(data_dir, llama_dir)
    message = str(error.value)
    assert "missing layers.1.mlp.up_proj.weight: expected shape (48, 32)" in message
    assert "layers.0.self_attn.k_proj.weight: shape (32, 32) in the checkpoint, (16, 32) in the model" in message


def test_an_incomplete_directory_says_what_is_missing(data_dir, tmp_path):
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps(CONFIG))
    with pytest.raises(LlamaCheckpointError, match=r"missing \*\.safetensors, tokenizer\.model"):
        build(data_dir, tmp_path / "llama")
