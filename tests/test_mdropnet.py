"""MDropNet (Sec. 2.7): per-sentence text-only / image-only / both modes, what the decoder sees
under each, and which parameters each mode trains."""

import pytest
import torch

from helpers import as_if_trained, setup_task
from m3p_fairseq.models.mdropnet import (
    IMAGE_ONLY,
    TEXT_AND_IMAGE,
    TEXT_ONLY,
    MDropNet,
    check_probabilities,
    draw_modalities,
    per_sentence_memory,
)


@pytest.mark.parametrize("text_only,image_only", [(0.25, 0.25), (0.1, 0.3), (0.0, 0.0)])
def test_mode_frequencies_match_the_probabilities(text_only, image_only):
    torch.manual_seed(0)
    modes = draw_modalities(200_000, text_only, image_only)
    frequencies = torch.bincount(modes, minlength=3).float() / len(modes)
    expected = torch.tensor([text_only, image_only, 1 - text_only - image_only])
    torch.testing.assert_close(frequencies, expected, atol=0.005, rtol=0)


def test_bad_probabilities():
    with pytest.raises(ValueError, match="--mdropnet-text-only 0.7 and --mdropnet-image-only 0.5"):
        check_probabilities(0.7, 0.5)


@pytest.fixture(scope="module", params=["cvlm", "concat"])
def model_and_batch(request, data_dir):
    task, cfg = setup_task(data_dir, "--fusion", request.param, "--dropout", "0")
    model = as_if_trained(task.build_model(cfg.model)).eval()
    task.load_dataset("valid")
    dataset = task.dataset("valid")
    batch = dataset.collater([dataset[i] for i in range(6)])
    return model, batch["net_input"]


def decode(model, net_input, modalities=None, **changes):
    inputs = {**net_input, **changes}
    logits, _ = model(**inputs, modalities=modalities)
    return logits


def modes(*codes):
    return torch.tensor(codes)


def test_image_only_sentences_carry_no_source_to_the_decoder(model_and_batch):
    model, net_input = model_and_batch
    image_only = modes(*[IMAGE_ONLY] * 6)
    source = net_input["src_tokens"]
    tags = torch.zeros_like(source, dtype=torch.bool)
    tags[torch.arange(len(source)), (source != 1).long().argmax(1)] = True  # first non-pad token
    words = (source > 3) & ~tags  # leave the target-language tag, specials and padding alone
    other_source = source.clone()
    other_source[words] = 10 + (source[words] + 7) % 50
    assert (other_source != source).sum() > 20
    torch.testing.assert_close(decode(model, net_input, image_only),
                               decode(model, net_input, image_only, src_tokens=other_source))
    # ... but they do read the image, and the target language they caption into
    assert not torch.allclose(decode(model, net_input, image_only),
                              decode(model, net_input, image_only, image_patches=net_input["image_patches"].flip(0)))
    other_language = source.clone()
    dictionary = model.encoder.dictionary
    assert source[tags].tolist() == [dictionary.index("__de__")] * 6  # the first en-de examples
    other_language[tags] = dictionary.index("__fr__")
    assert not torch.allclose(decode(model, net_input, image_only),
                              decode(model, net_input, image_only, src_tokens=other_language))


def test_text_only_sentences_ignore_the_image(model_and_batch):
    model, net_input = model_and_batch
    text_only = modes(*[TEXT_ONLY] * 6)
    torch.testing.assert_close(
        decode(model, net_input, text_only),
        decode(model, net_input, text_only, image_patches=net_input["image_patches"].flip(0),
               image_global=net_input["image_global"].flip(0)))


def test_both_mode_is_decoded_exactly_as_at_inference_in_a_mixed_batch(model_and_batch):
    model, net_input = model_and_batch
    mixed = modes(TEXT_ONLY, TEXT_AND_IMAGE, IMAGE_ONLY, TEXT_AND_IMAGE, TEXT_ONLY, TEXT_AND_IMAGE)
    inference = decode(model, net_input)
    training = decode(model, net_input, mixed)
    both = mixed == TEXT_AND_IMAGE
    torch.testing.assert_close(training[both], inference[both], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(training[~both], inference[~both])


@pytest.mark.parametrize("codes,fused_batch", [
    ((TEXT_ONLY, TEXT_AND_IMAGE, IMAGE_ONLY, TEXT_AND_IMAGE, TEXT_ONLY, TEXT_AND_IMAGE), 3),
    ((TEXT_AND_IMAGE,) * 6, 6),
    ((TEXT_ONLY, IMAGE_ONLY) * 3, 6),  # no fused sentence: the whole batch keeps the fusion in the graph
])
def test_the_fusion_runs_on_the_sentences_that_read_it(model_and_batch, codes, fused_batch):
    model, net_input = model_and_batch
    batch_sizes = []
    hook = model.encoder.fusion.register_forward_hook(lambda module, args, output: batch_sizes.append(args[0].size(1)))
    try:
        decode(model, net_input, modes(*codes))
    finally:
        hook.remove()
    assert batch_sizes == [fused_batch]


def _gradient_norms(model, net_input, modalities):
    model.zero_grad()
    decode(model, net_input, modalities).logsumexp(-1).sum().backward()
    encoder = model.encoder

    def norm(module):
        return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)
    return norm(encoder.image_encoder) + norm(encoder.fusion), norm(encoder.text_encoder.layers)


def test_text_only_leaves_image_parameters_without_gradient(model_and_batch):
    model, net_input = model_and_batch
    image_side, text_side = _gradient_norms(model, net_input, modes(*[TEXT_ONLY] * 6))
    assert image_side == 0 and text_side > 0
    image_side, text_side = _gradient_norms(model, net_input, modes(*[IMAGE_ONLY] * 6))
    assert image_side > 0 and text_side == 0
    image_side, text_side = _gradient_norms(model, net_input, modes(*[TEXT_AND_IMAGE] * 6))
    assert image_side > 0 and text_side > 0


def test_training_draws_modes_and_inference_uses_both(data_dir):
    task, cfg = setup_task(data_dir, "--dropout", "0", "--mdropnet-text-only", "1.0", "--mdropnet-image-only", "0")
    model = as_if_trained(task.build_model(cfg.model))
    task.load_dataset("valid")
    dataset = task.dataset("valid")
    net_input = dataset.collater([dataset[i] for i in range(4)])["net_input"]
    text_only = modes(*[TEXT_ONLY] * 4)
    torch.testing.assert_close(decode(model.train(), net_input), decode(model.eval(), net_input, text_only))
    assert not torch.allclose(decode(model.eval(), net_input), decode(model.eval(), net_input, text_only))


def test_modes_fixed_drawn_or_none_and_unusable_images_are_text_only():
    mdropnet = MDropNet(0.25, 0.25)
    usable = torch.tensor([True, False, True, False])
    fixed = torch.tensor([IMAGE_ONLY, IMAGE_ONLY, TEXT_AND_IMAGE, TEXT_AND_IMAGE])
    # a caller's modes win, but a sentence without a usable image is text-only whatever it asked
    assert mdropnet.modes(fixed, 4, training=True, image_usable=usable).tolist() == [
        IMAGE_ONLY, TEXT_ONLY, TEXT_AND_IMAGE, TEXT_ONLY]
    # inference: every sentence uses both, said as None when all images are usable
    assert mdropnet.modes(None, 4, training=False) is None
    assert mdropnet.modes(None, 4, training=False, image_usable=usable).tolist() == [
        TEXT_AND_IMAGE, TEXT_ONLY, TEXT_AND_IMAGE, TEXT_ONLY]
    # training draws with the global RNG, as draw_modalities does
    torch.manual_seed(3)
    drawn = mdropnet.modes(None, 50, training=True)
    torch.manual_seed(3)
    assert torch.equal(drawn, draw_modalities(50, 0.25, 0.25))
    assert MDropNet(0.0, 0.0).modes(None, 4, training=True) is None  # MDropNet off


def test_warmup_raises_the_shares_linearly_from_zero_through_the_models_update_count(data_dir):
    # fairseq's trainer calls model.set_num_updates before every update; the shares follow it
    task, cfg = setup_task(data_dir, "--fusion", "cvlm", "--mdropnet-text-only", "0.2",
                           "--mdropnet-image-only", "0.4", "--mdropnet-warmup-updates", "100")
    model = task.build_model(cfg.model).train()
    mdropnet = model.encoder.mdropnet
    assert mdropnet.shares() == (0.0, 0.0)
    assert mdropnet.modes(None, 8, training=True) is None  # update 0: every sentence uses both
    model.set_num_updates(25)
    assert mdropnet.shares() == pytest.approx((0.05, 0.1))
    torch.manual_seed(0)
    frequencies = torch.bincount(mdropnet.modes(None, 200_000, training=True), minlength=3).float() / 200_000
    torch.testing.assert_close(frequencies, torch.tensor([0.05, 0.1, 0.85]), atol=0.005, rtol=0)
    model.set_num_updates(100)
    assert mdropnet.shares() == pytest.approx((0.2, 0.4))
    model.set_num_updates(5000)
    assert mdropnet.shares() == pytest.approx((0.2, 0.4))
    with pytest.raises(ValueError, match="--mdropnet-warmup-updates must be >= 0, got -1"):
        MDropNet(0.25, 0.25, -1)


@pytest.mark.parametrize("text_length, image_length", [(3, 6), (6, 3)])
def test_each_sentence_sees_exactly_the_states_of_its_mode(text_length, image_length):
    # the memory is max(T, I) long: image-only sentences' prompt takes their text states' place
    batch, width = 4, 2
    text = torch.randn(text_length, batch, width)
    fused = torch.randn(text_length, batch, width)
    image = torch.randn(image_length, batch, width)
    text_padding = torch.zeros(batch, text_length, dtype=torch.bool)
    text_padding[3, 0] = True  # sentence 3 is one token shorter (left padding)
    memory, padding = per_sentence_memory(modes(TEXT_ONLY, IMAGE_ONLY, TEXT_AND_IMAGE, TEXT_AND_IMAGE), text,
                                          text_padding, fused, text_padding.clone(), image)
    assert memory.shape == (max(text_length, image_length), batch, width)
    seen = [memory[~padding[b], b] for b in range(batch)]
    torch.testing.assert_close(seen[0], text[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(seen[1], image[:, 1], rtol=0, atol=0)
    torch.testing.assert_close(seen[2], fused[:, 2], rtol=0, atol=0)
    torch.testing.assert_close(seen[3], fused[1:, 3], rtol=0, atol=0)
