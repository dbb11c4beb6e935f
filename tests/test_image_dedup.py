"""Each image once per batch (issue 16): the collater reads and stacks each distinct image once
(IMAGE_INDEX points the rows to it), the models project and encode it once and gather the
states to the rows, and every output equals the per-row path's. Batches carry each row's image
identity (IMAGE_ROW), which MMCL uses for its positives."""

import pytest
import torch

from helpers import as_if_trained, setup_task
from m3p_fairseq.data.batch_keys import IMAGE_GLOBAL, IMAGE_INDEX, IMAGE_PATCHES, IMAGE_ROW
from m3p_fairseq.data.multimodal_pair_dataset import images_per_row

# valid is en-de, de-en, en-fr (12 lines each, line n of every direction shows image n):
# lines 0 and 1 of each direction, so images 0 and 1 come three times each, image 2 once
INDICES = [0, 1, 12, 13, 24, 25, 2]


def _repeated_batch(task):
    task.load_dataset("valid")
    dataset = task.dataset("valid")
    return dataset, dataset.collater([dataset[i] for i in INDICES])


def _per_row(net_input):
    patches, global_vectors = images_per_row(net_input)
    per_row = {key: value for key, value in net_input.items() if key != IMAGE_INDEX}
    return {**per_row, IMAGE_PATCHES: patches, IMAGE_GLOBAL: global_vectors}


def test_the_collater_stacks_each_distinct_image_once_and_reads_it_once(data_dir):
    task, _ = setup_task(data_dir)
    task.load_dataset("valid")
    dataset = task.dataset("valid")
    store = dataset.datasets[0].image_store
    file_reads = []
    open_datasets = store._datasets  # what read() calls to reach the file
    store._datasets = lambda: file_reads.append(1) or open_datasets()
    try:
        batch = dataset.collater([dataset[i] for i in INDICES])
    finally:
        del store._datasets
    net_input = batch["net_input"]
    rows = [int(d.image_rows[i]) for d, i in
            [(dataset.datasets[index // 12], index % 12) for index in INDICES]]
    assert sorted(net_input[IMAGE_ROW].tolist()) == sorted(rows)
    assert len(set(rows)) == 3 and len(file_reads) == 3  # each distinct image read from the file once
    assert net_input[IMAGE_PATCHES].shape[0] == 3 and net_input[IMAGE_GLOBAL].shape[0] == 3
    assert net_input[IMAGE_INDEX].shape == (len(INDICES),)
    patches, global_vectors = images_per_row(net_input)
    for position, row in enumerate(net_input[IMAGE_ROW].tolist()):
        expected_patches, expected_global = store.read(row)
        assert torch.equal(patches[position], expected_patches.float())
        assert torch.equal(global_vectors[position], expected_global.float())


def test_a_batch_without_repeats_stays_per_row(data_dir):
    task, _ = setup_task(data_dir)
    task.load_dataset("valid")
    dataset = task.dataset("valid")
    net_input = dataset.collater([dataset[i] for i in range(5)])["net_input"]
    assert IMAGE_INDEX not in net_input and net_input[IMAGE_PATCHES].shape[0] == 5
    assert sorted(net_input[IMAGE_ROW].tolist()) == sorted(int(dataset.datasets[0].image_rows[i]) for i in range(5))


@pytest.mark.parametrize("arch, fusion", [("m3p_transformer_tiny", "cvlm"), ("m3p_transformer_tiny", "gated"),
                                          ("m3p_decoder_only_tiny", "prefix")])
def test_deduplicated_images_give_the_per_row_outputs(data_dir, arch, fusion):
    task, cfg = setup_task(data_dir, "--fusion", fusion, "--criterion", "m3p_loss", "--mmcl-weight", "1",
                           "--label-smoothing", "0.1", arch=arch)
    torch.manual_seed(0)
    model = as_if_trained(task.build_model(cfg.model)).eval()
    criterion = task.build_criterion(cfg.criterion)
    _, batch = _repeated_batch(task)
    assert batch["net_input"][IMAGE_PATCHES].shape[0] < len(INDICES)
    per_row = _per_row(batch["net_input"])
    with torch.no_grad():
        logits, extra = model(**batch["net_input"], contrastive=True)
        row_logits, row_extra = model(**per_row, contrastive=True)
        loss, _, logs = criterion(model, batch)
        row_loss, _, row_logs = criterion(model, {**batch, "net_input": per_row})
    torch.testing.assert_close(logits, row_logits, rtol=0, atol=1e-6)
    for key in ("mmcl_text", "mmcl_image"):
        torch.testing.assert_close(extra[key], row_extra[key], rtol=0, atol=1e-6)
    torch.testing.assert_close(loss, row_loss, rtol=1e-6, atol=0)
    assert logs["mmcl_correct"] == row_logs["mmcl_correct"]
