"""refgen: generative models, from the derivations to working code, in NumPy."""
from refgen import allocator as _allocator

_allocator.keep_freed_memory()  # NumPy's temporaries reuse freed heap, not fresh pages
from refgen.autograd import (Tensor, Function, tensor, grad, no_grad, enable_grad,  # noqa: F401
                             is_grad_enabled, as_tensor)
from refgen import backend, functional, nn, optim, distributions  # noqa: F401

__version__ = "0.1.0"
