"""Image-text retrieval of every language with MLA: the native language through the frozen native
text tower, each non-native language through its acquirers (a trained ``mla_acquisition``
checkpoint), or, without one, through the native text tower as is (the zero-shot baseline).

Scored by :mod:`m3p_fairseq.evaluation.retrieval` against the native image embeddings of the
split's images (``DATA/{split}.image_ids``, each image ranked once however many captions it has).
When ``DATA/train.image_ids`` exists, a split sharing images with it is refused.
"""

from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

from ..data.data_dir import DataDirectory
from ..data.image_features import ImageFeatureStore
from ..data.mla_dataset import encode_words, pad_token_rows, read_lines
from .retrieval import caption_image_index, check_disjoint_images, embedding_retrieval_scores


def load_mla_checkpoint(checkpoint: str, overrides: Optional[dict] = None):
    """(model, task) of an ``mla_acquisition`` checkpoint; the native model is the one its task
    options name unless ``overrides`` says otherwise, and must match the checkpoint's."""
    from fairseq import checkpoint_utils

    models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task([checkpoint], arg_overrides=overrides or {})
    model = models[0].eval()
    return model, task


def _batched(encode: Callable[[Sequence[str]], torch.Tensor], lines: Sequence[str], batch_size: int) -> torch.Tensor:
    return torch.cat([encode(lines[i:i + batch_size]) for i in range(0, len(lines), batch_size)])


@torch.no_grad()
def evaluate_languages(data: Path, split: str, langs: Sequence[str], native, images: ImageFeatureStore,
                       model=None, dictionary=None, native_lang: str = "en",
                       batch_size: int = 128) -> Dict[str, Dict[str, float]]:
    """``{lang: scores}`` for ``native_lang`` and every language of ``langs`` whose captions exist."""
    data = Path(data)
    ids_path = DataDirectory(data).image_ids(split)
    caption_image_ids = read_lines(ids_path)
    unique_images: List[str] = list(dict.fromkeys(caption_image_ids))
    train_ids = DataDirectory(data).image_ids("train")
    if split != "train" and train_ids.is_file():
        check_disjoint_images(unique_images, read_lines(train_ids))
    caption_image = caption_image_index(caption_image_ids, unique_images, str(ids_path))
    rows = images.rows_for(unique_images, str(ids_path))
    image_embeddings = torch.stack([images.read(int(r))[1].float() for r in rows])
    results = {}
    for lang in [native_lang, *langs]:
        lines = read_lines(data / f"{split}.{lang}")
        if len(lines) != len(caption_image_ids):
            raise ValueError(f"{data / f'{split}.{lang}'}: {len(lines)} captions but {ids_path} has "
                             f"{len(caption_image_ids)} image ids")
        if lang == native_lang or model is None:
            text = _batched(native.encode_text, lines, batch_size)
        else:
            context = native.context_length

            def encode(chunk, lang=lang):
                tokens = pad_token_rows([encode_words(dictionary, s, context) for s in chunk], dictionary.pad())
                return model.encoder(tokens, lang)

            text = _batched(encode, lines, batch_size)
        results[lang] = embedding_retrieval_scores(image_embeddings, text, caption_image)
    return results
