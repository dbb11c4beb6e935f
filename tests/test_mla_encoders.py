"""The frozen native dual encoder (open_clip) and the language acquisition encoder (Eqs. 7-11)."""

import pytest
import torch
from fairseq.data import Dictionary

from m3p_fairseq.models.language_acquisition import LanguageAcquirer, LanguageAcquisitionEncoder
from m3p_fairseq.models.native_dual_encoder import (
    NativeModelMismatch,
    build_clip,
    encode_words,
    load_native,
    pad_token_rows,
    save_native,
    small_clip_config,
)

WORDS = "a red blue circle square small large left right".split()


def make_dictionary(words=WORDS):
    d = Dictionary()
    for w in words:
        d.add_symbol(w)
    return d


def make_native(tmp_path, seed=0, name="tiny-en"):
    torch.manual_seed(seed)
    d = make_dictionary()
    cfg = small_clip_config(len(d), embed_dim=16, width=16, layers=2, heads=2, context_length=12,
                            image_size=16, patch_size=8)
    path = tmp_path / f"{name}-{seed}.pt"
    save_native(path, build_clip(cfg), cfg, d, name)
    return load_native(path)


def make_encoder(native, languages=("de", "fr")):
    d = native.dictionary
    return LanguageAcquisitionEncoder(native, len(d), d.pad(), d.eos(), languages, bottleneck=8)


def test_piecewise_text_tower_equals_open_clip(tmp_path):
    native = make_native(tmp_path)
    tokens = native.tokenize(["a red circle", "a large blue square left"])
    assert tokens[0].tolist()[:5] == [0, native.dictionary.index("a"), native.dictionary.index("red"),
                                      native.dictionary.index("circle"), 2]
    full = torch.full((2, native.context_length), native.pad_id)
    full[:, : tokens.shape[1]] = tokens
    torch.testing.assert_close(native.encode_tokens(tokens), native.clip.encode_text(full), rtol=1e-5, atol=1e-6)


def test_native_round_trip_frozen_and_fingerprinted(tmp_path):
    native = make_native(tmp_path)
    again = make_native(tmp_path)
    other = make_native(tmp_path, seed=1)
    assert native.identity == again.identity
    assert native.identity.fingerprint != other.identity.fingerprint
    assert all(not p.requires_grad for p in native.parameters())
    native.train()
    assert not native.clip.training and not native.clip.transformer.resblocks[0].training
    image = torch.randn(3, 3, 16, 16)
    assert native.encode_image(image).shape == (3, 16)
    with pytest.raises(ValueError, match="not a native dual encoder"):
        torch.save({"weights": 1}, tmp_path / "bad.pt")
        load_native(tmp_path / "bad.pt")


def test_words_are_truncated_with_eos_kept():
    d = make_dictionary()
    row = encode_words(d, "a red blue circle square", max_length=4)
    assert row.tolist() == [d.bos(), d.index("a"), d.index("red"), d.eos()]
    assert pad_token_rows([torch.tensor([5, 6, 7]), torch.tensor([8])], pad=1).tolist() == [[5, 6, 7], [8, 1, 1]]


def test_acquirer_is_identity_when_up_is_zero():
    acquirer = LanguageAcquirer(6, bottleneck=4)
    x = torch.randn(2, 3, 6)
    assert torch.equal(acquirer(x), x)
    with torch.no_grad():
        acquirer.up.weight.fill_(0.1)
    assert not torch.equal(acquirer(x), x)


def test_acquisition_encoder_reproduces_native_when_given_its_embeddings(tmp_path):
    # With the native token embedding as the non-native block, W_e = I and fresh acquirers
    # (identity), Eqs. 7-11 are Eqs. 1-3: t == s.
    native = make_native(tmp_path)
    encoder = make_encoder(native)
    with torch.no_grad():
        encoder.embed_tokens.weight.copy_(native.clip.token_embedding.weight)
        encoder.embed_projection.weight.copy_(torch.eye(native.width))
        encoder.embed_projection.bias.zero_()
    tokens = native.tokenize(["a red circle", "small square right"])
    torch.testing.assert_close(encoder(tokens, "de"), native.encode_tokens(tokens))
    without = LanguageAcquisitionEncoder(native, len(native.dictionary), 1, 2, ["de"], bottleneck=8,
                                         use_acquirers=False)
    # only the embedding block trains: 12 words x 16 + W_e (16 x 16 + 16)
    assert without.trainable_parameter_count() == len(native.dictionary) * 16 + 16 * 16 + 16
    without.load_state_dict(encoder.state_dict(), strict=False)
    assert torch.equal(without(tokens, "de"), encoder(tokens, "de"))


def test_gradients_reach_only_trainable_parts(tmp_path):
    native = make_native(tmp_path)
    encoder = make_encoder(native)
    with torch.no_grad():  # move W_up off zero so W_down gets a gradient too
        for acquirer in encoder.acquirers["de"]:
            acquirer.up.weight.normal_(std=0.1)
    tokens = native.tokenize(["a red circle"])
    encoder(tokens, "de").pow(2).sum().backward()
    assert all(p.grad is None for p in native.parameters())
    assert all(p.grad is None for p in encoder.acquirers["fr"].parameters())
    for name, p in encoder.named_parameters():
        if not name.startswith("acquirers.fr"):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert {n for n, _ in encoder.named_parameters()} >= {"embed_tokens.weight", "embed_projection.weight"}
    identity = {"native_name", "native_fingerprint", "native_embed_dim"}
    saved = set(encoder.state_dict()) - identity
    assert saved == {n for n, _ in encoder.named_parameters()}  # no frozen native weight is saved


def test_checkpoint_refuses_another_native_model(tmp_path):
    native = make_native(tmp_path)
    state = make_encoder(native).state_dict()
    make_encoder(make_native(tmp_path)).load_state_dict(state)  # same weights: loads
    other = make_encoder(make_native(tmp_path, seed=1, name="other-en"))
    with pytest.raises(NativeModelMismatch, match=r"made with native model 'tiny-en'.*loaded now is 'other-en'"):
        other.load_state_dict(state)


def test_extension_trains_only_the_new_language(tmp_path):
    native = make_native(tmp_path)
    encoder = make_encoder(native, languages=("de", "fr", "cs"))
    known = len(native.dictionary) - 2  # pretend the last two words are new with cs
    encoder.freeze_for_extension(["cs"], known_vocab_size=known)
    acquirer_size = 2 * (16 * 8 + 8 + 8 * 16 + 16)  # 2 layers of W_down, W_up with biases
    assert encoder.trainable_parameter_count() == acquirer_size + 2 * 16  # cs acquirers + 2 new rows
    tokens = native.tokenize(["a red circle", "small blue square"])  # words de/fr already had
    new_tokens = native.tokenize(["a red circle left", "small blue square right"])
    before = {lang: encoder(tokens, lang).detach().clone() for lang in ("de", "fr")}
    weights_before = encoder.embed_tokens.weight.detach().clone()
    optimizer = torch.optim.Adam([p for p in encoder.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        encoder(new_tokens, "cs").pow(2).sum().backward()
        optimizer.step()
    for lang in ("de", "fr"):
        assert torch.equal(encoder(tokens, lang), before[lang])
    assert torch.equal(encoder.embed_tokens.weight[:known], weights_before[:known])
    assert not torch.equal(encoder.embed_tokens.weight[known:], weights_before[known:])
    assert not torch.equal(encoder(tokens, "cs"), before["de"])


def test_user_open_clip_checkpoint_loads_by_architecture_name(tmp_path):
    import json

    import open_clip

    from m3p_fairseq.models.native_dual_encoder import weights_fingerprint

    cfg = {"embed_dim": 16,
           "vision_cfg": {"image_size": 16, "layers": 1, "width": 16, "patch_size": 8, "head_width": 8},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "mla-test-tiny-clip.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "configs")
    torch.manual_seed(0)
    clip = open_clip.create_model("mla-test-tiny-clip")
    torch.save(clip.state_dict(), tmp_path / "weights.bin")
    native = load_native(tmp_path / "weights.bin", open_clip_model="mla-test-tiny-clip")
    tokens = native.tokenize(["a red circle on the left"])  # CLIP's BPE, [SOT] ... [EOT] padded to 16
    assert tokens.shape == (1, 16)
    torch.testing.assert_close(native.encode_tokens(tokens), clip.encode_text(tokens), rtol=1e-5, atol=1e-6)
    assert native.identity.fingerprint == weights_fingerprint(clip)
    assert native.encode_image(torch.randn(2, 3, 16, 16)).shape == (2, 16)


def test_full_fine_tuning_baseline_trains_a_copy_of_the_text_tower(tmp_path):
    native = make_native(tmp_path)
    encoder = LanguageAcquisitionEncoder(native, len(native.dictionary), 1, 2, ["de", "fr"], bottleneck=8,
                                         finetune_text_tower=True)
    with torch.no_grad():  # the native embeddings through the untouched copy: exactly the native model
        encoder.embed_tokens.weight.copy_(native.clip.token_embedding.weight)
        encoder.embed_projection.weight.copy_(torch.eye(native.width))
        encoder.embed_projection.bias.zero_()
    tokens = native.tokenize(["a red circle", "small square right"])
    torch.testing.assert_close(encoder(tokens, "de"), native.encode_tokens(tokens))
    tower_size = sum(p.numel() for p in native.clip.transformer.parameters()) \
        + sum(p.numel() for p in native.clip.ln_final.parameters()) + native.clip.text_projection.numel()
    embedding_size = len(native.dictionary) * 16 + 16 * 16 + 16
    assert encoder.trainable_parameter_count() == tower_size + embedding_size
    fingerprint = native.identity.fingerprint
    optimizer = torch.optim.Adam([p for p in encoder.parameters() if p.requires_grad], lr=1e-2)
    encoder(tokens, "de").pow(2).sum().backward()
    optimizer.step()
    assert encoder.text_tower["transformer"].resblocks[0].mlp.c_fc.weight.grad is not None
    assert from_weights(native) == fingerprint  # the native model itself is untouched
    with pytest.raises(ValueError, match="shared by all languages"):
        encoder.freeze_for_extension(["fr"], known_vocab_size=4)


def from_weights(native):
    from m3p_fairseq.models.native_dual_encoder import weights_fingerprint

    return weights_fingerprint(native.clip)


def test_embeddings_start_from_a_local_matrix(tmp_path):
    from m3p_fairseq.models.mla_model import load_embedding_matrix

    native = make_native(tmp_path)
    d = native.dictionary
    weight = torch.arange(3 * 16, dtype=torch.float).view(3, 16)
    torch.save({"symbols": ["zzz", "red", "circle"], "weight": weight}, tmp_path / "mbert.pt")
    symbols, loaded = load_embedding_matrix(str(tmp_path / "mbert.pt"))
    encoder = make_encoder(native)
    before = encoder.embed_tokens.weight.detach().clone()
    assert encoder.init_embeddings(d.symbols[d.nspecial:], symbols, loaded) == 2
    assert torch.equal(encoder.embed_tokens.weight[d.index("red")], weight[1])
    assert torch.equal(encoder.embed_tokens.weight[d.index("circle")], weight[2])
    untouched = [i for i in range(len(d)) if i not in (d.index("red"), d.index("circle"))]
    assert torch.equal(encoder.embed_tokens.weight[untouched], before[untouched])
    torch.save({"symbols": ["a"], "weight": torch.zeros(2, 16)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="one row per word"):
        load_embedding_matrix(str(tmp_path / "bad.pt"))
