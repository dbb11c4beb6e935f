"""Beam search over one direction of a test split, with fairseq's generator and the task's own
batching, detokenized (SentencePiece pieces joined)."""

import warnings
from typing import Dict, List, Tuple

import torch

# fairseq's loader asks for pinned memory even without a GPU (torch warns once per direction),
# and fairseq still calls torch.jit.script at import
warnings.filterwarnings("ignore", message=".*pin_memory.*")
warnings.filterwarnings("ignore", message=".*torch.jit.script.*is deprecated")
from fairseq import checkpoint_utils, utils  # noqa: E402
from fairseq.dataclass.configs import GenerationConfig  # noqa: E402


def load(checkpoint: str, data: str):
    """(models, task) of a checkpoint, reading ``data``; models in eval mode (on the GPU if any)."""
    import m3p_fairseq  # noqa: F401  (registers the task and models, allow-lists the checkpoint)

    models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(checkpoint)], arg_overrides={"data": str(data)})
    for model in models:
        model.eval()
        if torch.cuda.is_available():
            model.cuda()
    return models, task


def direction_dataset(task, split: str, src: str, tgt: str):
    """The test dataset of one direction, as fairseq-generate --source-lang/--target-lang loads it."""
    task.cfg.source_lang, task.cfg.target_lang = src, tgt
    task.load_dataset(split)
    return task.dataset(split)


@torch.no_grad()
def translate_dataset(models, task, dataset, beam: int = 5, batch_size: int = 64,
                      max_len_b: int = 200) -> Tuple[List[str], List[str]]:
    """(hypotheses, references) of every sentence of ``dataset``, detokenized, in corpus order;
    a hypothesis has at most ``max_len_b`` tokens (fairseq-generate's --max-len-b)."""
    generator = task.build_generator(models, GenerationConfig(beam=beam, max_len_b=max_len_b))
    iterator = task.get_batch_iterator(
        dataset=dataset, max_sentences=batch_size,
        max_positions=utils.resolve_max_positions(task.max_positions(), *[m.max_positions() for m in models]),
    ).next_epoch_itr(shuffle=False)
    hypotheses: Dict[int, str] = {}
    references: Dict[int, str] = {}
    pad = task.target_dictionary.pad()
    # e.g. the target tag that --decoder-langtok forces as the first token, as fairseq-generate strips it
    strip = getattr(generator, "symbols_to_strip_from_output", None)
    for sample in iterator:
        if torch.cuda.is_available():
            sample = utils.move_to_cuda(sample)
        outputs = task.inference_step(generator, models, sample)
        for i, sample_id in enumerate(sample["id"].tolist()):
            hypotheses[sample_id] = task.target_dictionary.string(outputs[i][0]["tokens"].int().cpu(), "sentencepiece",
                                                                  extra_symbols_to_ignore=strip)
            references[sample_id] = task.target_dictionary.string(
                utils.strip_pad(sample["target"][i], pad).int().cpu(), "sentencepiece", extra_symbols_to_ignore=strip)
    order = sorted(hypotheses)
    return [hypotheses[i] for i in order], [references[i] for i in order]

