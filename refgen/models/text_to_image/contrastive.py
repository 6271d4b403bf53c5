"""The math of CLIP on embeddings alone (Radford et al. 2021, "Learning Transferable Visual
Models From Natural Language Supervision"), separate from the encoders so each identity can
be checked on embeddings a test chooses.

    u_i = f(x_i) / |f(x_i)|,  v_j = g(c_j) / |g(c_j)|                 unit image / text embeddings
    s = exp(t),  t learned, clamped so that s <= 100                   the paper's logit scale
    L_ij = s u_i . v_j                                                 (B, B) logits
    loss = ( CE(L, diag) + CE(L^T, diag) ) / 2                         symmetric InfoNCE

CE(L, diag) = -(1/B) sum_i log softmax_j(L_ij)[j = i]: row i asks which caption belongs to
image i; the transpose asks which image belongs to caption j.

Zero-shot classification with a prompt ensemble: each class c is written with P prompts;
its embedding is the mean of their unit text embeddings, renormalised, w_c = mean_p v_cp /
|mean_p v_cp|, and an image is assigned argmax_c u . w_c.

CLIP score (Hessel et al. 2021, "CLIPScore"): w max(cos(u, v), 0) with w = 2.5.
"""
from __future__ import annotations

import math

import refgen.functional as F
from refgen.autograd import Tensor
from refgen.backend import xp

__all__ = ["LOGIT_SCALE_MAX", "normalize", "logit_scale", "info_nce", "class_embeddings",
           "zero_shot_logits", "retrieve", "clip_score", "CLIP_SCORE_W"]

LOGIT_SCALE_MAX = 100.0  # "clipped to prevent scaling the logits by more than 100"
CLIP_SCORE_W = 2.5


def normalize(z, eps: float = 1e-12):
    """z / |z| along the last axis (a Tensor)."""
    return z / F.sqrt(F.sum(z * z, dim=-1, keepdim=True) + eps)


def logit_scale(t):
    """s = exp(min(t, log 100)): the learned temperature's inverse, clamped at 100."""
    return F.exp(F.clamp(t, max=math.log(LOGIT_SCALE_MAX)))  # Radford et al. 2021, sec. 2.5


def info_nce(u, v, scale):
    """Symmetric InfoNCE of unit embeddings u (B, D) (images) and v (B, D) (texts), pair i
    matched with pair i, at logit scale ``scale`` (a Tensor scalar or a float)."""
    logits = scale * F.matmul(u, F.transpose(v, 0, 1))  # L_ij = s u_i . v_j   (B, B)
    target = xp.arange(u.shape[0])
    # Radford et al. 2021, Fig. 3: (CE over texts for each image + CE over images for each text) / 2
    return (F.cross_entropy(logits, target) + F.cross_entropy(F.transpose(logits, 0, 1), target)) / 2


def class_embeddings(v):
    """Unit text embeddings of every (class, prompt) (C, P, D) -> (C, D): the mean over the
    prompts, renormalised (prompt ensembling)."""
    return normalize(F.mean(v, dim=1))  # Radford et al. 2021, sec. 3.1.4: w_c = mean_p v_cp, renormalised


def zero_shot_logits(u, w):
    """u . w_c for images u (N, D) and class embeddings w (C, D): (N, C); argmax is the class."""
    return F.matmul(u, F.transpose(w, 0, 1))


def retrieve(queries, gallery, k: int = 1):
    """Indices (Q, k) of the k gallery rows most similar (dot product) to each query row."""
    q = queries.data if isinstance(queries, Tensor) else queries
    g = gallery.data if isinstance(gallery, Tensor) else gallery
    sim = q @ g.T  # (Q, G)
    return xp.argsort(-sim, axis=1)[:, :k]


def clip_score(u, v, w: float = CLIP_SCORE_W):
    """w max(u_i . v_i, 0) per pair of unit embeddings (N, D), (N, D) -> (N,)."""
    return w * F.relu(F.sum(u * v, dim=-1))  # Hessel et al. 2021, CLIP-S = w max(cos, 0)
