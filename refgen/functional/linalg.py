"""Linear algebra: matmul (batched, broadcasting), einsum, slogdet, inv, tril/triu."""
from __future__ import annotations

from refgen.autograd import Function, Tensor, as_tensor
from refgen.backend import xp

__all__ = ["matmul", "tril", "triu", "einsum", "slogdet", "inv", "det"]


def _mT(t):
    from refgen.functional.shape import transpose
    return transpose(t, -1, -2)


class _MatMul(Function):
    """(..., n, k) @ (..., k, m) -> (..., n, m); batch dimensions broadcast."""

    def forward(self, a, b):
        return xp.matmul(a, b)

    def backward(self, gy):
        from refgen.functional.shape import sum_to
        a, b = self.inputs
        ga = sum_to(matmul(gy, _mT(b)), a.shape) if a.requires_grad else None  # dL/dA = G B^T
        gb = sum_to(matmul(_mT(a), gy), b.shape) if b.requires_grad else None  # dL/dB = A^T G
        return ga, gb


def matmul(a, b):
    """torch.matmul semantics, including 1-D operands."""
    from refgen.functional.shape import reshape, unsqueeze
    a, b = as_tensor(a), as_tensor(b)
    if a.ndim == 1 and b.ndim == 1:
        return reshape(_MatMul.apply(unsqueeze(a, 0), unsqueeze(b, 1)), ())
    if a.ndim == 1:
        y = _MatMul.apply(unsqueeze(a, 0), b)
        return reshape(y, y.shape[:-2] + y.shape[-1:])
    if b.ndim == 1:
        y = _MatMul.apply(a, unsqueeze(b, 1))
        return reshape(y, y.shape[:-1])
    return _MatMul.apply(a, b)


def tril(x, diagonal: int = 0):
    """Lower triangle of the last two dims (the rest set to 0)."""
    x = as_tensor(x)
    n, m = x.shape[-2:]
    return x * Tensor(xp.tri(n, m, diagonal, dtype=x.dtype))


def triu(x, diagonal: int = 0):
    """Upper triangle of the last two dims (the rest set to 0)."""
    x = as_tensor(x)
    n, m = x.shape[-2:]
    return x * Tensor(1 - xp.tri(n, m, diagonal - 1, dtype=x.dtype))


# --- einsum ------------------------------------------------------------------------------

_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


class _Einsum(Function):
    """einsum on letters only: no ellipsis, no repeated index within one operand, and every
    index the same size in every operand that has it (broadcasting is resolved beforehand)."""

    def forward(self, *arrays, subs, out):
        self.subs, self.out = subs, out
        return xp.einsum(",".join(subs) + "->" + out, *arrays, optimize=len(arrays) > 1)

    def backward(self, gy):
        from refgen.functional.shape import broadcast_to, reshape
        grads = []
        for i, x in enumerate(self.inputs):
            if not x.requires_grad:
                grads.append(None)
                continue
            # dL/dX_i = einsum of the upstream gradient with every other operand, out to X_i's
            # indices; an index found nowhere else was summed out of X_i alone, so its
            # gradient is constant along it: compute without it, then broadcast.
            others = [(self.out, gy)] + [(s, t) for j, (s, t) in
                                          enumerate(zip(self.subs, self.inputs)) if j != i]
            seen = set("".join(s for s, _ in others))
            kept = "".join(c for c in self.subs[i] if c in seen)
            g = _einsum_letters([s for s, _ in others], kept, [t for _, t in others])
            if kept != self.subs[i]:
                g = reshape(g, tuple(n if c in seen else 1 for c, n in zip(self.subs[i], x.shape)))
                g = broadcast_to(g, x.shape)
            grads.append(g)
        return tuple(grads)


def _einsum_letters(subs, out, tensors):
    if len(tensors) == 1 and subs[0] == out:
        return tensors[0]
    return _Einsum.apply(*tensors, subs=tuple(subs), out=out)


def einsum(equation: str, *operands):
    """torch.einsum / numpy.einsum: explicit ('ij,jk->ik') or implicit ('ij,jk') output,
    with '...' for broadcast batch dims. Differentiable to any order.

    Not supported: an index repeated within one operand (a diagonal, as in 'ii->i' or
    'ii' for the trace); it raises ValueError. Write the diagonal with indexing instead.
    """
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    tensors = [as_tensor(t) for t in operands]
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(tensors):
        raise ValueError(f"einsum {equation!r} names {len(terms)} operands, got {len(tensors)}")
    for term in terms + ([rhs] if arrow else []):
        named = term.replace("...", "", 1)
        if set(named) - set(_LETTERS):
            raise ValueError(f"einsum {equation!r}: bad term {term!r} (letters and one '...')")
        if len(set(named)) != len(named):
            raise ValueError(
                f"einsum {equation!r}: index repeated within {term!r}; diagonals and traces "
                "are not supported (take the diagonal by indexing instead)")

    # '...' -> fresh letters, right-aligned across operands (numpy broadcasting).
    spare = [c for c in _LETTERS if c not in eq]
    ell_shapes = []
    for term, t in zip(terms, tensors):
        named = len(term.replace("...", ""))
        if t.ndim < named or ("..." not in term and t.ndim != named):
            raise ValueError(f"einsum {equation!r}: operand of shape {t.shape} does not have "
                             f"{named} dims for {term!r}")
        lead = term.index("...") if "..." in term else 0
        ell_shapes.append(t.shape[lead:lead + t.ndim - named] if "..." in term else ())
    nb = max((len(s) for s in ell_shapes), default=0)
    batch = [1] * nb  # the broadcast shape of all the '...' parts
    for s in ell_shapes:
        for k, n in enumerate(s, start=nb - len(s)):
            if n != 1:
                if batch[k] not in (1, n):
                    raise ValueError(f"einsum {equation!r}: '...' shapes {ell_shapes} do not broadcast")
                batch[k] = n
    ell = "".join(spare[:nb])

    from refgen.functional.shape import reshape
    subs, sizes = [], {}
    for i, (term, t, s) in enumerate(zip(terms, tensors, ell_shapes)):
        # a size-1 '...' dim against a larger one is dropped: einsum then treats the operand
        # as constant along that index, which is what broadcasting means
        mine = ell[nb - len(s):]
        drop = {c for c, n, b in zip(mine, s, batch[nb - len(s):]) if n == 1 and b != 1}
        full = term.replace("...", mine)
        letters = "".join(c for c in full if c not in drop)
        if drop:
            t = reshape(t, tuple(n for c, n in zip(full, t.shape) if c not in drop))
        for c, n in zip(letters, t.shape):
            if sizes.setdefault(c, n) != n:
                raise ValueError(f"einsum {equation!r}: index {c!r} has sizes {sizes[c]} and {n}")
        subs.append(letters)
        tensors[i] = t

    if arrow:
        out = rhs.replace("...", ell)  # '...' left out of the output is summed, as in numpy
        if len(set(out)) != len(out):
            raise ValueError(f"einsum {equation!r}: index repeated in the output")
        missing = set(out) - set(sizes)
        if missing:
            raise ValueError(f"einsum {equation!r}: output index {sorted(missing)} is in no operand")
    else:  # implicit: '...' first, then the indices used once, in alphabetical order
        counts = {}
        for term in terms:
            for c in term.replace("...", ""):
                counts[c] = counts.get(c, 0) + 1
        out = ell + "".join(sorted(c for c, k in counts.items() if k == 1))
    return _einsum_letters(subs, out, tensors)


# --- inverse and determinant -------------------------------------------------------------

class _Inv(Function):
    def forward(self, a):
        return xp.linalg.inv(a)

    def backward(self, gy):
        ainv_t = _mT(self.output)
        return -matmul(matmul(ainv_t, gy), ainv_t)  # dL/dA = -A^-T G A^-T


def inv(A):
    """The inverse of each (..., n, n) matrix."""
    return _Inv.apply(as_tensor(A))


class _LogAbsDet(Function):
    def forward(self, a, value):
        return value

    def backward(self, gy):
        from refgen.functional.shape import unsqueeze
        # d log|det A| / dA = A^-T; through inv(), so the gradient differentiates again
        return unsqueeze(unsqueeze(gy, -1), -1) * _mT(inv(self.inputs[0]))


def slogdet(A):
    """(sign, log|det A|) of each (..., n, n) matrix; sign is a constant Tensor."""
    A = as_tensor(A)
    sign, logabs = xp.linalg.slogdet(A.data)
    return Tensor(sign), _LogAbsDet.apply(A, value=xp.asarray(logabs, dtype=A.dtype))


def det(A):
    """det A = sign * exp(log|det A|) of each (..., n, n) matrix."""
    from refgen.functional.elementwise import exp
    sign, logabs = slogdet(A)
    return sign * exp(logabs)
