"""moe.torch: the layer as a torch.nn.Module (docs/torch.md).

    import moe.torch
    ffn = moe.torch.MoE(d_model, d_ff, num_experts, top_k, activation="swiglu",
                        load_balance_alpha=0.01)          # any moe.Layer option
    y = ffn(x)                                             # x [..., d_model], CPU
    loss = task_loss + moe.torch.router_losses(model)      # aux and z, with gradients
    moe.torch.router_metrics(model)                        # {"router/max_frac_mean": ...}

The parameters are nn.Parameters (router, w1, w2, b1, b2, shared_w1, shared_w2,
shared_gate, named and shaped as the C ABI's weights) whose storage the library reads
in place: no copies. Each forward keeps its saved state in its autograd node, so several
forwards may precede their backwards (micro-batches, gradient accumulation). The aux and
z losses are outputs of the same autograd node: they reach the router's gradient when,
and as much as, they enter the loss. The selection bias, the step counter and the
hash table are buffers of the state_dict.
"""
import ctypes as C
import os
import re
import threading
import warnings

import numpy as np
import torch
import torch.utils.checkpoint
from torch.autograd.function import once_differentiable

from . import Group, Layer, _abi, _check, _lib, metric_names, preset

__all__ = ["MoE", "router_losses", "router_metrics", "moe_modules", "checkpoint",
           "openmp_runtimes", "export"]

_TORCH_DTYPES = {torch.float32: "float32", torch.float64: "float64",
                 torch.bfloat16: "bfloat16"}
_WEIGHT_NAMES = ("router", "w1", "b1", "w2", "b2", "shared_w1", "shared_w2", "shared_gate")


def openmp_runtimes(maps="/proc/self/maps"):
    """The OpenMP runtimes loaded in this process (their files). One is the good case:
    torch and the library share its thread pool, torch.set_num_threads governs both and
    its threads never wait against another pool's (docs/torch.md, "Threads")."""
    try:
        with open(maps) as f:
            text = f.read()
    except OSError:
        return []
    pattern = re.compile(r"(\S*/(?:libgomp[^/\s]*\.so[^/\s]*|libiomp5\.so|libomp\.so[^/\s]*))$")
    found = {os.path.realpath(m.group(1)) for line in text.splitlines()
             for m in [pattern.search(line)] if m}
    return sorted(found)


_RUNTIMES = openmp_runtimes()
if len(_RUNTIMES) > 1 and "OMP_WAIT_POLICY" not in os.environ:
    warnings.warn(
        f"moe.torch: two OpenMP runtimes are loaded ({', '.join(_RUNTIMES)}): torch's "
        "and the library's thread pools spin against each other between calls. Start Python "
        "with OMP_WAIT_POLICY=PASSIVE (docs/torch.md, \"Threads\").", RuntimeWarning)


def _view(t):
    """A contiguous CPU tensor as an ABI tensor over its own storage."""
    out = _abi.Tensor()
    out.data = t.data_ptr() if t.numel() else None
    out.ndim = t.dim()
    for i, s in enumerate(t.shape):
        out.shape[i] = s
    out.dtype = _abi.DTYPES[_TORCH_DTYPES[t.dtype]]
    return out


class _Forward(torch.autograd.Function):
    """y, aux_loss_scaled, z_loss_scaled = MoE(x): one library forward, and its backward
    with the incoming gradients of all three."""

    @staticmethod
    def forward(ctx, module, x, token_mask, token_ids, seq_len, recompute, *params):
        layer = module._layer
        names = module._present
        module._bind(params)
        y = torch.empty_like(x)
        args = _abi.sized(_abi.ForwardArgs)
        args.x, args.y = _view(x), _view(y)
        keep = []
        if token_ids is not None:
            ids = token_ids.to(torch.int64).contiguous()
            keep.append(ids)
            args.token_ids = C.cast(ids.data_ptr(), C.POINTER(C.c_int64))
        if token_mask is not None:
            mask = token_mask.to(torch.uint8).contiguous()
            keep.append(mask)
            args.token_mask = C.cast(mask.data_ptr(), C.POINTER(C.c_uint8))
        args.seq_len = seq_len
        args.train = 1 if module.training else 0
        args.recompute = 1 if recompute else 0
        handle = C.c_void_p()
        _check(_lib.moe_layer_forward(layer._handle, C.byref(args), C.byref(handle)))
        saved = layer._adopt_context(handle)
        layer._pending -= 1  # autograd, not Layer.backward, runs its backward
        losses = layer.losses(saved)
        ctx.moe = saved
        ctx.tokens = x.shape[0]
        ctx.module = module
        ctx.names = names
        ctx.save_for_backward(*params)
        module._after_forward(saved)
        # bfloat16's 8 bits would round the losses: they come out in float32 then.
        loss_dtype = torch.float32 if x.dtype == torch.bfloat16 else x.dtype
        aux = torch.tensor(losses["aux_loss_scaled"], dtype=loss_dtype)
        z = torch.tensor(losses["z_loss_scaled"], dtype=loss_dtype)
        return y, aux, z

    @staticmethod
    @once_differentiable  # the library has no second derivative: refuse, never drop it
    def backward(ctx, grad_y, grad_aux, grad_z):
        module, saved = ctx.module, ctx.moe
        params = ctx.saved_tensors
        layer = module._layer
        module._bind(params)
        dy = grad_y.contiguous() if grad_y is not None else torch.zeros(
            (ctx.tokens, module.d_model), dtype=params[0].dtype)
        dx = torch.empty_like(dy)
        grads = [torch.empty_like(p) if need else None
                 for p, need in zip(params, ctx.needs_input_grad[6:])]
        args = _abi.sized(_abi.BackwardArgs)
        args.dy, args.dx = _view(dy), _view(dx)
        args.grads = _abi.sized(_abi.Weights)
        for name, g in zip(ctx.names, grads):
            if g is not None:
                setattr(args.grads, name, _view(g))
        args.aux_loss_grad = float(grad_aux) if grad_aux is not None else 0.0
        args.z_loss_grad = float(grad_z) if grad_z is not None else 0.0
        _check(_lib.moe_layer_backward(layer._handle, saved._handle, C.byref(args)))
        return (None, dx if ctx.needs_input_grad[1] else None, None, None, None, None, *grads)


class MoE(torch.nn.Module):
    """A Mixture-of-Experts FFN: y = MoE(x) for x [..., d_model] (CPU; float32, float64
    or bfloat16, the parameters' dtype). Keyword options are moe.Layer's (docs/python.md, docs/routing.md); dtype
    is a torch dtype. Parameters start as nn.Linear's do (uniform in +-1/sqrt(fan_in)),
    from torch's generator."""

    def __init__(self, d_model, d_ff, num_experts, top_k, activation="gelu", router="softmax",
                 capacity_factor=0.0, backend="auto", seed=0, dtype=torch.float32, name=None,
                 **options):
        super().__init__()
        # What rebuilds the layer when the module is copied or unpickled.
        self._init_args = ((d_model, d_ff, num_experts, top_k),
                           dict(activation=activation, router=router,
                                capacity_factor=capacity_factor, backend=backend, seed=seed,
                                dtype=dtype, name=name, **options))
        if dtype not in _TORCH_DTYPES:
            raise TypeError(f"dtype must be torch.float32, torch.float64 or torch.bfloat16, "
                            f"got {dtype}")
        self._layer = Layer(d_model, d_ff, num_experts, top_k, activation=activation,
                            router=router, capacity_factor=capacity_factor, backend=backend,
                            seed=seed, dtype=_TORCH_DTYPES[dtype], _torch_tensors=True,
                            **options)
        if name is not None:
            self._layer.set_name(name)
        c = self._layer.config()
        self.config = c
        self.d_model, self.d_ff = d_model, d_ff
        self.num_experts, self.top_k = num_experts, top_k
        F = 2 * d_ff if activation in ("swiglu", "geglu") else d_ff
        shapes = {"w1": (num_experts, d_model, F), "w2": (num_experts, d_ff, d_model)}
        if router != "hash":
            shapes["router"] = (d_model, num_experts)
        if c["expert_bias"]:
            shapes["b1"] = (num_experts, F)
            shapes["b2"] = (num_experts, d_model)
        if c["num_shared_experts"]:
            S = c["num_shared_experts"] * c["shared_d_ff"]
            shapes["shared_w1"] = (d_model, 2 * S if F != d_ff else S)
            shapes["shared_w2"] = (S, d_model)
        if c["shared_expert_gate"]:
            shapes["shared_gate"] = (d_model, 1)
        self._present = tuple(n for n in _WEIGHT_NAMES if n in shapes)
        fan_in = {"router": d_model, "w1": d_model, "b1": d_model, "w2": d_ff, "b2": d_ff,
                  "shared_w1": d_model, "shared_w2": shapes.get("shared_w2", (1,))[0],
                  "shared_gate": d_model}
        for n in self._present:
            bound = 1.0 / np.sqrt(fan_in[n])
            self.register_parameter(n, torch.nn.Parameter(
                torch.empty(shapes[n], dtype=dtype).uniform_(-bound, bound)))
        # What the layer learns or counts, in the state_dict.
        self.register_buffer("selection_bias", torch.zeros(num_experts, dtype=torch.float64))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        # The hash router's table, as the sample and vocabulary it was built from (the
        # build is deterministic): empty when none was built.
        self.register_buffer("hash_table_ids", torch.zeros(0, dtype=torch.int64))
        self.register_buffer("hash_table_vocab", torch.zeros((), dtype=torch.int64))
        self._built_from = None
        self._bound = None
        self._dtype = dtype
        self.aux_loss = None   # the last forward's aux_loss_scaled, in the graph
        self.z_loss = None

    def _apply(self, fn):
        """.to(), .double(), .cuda() and the like: the layer's dtype and device are fixed
        at construction, so a cast to another is refused (before anything changes), and
        the float64 selection bias stays float64 under a cast of the model."""
        probe = fn(torch.zeros((), dtype=self._dtype))
        if probe.dtype != self._dtype or probe.device.type != "cpu":
            raise TypeError(f"moe.torch.MoE's dtype and device are fixed at construction "
                            f"({self._dtype}, cpu), not {probe.dtype}, {probe.device}: make "
                            f"the module with dtype={probe.dtype} instead of casting it")
        bias = self.selection_bias.detach().clone()
        out = super()._apply(fn)
        self.selection_bias = bias
        return out

    def __getstate__(self):
        """For copy.deepcopy, pickle and torch.save(module): the module without its
        library handle, which __setstate__ makes anew (parameters and buffers travel as
        they are; the layer takes its step, bias and hash table from them)."""
        state = self.__dict__.copy()
        for key in ("_layer", "_bound", "_built_from"):
            state.pop(key, None)
        state["aux_loss"] = state["z_loss"] = None  # the last forward's graph stays here
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        (positional, keywords) = self._init_args
        keywords = dict(keywords)
        dtype, name = keywords.pop("dtype"), keywords.pop("name")
        self._layer = Layer(*positional, dtype=_TORCH_DTYPES[dtype], _torch_tensors=True,
                            **keywords)
        if name is not None:
            self._layer.set_name(name)
        self._bound = self._built_from = None

    @classmethod
    def from_preset(cls, family, d_model, d_ff, **overrides):
        """A model family's conventions (moe.preset), any option overridden."""
        options = preset(family)
        options.update(overrides)
        return cls(d_model, d_ff, options.pop("num_experts"), options.pop("top_k"), **options)

    @property
    def layer(self):
        """The moe.Layer underneath (telemetry(), routing(), config(), ...)."""
        return self._layer

    def _bind(self, params):
        """Binds the parameters' storage (again when a tensor was replaced)."""
        key = tuple((p.data_ptr(), p.dtype) for p in params)
        if key == self._bound:
            return
        for n, p in zip(self._present, params):
            if not p.is_contiguous() or p.device.type != "cpu":
                raise ValueError(f"parameter {n} must be a contiguous CPU tensor")
        w = _abi.sized(_abi.Weights)
        for n, p in zip(self._present, params):
            setattr(w, n, _view(p.detach()))
        _check(_lib.moe_layer_set_weights(self._layer._handle, C.byref(w)))
        self._layer._weights = {n: p for n, p in zip(self._present, params)}
        self._bound = key

    def build_hash_table(self, token_ids, vocab_size):
        """The hash router's balanced table from a sample of token ids (moe.Layer's); kept
        in the state_dict as that sample, and rebuilt from it on load."""
        ids = torch.as_tensor(token_ids).reshape(-1)
        if ids.dtype.is_floating_point:
            raise TypeError("token_ids must be integers")
        self._layer.build_hash_table(ids.numpy(), vocab_size)
        self.hash_table_ids = ids.to(torch.int64).clone()
        self.hash_table_vocab.fill_(int(vocab_size))
        self._built_from = (self.hash_table_ids.data_ptr(), int(vocab_size))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        ids = state_dict.get(prefix + "hash_table_ids")
        if ids is not None:  # the sample's length is the saved one's
            self.hash_table_ids = torch.zeros_like(ids)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _sync_state_in(self):
        """The state_dict's buffers into the layer (after load_state_dict or a change)."""
        built_from = (self.hash_table_ids.data_ptr(), int(self.hash_table_vocab))
        if self.hash_table_ids.numel() and built_from != self._built_from:
            self._layer.build_hash_table(self.hash_table_ids.numpy(), int(self.hash_table_vocab))
            self._built_from = built_from
        bias = self.selection_bias.detach().cpu().numpy()
        if not np.array_equal(bias, self._layer.selection_bias):
            self._layer.selection_bias = bias
        if int(self.step) != self._layer.step:
            self._layer.step = int(self.step)

    def _after_forward(self, saved):
        """The layer's state after a forward, into the buffers."""
        self.selection_bias.copy_(torch.from_numpy(self._layer.selection_bias))
        self.step.fill_(self._layer.step)

    def forward(self, x, token_mask=None, token_ids=None, seq_len=None):
        """y [..., d_model]. token_mask [...] (0/False: padding), token_ids [...] for the
        hash router, seq_len: tokens per sequence (default: the length of x's second-last
        dimension when x is [batch, seq, d])."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.device.type != "cpu":
            raise ValueError("x must be a CPU tensor (CUDA tensors: not yet, docs/torch.md)")
        params = tuple(getattr(self, n) for n in self._present)
        if x.dtype != params[0].dtype:
            raise TypeError(f"x is {x.dtype}, the layer's parameters are {params[0].dtype}")
        if x.dim() < 1 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must be [..., {self.d_model}], got shape {tuple(x.shape)}")
        shape = x.shape
        if seq_len is None:
            seq_len = shape[-2] if x.dim() == 3 else 0
        flat = x.reshape(-1, self.d_model).contiguous()
        T = flat.shape[0]
        mask = ids = None
        if token_mask is not None:
            mask = torch.as_tensor(token_mask)
            if tuple(mask.shape) not in (tuple(shape[:-1]), (T,)):
                raise ValueError(f"token_mask must be shaped as x without its last dimension, "
                                 f"{tuple(shape[:-1])}, or flat ({T},); got {tuple(mask.shape)}")
            mask = mask.reshape(-1)
            if mask.dtype.is_floating_point or (mask.numel() and not bool(
                    ((mask == 0) | (mask == 1)).all())):
                raise TypeError("token_mask must hold booleans or 0/1 integers")
        if token_ids is not None:
            if self.config["router"] != "hash":
                raise ValueError("token_ids are for the hash router; this module's router is "
                                 f"{self.config['router']}")
            ids = torch.as_tensor(token_ids).reshape(-1)
            if ids.numel() != T or ids.dtype.is_floating_point:
                raise ValueError(f"token_ids must be {T} integers")
        self._sync_state_in()
        tape = getattr(_tapes, "current", None)
        if tape is None or not self.training:
            y, aux, z = _Forward.apply(self, flat, mask, ids, int(seq_len), False, *params)
        elif not tape.replaying:  # checkpoint's first forward: remember the state it saw
            tape.states.append((self, int(self.step), self.selection_bias.clone()))
            y, aux, z = _Forward.apply(self, flat, mask, ids, int(seq_len), False, *params)
        else:  # the recompute: that state again, and no state change
            y, aux, z = self._replay(tape, flat, mask, ids, int(seq_len), params)
        self.aux_loss, self.z_loss = aux, z
        return y.reshape(shape)

    def _replay(self, tape, flat, mask, ids, seq_len, params):
        module, step, bias = tape.states[tape.cursor]
        if module is not self:
            raise RuntimeError("moe.torch.checkpoint: the recompute ran the MoE modules in "
                               "another order than the forward did")
        tape.cursor += 1
        now_step, now_bias = self._layer.step, self._layer.selection_bias
        self._layer.step, self._layer.selection_bias = step, bias.numpy()
        try:
            out = _Forward.apply(self, flat, mask, ids, seq_len, True, *params)
        finally:
            self._layer.step, self._layer.selection_bias = now_step, now_bias
            self.step.fill_(now_step)
            self.selection_bias.copy_(torch.from_numpy(now_bias))
        return out

    def extra_repr(self):
        c = self.config
        return (f"d_model={self.d_model}, d_ff={self.d_ff}, num_experts={self.num_experts}, "
                f"top_k={self.top_k}, router={c['router']}, activation={c['activation']}, "
                f"backend={c['backend']}")


_tapes = threading.local()


class _Tape:
    """What checkpoint's first forward saw of each MoE module (step, selection bias), for
    its recompute to see the same."""

    def __init__(self):
        self.states, self.calls, self.cursor, self.replaying = [], 0, 0, False
        self.single = True


def checkpoint(function, *args, use_reentrant=True, **kwargs):
    """torch.utils.checkpoint.checkpoint for code holding MoE modules: the recompute
    routes as the first forward did (the same step, selection bias and noise) and changes
    no layer state (no step, no bias update, no telemetry, no global counts), so the
    gradients are those without checkpointing. The modules' aux and z losses come out
    through the checkpoint too, so that router_losses() still carries their gradients.
    Plain torch.utils.checkpoint would run each MoE layer twice as a training call and
    lose the losses' gradients. function returns a tensor or a tuple of tensors."""
    tape = _Tape()

    def run(*inner, **inner_kwargs):
        previous = getattr(_tapes, "current", None)
        _tapes.current = tape
        tape.replaying, tape.cursor = tape.calls > 0, 0
        tape.calls += 1
        try:
            out = function(*inner, **inner_kwargs)
        finally:
            _tapes.current = previous
        losses = [loss for module, _, _ in tape.states for loss in (module.aux_loss,
                                                                     module.z_loss)]
        tape.single = isinstance(out, torch.Tensor)
        outputs = (out,) if tape.single else tuple(out)
        return (*outputs, torch.stack(losses)) if losses else outputs

    result = torch.utils.checkpoint.checkpoint(run, *args, use_reentrant=use_reentrant, **kwargs)
    if tape.states:
        losses, result = result[-1], result[:-1]
        for i, (module, _, _) in enumerate(tape.states):
            module.aux_loss, module.z_loss = losses[2 * i], losses[2 * i + 1]
    return result[0] if tape.single else tuple(result)


def moe_modules(model):
    """The MoE modules of a model, in registration order."""
    return [m for m in model.modules() if isinstance(m, MoE)]


def router_losses(model):
    """The sum of every MoE module's last aux_loss_scaled and z_loss_scaled: add it to
    the training loss (their gradients reach the routers only through it)."""
    total = None
    for m in moe_modules(model):
        for loss in (m.aux_loss, m.z_loss):
            if loss is not None:
                total = loss if total is None else total + loss
    return total if total is not None else torch.zeros(())


def router_metrics(model, split="train", scope="last", per_expert=8):
    """The routing health of a model's MoE layers as one flat dict under the names of the
    user's W&B runs (router/top1_p_mean, router/max_frac_mean, router/max_frac_max,
    router/frac_srv_e{i}, router/frac_dem_e{i}, router/entropy_mean, router/aux_mean,
    router/active_min, router/collapsed, router/drop_frac_mean, ...): ready for
    wandb.log(). Means are over layers; per-expert fractions are the layers' mean for the
    first `per_expert` experts."""
    layers = [m.layer for m in moe_modules(model)]
    if not layers:
        return {}
    group = Group(layers)
    g = group.metrics(split, scope)
    each = [layer.telemetry(split, scope) for layer in layers]

    def mean(name):
        values = [t[name] for t in each]
        return float(np.mean(values))

    out = {
        "router/top1_p_mean": mean("top1_p_mean"),
        "router/entropy_mean": mean("router_entropy_mean"),
        "router/max_frac_mean": g["max_frac_mean"],
        "router/max_frac_max": g["max_frac_max"],
        "router/frac_dem_max": mean("frac_dem_max"),
        "router/frac_srv_max": mean("frac_srv_max"),
        "router/aux_mean": g["aux_mean"],
        "router/active_min": g["active_min"],
        "router/collapsed": int(g["collapsed"]),
        "router/drop_frac_mean": g["drop_frac_mean"],
    }
    experts = min(per_expert, min(len(t["frac_dem"]) for t in each))
    for e in range(experts):
        out[f"router/frac_dem_e{e}"] = float(np.mean([t["frac_dem"][e] for t in each]))
        out[f"router/frac_srv_e{e}"] = float(np.mean([t["frac_srv"][e] for t in each]))
    return out


def export(model, fmt="jsonl", split="train", scope="last"):
    """Every metric of every MoE layer of the model as text (moe.Group.export): "jsonl"
    (a line per layer: append it to a stream), "csv", "prometheus"."""
    layers = [m.layer for m in moe_modules(model)]
    return Group(layers).export(fmt, split, scope) if layers else ""


assert {"top1_p_mean", "router_entropy_mean", "frac_dem", "frac_srv"} <= {
    n for n, _, _ in metric_names()}
