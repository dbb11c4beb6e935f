"""--decoder-langtok, as fairseq's translation_multi_simple_epoch has it: the target language's
tag also starts every target (so the decoder reads </s>, tag, words), generation forces it as the
first token, per row of a batch that mixes directions, and the output leaves it out."""

from argparse import Namespace

import pytest
import torch
from fairseq.dataclass.configs import GenerationConfig

from helpers import setup_task
from m3p_fairseq.evaluation.translation import translate_dataset


def collate(task, split, indices):
    dataset = task.dataset(split)
    return dataset.collater([dataset[i] for i in indices])


def test_every_target_starts_with_its_own_tag_in_a_mixed_batch(data_dir):
    plain, _ = setup_task(data_dir, "--fusion", "none")
    tagged, _ = setup_task(data_dir, "--fusion", "none", "--decoder-langtok")
    for task in (plain, tagged):
        task.load_dataset("valid")
    parts = tagged.dataset("valid").datasets  # en-de, de-en, en-fr
    indices = [0, len(parts[0]) + 1, len(parts[0]) + len(parts[1]) + 2]
    without, with_tag = collate(plain, "valid", indices), collate(tagged, "valid", indices)
    assert torch.equal(without["id"], with_tag["id"])
    assert torch.equal(with_tag["net_input"]["src_tokens"], without["net_input"]["src_tokens"])
    # each row's direction, from its source tag (the batch is ordered by length)
    tags = [tagged.src_dict[int(row[row != tagged.src_dict.pad()][0])] for row in with_tag["net_input"]["src_tokens"]]
    assert sorted(tags) == ["__de__", "__en__", "__fr__"]
    tag_ids = torch.tensor([tagged.src_dict.index(tag) for tag in tags])
    eos, pad = tagged.src_dict.eos(), tagged.src_dict.pad()
    for row in range(3):
        plain_target = without["target"][row][without["target"][row] != pad]
        tagged_target = with_tag["target"][row][with_tag["target"][row] != pad]
        assert tagged_target.tolist() == [int(tag_ids[row])] + plain_target.tolist()
        prev = with_tag["net_input"]["prev_output_tokens"][row]
        assert prev[prev != pad].tolist() == [eos, int(tag_ids[row])] + plain_target.tolist()[:-1]
    assert with_tag["ntokens"] == without["ntokens"] + 3


def greedy_by_hand(model, sample, forced, max_len):
    """Greedy decoding after </s> and the ``forced`` first tokens [B], scored the way fairseq's
    generator does (no <pad>, no </s> before ``max_len``), one forward pass per step."""
    net_input = sample["net_input"]
    eos, pad = 2, 1
    tokens = torch.stack([torch.full_like(forced, eos), forced], dim=1)
    finished = torch.zeros(tokens.size(0), dtype=torch.bool)
    for step in range(1, max_len):
        logits = model(**{**net_input, "prev_output_tokens": tokens})[0][:, -1].float()
        logits[:, pad] = -float("inf")
        next_token = logits.argmax(-1) if step < max_len - 1 else torch.full_like(forced, eos)
        next_token[finished] = pad
        finished |= next_token == eos
        tokens = torch.cat([tokens, next_token[:, None]], 1)
        if finished.all():
            break
    return [row[1:][row[1:] != pad].tolist() for row in tokens]


def test_generation_forces_each_rows_tag_first_and_leaves_it_out_of_the_text(data_dir):
    task, cfg = setup_task(data_dir, "--fusion", "none", "--decoder-langtok")
    torch.manual_seed(0)
    model = task.build_model(cfg.model).eval()
    task.load_dataset("valid")
    parts = task.dataset("valid").datasets
    sample = collate(task, "valid", [0, len(parts[0]) + 1, len(parts[0]) + len(parts[1]) + 2])  # 3 directions
    generator = task.build_generator([model], GenerationConfig(beam=1, max_len_a=0, max_len_b=6))
    hypotheses = [output[0]["tokens"].tolist() for output in task.inference_step(generator, [model], sample)]
    forced = sample["target"][:, 0]
    with torch.no_grad():
        assert hypotheses == greedy_by_hand(model, sample, forced, 7)
    assert [h[0] for h in hypotheses] == forced.tolist()
    tags = {task.src_dict.index(f"__{lang}__") for lang in task.languages}
    assert tags <= generator.symbols_to_strip_from_output


def test_translated_text_and_references_have_no_tag(data_dir):
    task, cfg = setup_task(data_dir, "--fusion", "none", "--decoder-langtok", "--source-lang", "en",
                           "--target-lang", "fr")
    model = task.build_model(cfg.model).eval()
    task.load_dataset("test")
    hypotheses, references = translate_dataset([model], task, task.dataset("test"), beam=2, max_len_b=5)
    assert len(hypotheses) == len(references) == 40
    assert not any("__" in text for text in hypotheses + references)
    assert references[0] and references[0] == task.target_dictionary.string(
        task.dataset("test")[0]["target"][1:], "sentencepiece")  # the reference without its tag


def test_fairseq_interactive_input_gets_the_target_tag_from_the_option(data_dir):
    task, cfg = setup_task(data_dir, "--fusion", "none", "--decoder-langtok", "--target-lang", "de")
    sample = {"net_input": {"src_tokens": torch.tensor([[5, 6, 2], [7, 8, 2]])}}  # no target
    assert task._target_tags(sample).tolist() == [[task.src_dict.index("__de__")]] * 2
    task.cfg.target_lang = None
    with pytest.raises(ValueError, match="--decoder-langtok needs --target-lang"):
        task._target_tags(sample)


def test_fairseq_generate_takes_the_setting_from_the_checkpoint(data_dir):
    """fairseq-generate hands load_dataset the checkpoint's task config (task_cfg)."""
    task, _ = setup_task(data_dir, "--fusion", "none", "--source-lang", "en", "--target-lang", "de")
    task.load_dataset("test", task_cfg=Namespace(decoder_langtok=True))
    assert task.cfg.decoder_langtok
    assert collate(task, "test", [0])["target"][0, 0] == task.src_dict.index("__de__")


def test_the_decoder_only_model_refuses_it(data_dir):
    task, cfg = setup_task(data_dir, "--fusion", "none", "--decoder-langtok", arch="m3p_decoder_only_tiny")
    with pytest.raises(ValueError, match="--decoder-langtok is for encoder-decoder models"):
        task.build_model(cfg.model)
