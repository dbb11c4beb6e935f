"""The decoder's cross-attention over the real memory positions only (models/packed_memory.py):
the same outputs and gradients as fairseq's MultiheadAttention, fewer positions projected, and
fairseq's own path whenever packing does not apply."""

import pytest
import torch
from fairseq.modules import MultiheadAttention

from helpers import setup_task
from m3p_fairseq.models.mdropnet import IMAGE_ONLY, TEXT_AND_IMAGE, TEXT_ONLY
from m3p_fairseq.models.packed_memory import PackedMemoryAttention

MEMORY, BATCH, TARGET, WIDTH = 10, 4, 6, 16


def pair_of_attentions(dropout=0.0):
    """fairseq's attention and a packed one with the same weights."""
    torch.manual_seed(0)
    fairseq_attention = MultiheadAttention(WIDTH, 4, dropout=dropout, encoder_decoder_attention=True)
    packed = PackedMemoryAttention(WIDTH, 4, dropout=dropout, encoder_decoder_attention=True)
    packed.load_state_dict(fairseq_attention.state_dict())
    return fairseq_attention, packed


def positions_projected(attention):
    """The numbers of memory positions k_proj sees, one per call."""
    seen = []
    attention.k_proj.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape[:-1].numel()))
    return seen


def padding(lengths):
    """[B, S] key padding mask of memories of the given lengths"""
    return torch.arange(MEMORY).unsqueeze(0) >= torch.tensor(lengths).unsqueeze(1)


@pytest.mark.parametrize("training", [True, False])
def test_packed_attention_gives_fairseqs_outputs_and_gradients_from_the_real_positions(training):
    fairseq_attention, packed = pair_of_attentions()
    fairseq_attention.train(training)
    packed.train(training)
    seen = positions_projected(packed)
    mask = padding([3, 5, 1, 10])  # 19 real positions of 40
    query = torch.randn(TARGET, BATCH, WIDTH, requires_grad=True)
    memory = torch.randn(MEMORY, BATCH, WIDTH, requires_grad=True)

    outputs = []
    for attention in (fairseq_attention, packed):
        output, weights = attention(query, memory, memory, key_padding_mask=mask, static_kv=True, need_weights=False)
        assert weights is None
        gradients = torch.autograd.grad(output.pow(2).sum(), [query, memory, *attention.parameters()])
        outputs.append((output, gradients))
    assert seen == [19]
    torch.testing.assert_close(outputs[1][0], outputs[0][0], atol=1e-6, rtol=1e-5)
    for packed_gradient, fairseq_gradient in zip(outputs[1][1], outputs[0][1]):
        torch.testing.assert_close(packed_gradient, fairseq_gradient, atol=1e-5, rtol=1e-4)
    # nothing flows to the padded positions, as with fairseq's mask
    assert outputs[1][1][1][3:, 0].abs().max() == 0


def test_attention_dropout_is_applied_by_the_packed_path():
    _, packed = pair_of_attentions(dropout=0.5)
    query, memory, mask = torch.randn(TARGET, BATCH, WIDTH), torch.randn(MEMORY, BATCH, WIDTH), padding([3, 5, 1, 10])
    packed.train()
    torch.manual_seed(1)
    first = packed(query, memory, memory, key_padding_mask=mask, static_kv=True, need_weights=False)[0]
    torch.manual_seed(2)
    second = packed(query, memory, memory, key_padding_mask=mask, static_kv=True, need_weights=False)[0]
    assert not torch.allclose(first, second)
    packed.eval()
    assert torch.equal(packed(query, memory, memory, key_padding_mask=mask, static_kv=True, need_weights=False)[0],
                       packed(query, memory, memory, key_padding_mask=mask, static_kv=True, need_weights=False)[0])


def test_fairseqs_own_path_when_packing_does_not_apply():
    fairseq_attention, packed = pair_of_attentions()
    seen = positions_projected(packed)
    query, memory = torch.randn(TARGET, BATCH, WIDTH), torch.randn(MEMORY, BATCH, WIDTH)
    little_padding = padding([10, 10, 9, 10])  # 1 of 40 positions
    much_padding = padding([3, 5, 1, 10])
    packed(query, memory, memory, key_padding_mask=little_padding, static_kv=True, need_weights=False)
    packed(query, memory, memory, key_padding_mask=None, static_kv=True, need_weights=False)
    # attention weights asked for (alignment, need_attn): fairseq computes them
    output, weights = packed(query, memory, memory, key_padding_mask=much_padding, static_kv=True, need_weights=True)
    expected, expected_weights = fairseq_attention(query, memory, memory, key_padding_mask=much_padding,
                                                   static_kv=True, need_weights=True)
    torch.testing.assert_close(weights, expected_weights)
    torch.testing.assert_close(output, expected)
    # incremental decoding (beam search): keys and values are projected once and cached by fairseq
    packed(query[:1], memory, memory, key_padding_mask=much_padding, static_kv=True, need_weights=False,
           incremental_state={})
    assert seen == [40, 40, 40, 40]


def test_the_m3p_decoder_packs_an_mdropnet_batch_and_decodes_as_fairseqs_attention(data_dir):
    task, cfg = setup_task(data_dir, "--fusion", "cvlm", "--dropout", "0")
    model = task.build_model(cfg.model).train()
    layers = model.decoder.layers
    assert all(type(layer.encoder_attn) is PackedMemoryAttention for layer in layers)
    task.load_dataset("valid")
    dataset = task.dataset("valid")
    net_input = dataset.collater([dataset[i] for i in range(6)])["net_input"]
    # two image-only sentences: their memory is the image prompt, longer than the sources
    modes = torch.tensor([IMAGE_ONLY, TEXT_ONLY, TEXT_AND_IMAGE, IMAGE_ONLY, TEXT_AND_IMAGE, TEXT_ONLY])
    seen = positions_projected(layers[0].encoder_attn)
    packed_logits, _ = model(**net_input, modalities=modes)
    encoder_input = {key: value for key, value in net_input.items() if key != "prev_output_tokens"}
    memory = model.encoder(**encoder_input, modalities=modes)["encoder_padding_mask"][0]
    assert seen[0] == int((~memory).sum()) < memory.numel()

    for layer in layers:  # the same weights in fairseq's attention
        layer.encoder_attn.__class__ = MultiheadAttention
    fairseq_logits, _ = model(**net_input, modalities=modes)
    torch.testing.assert_close(packed_logits, fairseq_logits, atol=1e-5, rtol=1e-5)
