"""Zero-shot classification and retrieval with a CLIP model (CLIP paper, section 3.1.4).

- The classifier: for each class, every template filled with the class name is encoded by the text tower,
  each embedding L2-normalised, the embeddings averaged over templates and the average renormalised
  (prompt ensembling). The C class embeddings are the columns of a (D_e, C) matrix.
- Classification: logits = 100 · normalise(image embedding) · classifier; the class with the highest logit.
- Retrieval over N images and their captions: image -> text recall@k is the fraction of images with one of
  their own captions among the k most similar captions; text -> image recall@k the fraction of captions whose
  image is among the k most similar images (LAION CLIP_benchmark's definition).

Works with any model that has encode_text(tokens, normalize=True): the reference CLIP, open_clip's, a user's
CLIP-like model (harness.models.python).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F


@torch.no_grad()
def zero_shot_classifier(model, tokenizer: Callable, classnames: Sequence[str],
                         templates: Sequence[str | Callable] | dict[str, Sequence[str]],
                         device: torch.device | str | None = None, classes_per_batch: int = 10) -> torch.Tensor:
    """(D_e, C) matrix whose column c is class c's prompt-ensembled text embedding (unit norm). `templates`: one
    list for every class ("{}" takes the class name; or callables), or {class name: its own prompts} (CuPL's
    class-specific prompts), each class averaging its own."""
    if not classnames or not templates:
        raise ValueError("zero_shot_classifier needs at least one class name and one template")
    device = device or next(model.parameters()).device
    if isinstance(templates, dict):
        missing = [c for c in classnames if not templates.get(c)]
        if missing:
            raise ValueError(f"class-specific prompts lack classes: {', '.join(missing[:5])}")
        columns = []
        for c in classnames:
            emb = model.encode_text(tokenizer(list(templates[c])).to(device), normalize=True).mean(dim=0)
            columns.append(emb / emb.norm())
        return torch.stack(columns, dim=1)
    columns = []
    for start in range(0, len(classnames), classes_per_batch):
        names = classnames[start: start + classes_per_batch]
        texts = [t.format(c) if isinstance(t, str) else t(c) for c in names for t in templates]
        emb = model.encode_text(tokenizer(texts).to(device), normalize=True)  # (C_b · T, D_e)
        emb = emb.reshape(len(names), len(templates), -1).mean(dim=1)  # average over templates
        columns.append((emb / emb.norm(dim=1, keepdim=True)).T)  # (D_e, C_b)
    return torch.cat(columns, dim=1)


OUTPUTS = ("predictions", "ranked", "margin", "scale")  # classification_metrics' per-image arrays


def classification_metrics(image_features: torch.Tensor, classifier: torch.Tensor, labels: np.ndarray) -> dict:
    """top-1, top-5 (%) and mean per-class recall (%) of logits = 100 · normalise(image) · classifier; the top-1
    predictions, the top-5 ranked ones and the margin between the two highest logits ("predictions", "ranked",
    "margin", "scale" (the image's largest |logit|): arrays, for the caller to pop: OUTPUTS)."""
    logits = 100.0 * F.normalize(image_features.float(), dim=-1) @ classifier.float().to(image_features.device)
    labels_t = torch.as_tensor(labels, device=logits.device)
    k = min(5, logits.shape[1])
    values, top = logits.topk(k, dim=1)
    pred = top[:, 0]
    recalls = [(pred[labels_t == c] == c).float().mean().item() for c in labels_t.unique()]
    return {"top1": 100.0 * (pred == labels_t).float().mean().item(),
            "top5": 100.0 * (top == labels_t[:, None]).any(dim=1).float().mean().item(),
            "mean_per_class_recall": 100.0 * float(np.mean(recalls)),
            "predictions": pred.cpu().numpy(), "ranked": top.cpu().numpy(),
            "margin": (values[:, 0] - values[:, 1]).cpu().numpy() if k > 1 else np.zeros(len(pred)),
            "scale": logits.abs().amax(dim=1).cpu().numpy()}


def retrieval_recall(image_features: torch.Tensor, text_features: torch.Tensor, text_to_image: np.ndarray,
                     ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Recall@k in both directions; text_to_image[j] is the index of the image that caption j describes."""
    img = F.normalize(image_features.float(), dim=-1)
    txt = F.normalize(text_features.float(), dim=-1)
    owner = torch.as_tensor(text_to_image, device=img.device)
    sim = img @ txt.T  # (N_images, N_texts)
    out = {}
    for k in ks:
        # image -> text: is one of the image's own captions among its k most similar captions?
        top_t = sim.topk(min(k, sim.shape[1]), dim=1).indices  # (N_images, k) caption indices
        hit = owner[top_t] == torch.arange(len(img), device=img.device)[:, None]
        out[f"image_to_text_R@{k}"] = 100.0 * hit.any(dim=1).float().mean().item()
        # text -> image: is the caption's image among its k most similar images?
        top_i = sim.T.topk(min(k, sim.shape[0]), dim=1).indices  # (N_texts, k)
        out[f"text_to_image_R@{k}"] = 100.0 * (top_i == owner[:, None]).any(dim=1).float().mean().item()
    return out
