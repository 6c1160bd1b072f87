"""Agreement: the reference ViT, CLIP and attention against timm, open_clip, transformers and torch, on the same
weights; the reference CLIP and SigLIP losses against open_clip's.

Run:    nox -s eval -- agreement          (python -m harness run agreement --profile default)
Expect: every float32 row passes (relative error <= 1e-5) and every float64 row (<= 1e-12); the bfloat16/float16
        rows (CPU and GPU) and float32 gradients pass FlashAttention's rule made sound for small outputs
        (reference error vs float64 <= 2 w(n) x max(library's own, u), on at least 64 elements; see
        harness/numerics.py). Every row states its power. A failing row fails the command (exit status 1).
Tables: results/agreement.{csv,md}, agreement_blocks.{csv,md}, agreement_attention.{csv,md},
        agreement_clip_loss.{csv,md}.
"""

NAME = "agreement"
VERSION = 3  # 3: transformers CLIPModel / ViTModel rows, SigLIP loss rows
EVALUATOR = "agreement"

# The timm VisionTransformer configurations the converter covers (issue 2 lists them).
MODELS = [
    "timm:vit_tiny_patch16_224",
    "timm:vit_small_patch16_224",
    "timm:vit_base_patch16_224",
    "timm:vit_large_patch16_224",
    "timm:vit_base_patch32_224",
    "timm:deit_tiny_patch16_224",
    "timm:deit_small_patch16_224",
    "timm:deit_base_patch16_224",
    "timm:vit_base_patch16_384",
    "timm:vit_base_patch16_gap_224",
    # the ViT paper's hybrids: a ResNet-v2 stem's feature map as the patches (the stem alone; R26 + ViT-S)
    "timm:vit_tiny_r_s16_p8_224",
    "timm:vit_small_r26_s32_224",
]


# one caption per image of the CLIP rows: the six photos first, then 26 more
CAPTIONS = ["a photo of an astronaut.", "a photo of a cat.", "a cup of coffee.", "a rocket on a launch pad.",
            "a chinese temple.", "a flower."] + [
    template.format(thing) for template in ("a photo of a {}.", "a drawing of a {}.")
    for thing in ("dog", "car", "bird", "ship", "horse", "truck", "frog", "deer", "tree", "house", "boat", "chair",
                  "clock")]


# transformers configs of two small models (the kwargs of "hf:CLIPModel" / "hf:ViTModel"): open_clip ViT-S-32's
# sizes as a CLIPModel (embed 384, both towers 384 wide, 12 layers, 6 heads), and DeiT-Ti/16's as a ViTModel
HF_CLIP_S32 = {"projection_dim": 384,
               "vision_config": {"hidden_size": 384, "intermediate_size": 1536, "num_attention_heads": 6,
                                 "patch_size": 32, "hidden_act": "gelu"},
               "text_config": {"hidden_size": 384, "intermediate_size": 1536, "num_attention_heads": 6,
                               "hidden_act": "gelu"}}
HF_VIT_TI16 = {"hidden_size": 192, "intermediate_size": 768, "num_attention_heads": 3}


def get_config(profile: str) -> dict:
    config = {
        "models": MODELS,
        "gradient_models": ["timm:vit_tiny_patch16_224", "timm:vit_tiny_r_s16_p8_224"],
        # the ViTs' weights where a model's own declaration names none (harness.models: a dict with "weights"
        # names a file): "random", timm's initialisation after torch.manual_seed(seed), or "pretrained"
        "weights": "random",
        "photos": ["astronaut"],  # real photographs, through each model's preprocessing
        "random_inputs": 1,  # plus this many standard-normal tensors
        "dtypes": ["float64", "float32", "bfloat16", "float16"],
        # bfloat16/float16 on a CPU (~16x slower than float32 there): attention alone, the loss and these models (by
        # id);
        # on a GPU every model. Of the CLIPs, the smallest: with 32 image–text pairs its unit takes ~110 s on one
        # core, ViT-M-32's 185 s and ViT-B-32-quickgelu's 270 s (those two, whose low-precision rows failed on the
        # first H100 run under the earlier rule, passed on an H200 on 2026-11-29: results/gpu/).
        "cpu_low_precision_models": ["vit_tiny_patch16_224", "vit_tiny_r_s16_p8_224", "ViT-S-32"],
        "attention": {
            "batch": 2,
            "head_dim": 64,
            "seq_lens": [7, 50, 197],
            "heads": [1, 4, 16],
            "masks": ["none", "causal", "padding"],
        },
    }
    config["clip"] = {
        # open_clip ViT CLIPs with the bundled BPE tokenizer; the full profile adds the rest
        "models": ["open_clip:ViT-S-32", "open_clip:ViT-B-32", "open_clip:ViT-M-32", "open_clip:ViT-B-32-quickgelu"],
        "gradient_models": ["open_clip:ViT-S-32"],
        # open_clip vs timm vs reference: {id of a model in clip.models: timm's CLIP tower}
        "timm_towers": {"ViT-B-32": "timm:vit_base_patch32_clip_224"},
        "tokenizer": "ViT-B-32",
        # 32 image–text pairs: 32 × 32 logits and 64 loss terms, the fewest a low-precision row judges
        # (harness.methods.numerics.MIN_ELEMENTS)
        "photos": ["astronaut", "chelsea", "coffee", "rocket", "china", "flower"],
        "random_inputs": 26,
        "captions": CAPTIONS,
        # gradients (every parameter of a stage judged at once) and the float64/float32 three-way image embeddings
        # (a fixed tolerance) need no more than the first few inputs
        "gradient_pairs": 3,
        "three_way_images": 3,
        # SigLIP's sigmoid loss too, at its initial bias (−10, with t = 10: Zhai et al., 2023, section 3.1) and 0
        "loss": {"batch_sizes": [2, 8, 64, 512], "logit_scales": [1.0, 14.3, 100.0], "logit_biases": [-10.0, 0.0],
                 "dim": 512, "min_terms": 64, "tol": {"float32": 1e-6}},
    }
    # transformers' CLIPModel and ViTModel against the reference converted from them (harness.convert.hf), random
    # weights of the published architectures: CLIPModel's and ViTModel's default configs are openai/clip-vit-base-
    # patch32's (QuickGELU) and google/vit-base-patch16-224's; the S/32 CLIP (open_clip ViT-S-32's sizes) and the
    # Ti/16 ViT are small enough for low precision on a CPU. The CLIP rows take the CLIP rows' photos and captions.
    config["hf"] = {
        "models": [{"model": "hf:CLIPModel", "id": "hf-clip-b32"},
                   {"model": "hf:CLIPModel", "id": "hf-clip-s32", "kwargs": HF_CLIP_S32},
                   {"model": "hf:ViTModel", "id": "hf-vit-b16"},
                   {"model": "hf:ViTModel", "id": "hf-vit-ti16", "kwargs": HF_VIT_TI16}],
        "gradient_models": [{"model": "hf:CLIPModel", "id": "hf-clip-s32", "kwargs": HF_CLIP_S32},
                            {"model": "hf:ViTModel", "id": "hf-vit-ti16", "kwargs": HF_VIT_TI16}],
    }
    config["cpu_low_precision_models"] += ["hf-clip-s32", "hf-vit-ti16"]
    if profile == "full":  # pretrained weights (Hugging Face cache), more inputs; GPU-sized
        config.update(weights="pretrained", photos=["astronaut", "chelsea", "coffee", "rocket", "china", "flower"],
                      random_inputs=2)
        config["attention"] = {**config["attention"], "seq_lens": [7, 50, 197, 577, 1024], "heads": [1, 2, 4, 8, 16]}
        config["clip"].update(
            models=["open_clip:ViT-S-16", "open_clip:ViT-S-32", "open_clip:ViT-M-16", "open_clip:ViT-M-32",
                    "open_clip:ViT-B-32/openai", "open_clip:ViT-B-16/openai", "open_clip:ViT-L-14/openai",
                    "open_clip:ViT-B-32-quickgelu/openai", "open_clip:ViT-B-16-quickgelu/openai",
                    "open_clip:ViT-L-14-quickgelu/openai"],
            timm_towers={"ViT-B-32/openai": "timm:vit_base_patch32_clip_224",
                         "ViT-B-16/openai": "timm:vit_base_patch16_clip_224"},
            photos=["astronaut", "chelsea", "coffee", "rocket", "china", "flower"], random_inputs=26)
        # the published transformers checkpoints (hub ids, from the Hugging Face cache): OpenAI's CLIPs
        # (QuickGELU), LAION's (GELU), Google's ViTs (the classifier's checkpoint read as its ViTModel)
        config["hf"] = {"models": ["hf:openai/clip-vit-base-patch32", "hf:openai/clip-vit-base-patch16",
                                   "hf:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "hf:google/vit-base-patch16-224",
                                   "hf:google/vit-base-patch16-224-in21k"],
                        "gradient_models": ["hf:openai/clip-vit-base-patch32"]}
    return config


# --quick of the GPU check: this suite on its smallest models (every dtype and backend); of the transformers rows,
# the Ti/16 ViTModel (hf-vit-ti16)
QUICK = {"models": ["timm:vit_tiny_patch16_224"], "gradient_models": ["timm:vit_tiny_patch16_224"],
         "clip.models": ["open_clip:ViT-S-32"], "clip.gradient_models": [], "clip.timm_towers": {},
         "hf.models": [{"model": "hf:ViTModel", "id": "hf-vit-ti16", "kwargs": HF_VIT_TI16}],
         "hf.gradient_models": [], "attention.seq_lens": [50, 197], "attention.heads": [4]}
# the "ci" profile (the default profile's overrides): every step of the GPU check on a CPU, in CI's minutes — the
# smallest models, bfloat16/float16 on the tiny ViT, the loss and attention
CI = {**QUICK, "attention.seq_lens": [50], "cpu_low_precision_models": ["vit_tiny_patch16_224"],
      "clip.loss.batch_sizes": [8, 64]}
# the config keys whose lists name models (harness.tools.rehearsal writes a checkpoint for each), and their weights
MODEL_KEYS = ["models", "gradient_models", "clip.models", "clip.gradient_models"]
WEIGHTS_KEY = "weights"  # the default weights of "models" and "gradient_models"
# a CPU rehearsal of the full profile (harness.tools.rehearsal): models shrunk, fewer inputs
REHEARSAL = {
    "models": ["timm:vit_tiny_patch16_224"], "gradient_models": [], "clip.models": ["open_clip:ViT-S-32"],
    "clip.gradient_models": [], "clip.timm_towers": {},
    # the full profile's transformers checkpoints are hub folders, for which no random stand-in is written (no
    # save_random for hf: models yet): the rehearsal leaves them out (the default profile runs their architectures)
    "hf.models": [], "hf.gradient_models": [],
    "dtypes": ["float32"], "photos": ["astronaut"], "random_inputs": 1,
    "attention.seq_lens": [7], "attention.heads": [2],
}


def rehearsal_data(imagenet_dir: str) -> dict:
    """The full profile's overrides that point it at a rehearsal's ImageNet tree: none (its inputs are photos)."""
    return {}
