"""--pretrained-text-encoder: an XLM-R-layout checkpoint (here a tiny random RoBERTa built with
fairseq's own classes) copied into the text encoder and the shared embeddings, data binarized
with its vocabulary (binarize --dict --spm-model), and checkpoints that reload without it."""

import argparse
import re
import shutil
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from fairseq import checkpoint_utils
from fairseq.data import Dictionary
from fairseq.models.roberta import RobertaModel
from fairseq.models.roberta import base_architecture as roberta_base_architecture
from fairseq.trainer import Trainer

from helpers import PAIRS, parse_train_args, setup_task, write_random_features
from m3p_fairseq.data.image_features import read_image_ids
from m3p_fairseq.models.pretrained_text_encoder import PretrainedTextEncoderError
from preprocess.binarize import binarize

TINY = {"layers": 2, "embed_dim": 32, "ffn_dim": 64, "heads": 2, "max_positions": 64}
# our arch, shrunk on the command line to the tiny RoBERTa's sizes
TINY_OPTIONS = ["--encoder-layers", TINY["layers"], "--encoder-embed-dim", TINY["embed_dim"],
                "--encoder-ffn-embed-dim", TINY["ffn_dim"], "--encoder-attention-heads", TINY["heads"],
                "--max-source-positions", TINY["max_positions"], "--decoder-layers", 1]
ARCH = "m3p_transformer_xlmr_base"
TAGS = ["__de__", "__en__", "__fr__"]


# ---- a tiny XLM-R in fairseq's xlmr.base layout ---------------------------------------------
def train_tiny_sentencepiece(raw: Path, out_dir: Path) -> spm.SentencePieceProcessor:
    lines = [line for lang in ("en", "de", "fr") for line in (raw / f"train.{lang}").read_text().splitlines()]
    (out_dir / "corpus.txt").write_text("\n".join(lines) + "\n")
    spm.SentencePieceTrainer.train(input=str(out_dir / "corpus.txt"), model_prefix=str(out_dir / "sentencepiece.bpe"),
                                   vocab_size=120, hard_vocab_limit=False, minloglevel=2, num_threads=1)
    return spm.SentencePieceProcessor(model_file=str(out_dir / "sentencepiece.bpe.model"))


def write_xlmr_style_dict(sp: spm.SentencePieceProcessor, path: Path) -> None:
    """Like XLM-R's dict.txt: the SentencePiece pieces, without fairseq's special symbols."""
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())
              if not (sp.is_control(i) or sp.is_unknown(i))]
    path.write_text("".join(f"{piece} {1000 - i}\n" for i, piece in enumerate(pieces)), encoding="utf-8")


def load_xlmr_dictionary(path: Path) -> Dictionary:
    dictionary = Dictionary.load(str(path))
    dictionary.add_symbol("<mask>")  # as fairseq's masked_lm task does
    return dictionary


def build_tiny_roberta(dictionary: Dictionary, seed: int = 0) -> RobertaModel:
    class Task:
        source_dictionary = target_dictionary = dictionary

    args = argparse.Namespace(arch="roberta", encoder_layers=TINY["layers"], encoder_embed_dim=TINY["embed_dim"],
                              encoder_ffn_embed_dim=TINY["ffn_dim"], encoder_attention_heads=TINY["heads"],
                              max_positions=TINY["max_positions"])
    torch.manual_seed(seed)
    model = RobertaModel.build_model(args, Task())
    with torch.no_grad():  # as if trained: no layer norm left at 1/0, nothing our init could match
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return model.eval()


def to_old_layout(state_dict):
    """The names of 2019 checkpoints (xlmr.base): ``decoder.`` prefix, ``emb_layer_norm`` and
    fused ``in_proj_weight/bias``."""
    old = {}
    for key, tensor in state_dict.items():
        key = re.sub(r"^encoder\.", "decoder.", key).replace(".layernorm_embedding.", ".emb_layer_norm.")
        fused = re.match(r"^(.*\.self_attn\.)[qkv]_proj\.(weight|bias)$", key)
        if fused:
            prefix, kind = fused.groups()
            old[f"{prefix}in_proj_{kind}"] = torch.cat([state_dict[k.replace("decoder.", "encoder.", 1)]
                                                        for k in (f"{prefix}{p}_proj.{kind}" for p in "qkv")])
        else:
            old[key] = tensor
    return old


@pytest.fixture(scope="module")
def xlmr(tmp_path_factory, raw_corpus):
    """Directories ``new`` and ``old`` (same weights, current and 2019 key names), the RoBERTa
    model, its dictionary and SentencePiece model."""
    root = tmp_path_factory.mktemp("xlmr")
    new, old = root / "new", root / "old"
    new.mkdir()
    sp = train_tiny_sentencepiece(raw_corpus, new)
    write_xlmr_style_dict(sp, new / "dict.txt")
    dictionary = load_xlmr_dictionary(new / "dict.txt")
    roberta = build_tiny_roberta(dictionary)
    torch.save({"args": roberta.args, "model": roberta.state_dict()}, new / "model.pt")
    shutil.copytree(new, old)
    old_state = to_old_layout(roberta.state_dict())
    assert any(".in_proj_weight" in k for k in old_state) and any(".emb_layer_norm." in k for k in old_state)
    torch.save({"args": roberta.args, "model": old_state}, old / "model.pt")
    return {"new": new, "old": old, "roberta": roberta, "dict": dictionary, "sp": sp}


@pytest.fixture(scope="module")
def xlmr_data(tmp_path_factory, raw_corpus, xlmr):
    data = tmp_path_factory.mktemp("data-xlmr")
    binarize(raw_corpus, data, PAIRS, ["train", "valid", "test"],
             spm_model=xlmr["new"] / "sentencepiece.bpe.model", dict_file=xlmr["new"] / "dict.txt")
    ids = [i for split in ("train", "valid", "test") for i in read_image_ids(raw_corpus / f"{split}.image_ids")]
    write_random_features(data / "image_features.h5", ids)
    return data


def build(data, *extra, seed=0):
    task, cfg = setup_task(data, *TINY_OPTIONS, *extra, arch=ARCH)
    torch.manual_seed(seed)
    return task, cfg, task.build_model(cfg.model)


def encoder_weights(roberta):
    prefix = "encoder.sentence_encoder."
    return {k[len(prefix):]: v for k, v in roberta.state_dict().items()
            if k.startswith(prefix) and not k.endswith("version")}


# ---- the architecture ------------------------------------------------------------------------
def test_arch_has_xlmr_base_text_encoder_flags(tmp_path):
    ours = parse_train_args([tmp_path, "--task", "multimodal_translation", "--lang-pairs", "en-de",
                             "--arch", ARCH]).model
    roberta = argparse.Namespace()
    roberta_base_architecture(roberta)  # fairseq's roberta / xlmr base
    for flag in ("encoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim", "encoder_attention_heads",
                 "encoder_learned_pos", "layernorm_embedding", "no_scale_embedding", "activation_fn",
                 "encoder_normalize_before", "max_source_positions", "dropout", "attention_dropout",
                 "activation_dropout", "no_token_positional_embeddings", "adaptive_input"):
        assert getattr(ours, flag) == getattr(roberta, flag), flag
    assert ours.max_source_positions == 512  # + padding offset: xlmr.base's 514 position rows
    assert (ours.decoder_layers, ours.decoder_embed_dim, ours.share_all_embeddings) == (12, 768, True)


def test_arch_takes_sizes_from_the_command_line(tmp_path):
    ours = parse_train_args([tmp_path, "--task", "multimodal_translation", "--lang-pairs", "en-de",
                             "--arch", ARCH, *TINY_OPTIONS]).model
    assert (ours.encoder_layers, ours.encoder_embed_dim, ours.encoder_ffn_embed_dim) == (2, 32, 64)
    assert (ours.decoder_embed_dim, ours.decoder_layers, ours.max_source_positions) == (32, 1, 64)


# ---- data with XLM-R's vocabulary ------------------------------------------------------------
def test_binarize_uses_the_given_dictionary_and_sentencepiece(xlmr, xlmr_data, raw_corpus):
    given = (xlmr["new"] / "dict.txt").read_text(encoding="utf-8")
    assert (xlmr_data / "dict.txt").read_text(encoding="utf-8") == given + "".join(f"{t} 1\n" for t in TAGS)
    task, _ = setup_task(xlmr_data)
    task.load_dataset("valid")
    example = task.dataset("valid").datasets[0][0]  # en-de
    sentence = (raw_corpus / "valid.en").read_text().splitlines()[0]
    expected = xlmr["dict"].encode_line(" ".join(xlmr["sp"].encode(sentence, out_type=str)), add_if_not_exist=False)
    assert example["source"][0].item() == task.src_dict.index("__de__")
    assert example["source"][1:].tolist() == expected.tolist()  # XLM-R's indices for the same pieces
    assert task.src_dict.unk() not in example["source"].tolist()


def test_binarize_keeps_or_refuses_an_existing_dictionary(xlmr, xlmr_data, raw_corpus, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(xlmr_data, data)
    spm_model, dict_file = xlmr["new"] / "sentencepiece.bpe.model", xlmr["new"] / "dict.txt"
    assert binarize(raw_corpus, data, PAIRS, ["train", "valid", "test"], spm_model=spm_model,
                    dict_file=dict_file) == {}  # re-run: everything is there already
    other = tmp_path / "other_dict.txt"
    other.write_text("".join(dict_file.read_text(encoding="utf-8").splitlines(keepends=True)[:-1]), encoding="utf-8")
    with pytest.raises(ValueError, match=r"dict\.txt exists but is not --dict .*other_dict\.txt.*--overwrite"):
        binarize(raw_corpus, data, PAIRS, ["train"], spm_model=spm_model, dict_file=other)
    with pytest.raises(ValueError, match=r"--dict needs --spm-model"):
        binarize(raw_corpus, data, PAIRS, ["train"], dict_file=dict_file)


# ---- the weights -----------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["new", "old"])
def test_weights_copied_into_text_encoder_and_shared_embeddings(xlmr, xlmr_data, layout):
    _, _, reference = build(xlmr_data)  # same seed, same init, no XLM-R
    task, cfg, model = build(xlmr_data, "--pretrained-text-encoder", xlmr[layout])
    text_encoder = model.encoder.text_encoder
    ours = text_encoder.state_dict()
    roberta = encoder_weights(xlmr["roberta"])
    for name in [k for k in roberta if k != "embed_tokens.weight"]:  # layers, positions, layernorm_embedding
        assert torch.equal(ours[name], roberta[name]), name
    assert ours["embed_positions.weight"].shape == (TINY["max_positions"] + 2, TINY["embed_dim"])

    embeddings, pretrained = text_encoder.embed_tokens.weight, roberta["embed_tokens.weight"]
    assert model.decoder.embed_tokens.weight is embeddings  # one shared matrix
    assert task.src_dict.index("<mask>") != xlmr["dict"].index("<mask>")  # so rows must go by symbol
    pieces = xlmr["dict"].symbols[4:9] + xlmr["dict"].symbols[-6:-1]  # first and last (before <mask>)
    for symbol in ["<s>", "<pad>", "</s>", "<unk>", "<mask>", *pieces]:
        assert torch.equal(embeddings[task.src_dict.index(symbol)], pretrained[xlmr["dict"].index(symbol)]), symbol
    for tag in TAGS:  # no XLM-R row: kept their initialisation
        index = task.src_dict.index(tag)
        assert torch.equal(embeddings[index], reference.encoder.text_encoder.embed_tokens.weight[index]), tag
    assert len(task.src_dict) == len(xlmr["dict"]) + len(TAGS)
    # the decoder and the image side are not touched
    decoder_weights = reference.decoder.state_dict()
    for name, tensor in model.decoder.state_dict().items():
        if "embed_tokens" not in name and "output_projection" not in name:
            assert torch.equal(tensor, decoder_weights[name]), name
    assert getattr(cfg.model, "pretrained_text_encoder_loaded") is True


@pytest.mark.parametrize("layout", ["new", "old"])
def test_text_encoder_computes_what_roberta_computes(xlmr, xlmr_data, layout):
    task, _, model = build(xlmr_data, "--pretrained-text-encoder", xlmr[layout])
    model.eval()
    sentences = ["A small red circle.", "Zwei blaue Dreiecke und ein grünes Quadrat neben einem Kreis."]
    rows = [xlmr["dict"].encode_line(" ".join(["<s>"] + xlmr["sp"].encode(s, out_type=str)), add_if_not_exist=False)
            for s in sentences]
    for row in rows:  # the same indices in our dictionary
        assert [task.src_dict.index(xlmr["dict"][i]) for i in row] == row.tolist()
    tokens = torch.full((2, max(len(r) for r in rows)), xlmr["dict"].pad(), dtype=torch.long)
    for i, row in enumerate(rows):  # padded on the right, as RoBERTa's batches are
        tokens[i, :len(row)] = row
    lengths = torch.tensor([len(r) for r in rows])
    with torch.no_grad():
        expected, _ = xlmr["roberta"].encoder.extract_features(tokens)
        ours = model.encoder.text_encoder(tokens, src_lengths=lengths)["encoder_out"][0].transpose(0, 1)
    mask = tokens.ne(xlmr["dict"].pad())
    assert torch.allclose(ours[mask], expected[mask], atol=1e-5)
    assert ours[mask].std() > 0.1  # not vacuous


# ---- errors ----------------------------------------------------------------------------------
def test_another_size_is_refused_with_both_shapes(xlmr, xlmr_data):
    with pytest.raises(PretrainedTextEncoderError) as error:
        build(xlmr_data, "--pretrained-text-encoder", xlmr["new"], "--encoder-ffn-embed-dim", 48)
    message = str(error.value)
    assert "layers.0.fc1.weight: checkpoint [64, 32], model [48, 32]" in message
    assert "layers.1.fc2.weight: checkpoint [32, 64], model [32, 48]" in message
    with pytest.raises(PretrainedTextEncoderError,
                       match=r"embed_positions\.weight: checkpoint \[66, 32\], model \[130, 32\]"):
        build(xlmr_data, "--pretrained-text-encoder", xlmr["new"], "--max-source-positions", 128)


def test_missing_and_unexpected_parameters_are_listed(xlmr, xlmr_data):
    with pytest.raises(PretrainedTextEncoderError,
                       match=r"missing from the checkpoint[^\n]*\n  layer_norm\.bias\n  layer_norm\.weight"):
        build(xlmr_data, "--pretrained-text-encoder", xlmr["new"], "--encoder-normalize-before")
    with pytest.raises(PretrainedTextEncoderError, match=r"missing from the checkpoint.*\n  layers\.2\.fc1\.bias"):
        build(xlmr_data, "--pretrained-text-encoder", xlmr["new"], "--encoder-layers", 3)
    with pytest.raises(PretrainedTextEncoderError, match=r"no place for.*\n  layers\.1\.fc1\.bias"):
        build(xlmr_data, "--pretrained-text-encoder", xlmr["new"], "--encoder-layers", 1)


def test_missing_files_are_named(xlmr, xlmr_data, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere: no such directory or file"):
        build(xlmr_data, "--pretrained-text-encoder", tmp_path / "nowhere")
    (tmp_path / "model.pt").write_bytes((xlmr["new"] / "model.pt").read_bytes())
    with pytest.raises(FileNotFoundError, match=r"model\.pt: .*/dict\.txt not found"):
        build(xlmr_data, "--pretrained-text-encoder", tmp_path / "model.pt")


def test_dictionary_of_another_model_is_refused(xlmr, xlmr_data, tmp_path):
    (tmp_path / "model.pt").write_bytes((xlmr["new"] / "model.pt").read_bytes())
    lines = (xlmr["new"] / "dict.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    (tmp_path / "dict.txt").write_text("".join(lines[:-3]), encoding="utf-8")
    with pytest.raises(PretrainedTextEncoderError, match=r"dict\.txt has \d+ symbols .* rows: dict\.txt and model\.pt do not"):
        build(xlmr_data, "--pretrained-text-encoder", tmp_path)


# ---- reload for generation -------------------------------------------------------------------
def test_trained_model_reloads_without_the_xlmr_files(xlmr, xlmr_data, tmp_path):
    pretrained = tmp_path / "xlmr"
    shutil.copytree(xlmr["new"], pretrained)
    task, cfg = setup_task(xlmr_data, *TINY_OPTIONS, "--pretrained-text-encoder", pretrained / "model.pt",
                           "--optimizer", "adam", "--lr", "1e-3", "--save-dir", tmp_path, arch=ARCH)
    model = task.build_model(cfg.model)
    with torch.no_grad():  # as if trained: the reloaded weights must be these, not XLM-R's
        model.encoder.text_encoder.layers[0].fc1.weight.add_(1.0)
    trainer = Trainer(cfg, task, model, task.build_criterion(cfg.criterion))
    trainer.consolidate_optimizer()  # as fairseq's checkpoint_utils.save_checkpoint does first
    trainer.save_checkpoint(str(tmp_path / "checkpoint_last.pt"), {})
    shutil.rmtree(pretrained)

    # what fairseq-generate does: config from the checkpoint, build_model, load_state_dict
    models, saved_cfg, _ = checkpoint_utils.load_model_ensemble_and_task([str(tmp_path / "checkpoint_last.pt")])
    assert saved_cfg.model.pretrained_text_encoder == str(pretrained / "model.pt")
    reloaded = models[0].state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(reloaded[name], tensor), name
