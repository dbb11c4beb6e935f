"""The two halves of the decoder-only model behind fairseq's encoder-decoder interface
(m3p_decoder_only.py): :class:`PrefixEncoder` builds the prompt of Fig. 3a around the image and the
source (instruction_prompt.py) and runs the causal
stack over it once; :class:`PrefixDecoder` continues the same stack over the target, with a
key/value cache for incremental decoding."""

from typing import Dict, List, Optional

import torch
from fairseq.models import FairseqEncoder, FairseqIncrementalDecoder
from fairseq.models.transformer import TransformerConfig
from torch import Tensor

from ..data.batch_keys import IMAGE_GLOBAL_STATE
from .causal_lm import CausalTransformer
from .contrastive_head import mean_over_tokens
from .image_encoder import ImageFeatureEncoder
from .instruction_prompt import IMAGE, SOURCE, InstructionPrompt
from .mdropnet import IMAGE_ONLY, TEXT_ONLY
from .multimodal_model import MultimodalEncoderMixin


class PrefixEncoder(MultimodalEncoderMixin, FairseqEncoder):
    """Builds the prompt with the image tokens and the source in it and runs the causal stack once.

    Prefixes are right-aligned (left-padded) in the batch; padding and tokens hidden by MDropNet
    are masked as keys and skipped by the positions, so a sentence gets the same states alone
    or in a batch. Returns the layers' keys/values, the key mask and the prefix length (the
    target's first position); every tensor has the batch first, for beam-search reordering.
    """

    def __init__(self, args, dictionary, stack: CausalTransformer, prompt: InstructionPrompt):
        super().__init__(dictionary)
        # The decoder owns the stack (one set of weights for prefix and target); a plain
        # attribute in a list keeps it out of this module's parameters and state dict.
        self._stack = [stack]
        self.prompt = prompt
        self.max_source_positions = getattr(args, "max_source_positions", 1024)
        image_encoder = None
        if args.fusion != "none":
            cfg = TransformerConfig()
            cfg.encoder.embed_dim, cfg.dropout = args.decoder_embed_dim, args.dropout
            image_encoder = ImageFeatureEncoder(cfg, args.image_feature_dim, args.max_image_patches, 0)
        self.init_image_side(args, image_encoder)

    @property
    def stack(self) -> CausalTransformer:
        return self._stack[0]

    def text_prefix(self, src_tokens: Tensor, source_lang: Optional[Tensor], num_image_tokens: int = 0):
        """The prompt of each sentence's direction with its source filled in and ``num_image_tokens``
        slots for the image, left-padded: token ids [B, L] (padding in the image slots), and masks
        [B, L] of the source tokens and of the image slots."""
        if source_lang is None:
            raise ValueError("the decoder-only model's prompt names the source language, but the batch has no "
                             "net_input['source_lang'] (use --task multimodal_translation, which adds it)")
        pad, eos = self.dictionary.pad(), self.dictionary.eos()
        image_slots = torch.full((num_image_tokens,), pad, dtype=torch.long)
        rows = []
        for tokens, source in zip(src_tokens.cpu(), source_lang.tolist()):
            tokens = tokens[tokens != pad]
            text = tokens[1:-1] if len(tokens) > 1 and tokens[-1] == eos else tokens[1:]
            parts = {SOURCE: text, IMAGE: image_slots}
            rows.append([(parts.get(segment, segment), segment) for segment in self.prompt.layout(source, int(tokens[0]))
                         if not isinstance(segment, str) or segment == SOURCE or num_image_tokens])
        length = max(sum(len(ids) for ids, _ in row) for row in rows)
        ids = torch.full((len(rows), length), pad, dtype=torch.long)
        is_source = torch.zeros(len(rows), length, dtype=torch.bool)
        is_image = torch.zeros(len(rows), length, dtype=torch.bool)
        for i, row in enumerate(rows):
            position = length - sum(len(part) for part, _ in row)
            for part, segment in row:
                ids[i, position:position + len(part)] = part
                if isinstance(segment, str):
                    (is_source if segment == SOURCE else is_image)[i, position:position + len(part)] = True
                position += len(part)
        device = src_tokens.device
        return ids.to(device), is_source.to(device), is_image.to(device)

    def run_stack(self, x: Tensor, keep: Tensor):
        """Causal pass over a prefix [B, L, C] whose keys ``keep`` [B, L] are visible."""
        length = x.size(1)
        causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
        # a hidden token still attends to itself, so that no row is empty (its output is unused)
        allowed = (causal & keep.unsqueeze(1)) | torch.eye(length, dtype=torch.bool, device=x.device)
        positions = (keep.long().cumsum(dim=1) - 1).clamp(min=0)
        return self.stack(x, positions, allowed.unsqueeze(1))

    def forward(self, src_tokens: Tensor, src_lengths: Optional[Tensor] = None,
                source_lang: Optional[Tensor] = None, image_patches: Optional[Tensor] = None,
                image_global: Optional[Tensor] = None, modalities: Optional[Tensor] = None,
                image_usable: Optional[Tensor] = None, image_index: Optional[Tensor] = None, **unused):
        num_image_tokens = 0 if self.image_encoder is None or image_patches is None else image_patches.size(1)
        text_ids, is_source, is_image = self.text_prefix(src_tokens, source_lang, num_image_tokens)
        x = self.stack.embed_tokens(text_ids)
        keep = text_ids != self.dictionary.pad()
        out = {"text_ids": [text_ids], "is_source": [is_source]}
        if self.image_encoder is not None:
            patches, global_state = self.encode_images(image_patches, image_global, x.dtype, image_index)
            out[IMAGE_GLOBAL_STATE] = [global_state]
            # every row has exactly P image slots, filled in row order with its P patch states
            x = x.masked_scatter(is_image.unsqueeze(-1), patches.transpose(0, 1).to(x.dtype))
            keep = keep | is_image
            modalities = self.modes(modalities, x.size(0), image_usable, x.device)
            if modalities is not None:
                keep = keep & ~(is_image & (modalities == TEXT_ONLY).unsqueeze(1))
                keep = keep & ~(is_source & (modalities == IMAGE_ONLY).unsqueeze(1))
        _, key_values = self.run_stack(x, keep)
        out.update({"prefix_key_values": [t for key_value in key_values for t in key_value],
                    "prefix_keep": [keep], "prefix_length": [keep.long().sum(dim=1)]})
        return out

    def source_states(self, encoder_out: Dict[str, List[Tensor]]) -> Tensor:
        """s^k for MMCL: the source tokens' states from a pass over the prompt without the image
        (the image slots hold padding), pooled."""
        text_ids, is_source = encoder_out["text_ids"][0], encoder_out["is_source"][0]
        keep = text_ids != self.dictionary.pad()
        states, _ = self.run_stack(self.stack.embed_tokens(text_ids), keep)
        return mean_over_tokens(states.transpose(0, 1), is_source & keep)

    def reorder_encoder_out(self, encoder_out: Dict[str, List[Tensor]], new_order: Tensor):
        return {key: [t.index_select(0, new_order) for t in tensors] for key, tensors in encoder_out.items()}

    def max_positions(self):
        return self.max_source_positions


class PrefixDecoder(FairseqIncrementalDecoder):
    """The causal stack over the target, continuing the prefix the encoder ran."""

    def __init__(self, args, dictionary, stack: CausalTransformer):
        super().__init__(dictionary)
        self.stack = stack
        self.max_target_positions = getattr(args, "max_target_positions", 1024)

    def forward(self, prev_output_tokens: Tensor, encoder_out: Dict[str, List[Tensor]],
                incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
                features_only: bool = False, **unused):
        prefix = encoder_out["prefix_key_values"]
        prefix_keep, prefix_length = encoder_out["prefix_keep"][0], encoder_out["prefix_length"][0]
        if incremental_state is not None:
            cache = self.get_incremental_state(incremental_state, "key_values")
            past = prefix if cache is None else [cache[str(i)] for i in range(len(prefix))]
            step = prev_output_tokens.size(1) - 1
            tokens = prev_output_tokens[:, -1:]
            positions = prefix_length.unsqueeze(1) + step
            allowed = torch.cat([prefix_keep, prefix_keep.new_ones(tokens.size(0), step + 1)], dim=1)
            allowed = allowed.unsqueeze(1).unsqueeze(1)
        else:
            past, tokens = prefix, prev_output_tokens
            batch, length = tokens.shape
            positions = prefix_length.unsqueeze(1) + torch.arange(length, device=tokens.device)
            causal = torch.ones(length, length, dtype=torch.bool, device=tokens.device).tril()
            allowed = torch.cat([prefix_keep.unsqueeze(1).expand(batch, length, -1),
                                 causal.unsqueeze(0).expand(batch, -1, -1)], dim=2).unsqueeze(1)
        states, key_values = self.stack(self.stack.embed_tokens(tokens), positions, allowed,
                                        past=list(zip(past[0::2], past[1::2])))
        if incremental_state is not None:
            flat = [t for key_value in key_values for t in key_value]
            self.set_incremental_state(incremental_state, "key_values", {str(i): t for i, t in enumerate(flat)})
        out = states if features_only else self.stack.output_projection(states)
        return out, {"attn": [None], "inner_states": [states]}

    def reorder_incremental_state(self, incremental_state, new_order: Tensor):
        cache = self.get_incremental_state(incremental_state, "key_values")
        if cache is not None:
            self.set_incremental_state(incremental_state, "key_values",
                                       {key: t.index_select(0, new_order) for key, t in cache.items()})

    def max_positions(self):
        return self.max_target_positions
