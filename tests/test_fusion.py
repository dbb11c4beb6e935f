import os

import pytest
import torch

from helpers import as_if_trained, setup_task
from m3p_fairseq.data.batch_keys import IMAGE_GLOBAL, IMAGE_PATCHES
from m3p_fairseq.models.fusion import (
    ConcatFusion,
    ConditionalVisionLanguageMemory,
    GatedFusion,
    SelectiveAttentionFusion,
    build_fusion,
)

T, B, C, P = 5, 3, 8, 4


def inputs(seed=0):
    generator = torch.Generator().manual_seed(seed)
    text = torch.randn(T, B, C, generator=generator)
    padding = torch.zeros(B, T, dtype=torch.bool)
    padding[1, :2] = True  # left-padded second sentence
    padding[2, :1] = True
    patches = torch.randn(P, B, C, generator=generator)
    global_state = torch.randn(B, C, generator=generator)
    return text, padding, patches, global_state


def fuse_keeping_text_shape(fusion):
    """Fuse the standard inputs; the output must keep the text's length and padding mask."""
    text, padding, patches, global_state = inputs()
    fused, mask = fusion.eval()(text, padding, patches, global_state)
    assert fused.shape == (T, B, C)
    assert torch.equal(mask, padding)
    return fused, (text, padding, patches, global_state)


def test_gated_fusion_shape_mask_and_bounded_gate():
    fused, (text, _, _, global_state) = fuse_keeping_text_shape(GatedFusion(C, 2, 0.0, 0.0))
    # H' - H = Λ ⊙ Wv with Λ in (0, 1): each dimension moves towards the image by less than Wv
    delta = (fused - text) / global_state.unsqueeze(0)
    assert torch.all(delta > 0) and torch.all(delta < 1)


def test_concat_fusion_appends_patches_with_unpadded_mask():
    text, padding, patches, global_state = inputs()
    fused, mask = ConcatFusion(C, 2, 0.0, 0.0)(text, padding, patches, global_state)
    assert fused.shape == (T + P, B, C)
    assert mask.shape == (B, T + P)
    assert torch.equal(mask[:, :T], padding)
    assert not mask[:, T:].any()
    assert torch.equal(fused[T:], patches)


def test_fresh_cvlm_passes_the_text_through():
    fusion = ConditionalVisionLanguageMemory(C, 2, 0.0, 0.0)
    fused, (text, *_) = fuse_keeping_text_shape(fusion)
    torch.testing.assert_close(fused, fusion.layer_norm(text))


def test_cvlm_keeps_text_length_and_mask_and_attends_only_to_the_own_image():
    fusion = as_if_trained(ConditionalVisionLanguageMemory(C, 2, 0.0, 0.0))
    fused, (text, padding, patches, global_state) = fuse_keeping_text_shape(fusion)
    # LayerNorm output: zero mean, unit variance per position
    torch.testing.assert_close(fused.mean(-1), torch.zeros(T, B), atol=1e-5, rtol=0)
    # changing sentence 0's image changes sentence 0 only
    other_patches = patches.clone()
    other_patches[:, 0] += 1.0
    fused_other, _ = fusion(text, padding, other_patches, global_state)
    assert not torch.allclose(fused_other[:, 0], fused[:, 0])
    torch.testing.assert_close(fused_other[:, 1:], fused[:, 1:])
    # queries are independent: changing one text position changes only that position
    changed_text = text.clone()
    changed_text[3, 1] += 1.0
    fused_changed, _ = fusion(changed_text, padding, patches, global_state)
    assert not torch.allclose(fused_changed[3, 1], fused[3, 1])
    keep = torch.ones(T, B, dtype=torch.bool)
    keep[3, 1] = False
    torch.testing.assert_close(fused_changed[keep], fused[keep])


def test_selective_attention_mixes_text_and_attended_image():
    fusion = SelectiveAttentionFusion(C, 1, 0.0, 0.0)
    fused, (text, _, patches, _) = fuse_keeping_text_shape(fusion)
    attended, _ = fusion.attention(query=text, key=patches, value=patches, need_weights=False)
    # H' = (1 - λ) H + λ H_attn with λ in (0, 1): H' lies strictly between H and H_attn
    share = (fused - text) / (attended - text)
    assert torch.all(share > 0) and torch.all(share < 1)


def test_unknown_fusion():
    with pytest.raises(ValueError, match="unknown fusion 'film'; choose from none, gated, concat, selective, cvlm"):
        build_fusion("film", C, 2, 0.0, 0.0)


@pytest.mark.parametrize("fusion, extra", [("none", 0), ("gated", 0), ("concat", 4), ("selective", 0), ("cvlm", 0)])
def test_encoder_output_with_each_fusion(data_dir, fusion, extra):
    task, cfg = setup_task(data_dir, "--fusion", fusion, "--image-encoder-layers", "1")
    task.load_dataset("valid")
    model = task.build_model(cfg.model).eval()
    dataset = task.dataset("valid")
    batch = dataset.collater([dataset[i] for i in range(4)])
    net_input = batch["net_input"]
    # a text-only model's batches carry no image features (nothing would read them)
    assert (IMAGE_PATCHES in net_input) == (fusion != "none")
    out = model.encoder(net_input["src_tokens"], net_input["src_lengths"],
                        image_patches=net_input.get(IMAGE_PATCHES), image_global=net_input.get(IMAGE_GLOBAL))
    src_len = net_input["src_tokens"].size(1)
    assert out["encoder_out"][0].shape == (src_len + extra, 4, 128)
    mask = out["encoder_padding_mask"][0]
    assert mask.shape == (4, src_len + extra)
    assert torch.equal(mask[:, :src_len], net_input["src_tokens"].eq(task.src_dict.pad()))
    logits, _ = model(**net_input)
    assert logits.shape[:2] == batch["target"].shape
    assert torch.isfinite(logits).all()


def test_models_take_the_whole_batch_and_ignore_what_they_do_not_read(data_dir):
    task, cfg = setup_task(data_dir, "--fusion", "cvlm", "--dropout", "0")
    model = as_if_trained(task.build_model(cfg.model)).eval()
    task.load_dataset("valid")
    dataset = task.dataset("valid")
    net_input = dataset.collater([dataset[i] for i in range(4)])["net_input"]
    assert "source_lang" in net_input  # the collater emits it for every model
    text_only_input = {k: net_input[k] for k in ("src_tokens", "src_lengths", "prev_output_tokens",
                                                 "image_patches", "image_global")}
    with torch.no_grad():
        logits, _ = model(**net_input, image_negative_global=net_input["image_global"].flip(0))
        expected, _ = model(**text_only_input)
    torch.testing.assert_close(logits, expected, atol=0, rtol=0)


def test_the_feature_dimension_travels_with_the_model_config(data_dir, data_copy):
    """fairseq-generate rebuilds a model from its checkpoint's config before any data: the
    dimension read from the data at training time is in that config, not only in the task."""
    task, cfg = setup_task(data_dir, "--fusion", "gated")
    assert cfg.model.image_feature_dim is None
    task.build_model(cfg.model)
    assert cfg.model.image_feature_dim == 16
    os.remove(data_copy / "image_features.h5")
    other_task, _ = setup_task(data_copy, "--fusion", "gated")
    assert other_task.image_feature_dim is None
    assert other_task.build_model(cfg.model).image_feature_dim == 16


@pytest.mark.parametrize("fusion, option, heads", [("selective", [], 1), ("selective", ["--fusion-attention-heads", "2"], 2),
                                                   ("cvlm", [], 4)])
def test_selective_attention_is_single_head_by_default(data_dir, fusion, option, heads):
    """Li et al. (2022) and the paper's baseline use one head; cvlm keeps the encoder's 4 (tiny)."""
    task, cfg = setup_task(data_dir, "--fusion", fusion, *option)
    model = task.build_model(cfg.model)
    assert model.encoder.fusion.attention.num_heads == heads
    assert model.encoder.fusion.attention.head_dim == 128 // heads


def cvlm_with_null_attention():
    return as_if_trained(build_fusion("cvlm", C, 2, 0.0, 0.0, null_attention=True)).eval()


def test_cvlm_null_attention_is_a_zero_value_beside_the_patches():
    """One head, worked out with the attention's weights: softmax over the P patch keys and the
    null key; the null key's value is zero, so it only takes weight away from the patches."""
    fusion = build_fusion("cvlm", C, 1, 0.0, 0.0, null_attention=True).eval()
    as_if_trained(fusion)
    with torch.no_grad():
        fusion.null_key.normal_()
    text, padding, patches, global_state = inputs()
    attention = fusion.attention
    q, k, v = attention.q_proj(text), attention.k_proj(patches), attention.v_proj(patches)  # [T|P, B, C]
    logits = torch.einsum("tbc,pbc->btp", q, k) / C ** 0.5
    null_logits = torch.einsum("tbc,c->bt", q, fusion.null_key[0]).unsqueeze(-1) / C ** 0.5
    weights = torch.softmax(torch.cat([logits, null_logits], dim=-1), dim=-1)[..., :P]  # [B, T, P]
    assert torch.all(weights.sum(-1) < 1)
    attended = attention.out_proj(torch.einsum("btp,pbc->tbc", weights, v))
    expected = fusion.layer_norm(text + attended)
    fused, mask = fusion(text, padding, patches, global_state)
    torch.testing.assert_close(fused, expected)
    assert torch.equal(mask, padding)


def test_a_token_attending_to_the_null_key_takes_nothing_from_the_image():
    fusion = cvlm_with_null_attention()
    attention = fusion.attention
    with torch.no_grad():  # every query (a constant) matches the null key far better than any patch
        attention.q_proj.weight.zero_()
        attention.q_proj.bias.fill_(1.0)
        attention.k_proj.weight.zero_()
        attention.k_proj.bias.zero_()
        fusion.null_key.fill_(50.0)
    text, padding, patches, global_state = inputs()
    fused, _ = fusion(text, padding, patches, global_state)
    torch.testing.assert_close(fused, fusion.layer_norm(text + attention.out_proj.bias))
    # the same weights without the null key average the patches' values into every token
    plain = build_fusion("cvlm", C, 2, 0.0, 0.0).eval()
    plain.load_state_dict({name: value for name, value in fusion.state_dict().items() if name != "null_key"})
    assert not torch.allclose(plain(text, padding, patches, global_state)[0], fused)


def test_cvlm_null_attention_gives_the_same_states_with_each_image_once():
    fusion = cvlm_with_null_attention()
    with torch.no_grad():
        fusion.null_key.normal_()
    text, padding, patches, global_state = inputs()
    distinct = patches[:, :2]
    image_index = torch.tensor([1, 0, 1])
    per_row, _ = fusion(text, padding, distinct.index_select(1, image_index), global_state)
    once, _ = fusion(text, padding, distinct, global_state, image_index=image_index)
    torch.testing.assert_close(once, per_row)


def test_null_attention_belongs_to_cvlm():
    with pytest.raises(ValueError, match="--cvlm-null-attention is an option of --fusion cvlm, not selective"):
        build_fusion("selective", C, 1, 0.0, 0.0, null_attention=True)


def test_the_null_attention_option_reaches_the_model(data_dir):
    task, cfg = setup_task(data_dir, "--fusion", "cvlm", "--cvlm-null-attention")
    model = task.build_model(cfg.model)
    assert model.encoder.fusion.null_key.shape == (4, 32)  # m3p_transformer_tiny: 4 heads of 128 / 4
    assert "encoder.fusion.null_key" in model.state_dict()
    task, cfg = setup_task(data_dir, "--fusion", "cvlm")
    assert task.build_model(cfg.model).encoder.fusion.null_key is None
    task, cfg = setup_task(data_dir, "--fusion", "selective", "--cvlm-null-attention")
    with pytest.raises(ValueError, match="--cvlm-null-attention is an option of --fusion cvlm, not selective"):
        task.build_model(cfg.model)
