"""The frozen native dual encoder of MLA (paper Sec. 3.1): a CLIP model from open_clip.

- text tower (Eqs. 1-3): token embedding + E_pos, causal transformer layers, the [EOS] state
  projected by W_a (open_clip applies its final LayerNorm ``ln_final`` before the projection
  ``text_projection``; both together are W_a here and are shared with Eq. 11);
- vision tower (Eqs. 4-6): open_clip's VisionTransformer, the [CLASS] state projected by W_b.

The model definitions are open_clip's (``open_clip.CLIP``); this module only loads them, freezes
them, and exposes the text layers one by one so that the language acquisition encoder can insert
acquirers between them. Two kinds of local checkpoint load:

- the project's own file (:func:`save_native`), written by ``scripts/mla.py train-native``: the
  open_clip config, the weights and the word vocabulary of the native language;
- a user's open_clip checkpoint with its model name (``--native-open-clip-model ViT-B-32``); its
  BPE tokenizer ships with open_clip. Nothing is downloaded.

Every native model has an identity (name, embedding size, weights fingerprint): checkpoints of
acquirers and files of image embeddings record it and refuse another model (see
:class:`~m3p_fairseq.data.native_identity.NativeIdentity`).
"""

import hashlib
from pathlib import Path
from typing import List, Optional, Sequence

import torch
import torch.nn as nn
from fairseq.data import Dictionary

from ..atomic_io import atomic_path
from ..data.mla_dataset import encode_words, pad_token_rows
from ..data.native_identity import NativeIdentity, NativeModelMismatch  # noqa: F401 (re-exported)

NATIVE_FORMAT = "m3p-mla-native-dual-encoder/1"


def weights_fingerprint(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class NativeDualEncoder(nn.Module):
    """A frozen open_clip CLIP model and the tokenizer of its native language."""

    def __init__(self, clip: nn.Module, name: str, dictionary: Optional[Dictionary] = None,
                 bpe_tokenizer=None):
        super().__init__()
        if getattr(clip, "text_pool_type", None) not in ("argmax", "eos"):
            raise ValueError(f"native model {name!r}: text pooling {getattr(clip, 'text_pool_type', None)!r} "
                             f"is not supported; MLA takes the [EOS] state ('eos' or CLIP's 'argmax')")
        self.clip = clip
        self.name = name
        self.dictionary = dictionary
        self.bpe_tokenizer = bpe_tokenizer
        for p in self.clip.parameters():
            p.requires_grad_(False)
        self.clip.eval()
        self.identity = NativeIdentity(name, self.embed_dim, weights_fingerprint(self.clip))

    def train(self, mode: bool = True):  # frozen: never leaves eval mode (no dropout, fixed stats)
        return super().train(False)

    @property
    def embed_dim(self) -> int:
        return int(self.clip.text_projection.shape[-1] if isinstance(self.clip.text_projection, torch.Tensor)
                   else self.clip.text_projection.out_features)

    @property
    def width(self) -> int:
        return int(self.clip.token_embedding.embedding_dim)

    @property
    def context_length(self) -> int:
        return int(self.clip.positional_embedding.shape[0])

    @property
    def pad_id(self) -> int:
        return self.dictionary.pad() if self.dictionary is not None else 0

    @property
    def num_text_layers(self) -> int:
        return len(self.clip.transformer.resblocks)

    # --- text tower, piece by piece (Eqs. 1-3) ---
    def add_positions(self, embeddings: torch.Tensor) -> torch.Tensor:
        return embeddings + self.clip.positional_embedding[: embeddings.shape[1]].to(embeddings.dtype)

    def text_layer(self, index: int, hidden: torch.Tensor, transformer: Optional[nn.Module] = None) -> torch.Tensor:
        """TransformerLayer(H^{i-1}; theta^i) of Eq. 2 / 8 on batch-first [B, T, W]; ``transformer``
        replaces the frozen layers by a (trainable) copy of them."""
        length = hidden.shape[1]
        mask = self.clip.attn_mask[:length, :length] if self.clip.attn_mask is not None else None
        transformer = transformer if transformer is not None else self.clip.transformer
        if not transformer.batch_first:
            return transformer.resblocks[index](hidden.transpose(0, 1), attn_mask=mask).transpose(0, 1)
        return transformer.resblocks[index](hidden, attn_mask=mask)

    def project_text(self, eos_states: torch.Tensor, ln_final: Optional[nn.Module] = None,
                     projection=None) -> torch.Tensor:
        """W_a of Eqs. 3 and 11 (open_clip's ln_final, then text_projection), or a copy of them."""
        x = (ln_final if ln_final is not None else self.clip.ln_final)(eos_states)
        projection = projection if projection is not None else self.clip.text_projection
        return projection(x) if isinstance(projection, nn.Module) else x @ projection

    def eos_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.clip.text_pool_type == "argmax":  # CLIP's BPE: [EOT] has the largest id
            return tokens.argmax(dim=-1)
        return (tokens == self.clip.text_eos_id).int().argmax(dim=-1)

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """s = W_a h^l_[EOS] (Eq. 3) for native token ids [B, T]."""
        if tokens.shape[1] > self.context_length:
            raise ValueError(f"{tokens.shape[1]} tokens but native model {self.name!r} takes at most "
                             f"{self.context_length}")
        hidden = self.add_positions(self.clip.token_embedding(tokens))
        for i in range(self.num_text_layers):
            hidden = self.text_layer(i, hidden)
        eos = hidden[torch.arange(len(tokens)), self.eos_positions(tokens)]
        return self.project_text(eos)

    def tokenize(self, sentences: Sequence[str]) -> torch.Tensor:
        if self.bpe_tokenizer is not None:
            return self.bpe_tokenizer(list(sentences))
        rows = [encode_words(self.dictionary, s, self.context_length) for s in sentences]
        return pad_token_rows(rows, self.dictionary.pad())

    def encode_text(self, sentences: Sequence[str]) -> torch.Tensor:
        return self.encode_tokens(self.tokenize(sentences))

    # --- vision tower (Eqs. 4-6) ---
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """v = W_b z^l_[CLASS] (Eq. 6) for preprocessed images [B, 3, H, W]."""
        return self.clip.encode_image(pixels)

    def image_transform(self):
        import open_clip

        return open_clip.image_transform(self.clip.visual.image_size, is_train=False)


def small_clip_config(vocab_size: int, embed_dim: int = 64, width: int = 64, layers: int = 2, heads: int = 2,
                      context_length: int = 32, image_size: int = 48, patch_size: int = 8,
                      pad: int = 1, eos: int = 2) -> dict:
    """An open_clip config for a small native model over a fairseq word vocabulary (pooling at
    fairseq's [EOS] id); used by ``scripts/mla.py train-native`` and the tests."""
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"layers": layers, "width": width, "head_width": width // heads, "patch_size": patch_size,
                       "image_size": image_size},
        "text_cfg": {"context_length": context_length, "vocab_size": vocab_size, "width": width, "heads": heads,
                     "layers": layers, "pad_id": pad, "eos_id": eos, "pool_type": "eos"},
    }


def build_clip(model_cfg: dict) -> nn.Module:
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    cfg = dict(model_cfg)
    return open_clip.CLIP(embed_dim=cfg.pop("embed_dim"), vision_cfg=CLIPVisionCfg(**cfg.pop("vision_cfg")),
                          text_cfg=CLIPTextCfg(**cfg.pop("text_cfg")), **cfg)


def save_native(path, clip: nn.Module, model_cfg: dict, dictionary: Dictionary, name: str) -> None:
    state = {"format": NATIVE_FORMAT, "name": name, "model_cfg": model_cfg,
             "symbols": list(dictionary.symbols), "counts": list(dictionary.count),
             "state_dict": {k: v.detach().cpu() for k, v in clip.state_dict().items()}}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _dictionary_from(symbols: List[str], counts: List[int]) -> Dictionary:
    dictionary = Dictionary()
    for symbol, count in zip(symbols, counts):
        dictionary.add_symbol(symbol, n=count)
    if dictionary.symbols != symbols:
        raise ValueError("native vocabulary does not start with fairseq's special symbols")
    return dictionary


def load_native(path, open_clip_model: Optional[str] = None) -> NativeDualEncoder:
    """Load a native model from a local file: the project's format, or with ``open_clip_model``
    set, a user's open_clip checkpoint of that architecture."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"native model checkpoint not found: {path}")
    if open_clip_model:
        import open_clip

        clip = open_clip.create_model(open_clip_model, pretrained=str(path))
        return NativeDualEncoder(clip, f"{open_clip_model}:{path.name}",
                                 bpe_tokenizer=open_clip.get_tokenizer(open_clip_model))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != NATIVE_FORMAT:
        raise ValueError(f"{path}: not a native dual encoder of this project (expected format "
                         f"{NATIVE_FORMAT!r}); for an open_clip checkpoint pass its model name "
                         f"(--native-open-clip-model)")
    clip = build_clip(state["model_cfg"])
    clip.load_state_dict(state["state_dict"])
    return NativeDualEncoder(clip, state["name"], dictionary=_dictionary_from(state["symbols"], state["counts"]))
