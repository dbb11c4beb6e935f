"""Beam search through fairseq's SequenceGenerator: the image side is encoded once per sentence
and reordered with the beams, so a sentence gets the same translation alone or in a batch."""

import pytest
import torch
from fairseq.dataclass.configs import GenerationConfig

from helpers import as_if_trained, assert_batch_equals_alone, setup_task


@pytest.mark.parametrize("fusion", ["cvlm", "concat", "gated", "selective"])
def test_batch_and_single_sentence_give_the_same_hypothesis(data_dir, fusion):
    torch.manual_seed(0)
    task, cfg = setup_task(data_dir, "--fusion", fusion, "--source-lang", "en", "--target-lang", "de",
                           "--dropout", "0")
    task.load_dataset("test")
    dataset = task.dataset("test")
    model = as_if_trained(task.build_model(cfg.model)).eval()
    assert_batch_equals_alone(task, model, dataset, list(range(32)))


def test_the_image_changes_the_translation(data_dir):
    torch.manual_seed(0)
    task, cfg = setup_task(data_dir, "--fusion", "cvlm", "--source-lang", "en", "--target-lang", "de",
                           "--dropout", "0")
    task.load_dataset("test")
    dataset = task.dataset("test")
    model = as_if_trained(task.build_model(cfg.model)).eval()
    generator = task.build_generator([model], GenerationConfig(beam=5, max_len_b=12))
    batch = dataset.collater([dataset[i] for i in range(8)])
    with torch.no_grad():
        scores = [o[0]["score"].item() for o in task.inference_step(generator, [model], batch)]
        batch["net_input"]["image_patches"] = batch["net_input"]["image_patches"].flip(0)
        batch["net_input"]["image_global"] = batch["net_input"]["image_global"].flip(0)
        swapped = [o[0]["score"].item() for o in task.inference_step(generator, [model], batch)]
    assert scores != swapped
