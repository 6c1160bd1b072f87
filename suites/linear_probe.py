"""Linear probe: L2-regularised logistic regression on frozen features (the CLIP paper's protocol).

Run:    nox -s eval -- linear_probe           (python -m harness run linear_probe --profile default)
Expect: default profile (Fashion-MNIST, random-init weights, ~5 minutes on 2 CPU cores): the reference
        models reach the same accuracy as the library models they are converted from, image for image, and
        harness.linear_probe is within 0.2 points of scikit-learn on the same features and strength.
        Full profile (ImageNet, pretrained weights, a GPU): the published column gives the CLIP paper's numbers.
Tables: results/linear_probe.{csv,md}.
"""

NAME = "linear_probe"
VERSION = 1
EVALUATOR = "linear_probe"

# Random-init models sized for 28×28 Fashion-MNIST on a CPU. Random features are a floor, not a
# pretrained result: what the default profile checks is the pipeline and the reference/library agreement.
DEFAULT_MODELS = [  # harness.models declarations
    {"id": "vit_tiny_p4_d4_28", "model": "timm:vit_tiny_patch16_224",
     "kwargs": {"img_size": 28, "patch_size": 4, "depth": 4}, "data_cfg": {"input_size": [3, 28, 28], "crop_pct": 1.0},
     "with_reference": True},
    {"id": "resnet18_32", "model": "timm:resnet18", "data_cfg": {"input_size": [3, 32, 32], "crop_pct": 1.0}},
    # the models the data-scale suite trained on 12,000 Fashion-MNIST images, each of its three seeds: a trained
    # configuration is judged by the regression gate over its seeds (python -m harness diff), and probing the
    # data-scale models costs ~5 s each (small models of 28×28 images)
    *({"id": f"data_scale_{arch}_seed{seed}", "model": f"data_scale:{name}:1200:{seed}"}
      for arch, name in (("vit", "vit_reference"), ("resnet", "resnet_small")) for seed in (0, 1, 2)),
    {"id": "clip_vit_s16_32", "model": "open_clip:ViT-S-16", "kwargs": {"force_image_size": 32},
     "with_reference": True},
]

# Pretrained models on ImageNet; published linear-probe top-1 from the CLIP paper (Radford et al., 2021, Table 10).
FULL_MODELS = [
    {"model": "timm:vit_base_patch16_224.augreg_in21k", "weights": "pretrained", "with_reference": True},
    {"model": "timm:resnet50.a1_in1k", "weights": "pretrained"},
    {"model": "open_clip:ViT-B-32/openai", "with_reference": True},
    {"model": "open_clip:ViT-B-16/openai", "with_reference": True},
    "open_clip:ViT-L-14/openai",
]
CLIP_PAPER = "CLIP paper (arXiv:2103.00020) Table 10, ImageNet linear probe"
PUBLISHED = {"imagenet": {  # data set -> model id -> the published numbers beside its row
    "ViT-B-32/openai": {"published_top1": 76.1, "published_source": CLIP_PAPER},
    "ViT-B-16/openai": {"published_top1": 80.2, "published_source": CLIP_PAPER},
    "ViT-L-14/openai": {"published_top1": 83.9, "published_source": CLIP_PAPER},
}}


def get_config(profile: str) -> dict:
    if profile == "full":
        return {
            # harness.data declarations; ImageNet from $VITCLIP_IMAGENET_DIR, a root ({"name": "imagenet", "root":
            # "/data/imagenet"}: ImageFolder layout) or the hub cache; more: --set 'datasets=["imagenet","cifar10",
            # "food101",{"name":"imagefolder:/data/x","classnames":"names.txt"}]'
            "datasets": ["imagenet"],
            "models": FULL_MODELS, "published": PUBLISHED, "batch_size": 256, "val_fraction": 0.1,
            # the λ sweep on 100,000 of the 1.15M fit images, its choice carried over at fixed C = 1/(λN)
            "sweep_max_images": 100_000,
            # JPEGs decoded in 8 DataLoader workers; "autocast": "bfloat16" runs the encoders under autocast
            "workers": 8}
    return {
        # 500 training and 500 test images per class (5,000 of 60,000 and 5,000 of 10,000), balanced and
        # drawn with the seed: sized to run in about 6 minutes on 2 CPU cores. Any harness.data declarations probe
        # on those instead (one row each per model, and the mean)
        "datasets": [{"name": "fashion_mnist", "train_per_class": 500, "test_per_class": 500}],
        "models": DEFAULT_MODELS,
        "published": {},
        "batch_size": 500,
        "val_fraction": 0.1,
        "notes": "Default profile: random-init weights (seed 0) and the data-scale suite's trained models "
                 "(their training set overlaps this probe's), so no published number applies.",
    }

_TINY_CLIP = {"model": "open_clip:ViT-B-32/openai", "with_reference": True,
              "kwargs": {"vision_cfg": {"layers": 1, "width": 64, "head_width": 32},
                         "text_cfg": {"layers": 1, "width": 64, "heads": 2}, "embed_dim": 32}}

# the "ci" profile (the default profile's overrides): 20 images per class, the models it does not train (the
# data-scale suite's would be trained at full size)
CI = {"datasets.0.train_per_class": 20, "datasets.0.test_per_class": 20,
      "models": [m for m in DEFAULT_MODELS if not m["model"].startswith("data_scale:")]}
MODEL_KEYS = ["models"]  # the config keys whose lists name models (harness.tools.rehearsal)
# a CPU rehearsal of the full profile (harness.tools.rehearsal): a one-block ViT-B/16 and a one-block ViT-B-32, at
# their real 224 pixels, on the classes present; smaller batches and fewer workers
REHEARSAL = {
    "models": [{"model": "timm:vit_base_patch16_224.augreg_in21k", "kwargs": {"depth": 1, "embed_dim": 64,
                                                                               "num_heads": 2},
                "weights": "pretrained", "with_reference": True}, _TINY_CLIP],
    "workers": 2, "batch_size": 128,
}


def rehearsal_data(imagenet_dir: str) -> dict:
    """The full profile pointed at a rehearsal's ImageNet tree."""
    return {"datasets": [{"name": "imagenet", "root": imagenet_dir}]}
