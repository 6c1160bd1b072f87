"""The reference models (harness.reference) in memory (harness.models.wrap): a reference CLIP with OpenAI's
preprocessing at its image size and CLIP's BPE tokenizer (when its vocabulary is CLIP's), a reference ViT with timm's
defaults at its image size (pass transform= to harness.evaluate for anything else). A twin converted from a
library model (harness.models.reference) carries that model's preprocessing instead."""

from __future__ import annotations

import torch

from . import Model, ModelSpec

MODULES = ("harness.reference.",)


def wrap(module: torch.nn.Module, spec: ModelSpec, tokenizer=None) -> Model:
    import timm.data

    if hasattr(module, "text"):
        import open_clip
        from open_clip.transform import PreprocessCfg, image_transform_v2

        size = module.config.vision.image_size
        tok = tokenizer
        if tok is None and module.config.text.vocab_size == 49408:
            tok = open_clip.tokenizer.SimpleTokenizer(context_length=module.config.text.context_length)
        return Model(spec, "reference", module, module.encode_image,
                     image_transform_v2(PreprocessCfg(size=size), is_train=False), image_tower=module.visual,
                     input_size=(3, size, size), encode_text=module.encode_text if tok else None, tokenizer=tok)
    size = module.config.image_size
    cfg = timm.data.resolve_data_config({"input_size": (module.config.in_chans, size, size)})
    return Model(spec, "reference", module,
                 lambda x: module.forward_head(module.forward_features(x), pre_logits=True),
                 timm.data.create_transform(**cfg), input_size=tuple(cfg["input_size"]))
