"""Data scale: a ViT and a CNN trained from scratch on nested subsets, accuracy against training-set size.

The ViT paper's central claim (Dosovitskiy et al., 2021, Table 5 and Figure 3): with little data a CNN's
inductive biases win, and the ViT catches up and overtakes as data grows (ViT-B/16 fine-tuned on ImageNet:
77.9 pre-trained on ImageNet, 84.0 on ImageNet-21k, 84.2 on JFT-300M).

Run:    nox -s eval -- data_scale              (python -m harness run data_scale --profile default)
Expect: default profile (Fashion-MNIST, 2 CPU cores, ~15 minutes): 5 sizes × 2 architectures × 3 seeds, plus
        timm's own ViT at one size to show that the reference trains like the library. At this scale (at most
        12,000 images, 250 steps) the paper's claim predicts the CNN ahead; the table says what happened.
Tables: results/data_scale.{csv,md,png}, results/data_scale_runs.{csv,md}.
"""

NAME = "data_scale"
VERSION = 1
EVALUATOR = "data_scale"

VIT = dict(image_size=28, patch_size=7, in_chans=1, num_classes=10, width=64, depth=4, mlp_dim=128, heads=4)


def get_config(profile: str) -> dict:
    if profile == "full":
        raise SystemExit("data_scale --profile full (ImageNet subsets on a GPU) is not implemented yet: "
                         "run the default profile")
    return {
        "data": {"name": "fashion_mnist", "test_per_class": 300, "subset_seed": 0},
        # training images per class: 1%, 2%, 5%, 10%, 20% of Fashion-MNIST's 6,000 per class
        "sizes_per_class": [60, 120, 300, 600, 1200],
        "seeds": [0, 1, 2],
        "architectures": [
            # a small ViT, patch 7 on 28×28 -> 16 tokens + [CLS]; fused attention (the fast path). Patch 4 (49
            # tokens) costs 3.5× more and does not fit the 15-minute CPU budget with 33 runs.
            {"id": "vit_reference", "kind": "reference_vit", "kwargs": {**VIT, "fused_attn": True}},
            # a CIFAR-style ResNet of the same compute (~4.7 MFLOPs per image; it has fewer parameters)
            {"id": "resnet_small", "kind": "resnet",
             "kwargs": {"in_chans": 1, "num_classes": 10, "widths": [8, 16, 32], "blocks_per_stage": 1}},
            # timm's own VisionTransformer, same configuration and recipe, at one size
            {"id": "vit_timm", "kind": "timm_vit", "sizes": [300],
             "kwargs": {"img_size": 28, "patch_size": 7, "in_chans": 1, "num_classes": 10, "embed_dim": 64,
                        "depth": 4, "num_heads": 4, "mlp_ratio": 2.0, "qkv_bias": True}},
        ],
        "compare": ["vit_reference", "resnet_small"],
        "recipe": {"steps": 250, "batch_size": 128, "lr": 2e-3, "weight_decay": 0.05, "warmup": 0.1,
                   "label_smoothing": 0.1, "pad": 2, "flip": True},
    }
