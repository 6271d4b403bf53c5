"""refgen's correctness oracle, public so users can check their own functions."""
from refgen.testing.gradcheck import (check_vjp, check_double_backward, check_grads,  # noqa: F401
                                      GradcheckError)
