"""Object tags (Eq. 1's t) through --task multimodal_translation into a vlp_mmt model: the
tags of each sentence's image reach the encoder input in training, validation, generation and
fairseq-interactive batches; they are read only for a model that reads them; generation from a
model that reads them refuses a feature file without them, naming the file."""

import pytest
import sentencepiece as spm
import torch
from fairseq.dataclass.configs import GenerationConfig

from helpers import assert_batch_equals_alone, setup_task
from m3p_fairseq.data.batch_keys import OBJECT_TAGS
from m3p_fairseq.data.image_features import ImageFeatureError, read_image_ids
from preprocess.write_synthetic_tags import scene_tags

VLP_ARGS = ["--arch", "vlp_mmt_tiny", "--encoder-layers", "2", "--decoder-layers", "2", "--dropout", "0",
            "--source-lang", "en", "--target-lang", "de"]


def expected_tag_ids(data, dictionary, caption):
    """The ids the tags of a scene must have, worked out from the caption: its colour and shape
    words, split into SentencePiece pieces, each piece's line in dict.txt, then </s>."""
    processor = spm.SentencePieceProcessor(model_file=str(data / "spm.model"))
    pieces = processor.encode(scene_tags(caption), out_type=str)
    ids = [dictionary.index(piece) for piece in pieces] + [dictionary.eos()]
    assert dictionary.unk() not in ids and len(ids) >= 3
    return ids


class EncoderInput:
    """Records the token ids the VLP encoder embeds: Cat[x, t] of Eq. 1."""

    def __init__(self, model):
        self.seen = []
        model.encoder.text_encoder.embed_tokens.register_forward_hook(
            lambda module, args, output: self.seen.append(args[0].clone()))


def built_on(data, *extra, load=("valid",)):
    torch.manual_seed(0)
    task, cfg = setup_task(data, *VLP_ARGS, *extra, lang_pairs="en-de")
    for split in load:  # fairseq-train loads the validation split before it builds the model
        task.load_dataset(split)
    model = task.build_model(cfg.model)
    return task, cfg, model


def first_batch(task, split, n=8):
    iterator = task.get_batch_iterator(task.dataset(split), max_sentences=n, seed=1)
    return next(iter(iterator.next_epoch_itr(shuffle=False)))


def test_tags_of_each_image_reach_the_encoder_input_in_every_split(tagged_data, raw_corpus):
    task, cfg, model = built_on(tagged_data)
    assert cfg.model.object_tags == "yes"  # auto: the feature file carries tags
    assert model.reads_object_tags
    d = task.source_dictionary
    model.eval()
    recorder = EncoderInput(model)
    for split in ("train", "valid", "test"):
        if split != "valid":
            task.load_dataset(split)
        batch = first_batch(task, split)
        captions = (raw_corpus / f"{split}.en").read_text().splitlines()
        image_ids = read_image_ids(raw_corpus / f"{split}.image_ids")
        recorder.seen.clear()
        with torch.no_grad():
            model(**batch["net_input"])
        embedded = recorder.seen[0]
        src_width = batch["net_input"]["src_tokens"].size(1)
        for row, example in enumerate(batch["id"].tolist()):
            tags = embedded[row, src_width:]
            expected = expected_tag_ids(tagged_data, d, captions[example])
            assert tags[tags != d.pad()].tolist() == expected, (split, image_ids[example])
            # the sentence itself comes first, untouched
            assert torch.equal(embedded[row, :src_width], batch["net_input"]["src_tokens"][row])


def test_beam_output_alone_equals_in_a_batch_with_tags(tagged_data):
    task, _, model = built_on(tagged_data, load=("test",))
    model.eval()
    dataset = task.dataset("test")
    batch = dataset.collater([dataset[i] for i in range(16)])
    tags = batch["net_input"][OBJECT_TAGS]
    d = task.source_dictionary
    # scenes with 1 and with 2 objects: some rows' tags are padded in the batch, not alone
    assert len(set(tags.ne(d.pad()).sum(1).tolist())) > 1
    assert_batch_equals_alone(task, model, dataset, list(range(16)))


def test_tags_change_the_translation_input(tagged_data):
    """Same sentence, same image, the tags removed from the batch: other encoder states."""
    task, _, model = built_on(tagged_data, load=("test",))
    model.eval()
    batch = first_batch(task, "test", 4)
    without = {k: v for k, v in batch["net_input"].items() if k != OBJECT_TAGS}
    with torch.no_grad():
        tagged = model.encoder(**batch["net_input"])["encoder_out"][0]
        plain = model.encoder(**without)["encoder_out"][0]
    width = batch["net_input"]["src_tokens"].size(1)
    assert not torch.allclose(tagged[:width], plain[:width], atol=1e-4)


def test_tags_only_for_a_model_that_reads_them(data_dir, tagged_data):
    for data, extra, recorded in ((tagged_data, ["--object-tags", "no"], "no"), (data_dir, [], "no"),
                                  (tagged_data, ["--arch", "m3p_transformer_tiny"], None)):
        task, cfg, model = built_on(data, *extra)
        assert not model.reads_object_tags and getattr(cfg.model, "object_tags", None) == recorded
        assert OBJECT_TAGS not in first_batch(task, "valid")["net_input"], extra


def test_a_model_that_reads_tags_refuses_a_file_without_them(data_dir, tagged_data):
    _, trained_cfg, _ = built_on(tagged_data)
    # generation from that model's config (--object-tags recorded as yes) on data without tags
    task, cfg = setup_task(data_dir, *VLP_ARGS, "--object-tags", trained_cfg.model.object_tags, lang_pairs="en-de")
    task.build_model(cfg.model)
    with pytest.raises(ImageFeatureError, match=f"{data_dir / 'image_features.h5'} carries no object tags"):
        task.load_dataset("test")
    task, cfg = setup_task(data_dir, *VLP_ARGS, "--object-tags", "yes", lang_pairs="en-de")
    task.load_dataset("valid")
    with pytest.raises(ImageFeatureError, match="split 'valid'"):
        task.build_model(cfg.model)
    task, cfg = setup_task(data_dir, *VLP_ARGS, "--object-tags", "sometimes", lang_pairs="en-de")
    with pytest.raises(ValueError, match="expected one of auto, yes, no"):
        task.build_model(cfg.model)


def test_fairseq_interactive_batches_carry_the_tags(tagged_data, raw_corpus):
    """fairseq-interactive's path: IMAGE_ID<TAB>sentence lines, a dataset for inference, then a
    batch reduced to src_tokens/src_lengths that inference_step completes."""
    task, cfg = setup_task(tagged_data, *VLP_ARGS, "--image-features", tagged_data / "image_features.h5",
                           lang_pairs="en-de")
    torch.manual_seed(0)
    model = task.build_model(cfg.model).eval()
    d = task.source_dictionary
    processor = spm.SentencePieceProcessor(model_file=str(tagged_data / "spm.model"))
    captions = (raw_corpus / "test.en").read_text().splitlines()[:3]
    image_ids = read_image_ids(raw_corpus / "test.image_ids")[:3]
    lines = [f"{image_id}\t{caption}" for image_id, caption in zip(image_ids, captions)]
    tokens, lengths = task.get_interactive_tokens_and_lengths(
        lines, lambda text: " ".join(processor.encode(text, out_type=str)))
    dataset = task.build_dataset_for_inference(tokens, lengths)
    full = dataset.collater([dataset[i] for i in range(len(dataset))])
    reduced = {"id": full["id"], "net_input": {key: full["net_input"][key] for key in ("src_tokens", "src_lengths")}}
    recorder = EncoderInput(model)
    generator = task.build_generator([model], GenerationConfig(beam=2, max_len_b=10))
    with torch.no_grad():
        task.inference_step(generator, [model], reduced)
    src_width = reduced["net_input"]["src_tokens"].size(1)
    embedded = recorder.seen[0]  # the encoder's one call (beam search expands its output)
    for row, example in enumerate(full["id"].tolist()):
        tags = embedded[row, src_width:]
        assert tags[tags != d.pad()].tolist() == expected_tag_ids(tagged_data, d, captions[example])
