"""--decoder-langtok: the decoder starts with the target language's tag instead of </s>, per row of
a batch that mixes directions, and generation starts from the same tag."""

from argparse import Namespace

import pytest
import torch
from fairseq.dataclass.configs import GenerationConfig

from helpers import setup_task


def collate(task, split, indices):
    dataset = task.dataset(split)
    return dataset.collater([dataset[i] for i in indices])


def test_each_row_of_a_mixed_batch_starts_with_its_own_target_tag(data_dir):
    plain, _ = setup_task(data_dir, "--fusion", "none")
    tagged, _ = setup_task(data_dir, "--fusion", "none", "--decoder-langtok")
    for task in (plain, tagged):
        task.load_dataset("valid")
    parts = tagged.dataset("valid").datasets  # en-de, de-en, en-fr
    indices = [0, len(parts[0]) + 1, len(parts[0]) + len(parts[1]) + 2]
    without, with_tag = collate(plain, "valid", indices), collate(tagged, "valid", indices)
    assert torch.equal(without["id"], with_tag["id"]) and torch.equal(without["target"], with_tag["target"])
    prev_plain = without["net_input"]["prev_output_tokens"]
    prev_tagged = with_tag["net_input"]["prev_output_tokens"]
    assert prev_plain[:, 0].tolist() == [plain.src_dict.eos()] * 3
    # the batch is ordered by length: find each row's direction from its source tag
    targets = [tagged.src_dict[int(row[row != tagged.src_dict.pad()][0])] for row in with_tag["net_input"]["src_tokens"]]
    assert sorted(targets) == ["__de__", "__en__", "__fr__"]
    assert prev_tagged[:, 0].tolist() == [tagged.src_dict.index(tag) for tag in targets]
    assert torch.equal(prev_tagged[:, 1:], prev_plain[:, 1:])
    assert torch.equal(with_tag["net_input"]["src_tokens"], without["net_input"]["src_tokens"])


def greedy_by_hand(model, sample, start, max_len):
    """Greedy decoding from ``start`` the way fairseq's generator scores (no <pad>, no </s> at
    the first step), one forward pass per step over the whole prefix."""
    net_input = sample["net_input"]
    tokens = torch.full((net_input["src_tokens"].size(0), 1), start)
    finished = torch.zeros(tokens.size(0), dtype=torch.bool)
    eos, pad = 2, 1
    for step in range(max_len):
        logits = model(**{**net_input, "prev_output_tokens": tokens})[0][:, -1].float()
        logits[:, pad] = -float("inf")
        if step == 0:
            logits[:, eos] = -float("inf")
        if step == max_len - 1:
            next_token = torch.full((tokens.size(0),), eos)
        else:
            next_token = logits.argmax(-1)
        next_token[finished] = pad
        finished |= next_token == eos
        tokens = torch.cat([tokens, next_token[:, None]], 1)
        if finished.all():
            break
    return [row[1:][row[1:] != pad].tolist() for row in tokens]


def test_generation_starts_from_the_target_tag(data_dir):
    task, cfg = setup_task(data_dir, "--fusion", "none", "--decoder-langtok", "--source-lang", "en",
                           "--target-lang", "fr")
    torch.manual_seed(0)
    model = task.build_model(cfg.model).eval()
    task.load_dataset("test")
    sample = collate(task, "test", [0, 1, 2])
    generator = task.build_generator([model], GenerationConfig(beam=1, max_len_a=0, max_len_b=6))
    outputs = task.inference_step(generator, [model], sample)
    hypotheses = [output[0]["tokens"].tolist() for output in outputs]
    with torch.no_grad():
        from_tag = greedy_by_hand(model, sample, task.src_dict.index("__fr__"), 7)
        from_eos = greedy_by_hand(model, sample, task.src_dict.eos(), 7)
    assert hypotheses == from_tag
    assert from_tag != from_eos  # the start symbol matters: the check above can tell them apart


def test_generation_needs_a_target_language(data_dir):
    task, cfg = setup_task(data_dir, "--fusion", "none", "--decoder-langtok")
    model = task.build_model(cfg.model).eval()
    task.load_dataset("valid")
    generator = task.build_generator([model], GenerationConfig(beam=1, max_len_b=3))
    with pytest.raises(ValueError, match="one direction per run: pass --target-lang"):
        task.inference_step(generator, [model], collate(task, "valid", [0]))


def test_fairseq_generate_takes_the_setting_from_the_checkpoint(data_dir):
    """fairseq-generate hands load_dataset the checkpoint's task config (task_cfg)."""
    task, _ = setup_task(data_dir, "--fusion", "none", "--source-lang", "en", "--target-lang", "de")
    task.load_dataset("test", task_cfg=Namespace(decoder_langtok=True))
    assert task.cfg.decoder_langtok
    assert collate(task, "test", [0])["net_input"]["prev_output_tokens"][0, 0] == task.src_dict.index("__de__")


def test_the_decoder_only_model_refuses_it(data_dir):
    task, cfg = setup_task(data_dir, "--fusion", "none", "--decoder-langtok", arch="m3p_decoder_only_tiny")
    with pytest.raises(ValueError, match="--decoder-langtok is for encoder-decoder models"):
        task.build_model(cfg.model)
