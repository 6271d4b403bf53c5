"""Optimizers (SGD, RMSprop, Adam, AdamW), gradient clipping, weight EMA and learning-rate schedules.

Optimizers read ``p.grad`` and write ``p.data`` directly: a step is not differentiated, so no
graph is recorded. Update rules follow torch's documented algorithms, with g_t the gradient,
theta the parameters, gamma the learning rate and lambda the weight decay:

    SGD:   g <- g + lambda theta;  b <- mu b + (1 - tau) g  (b_1 = g);
           g <- g + mu b (nesterov) or b;                     theta <- theta - gamma g
    Adam:  g <- g + lambda theta;  m <- beta1 m + (1 - beta1) g;  v <- beta2 v + (1 - beta2) g^2
           theta <- theta - gamma (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
    AdamW: theta <- theta - gamma lambda theta first (decoupled decay), then Adam with lambda = 0.
    RMSprop: g <- g + lambda theta;  v <- alpha v + (1 - alpha) g^2;
           theta <- theta - gamma g / (sqrt(v) + eps)

``state_dict()`` is flat ({name: array}) so that it goes straight into an ``.npz`` checkpoint.
"""
from __future__ import annotations

import contextlib
import math
from collections import OrderedDict

from refgen import backend
from refgen.autograd import Tensor
from refgen.backend import xp

__all__ = ["Optimizer", "SGD", "RMSprop", "Adam", "AdamW", "descend", "clip_grad_norm_", "EMA", "linear_warmup",
           "cosine_schedule", "LRScheduler"]


class Optimizer:
    """Holds the parameter list, the learning rate ``lr`` (schedules set it) and per-parameter
    state; subclasses implement ``_update(p, g, state)`` for one parameter."""

    state_keys: tuple = ()  # names of the per-parameter arrays, in state_dict order

    def __init__(self, params, lr: float):
        params = list(params.parameters() if hasattr(params, "parameters") else params)
        unique, seen = [], set()
        for p in params:
            if id(p) not in seen:
                seen.add(id(p))
                unique.append(p)
        if not unique:
            raise ValueError("optimizer got an empty parameter list")
        if lr < 0:
            raise ValueError(f"learning rate must be >= 0, got {lr}")
        self.params = unique
        self.lr = float(lr)
        self.state = [dict() for _ in unique]  # per parameter: 'step' (int) and arrays
        self.step_count = 0  # calls to step()

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        """One update of every parameter that has a gradient (others, and their state, wait)."""
        self.step_count += 1
        for p, st in zip(self.params, self.state):
            if p.grad is None:
                continue
            g = p.grad.data if isinstance(p.grad, Tensor) else p.grad
            st["step"] = st.get("step", 0) + 1
            self._update(p, g, st)

    def _update(self, p, g, st):
        raise NotImplementedError

    def state_dict(self) -> "OrderedDict[str, object]":
        """Flat {name: array}: 'step', 'lr', and 'p{i}.step', 'p{i}.<buffer>' per parameter."""
        out = OrderedDict(step=xp.asarray(self.step_count), lr=xp.asarray(self.lr))
        for i, st in enumerate(self.state):
            for k, v in st.items():
                out[f"p{i}.{k}"] = xp.asarray(v) if k == "step" else v
        return out

    def load_state_dict(self, state):
        """Restore ``state_dict()`` output (e.g. read back from an .npz)."""
        n = len(self.params)
        new = [dict() for _ in range(n)]
        for key in state.keys():
            if key in ("step", "lr"):
                continue
            head, _, name = key.partition(".")
            if not (head.startswith("p") and head[1:].isdigit() and name):
                raise KeyError(f"optimizer state has an unknown key {key!r}")
            i = int(head[1:])
            if i >= n:
                raise KeyError(f"optimizer state has {key!r} but the optimizer holds "
                               f"{n} parameters")
            v = state[key]
            if name == "step":
                new[i]["step"] = int(backend.to_numpy(v))
                continue
            p = self.params[i]
            if tuple(v.shape) != tuple(p.shape):
                raise ValueError(f"optimizer state {key!r} has shape {tuple(v.shape)} but "
                                 f"parameter {i} has shape {tuple(p.shape)}")
            new[i][name] = backend.copy_to_active(v, dtype=p.dtype)
        self.state = new
        if "step" in state:
            self.step_count = int(backend.to_numpy(state["step"]))
        if "lr" in state:
            self.lr = float(backend.to_numpy(state["lr"]))


class SGD(Optimizer):
    """Stochastic gradient descent with momentum mu, dampening tau, Nesterov and L2 decay."""

    state_keys = ("momentum_buffer",)

    def __init__(self, params, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        super().__init__(params, lr)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum needs momentum > 0 and dampening = 0")
        self.momentum, self.dampening = momentum, dampening
        self.weight_decay, self.nesterov = weight_decay, nesterov

    def _update(self, p, g, st):
        if self.weight_decay:
            g = g + self.weight_decay * p.data  # g <- g + lambda theta
        if self.momentum:
            b = st.get("momentum_buffer")
            if b is None:
                b = st["momentum_buffer"] = xp.array(g, copy=True)  # b_1 = g
            else:
                b *= self.momentum  # b <- mu b + (1 - tau) g
                b += (1 - self.dampening) * g
            g = g + self.momentum * b if self.nesterov else b
        p.data = p.data - self.lr * g  # theta <- theta - gamma g


class RMSprop(Optimizer):
    """RMSprop (Tieleman & Hinton) as torch writes it: eps outside the square root, no
    momentum, no centring. WGAN's critic and generator use it (Arjovsky et al. 2017)."""

    state_keys = ("square_avg",)

    def __init__(self, params, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, lr)
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"alpha must be in [0, 1), got {alpha}")
        self.alpha, self.eps, self.weight_decay = float(alpha), float(eps), float(weight_decay)

    def _update(self, p, g, st):
        if self.weight_decay:
            g = g + self.weight_decay * p.data  # g <- g + lambda theta
        if "square_avg" not in st:
            st["square_avg"] = xp.zeros_like(p.data)
        v = st["square_avg"]
        v *= self.alpha  # v <- alpha v + (1 - alpha) g^2
        v += (1 - self.alpha) * (g * g)
        p.data = p.data - self.lr * g / (xp.sqrt(v) + self.eps)


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction; eps is added outside the square root.

    ``weight_decay`` here is L2 regularisation added to the gradient (torch's Adam); use
    AdamW for decoupled decay.
    """

    state_keys = ("exp_avg", "exp_avg_sq")
    _decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, lr)
        b1, b2 = betas
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        self.betas, self.eps, self.weight_decay = (float(b1), float(b2)), eps, weight_decay

    def _update(self, p, g, st):
        b1, b2 = self.betas
        t = st["step"]
        if self.weight_decay:
            if self._decoupled:
                # theta <- theta - gamma lambda theta
                p.data = p.data * (1 - self.lr * self.weight_decay)
            else:
                g = g + self.weight_decay * p.data  # g <- g + lambda theta
        if "exp_avg" not in st:
            st["exp_avg"] = xp.zeros_like(p.data)
            st["exp_avg_sq"] = xp.zeros_like(p.data)
        m, v = st["exp_avg"], st["exp_avg_sq"]
        m *= b1  # m_t = beta1 m_{t-1} + (1 - beta1) g_t
        m += (1 - b1) * g
        g2 = g * g
        g2 *= 1 - b2
        v *= b2  # v_t = beta2 v_{t-1} + (1 - beta2) g_t^2
        v += g2
        # gamma m_hat / (sqrt(v_hat) + eps), with m_hat = m / (1 - beta1^t) and
        # v_hat = v / (1 - beta2^t), equals gamma c / (sqrt(v) + eps sqrt(1 - beta2^t)) * m with
        # c = sqrt(1 - beta2^t) / (1 - beta1^t): the bias corrections become two scalars, and the
        # update makes 12 passes over parameter-sized arrays instead of 14 (0.78-0.81 against
        # 0.98-1.12 ms for a VAE's 0.4 M parameters, 3 interleaved repeats; test_optim checks it
        # against the textbook form)
        bc1, sbc2 = 1 - b1 ** t, math.sqrt(1 - b2 ** t)
        step = xp.sqrt(v)
        step += self.eps * sbc2
        step = m / step  # (not out=: a 0-d parameter's sqrt is a scalar, not an array)
        step *= self.lr * sbc2 / bc1
        p.data = p.data - step


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), applied before the Adam step."""

    _decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        super().__init__(params, lr, betas, eps, weight_decay)


def descend(loss, optimizers) -> None:
    """One gradient step of every optimizer in ``optimizers`` (a dict, as a model's
    ``train_step`` receives them) on ``loss``: zero the gradients, backward, step each."""
    opts = list(optimizers.values())
    for opt in opts:
        opt.zero_grad()
    loss.backward()
    for opt in opts:
        opt.step()


def clip_grad_norm_(params, max_norm: float, norm_type: float = 2.0, eps: float = 1e-6) -> float:
    """Scale all gradients together so that their joint norm is at most ``max_norm``.

    Returns the total norm before clipping (a Python float). Gradients are replaced, never
    modified in place (two parameters' gradients may share one array).
    """
    params = [p for p in (params.parameters() if hasattr(params, "parameters") else params)
              if p.grad is not None]
    if not params:
        return 0.0
    grads = [p.grad.data for p in params]
    if math.isinf(norm_type):
        total = max(float(xp.max(xp.abs(g))) for g in grads)
    else:
        total = float(sum(xp.sum(xp.abs(g.astype(xp.float64)) ** norm_type) for g in grads)
                      ) ** (1.0 / norm_type)
    coef = max_norm / (total + eps)
    if coef < 1.0:
        for p in params:
            p.grad = Tensor(p.grad.data * coef)
    return total


class EMA:
    """Exponential moving average of a model's parameters, for sampling with averaged weights.

        shadow <- decay * shadow + (1 - decay) * theta     after each optimizer step

    A parameter that does not require a gradient (a frozen teacher, a target network with its
    own update) is not averaged: its shadow is its current value, exactly, so copying the
    averages in never moves it (in float32, averaging a constant drifts it by a few ulps).
    """

    def __init__(self, model, decay: float = 0.999):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.model, self.decay = model, float(decay)
        self.num_updates = 0
        self.shadow = OrderedDict((k, xp.array(p.data, copy=True))
                                  for k, p in model.named_parameters())

    def _pairs(self, model):
        model = self.model if model is None else model
        for k, p in model.named_parameters():
            if k not in self.shadow:
                raise KeyError(f"EMA has no average for parameter {k!r}")
            yield k, p

    def update(self, model=None):
        d = self.decay
        for k, p in self._pairs(model):
            s = self.shadow[k]
            if not p.requires_grad:  # frozen: tracked, not averaged
                s[...] = p.data
                continue
            s *= d  # shadow <- decay shadow + (1 - decay) theta
            s += (1 - d) * p.data
        self.num_updates += 1

    def copy_to(self, model=None):
        """Overwrite the model's parameters with the averages."""
        for k, p in self._pairs(model):
            p.data = xp.array(self.shadow[k], copy=True)

    @contextlib.contextmanager
    def swapped(self, model=None):
        """Within the block the model holds the averaged weights; its own come back after."""
        saved = []
        try:
            for k, p in self._pairs(model):
                saved.append((p, p.data))
                p.data = self.shadow[k]
            yield self.model if model is None else model
        finally:
            for p, data in saved:
                p.data = data

    def state_dict(self) -> "OrderedDict[str, object]":
        out = OrderedDict(num_updates=xp.asarray(self.num_updates), decay=xp.asarray(self.decay))
        for k, s in self.shadow.items():
            out[f"shadow.{k}"] = s
        return out

    def load_state_dict(self, state):
        want = {f"shadow.{k}" for k in self.shadow}
        got = {k for k in state.keys() if k.startswith("shadow.")}
        if want != got:
            raise KeyError(f"EMA state: missing {sorted(want - got)}, "
                           f"unexpected {sorted(got - want)}")
        for k in self.shadow:
            v = state[f"shadow.{k}"]
            if tuple(v.shape) != tuple(self.shadow[k].shape):
                raise ValueError(f"EMA state for {k!r} has shape {tuple(v.shape)}, "
                                 f"expected {tuple(self.shadow[k].shape)}")
            self.shadow[k] = backend.copy_to_active(v, dtype=self.shadow[k].dtype)
        if "num_updates" in state:
            self.num_updates = int(backend.to_numpy(state["num_updates"]))
        # the stored "decay" is a record: the decay is the setting this EMA was made with, so
        # a run that resumes with another one averages at the new rate from here on


# --- learning-rate schedules: multipliers of the base learning rate ----------------------------

def linear_warmup(step: int, warmup: int) -> float:
    """min(1, (step + 1) / warmup): the first update (step 0) uses lr / warmup and step
    warmup - 1 reaches the full rate. ``warmup <= 0`` means no warmup."""
    if warmup <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup)


def cosine_schedule(step: int, total: int, warmup: int = 0, min_factor: float = 0.0) -> float:
    """Linear warmup, then a half cosine from 1 at ``step == warmup`` down to ``min_factor``
    at ``step == total`` (held there afterwards)."""
    if step < warmup:
        return linear_warmup(step, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class LRScheduler:
    """Sets ``optimizer.lr = base_lr * fn(step)``; call ``step()`` after each optimizer step."""

    def __init__(self, optimizer, fn):
        self.optimizer, self.fn = optimizer, fn
        self.base_lr = optimizer.lr
        self.last_step = 0
        optimizer.lr = self.base_lr * fn(0)

    def step(self):
        self.last_step += 1
        self.optimizer.lr = self.base_lr * self.fn(self.last_step)
        return self.optimizer.lr

    def state_dict(self):
        return OrderedDict(last_step=xp.asarray(self.last_step), base_lr=xp.asarray(self.base_lr))

    def load_state_dict(self, state):
        self.last_step = int(backend.to_numpy(state["last_step"]))
        self.base_lr = float(backend.to_numpy(state["base_lr"]))
        self.optimizer.lr = self.base_lr * self.fn(self.last_step)
