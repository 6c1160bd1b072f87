"""Zero-shot classification and retrieval with CLIP (Radford et al., 2021, section 3.1.4).

Run:    nox -s eval -- zero_shot              (python -m harness run zero_shot --profile default)
Expect: default profile (offline, 2 CPU cores, ~6 minutes): a small reference CLIP trained from scratch on
        12,000 Fashion-MNIST images with captions from 8 training templates, then evaluated with 5 templates held
        out from training: zero-shot top-1 well above the 10% chance level, retrieval recall@k above chance,
        the learned temperature, a linear probe on the same image tower beside it, and open_clip carrying the
        same weights giving the same classifier and the same predictions.
        Full profile (pretrained open_clip weights, ImageNet validation, a GPU): top-1 next to open_clip's
        published numbers.
Tables: results/zero_shot.{csv,md}.
"""

NAME = "zero_shot"
VERSION = 1
EVALUATOR = "zero_shot"

# Fashion-MNIST's classes as words a caption would use
CLASSNAMES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
TRAIN_TEMPLATES = ["a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a {}.", "a photo of the {}.",
                   "a grayscale photo of a {}.", "a product photo of a {}.", "a cropped photo of a {}."]
HELD_OUT_TEMPLATES = ["a black and white photo of a {}.", "a low resolution photo of a {}.",
                      "a close-up photo of a {}.", "a photo of my {}.", "itap of a {}."]

# The small CLIP trained by the default profile (reference implementation, 3-channel 28×28 input so that
# open_clip can carry the same weights). Context 16 tokens: the longest caption is 14.
CLIP_MODEL = {
    "embed_dim": 64,
    "vision": {"image_size": 28, "patch_size": 7, "in_chans": 3, "width": 64, "depth": 4, "heads": 4,
               "mlp_dim": 128},
    "text": {"context_length": 16, "width": 64, "depth": 2, "heads": 4, "mlp_dim": 128},
}

# published numbers per data set: harness.data.catalog (open_clip docs/openclip_results.csv)
OPEN_CLIP_RESULTS = "open_clip results table (docs/openclip_results.csv): zero-shot top-1, retrieval score"
FULL_MODELS = [  # harness.models declarations
    {"model": "open_clip:ViT-B-32/openai", "with_reference": True},
    {"model": "open_clip:ViT-B-32/laion2b_s34b_b79k", "with_reference": True},
    {"model": "open_clip:ViT-B-16/openai", "with_reference": True},
    {"model": "open_clip:ViT-L-14/openai", "with_reference": True},
]


def get_config(profile: str) -> dict:
    if profile == "full":
        return {
            # harness.data declarations (ImageNet: open_clip's 1,000 names, OpenAI's 80 templates; from
            # $VITCLIP_IMAGENET_DIR, {"name": "imagenet", "root": ...} or the hub cache). CLIP_benchmark's set:
            # --set 'datasets=["imagenet","cifar10","cifar100","food101","pets","flowers102","stl10","dtd",
            # "eurosat","mnist","flickr30k","mscoco"]', a local copy as {"name": "cifar10", "root": "/data/c10"},
            # your own as {"name": "imagefolder:/data/x", "classnames": "names.txt", "templates": "t.json"}
            "datasets": ["imagenet"],
            "models": FULL_MODELS, "published_source": OPEN_CLIP_RESULTS, "batch_size": 256,
            "workers": 8,  # JPEGs decoded in 8 DataLoader workers; "autocast": "bfloat16" for the encoders
        }
    return {
        "data": {"name": "fashion_mnist", "split": "test", "test_per_class": 500, "retrieval_per_class": 100},
        "classnames": CLASSNAMES,
        "templates": HELD_OUT_TEMPLATES,  # zero-shot prompts: none of them was seen in training
        "train": {
            "id": "clip_fmnist", "model": CLIP_MODEL,
            "data": {"name": "fashion_mnist", "per_class": 1200, "subset_seed": 0},
            "templates": TRAIN_TEMPLATES,
            # captions name the class and, each with probability 1/2, two attributes measured on the image
            # (small/large: inked area above or below the training median; dark/light: mean ink likewise)
            "attribute_prob": 0.5,
            "recipe": {"steps": 1500, "batch_size": 256, "lr": 1e-3, "weight_decay": 0.1, "warmup": 0.1,
                       "pad": 2, "flip": True},
            "seed": 0,
        },
        # the linear probe beside zero-shot: same image tower, 500 training images per class
        "probe": {"train_per_class": 500, "val_fraction": 0.1},
        # the CLIP the profile trains (above) is "zero_shot:clip_fmnist": evaluated with held-out templates, by
        # retrieval and by a linear probe. Any CLIP-like models (harness.models) instead, on harness.data's data
        # sets: --set 'models=["open_clip:ViT-B-32"]' --set 'datasets=["cifar10"]' (no training then); no data
        # sets: the one above, with its class names and held-out templates
        "models": ["zero_shot:clip_fmnist"], "datasets": [],
        "batch_size": 500,
    }

_TINY_CLIP = {"model": "open_clip:ViT-B-32/openai", "with_reference": True,
              "kwargs": {"vision_cfg": {"layers": 1, "width": 64, "head_width": 32},
                         "text_cfg": {"layers": 1, "width": 64, "heads": 2}, "embed_dim": 32}}

# the "ci" profile (the default profile's overrides): a 20-step CLIP on 200 images, 20 test images per class
CI = {"train.recipe.steps": 20, "train.data.per_class": 20, "data.test_per_class": 20,
      "data.retrieval_per_class": 10, "probe.train_per_class": 20}
MODEL_KEYS = ["models"]  # the config keys whose lists name models (harness.tools.rehearsal)
# a CPU rehearsal of the full profile (harness.tools.rehearsal): a one-block ViT-B-32 at its real 224 pixels, 80
# templates × the classes present, beside the published top-1 of ViT-B-32/openai; smaller batches, fewer workers
REHEARSAL = {"models": [{**_TINY_CLIP, "published_top1": 63.32}], "workers": 2, "batch_size": 128}
QUICK_REHEARSAL = True  # the GPU check's --quick rehearses this suite alone (10 classes)


def rehearsal_data(imagenet_dir: str) -> dict:
    """The full profile pointed at a rehearsal's ImageNet tree."""
    return {"datasets": [{"name": "imagenet", "root": imagenet_dir}]}
