"""Each image once per batch (issue 16): the collater reads and stacks each distinct image once
(IMAGE_INDEX points the rows to it), the models project and encode it once and gather the
states to the rows, and every output equals the per-row path's. Batches carry each row's image
identity (IMAGE_ROW), which MMCL uses for its positives."""

import pytest
import torch
from fairseq.dataclass.configs import GenerationConfig

from helpers import as_if_trained, setup_task
from m3p_fairseq.data.batch_keys import IMAGE_GLOBAL, IMAGE_INDEX, IMAGE_PATCHES, IMAGE_ROW, MODALITIES
from m3p_fairseq.data.multimodal_pair_dataset import images_per_row
from m3p_fairseq.models.fusion import build_fusion

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


@pytest.mark.parametrize("arch, fusion", [("m3p_transformer_tiny", "cvlm"), ("m3p_transformer_tiny", "selective"),
                                          ("m3p_transformer_tiny", "gated"), ("m3p_transformer_tiny", "concat"),
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
    # float32 kernels chosen by batch shape (and CPU: AVX2 or AVX-512) sum in different orders;
    # a row given another row's image would differ by far more than 1e-5
    torch.testing.assert_close(logits, row_logits, rtol=0, atol=1e-5)
    for key in ("mmcl_text", "mmcl_image"):
        torch.testing.assert_close(extra[key], row_extra[key], rtol=0, atol=1e-5)
    torch.testing.assert_close(loss, row_loss, rtol=1e-6, atol=0)
    assert logs["mmcl_correct"] == row_logs["mmcl_correct"]


# ---- the attention fusions project each distinct image's keys and values once ----------------
# Tolerances: the outputs come out bitwise equal on this machine, but the dedup path's key/value
# projections are matrix products over U instead of B rows, which BLAS may block differently; the
# gradients of k_proj/v_proj and of the patches differ in the last bits because the dedup path sums
# the repeated rows' gradients before the projection's backward (index_select's backward), the
# per-row path after it: the same sum in another order.
U, ROWS_OF_IMAGE = 3, torch.tensor([0, 1, 0, 2, 1, 0])  # 3 distinct images over 6 rows
T, C, P = 5, 8, 4


def _fusion_inputs():
    generator = torch.Generator().manual_seed(1)
    text = torch.randn(T, len(ROWS_OF_IMAGE), C, generator=generator, requires_grad=True)
    padding = torch.zeros(len(ROWS_OF_IMAGE), T, dtype=torch.bool)
    padding[1, :2] = True
    distinct_patches = torch.randn(P, U, C, generator=generator, requires_grad=True)
    global_state = torch.randn(len(ROWS_OF_IMAGE), C, generator=generator)
    return text, padding, distinct_patches, global_state


def _fuse_and_backward(fusion, deduplicated: bool):
    """The fused states and the gradients of every parameter and of the inputs (text, distinct
    patches) for a fixed random loss; the per-row path gathers the patches before the fusion."""
    text, padding, distinct_patches, global_state = _fusion_inputs()
    if deduplicated:
        fused, _ = fusion(text, padding, distinct_patches, global_state, ROWS_OF_IMAGE)
    else:
        fused, _ = fusion(text, padding, distinct_patches.index_select(1, ROWS_OF_IMAGE), global_state)
    weights = torch.randn(fused.shape, generator=torch.Generator().manual_seed(2))
    fusion.zero_grad()
    (fused * weights).sum().backward()
    gradients = {name: parameter.grad.clone() for name, parameter in fusion.named_parameters()
                 if parameter.grad is not None}
    return fused.detach(), {**gradients, "text": text.grad, "patches": distinct_patches.grad}


@pytest.mark.parametrize("name, heads", [("cvlm", 2), ("selective", 1), ("selective", 2), ("gated", 2),
                                         ("concat", 2)])
@pytest.mark.parametrize("training", [True, False])
def test_a_fusion_of_distinct_images_equals_the_per_row_fusion(name, heads, training):
    torch.manual_seed(0)
    fusion = as_if_trained(build_fusion(name, C, heads, 0.0, 0.0)).train(training)
    fused, gradients = _fuse_and_backward(fusion, deduplicated=True)
    row_fused, row_gradients = _fuse_and_backward(fusion, deduplicated=False)
    torch.testing.assert_close(fused, row_fused, rtol=1e-6, atol=1e-6)
    assert gradients.keys() == row_gradients.keys() and "patches" in gradients
    for key, gradient in gradients.items():
        torch.testing.assert_close(gradient, row_gradients[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("name", ["cvlm", "selective"])
def test_the_keys_and_values_are_projected_once_per_distinct_image(name):
    fusion = build_fusion(name, C, 2, 0.0, 0.0).eval()
    projected_rows = []
    for projection in (fusion.attention.k_proj, fusion.attention.v_proj):
        projection.register_forward_hook(lambda _m, args, _out: projected_rows.append(args[0].shape[:2]))
    text, padding, distinct_patches, global_state = _fusion_inputs()
    with torch.no_grad():
        fusion(text, padding, distinct_patches, global_state, ROWS_OF_IMAGE)
    assert projected_rows == [(P, U), (P, U)]


@pytest.mark.parametrize("fusion", ["cvlm", "selective"])
@pytest.mark.parametrize("modes", [None, [0, 1, 2, 2, 0, 1, 2]])
def test_training_with_deduplicated_images_gives_the_per_row_outputs_and_gradients(data_dir, fusion, modes):
    """Train mode (dropout 0, so both passes are deterministic), with MDropNet's modes fixed to a
    mix of text-only / image-only / both (the image-only prompt needs per-row patch states)."""
    task, cfg = setup_task(data_dir, "--fusion", fusion, "--dropout", "0", "--attention-dropout", "0",
                           "--mdropnet-text-only", "0", "--mdropnet-image-only", "0")
    torch.manual_seed(0)
    model = as_if_trained(task.build_model(cfg.model)).train()
    _, batch = _repeated_batch(task)
    extra_input = {} if modes is None else {MODALITIES: torch.tensor(modes)}
    results = []
    for net_input in (batch["net_input"], _per_row(batch["net_input"])):
        model.zero_grad()
        logits, _ = model(**net_input, **extra_input)
        logits.float().pow(2).mean().backward()
        results.append((logits.detach(), {name: parameter.grad.clone() for name, parameter
                                          in model.named_parameters() if parameter.grad is not None}))
    (logits, gradients), (row_logits, row_gradients) = results
    torch.testing.assert_close(logits, row_logits, rtol=0, atol=1e-5)
    assert gradients.keys() == row_gradients.keys()
    assert any(name.startswith("encoder.fusion.attention.k_proj") for name in gradients)
    for name, gradient in gradients.items():
        torch.testing.assert_close(gradient, row_gradients[name], rtol=1e-4, atol=1e-6, msg=name)


def _hypotheses_by_source(task, model, dataset, indices):
    """Beam search over ``indices`` in one batch: {source tokens: best hypothesis}. Keyed by the
    source (which starts with the target-language tag) because the ids of a multi-direction
    dataset repeat across its directions."""
    generator = task.build_generator([model], GenerationConfig(beam=5, max_len_b=12))
    batch = dataset.collater([dataset[i] for i in indices])
    with torch.no_grad():
        outputs = task.inference_step(generator, [model], batch)
    pad = task.source_dictionary.pad()
    return {tuple(tokens[tokens != pad].tolist()): output[0]["tokens"].tolist()
            for tokens, output in zip(batch["net_input"]["src_tokens"], outputs)}


@pytest.mark.parametrize("fusion", ["cvlm", "selective"])
def test_beam_search_over_repeated_images_gives_each_sentence_its_hypothesis_alone(data_dir, fusion):
    task, cfg = setup_task(data_dir, "--fusion", fusion)
    torch.manual_seed(0)
    model = as_if_trained(task.build_model(cfg.model)).eval()
    task.load_dataset("valid")
    dataset = task.dataset("valid")
    indices = list(range(len(dataset)))  # every image in all three directions: each comes 3 times
    net_input = dataset.collater([dataset[i] for i in indices])["net_input"]
    assert net_input[IMAGE_PATCHES].shape[0] * 3 == len(indices) == net_input[IMAGE_INDEX].numel()
    batched = _hypotheses_by_source(task, model, dataset, indices)
    assert len(batched) == len(indices)  # every sentence's source is distinct
    alone = {}
    for i in indices:
        alone.update(_hypotheses_by_source(task, model, dataset, [i]))
    assert batched == alone
    assert len({tuple(tokens) for tokens in batched.values()}) > 1  # the output depends on the input
