"""Data scale: a ViT and a CNN trained from scratch on nested subsets, accuracy against training-set size.

The ViT paper's central claim (Dosovitskiy et al., 2021, Table 5 and Figure 3): with little data a CNN's
inductive biases win, and the ViT catches up and overtakes as data grows (ViT-B/16 fine-tuned on ImageNet:
77.9 pre-trained on ImageNet, 84.0 on ImageNet-21k, 84.2 on JFT-300M).

Run:    nox -s eval -- data_scale              (python -m harness run data_scale --profile default)
Expect: default profile (Fashion-MNIST, 2 CPU cores, ~15 minutes): 5 sizes × 2 architectures × 3 seeds, plus
        timm's own ViT at one size to show that the reference trains like the library. At this scale (at most
        12,000 images, 200 to 563 steps) the paper's claim predicts the CNN ahead; the table says what happened.
        Full profile (--profile full, a GPU, ImageNet as an ImageFolder or in the hub cache): ImageNet-100 at
        64×64, 7 sizes from 1% to 100% × 3 seeds, a ViT-S-sized reference ViT against a ResNet; hours, not minutes.
Tables: results/data_scale.{csv,md,png}, results/data_scale_runs.{csv,md}.
"""

NAME = "data_scale"
VERSION = 2
EVALUATOR = "data_scale"

VIT = dict(image_size=28, patch_size=7, in_chans=1, num_classes=10, width=64, depth=4, mlp_dim=128, heads=4)
# the ViT paper's hybrid at this scale: a ResNet-v2 stem (7×7 stride-2 convolution, max-pool, one bottleneck stage,
# one more with stride 2) turns 28×28 into a 4×4 map of 64 channels, each position a token (patch 1); 3 blocks keep
# its compute (4.4 MFLOPs, 115k parameters) beside the ViT's (4.9 MFLOPs, 139k) and the ResNet's (4.7 MFLOPs, 20k)
HYBRID = dict(image_size=28, patch_size=1, in_chans=1, num_classes=10, width=64, depth=3, mlp_dim=128, heads=4,
              stem={"layers": [1, 1], "width": 16, "channels": [32, 64], "groups": 4})


# ImageNet-100 (every 10th ImageNet class) at 64×64 on one GPU: 1%..100% of its 1,300 training images per class,
# tested on its 5,000 validation images. A ViT-S-sized model with patch 8 (64 tokens) against a ResNet of similar
# compute. Decoding the images once takes minutes with 16 workers; the 3 × 2 × 7 training runs take hours.
FULL = {
    # a harness.data declaration: ImageNet from $VITCLIP_IMAGENET_DIR, a root (ImageFolder layout) or the hub cache
    "data": {"name": "imagenet", "root": None, "classes": 100, "image_size": 64, "test_per_class": 50,
             "subset_seed": 0, "workers": 16},
    "sizes_per_class": [13, 26, 65, 130, 260, 650, 1300],
    "seeds": [0, 1, 2],
    "architectures": [
        {"id": "vit_reference", "kind": "reference_vit",
         "kwargs": dict(image_size=64, patch_size=8, in_chans=3, num_classes=100, width=384, depth=6, mlp_dim=1536,
                        heads=6, fused_attn=True)},
        {"id": "resnet_small", "kind": "resnet",
         "kwargs": {"in_chans": 3, "num_classes": 100, "widths": [64, 128, 256], "blocks_per_stage": 2}},
        {"id": "vit_timm", "kind": "timm_vit", "sizes": [260],
         "kwargs": {"img_size": 64, "patch_size": 8, "in_chans": 3, "num_classes": 100, "embed_dim": 384,
                    "depth": 6, "num_heads": 6, "mlp_ratio": 4.0, "qkv_bias": True}},
        # the hybrid: a ResNet-v2 stem (64 -> 8×8 map of 256 channels) as the patches, 64 tokens like the ViT's
        {"id": "hybrid_reference", "kind": "reference_hybrid",
         "kwargs": dict(image_size=64, patch_size=1, in_chans=3, num_classes=100, width=384, depth=6, mlp_dim=1536,
                        heads=6, fused_attn=True,
                        stem={"layers": [1, 1], "width": 64, "channels": [128, 256], "groups": 32})},
    ],
    "compare": ["vit_reference", "resnet_small", "hybrid_reference"],
    "recipe": {"batch_size": 256, "lr": 1e-3, "weight_decay": 0.05, "warmup": 0.05, "label_smoothing": 0.1,
               "pad": 4, "flip": True},
    "step_policy": {"min_steps": 2000, "epochs": 100},
    "notes": "Full profile: ImageNet-100 at 64×64 pixels (every 10th ImageNet class), run on a GPU.",
}


def get_config(profile: str) -> dict:
    if profile == "full":
        return FULL
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
            # the hybrid: the ResNet stem's feature map as the patches, then the reference ViT encoder
            {"id": "hybrid_reference", "kind": "reference_hybrid", "kwargs": {**HYBRID, "fused_attn": True}},
            # timm's own VisionTransformer, same configuration and recipe, at one size
            {"id": "vit_timm", "kind": "timm_vit", "sizes": [300],
             "kwargs": {"img_size": 28, "patch_size": 7, "in_chans": 1, "num_classes": 10, "embed_dim": 64,
                        "depth": 4, "num_heads": 4, "mlp_ratio": 2.0, "qkv_bias": True}},
        ],
        "compare": ["vit_reference", "resnet_small", "hybrid_reference"],
        "recipe": {"batch_size": 128, "lr": 2e-3, "weight_decay": 0.05, "warmup": 0.1,
                   "label_smoothing": 0.1, "pad": 2, "flip": True},
        # step policy: every run takes max(min_steps, epochs × images / batch) steps: small subsets get enough
        # steps to fit, large ones at least `epochs` passes over their data (more data, more compute, as in
        # the ViT paper's pre-training); the same policy for every architecture
        "step_policy": {"min_steps": 200, "epochs": 6},
    }


# the "ci" profile (the default profile's overrides): two small training sizes, two seeds, a few steps
CI = {"sizes_per_class": [10, 20], "seeds": [0, 1], "data.test_per_class": 20,
      "step_policy": {"min_steps": 20, "epochs": 1}, "architectures.3.sizes": [10]}
MODEL_KEYS: list[str] = []  # it trains its own models
# a CPU rehearsal of the full profile (harness.tools.rehearsal): one size, one seed, two steps, tiny models
REHEARSAL = {
    "sizes_per_class": [1], "seeds": [0], "data.test_per_class": 1, "data.workers": 0,
    "step_policy": {"min_steps": 2, "epochs": 1},
    "architectures.0.kwargs.depth": 1, "architectures.0.kwargs.width": 32, "architectures.0.kwargs.mlp_dim": 64,
    "architectures.0.kwargs.heads": 2, "architectures.1.kwargs.widths": [8, 8, 8],
    "architectures.2.kwargs.embed_dim": 32, "architectures.2.kwargs.depth": 1, "architectures.2.kwargs.num_heads": 2,
    "architectures.2.sizes": [1], "architectures.3.kwargs.depth": 1, "architectures.3.kwargs.width": 32,
    "architectures.3.kwargs.mlp_dim": 64, "architectures.3.kwargs.heads": 2,
    "architectures.3.kwargs.stem": {"layers": [1, 1], "width": 8, "channels": [16, 32], "groups": 4},
}


def rehearsal_data(imagenet_dir: str) -> dict:
    """The full profile pointed at a rehearsal's ImageNet tree."""
    return {"data.root": imagenet_dir}
