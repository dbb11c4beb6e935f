"""Decoder-only m3P: one causal stack over the prompt of Fig. 3a (image, source), </s> and the target, driven by the
task, the m3p_loss criterion and fairseq's beam search like the encoder-decoder."""

import pytest
import torch
from fairseq.dataclass.configs import GenerationConfig

from helpers import setup_task
from m3p_fairseq.criterions.m3p_loss import M3PLoss
from m3p_fairseq.models.mdropnet import IMAGE_ONLY, TEXT_AND_IMAGE, TEXT_ONLY

TINY = ["--decoder-layers", "2", "--dropout", "0"]


def build(data_dir, *extra, directions=("en", "de")):
    torch.manual_seed(0)
    task, cfg = setup_task(data_dir, *TINY, "--source-lang", directions[0], "--target-lang", directions[1],
                           *extra, arch="m3p_decoder_only_tiny")
    task.load_dataset("test")
    return task, task.build_model(cfg.model), task.dataset("test")


def batch_of(dataset, indices):
    return dataset.collater([dataset[i] for i in indices])


def test_the_prefix_is_fig_3a_with_the_image_before_the_source(data_dir):
    task, model, dataset = build(data_dir)
    batch = batch_of(dataset, [0, 1, 2])
    out = model.eval().encoder(**batch["net_input"])
    text_ids, is_source = out["text_ids"][0], out["is_source"][0]
    dictionary, pad = task.source_dictionary, task.source_dictionary.pad()
    keep = out["prefix_keep"][0]
    for row, sample_id in enumerate(batch["id"].tolist()):
        source = dataset.src[sample_id][1:-1]  # without the __de__ tag and </s>
        ids, kept = text_ids[row], keep[row]
        image = kept & (ids == pad)  # the image slots hold padding in text_ids and are kept
        assert int(image.sum()) == 4
        first_image, first_source = int(image.nonzero()[0]), int(is_source[row].nonzero()[0])
        assert image[first_image:first_image + 4].all() and first_source == first_image + 4
        before = dictionary.string(ids[:first_image][ids[:first_image] != pad], "sentencepiece")
        after = dictionary.string(ids[first_source + len(source):], "sentencepiece")
        # the data's SentencePiece model normalises the newlines of Fig. 3a to spaces
        assert ids[ids != pad][0] == dictionary.bos()  # <s> first, as Llama's tokenizer begins
        assert before == ("Below is an instruction that describes a task. Write a response that appropriately "
                          "completes the request. ### Instruction: Please translate the following sentence "
                          "from English to German:")
        assert after == "### Response:"
        assert ids[is_source[row]].tolist() == source.tolist()
    # the target starts after the whole prefix
    assert out["prefix_length"][0].tolist() == keep.sum(1).tolist()


def test_decoder_output_covers_the_target_only_and_incremental_decoding_agrees(data_dir):
    task, model, dataset = build(data_dir)
    model.eval()
    batch = batch_of(dataset, list(range(6)))
    net_input = batch["net_input"]
    with torch.no_grad():
        logits, _ = model(**net_input)
        assert logits.shape[:2] == batch["target"].shape  # the loss sees target positions only
        encoder_out = model.encoder(**net_input)
        incremental_state = {}
        steps = []
        for t in range(1, net_input["prev_output_tokens"].size(1) + 1):
            step_logits, _ = model.decoder(net_input["prev_output_tokens"][:, :t], encoder_out=encoder_out,
                                           incremental_state=incremental_state)
            steps.append(step_logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), logits, atol=1e-4, rtol=1e-4)


def beam_outputs(task, model, dataset, indices):
    generator = task.build_generator([model], GenerationConfig(beam=4, max_len_b=10))
    batch = batch_of(dataset, indices)
    with torch.no_grad():
        outputs = task.inference_step(generator, [model], batch)
    return {int(i): (output[0]["tokens"].tolist(), output[0]["positional_scores"])
            for i, output in zip(batch["id"], outputs)}


@pytest.mark.parametrize("fusion", ["prefix", "none"])
def test_batch_and_single_sentence_give_the_same_hypothesis(data_dir, fusion):
    task, model, dataset = build(data_dir, "--fusion", fusion)
    model.eval()
    indices = list(range(10))
    batched = beam_outputs(task, model, dataset, indices)
    alone = {}
    for i in indices:
        alone.update(beam_outputs(task, model, dataset, [i]))
    for i in indices:
        assert batched[i][0] == alone[i][0]
        torch.testing.assert_close(batched[i][1], alone[i][1], atol=1e-4, rtol=1e-4)
    # not vacuous: an untrained model may repeat one token, but its scores depend on the input
    assert len({round(scores.sum().item(), 3) for _, scores in batched.values()}) > 1


def test_the_prompt_names_the_direction(data_dir):
    """The same source with another source-language name in its prompt is decoded differently."""
    task, model, dataset = build(data_dir)
    model.eval()
    batch = batch_of(dataset, list(range(4)))
    with torch.no_grad():
        logits, _ = model(**batch["net_input"])
        batch["net_input"]["source_lang"] = torch.full_like(batch["net_input"]["source_lang"],
                                                            task.lang_tag_index("fr"))
        other, _ = model(**batch["net_input"])
    assert not torch.allclose(logits, other)


def test_mdropnet_hides_the_image_or_the_source(data_dir):
    task, model, dataset = build(data_dir)
    model.eval()
    net_input = batch_of(dataset, list(range(4)))["net_input"]
    other_images = {"image_patches": net_input["image_patches"].roll(1, 0),
                    "image_global": net_input["image_global"].roll(1, 0)}
    # another source of the same lengths: every word piece replaced by one ordinary piece (the
    # target-language tag, </s> and the padding stay where they are)
    dictionary = task.source_dictionary
    src_tokens = net_input["src_tokens"]
    word = next(i for i in range(dictionary.nspecial, len(dictionary))
                if not dictionary[i].startswith("__") and "mask" not in dictionary[i].lower())
    is_tag = torch.tensor([dictionary[i].startswith("__") for i in range(len(dictionary))])[src_tokens]
    is_word = (src_tokens != dictionary.pad()) & (src_tokens != dictionary.eos()) & ~is_tag
    other_source = {"src_tokens": src_tokens.masked_fill(is_word, word)}
    assert (other_source["src_tokens"] != src_tokens).any(1).all()  # every sentence changed

    def logits(modality, **changes):
        with torch.no_grad():
            modalities = torch.full((4,), modality)
            return model(**{**net_input, **changes}, modalities=modalities)[0]

    torch.testing.assert_close(logits(TEXT_ONLY), logits(TEXT_ONLY, **other_images))
    assert not torch.allclose(logits(TEXT_AND_IMAGE), logits(TEXT_AND_IMAGE, **other_images))
    # image only: the source tokens are hidden (the prompt stays), so another source changes nothing
    torch.testing.assert_close(logits(IMAGE_ONLY), logits(IMAGE_ONLY, **other_source))
    assert not torch.allclose(logits(TEXT_AND_IMAGE), logits(TEXT_AND_IMAGE, **other_source))
    # without a drop the image-only and text-only predictions differ from the full prefix
    assert not torch.allclose(logits(IMAGE_ONLY), logits(TEXT_AND_IMAGE))


def test_m3p_loss_trains_the_decoder_only_model_with_mmcl(data_dir):
    task, model, dataset = build(data_dir, "--mdropnet-text-only", "0.25", "--mdropnet-image-only", "0.25")
    criterion = M3PLoss(task, sentence_avg=False, label_smoothing=0.1, mmcl_weight=0.5)
    model.train()
    sample = batch_of(dataset, list(range(8)))
    loss, sample_size, logs = criterion(model, sample)
    assert torch.isfinite(loss) and logs["mmcl_pairs"] == 8 and sample_size == sample["ntokens"]
    loss.backward()
    unused = [name for name, p in model.named_parameters() if p.grad is None]
    assert unused == []  # every parameter in the graph, as DistributedDataParallel requires
    # s^k comes from a text-only pass: the image does not leak into the text side of MMCL
    model.eval()
    with torch.no_grad():
        text = model(**sample["net_input"], contrastive=True)[1]["mmcl_text"]
        swapped = {**sample["net_input"], "image_patches": sample["net_input"]["image_patches"].flip(0)}
        assert torch.equal(text, model(**swapped, contrastive=True)[1]["mmcl_text"])


def test_a_missing_source_language_is_a_clear_error(data_dir):
    task, model, dataset = build(data_dir)
    net_input = dict(batch_of(dataset, [0, 1])["net_input"])
    del net_input["source_lang"]
    with pytest.raises(ValueError, match="source_lang"):
        model(**net_input)


def test_a_batch_mixing_directions_carries_each_sentences_source_language(data_dir):
    torch.manual_seed(0)
    task, cfg = setup_task(data_dir, *TINY, arch="m3p_decoder_only_tiny")  # en-de, de-en, en-fr
    task.load_dataset("train")
    task.build_model(cfg.model)
    train = task.dataset("train")
    offsets = [0] + list(train.cumulative_sizes[:-1])
    # the same local id (3, 7) in every direction: ids alone cannot tell these sentences apart
    batch = train.collater([train[offset + i] for offset in offsets for i in (3, 7)])
    tags = batch["net_input"]["src_tokens"].gather(1, (batch["net_input"]["src_tokens"] != task.source_dictionary.pad())
                                                   .long().argmax(1, keepdim=True)).squeeze(1)
    directions = [(task.source_dictionary[s][2:-2], task.source_dictionary[t][2:-2])
                  for s, t in zip(batch["net_input"]["source_lang"].tolist(), tags.tolist())]
    assert sorted(directions) == sorted([("en", "de"), ("de", "en"), ("en", "fr")] * 2)


def test_fairseq_interactive_without_source_lang_says_pass_source_lang(data_dir, tmp_path):
    """The prompt names the source language, which fairseq-interactive's input does not carry:
    without -s the command stops with that message (exit status 1, no traceback)."""
    import subprocess

    from omegaconf import OmegaConf

    from helpers import REPO

    torch.manual_seed(0)
    task, cfg = setup_task(data_dir, *TINY, lang_pairs="en-de", arch="m3p_decoder_only_tiny")
    model = task.build_model(cfg.model)
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"cfg": OmegaConf.to_container(cfg), "model": model.state_dict(), "extra_state": {},
                "optimizer_history": [{"criterion_name": "M3PLoss", "optimizer_name": "Adam",
                                       "lr_scheduler_state": {"best": None}, "num_updates": 0}]}, checkpoint)
    image_id = (data_dir / "test.image_ids").read_text().split("\n")[0]

    def interactive(*languages):
        return subprocess.run(
            ["fairseq-interactive", str(data_dir), "--user-dir", str(REPO / "m3p_fairseq"),
             "--task", "multimodal_translation", "--lang-pairs", "en-de", *languages,
             "--image-features", str(data_dir / "image_features.h5"), "--path", str(checkpoint),
             "--bpe", "sentencepiece", "--sentencepiece-model", str(data_dir / "spm.model"), "--max-len-b", "5"],
            cwd=REPO, input=f"{image_id}\tA small red circle.\n", capture_output=True, text=True)

    without = interactive("-t", "de")
    assert without.returncode == 1
    assert without.stderr.rstrip().endswith("fairseq-interactive: the model's instruction prompt names the "
                                            "source language: pass --source-lang (-s), e.g. -s en -t de")
    assert "Traceback" not in without.stderr
    with_source = interactive("-s", "en", "-t", "de")
    assert with_source.returncode == 0, with_source.stderr[-2000:]
    assert "H-0\t" in with_source.stdout
