"""Differentiable operations, named and signed like torch / torch.nn.functional.

Each submodule groups one kind of op; everything is re-exported here so that
``import refgen.functional as F`` reads like the code a reader already knows.
"""
from refgen.functional.elementwise import *  # noqa: F401,F403
from refgen.functional.reduction import *  # noqa: F401,F403
from refgen.functional.shape import *  # noqa: F401,F403
from refgen.functional.linalg import *  # noqa: F401,F403
from refgen.functional.conv import *  # noqa: F401,F403
from refgen.functional.nn import *  # noqa: F401,F403
from refgen.functional.loss import *  # noqa: F401,F403
from refgen.functional.discrete import *  # noqa: F401,F403
from refgen.functional.normal import *  # noqa: F401,F403
