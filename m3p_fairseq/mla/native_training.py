"""Train a small English dual encoder (open_clip.CLIP, symmetric InfoNCE) to stand in for the
native model where no pre-trained CLIP can be loaded, e.g. on the synthetic corpus:

    python scripts/mla.py train-native --corpus CORPUS --output native.pt [--steps 600]

Its text side reads words of the native captions (``CORPUS/train.en``, a fairseq dictionary kept
in the checkpoint), its vision side the images (``CORPUS/images/`` named by
``CORPUS/train.image_ids``). The result loads with
:func:`~m3p_fairseq.models.native_dual_encoder.load_native` like any native model. A command,
not a model: it uses the MMCL loss of ``criterions/``.
"""

import time
from pathlib import Path
from typing import Dict, Sequence

import torch
from PIL import Image

from ..criterions.mmcl import symmetric_info_nce
from ..data.data_dir import DataDirectory
from ..data.image_features import ImageFeatureError
from ..data.mla_dataset import encode_words, pad_token_rows, read_lines, word_dictionary
from ..models.native_dual_encoder import build_clip, save_native, small_clip_config


def load_pixels(images_dir: Path, image_ids: Sequence[str], transform, source: str = "image list") -> torch.Tensor:
    """Preprocessed images [N, 3, H, W]; a missing or unreadable image is an error naming it."""
    pixels = []
    for line_no, image_id in enumerate(image_ids, start=1):
        path = Path(images_dir) / image_id
        try:
            with Image.open(path) as image:
                pixels.append(transform(image.convert("RGB")))
        except (OSError, ValueError) as error:
            raise ImageFeatureError(f"{source}:{line_no}: cannot read image {path}: {error}") from error
    return torch.stack(pixels)


def train_native(corpus: Path, output: Path, lang: str = "en", steps: int = 600, batch_size: int = 64,
                 lr: float = 1e-3, seed: int = 1, image_size: int = 48, width: int = 64, layers: int = 2,
                 embed_dim: int = 64, log_every: int = 100) -> Dict[str, float]:
    import open_clip

    corpus = Path(corpus)
    torch.manual_seed(seed)
    captions = read_lines(corpus / f"train.{lang}")
    ids_path = DataDirectory(corpus).image_ids("train")
    image_ids = read_lines(ids_path)
    if len(image_ids) != len(captions):
        raise ValueError(f"{ids_path}: {len(image_ids)} ids but train.{lang} has {len(captions)} lines")
    dictionary = word_dictionary(captions)
    cfg = small_clip_config(len(dictionary), embed_dim=embed_dim, width=width, layers=layers,
                            image_size=image_size, pad=dictionary.pad(), eos=dictionary.eos())
    clip = build_clip(cfg)
    context = cfg["text_cfg"]["context_length"]
    # open_clip's encode_text adds all context_length positions: pad to it
    tokens = pad_token_rows([encode_words(dictionary, c, context) for c in captions], dictionary.pad(), context)
    pixels = load_pixels(corpus / "images", image_ids, open_clip.image_transform(image_size, is_train=False),
                         str(ids_path))
    optimizer = torch.optim.AdamW(clip.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(seed)
    start, loss = time.time(), torch.tensor(0.0)
    for step in range(1, steps + 1):
        batch = torch.randperm(len(captions), generator=generator)[:batch_size]
        text = clip.encode_text(tokens[batch], normalize=True)
        image = clip.encode_image(pixels[batch], normalize=True)
        per_pair, _, _ = symmetric_info_nce(text, image, clip.logit_scale.exp().clamp(max=100))
        loss = 0.5 * per_pair.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if log_every and step % log_every == 0:
            print(f"step {step}/{steps}: loss {loss.item():.4f} ({time.time() - start:.0f} s)", flush=True)
    save_native(output, clip, cfg, dictionary, name=f"standin-{lang}-{Path(corpus).name}-seed{seed}")
    return {"loss": loss.item(), "seconds": time.time() - start,
            "parameters": sum(p.numel() for p in clip.parameters())}
