"""Text-to-image models: CLIP (contrastive image-text embeddings) and its tools (zero-shot
classification, retrieval, CLIP score), the discrete VAE of DALL-E and DALL-E itself."""
from refgen.models.text_to_image.contrastive import (class_embeddings, clip_score, info_nce,  # noqa: F401
                                                      logit_scale, normalize, retrieve,
                                                      zero_shot_logits)
from refgen.models.text_to_image.clip import CLIP, ImageEncoder, TextEncoder  # noqa: F401
from refgen.models.text_to_image.dvae import DVAE, codebook_perplexity, kl_uniform, temperature  # noqa: F401
from refgen.models.text_to_image.dalle import DALLE, DalleTransformer, attention_layout  # noqa: F401
from refgen.models.text_to_image.noised_clip import NoisedCLIP, NoisedImageEncoder  # noqa: F401
from refgen.models.text_to_image.text_diffusion import (TextDiffusion, drop_captions,  # noqa: F401
                                                        null_caption)
from refgen.models.text_to_image.glide import GLIDE  # noqa: F401
from refgen.models.text_to_image.upsampler import GlideUpsampler, Upsampling  # noqa: F401
from refgen.models.text_to_image.imagen import Imagen  # noqa: F401
from refgen.models.text_to_image.unclip import AutoregressivePrior, EmbeddingPrior, UnCLIP  # noqa: F401
