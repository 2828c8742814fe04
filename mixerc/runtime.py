"""`CompiledMixer`: the nn.Module a compiled spec becomes, and the input contract it enforces."""

from __future__ import annotations

import torch
from torch import nn

from . import allocator, cache, codegen, compiled, threads, tuning, validate, varlen
from .ir import STRUCTURES, BackendError, Graph, InputError, ShapeError
from .ir.dims import BATCH, LENGTH, fmt
from .ir.seqops import reads_ahead, windows
from .settings import setting


def _float_dtype(t: torch.Tensor, name: str) -> torch.dtype:
    if not t.is_floating_point():
        raise InputError(f"input {name!r} has dtype {t.dtype}; expected a floating-point tensor "
                         "(float32, float64, float16 or bfloat16)")
    return t.dtype


def _check_time(t: torch.Tensor, name: str):
    """Timestamps: integers up to 2**53 in magnitude, or float64; float32 only while its gaps are exact
    (|t| <= 2**24); finite. A timestamp's past (the decode state of mx.diff) is float64, exact to 2**53."""
    if t.dtype == torch.bool or t.is_complex() or t.dtype in (torch.float16, torch.bfloat16):
        raise InputError(f"input {name!r} holds timestamps and has dtype {t.dtype}; pass int64 (e.g. Unix "
                         "seconds) or float64 timestamps")
    if not t.numel() or t.device.type == "meta":
        return
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise InputError(f"input {name!r} holds NaN or infinite timestamps; every position needs a finite time")
    if t.dtype == torch.float32 and bool((t.abs() > 2.0 ** 24).any()):
        raise InputError(f"input {name!r} holds float32 timestamps above 2**24 = 16777216, where float32 "
                         "spacing is 2 or more, so their gaps are wrong; pass them as int64 or float64")
    if t.dtype == torch.int64 and bool((t.abs() > 2 ** 53).any()):
        raise InputError(f"input {name!r} holds timestamps above 2**53 (Unix nanoseconds?), which the decode "
                         "state (float64) cannot hold exactly; pass seconds or milliseconds, or subtract a "
                         "reference time first")


def _check_triton(device: torch.device, inputs: dict):
    """The triton backend runs CUDA tensors, or CPU tensors under the Triton interpreter."""
    if device.type == "cuda":
        return
    if device.type == "cpu" and setting("triton_interpret"):
        bf16 = [k for k, v in inputs.items() if v.dtype == torch.bfloat16]
        if bf16:  # the interpreter's bf16 tl.dot returns garbage without an error
            raise BackendError(f"input(s) {', '.join(bf16)} are bfloat16, which Triton's interpreter "
                               "computes wrongly; on CPU pass float16/float32 or use backend='chunked'")
        return
    raise BackendError(f"backend 'triton' runs CUDA tensors, but the inputs are on {device}; move them to "
                       "a GPU, use backend='chunked' (or 'auto') on the CPU, or set TRITON_INTERPRET=1 "
                       "before importing triton to run the kernels in Triton's (slow) interpreter")


class CompiledMixer(nn.Module):
    """A compiled spec. Parameters are named as the spec declares them.

    ``forward(**inputs, initial_state=None, return_final_state=False, seq_idx=None, cu_seqlens=None,
    lengths=None)``,
    ``step(state, **inputs_at_one_position)``, ``init_state(batch)``; ``.ir``, ``.plan``,
    ``.source(backend)`` show what was compiled.
    """

    def __init__(self, spec, graph: Graph, sizes: dict, backend: str = "auto",
                 dtype: torch.dtype | None = None, chunk_size: int | None = None,
                 parameters: bool = True, plan=None):
        super().__init__()
        self.spec = spec
        self.ir = graph
        # plain data for the per-call path (torch.compile traces it; it cannot trace networkx)
        self._input_dims = {name: tuple(graph.node(name).dims) for name in graph.inputs}
        self.reads_ahead = sorted(set(reads_ahead(graph)))  # sequence ops that rule out step
        self._time_inputs = frozenset(n for n in graph.inputs if graph.node(n).attrs.get("kind") == "time")
        self._output_dims = tuple(graph.node(graph.output).dims)
        self.sizes = dict(sizes)
        self.backend = backend
        self.chunk_size = chunk_size
        dtype = dtype or torch.get_default_dtype()
        self.param_dtype = dtype  # what init_state uses when the spec has no parameters to follow
        self._param_shapes = {name: tuple(self.sizes[d] for d in graph.node(name).dims)
                              for name in graph.params}
        self.owns_parameters = parameters
        if parameters:
            for name, shape in self._param_shapes.items():
                self.register_parameter(name, nn.Parameter(graph.node(name).attrs["init"](shape, dtype)))
        self._applies = graph.nodes_of("apply")
        self._state_dims = [STRUCTURES[graph.node(a.args[0]).op].state_dims(a.attrs["layout"])
                            for a in self._applies]
        # after the structures' states: the past values of each sequence op that reads back, (b, window, ...);
        # float64 when the operand is a timestamp (kept exact, never cast)
        pasts = windows(graph)
        self._state_dims += [tuple(w if d == LENGTH else d for d in graph.node(graph.node(name).args[0]).dims)
                             for name, w in pasts]
        self.unsegmented = sorted({graph.node(a.args[0]).op for a in self._applies
                                   if not STRUCTURES[graph.node(a.args[0]).op].segments})  # refuse seq_idx
        self._grid_axes = graph.seq_axes[:-1]  # symbolic axes besides b and l (a 2-D spec's v)
        self._lead = graph.lead
        self.exact_states = [False] * len(self._applies) + [
            graph.node(graph.node(name).args[0]).attrs.get("kind") == "time" for name, _ in pasts]
        self._has_triton = all(STRUCTURES[graph.node(a.args[0]).op].supports("triton", a.attrs["layout"])
                               for a in self._applies)
        self._compiled: dict = {}  # backend, or ("config", choices) (a tuned variant) -> (plan, source, fn)
        # an explicit backend= or chunk_size= is the user's choice: the tuning cache never overrides it
        self._explicit = backend != "auto" or chunk_size is not None
        self._tuned: dict = {}  # (bucket, dtype, train, mode, cache generation) -> (key of _compiled, source, where)
        self._last: tuple | None = None  # what the last call ran: (key of _compiled, source, where)
        self._configs: tuple | None = None  # the triton kernels' configs (see set_kernel_config)
        self._plans = {} if plan is None else {plan.backend: plan}  # built by compile(): not again
        self.plan = self._get(self._resolve())[0]  # compiles the default (CPU) lowering now
        self.register_forward_pre_hook(validate.no_positional)  # mixer(x, dt, ...): say the keyword form

    # -- compilation ---------------------------------------------------------------------------
    def _resolve(self, backend: str | None = None, device: torch.device | None = None) -> str:
        if backend in (None, "torch"):
            backend = self.backend
            if backend == "auto":  # MIXERC_BACKEND overrides it (`setting` checks the value)
                backend = setting("backend") or backend
        if backend not in codegen.backends() + (compiled.NAME,):
            raise BackendError(f"unknown backend {backend!r} (from backend=); choose one of "
                               f"{', '.join(codegen.backends() + (compiled.NAME,))}")
        if backend == "auto" and device is not None and device.type == "cuda" and self._has_triton:
            return "triton"
        return backend

    def _get(self, backend):
        if backend == compiled.NAME:  # backend="compiled": the default lowerings through inductor
            backend = (compiled.NAME, "auto")
        if isinstance(backend, tuple) and backend[0] == compiled.NAME:  # (compiled, key): key's mixer compiled
            if backend not in self._compiled:
                plan, source, fn = self._get(backend[1])
                label = self.ir.name + ("" if backend[1] == "auto" else f" ({tuning.label(backend[1][1])})")
                varying = {k: tuple(i for i, d in enumerate(dims) if d in self._lead)
                           for k, dims in self._input_dims.items()}
                self._compiled[backend] = (plan, source, compiled.CompiledFn(fn, label, source, varying, plan))
            return self._compiled[backend]
        if isinstance(backend, tuple) and backend[0] == "triton":  # ("triton", choices): tuned kernel configs
            return self._get("triton")
        if isinstance(backend, tuple):  # ("config", choices): one variant per (lowering, chunk) choice
            if backend not in self._compiled:
                plan = codegen.plan(self.ir, "auto", self.chunk_size)
                for s, c in zip(plan.structures, backend[1]):
                    s.lowering, s.chunk_size = c.lowering, c.chunk if c.chunk is not None else s.chunk_size
                source = codegen.generate(self.ir, plan, self.sizes)
                fn = codegen.load(source, f"<mixerc {self.ir.name} {tuning.label(backend[1])}>")
                self._compiled[backend] = (plan, source, fn)
            return self._compiled[backend]
        if backend not in self._compiled:
            plan = self._plans.pop(backend, None) or codegen.plan(self.ir, backend, self.chunk_size)
            if backend == "triton":
                key = codegen.triton_key(self.ir, self.sizes, plan)
                source = cache.cached_source(key, lambda: codegen.generate_triton(self.ir, plan, self.sizes))
                fn = cache.load_module(key, source).mixer
            else:
                source = codegen.generate(self.ir, plan, self.sizes)
                fn = codegen.load(source, f"<mixerc {self.ir.name} {backend}>")
            self._compiled[backend] = (plan, source, fn)
        return self._compiled[backend]

    def source(self, backend: str = "torch") -> str:
        """The generated code of a backend (``"torch"``: the default torch lowering; ``"triton"``:
        the kernel module)."""
        return self._get(self._resolve(backend))[1]

    def kernel_configs(self) -> list[dict]:
        """Per structure application of the triton backend: ``{"space": ..., "config": ...}``, the
        tunable config space of its kernels and the config this mixer runs them with."""
        module = self._triton_module()
        return [{"space": dict(getattr(module, f"k{k}_SPACE")), "config": dict(cfg)}
                for k, cfg in enumerate(self._kernel_configs())]

    def set_kernel_config(self, k: int = 0, **changes):
        """Run structure ``k``'s triton kernels with ``changes`` to this mixer's config (keys and
        values from its space; see `kernel_configs`). Other mixers compiled from the same spec and
        dims keep theirs: each mixer owns an immutable tuple of configs, one per structure
        application, passed to the kernels on every call (a forward and its backward run the same)."""
        from .rt import triton as triton_rt

        module = self._triton_module()
        if not isinstance(k, int) or not 0 <= k < len(self._applies):
            raise BackendError(f"structure index {k!r} out of range: this spec has {len(self._applies)} "
                               "structure application(s), numbered from 0")
        configs = list(self._kernel_configs())
        configs[k] = triton_rt.config(getattr(module, f"k{k}_SPACE"), configs[k], changes)
        self._configs = tuple(configs)  # set: the user's, which the tuning cache never overrides

    def _kernel_configs(self) -> tuple:
        """This mixer's configs, one immutable mapping per application: the module's defaults until
        `set_kernel_config` replaces one."""
        if self._configs is None:
            module = self._triton_module()
            return tuple(getattr(module, f"k{k}_DEFAULT") for k in range(len(self._applies)))
        return self._configs

    def _triton_module(self):
        import sys
        fn = self._get("triton")[2]
        return sys.modules[fn.__module__]

    def _on_device(self, key, device: torch.device):
        """What runs ``key`` (see `_pick`) on ``device``: on CPU, the torch lowerings of an ``auto`` mixer
        (its defaults or a tuned variant) run compiled (`mixerc.compiled`) when that path is wanted."""
        if key == compiled.NAME:
            return (compiled.NAME, "auto")
        torch_key = key == "auto" or isinstance(key, tuple) and key[0] == "config"  # not ("triton", choices)
        if torch_key and compiled.wanted(device, self._get(key)[0]):
            return (compiled.NAME, key)
        return key

    # -- tuned configs ---------------------------------------------------------------------------
    def _pick(self, backend: str, inputs: dict, device: torch.device, params: dict | None = None):
        """What a call runs: ``(key of _compiled, source, where)``. A CPU call of an ``auto`` mixer (no
        backend=/chunk_size=/MIXERC_BACKEND) consults the tuning cache per shape bucket, and so does a
        triton call (``auto`` on CUDA, or backend="triton") unless set_kernel_config or chunk_size= chose."""
        triton = backend == "triton"
        if triton and (self._configs is not None or self.chunk_size is not None):
            return backend, "user", None
        if not triton and (backend != "auto" or self._explicit or device.type != "cpu"):
            return backend, "user" if backend != "auto" or self._explicit else "default", None
        mode = setting("autotune")
        if mode == "off":
            return backend, "default", None
        floats = [v for k, v in inputs.items() if k not in self._time_inputs]
        first = floats[0] if floats else next(iter(inputs.values()))  # its dtype keys the entry
        lengths = {ax: int(first.shape[1 + i]) for i, ax in enumerate(self._lead[1:])}
        # a call that will be differentiated uses the winner tuned for forward + backward
        weights = self.parameters() if params is None else [t for t in params.values() if isinstance(t, torch.Tensor)]
        train = torch.is_grad_enabled() and any(t.requires_grad for t in [*inputs.values(), *weights])
        memo = (tuple(tuning.bucket(n) for n in lengths.values()), first.dtype, train, mode, triton,
                tuning.GENERATION[0])
        if memo in self._tuned:
            return self._tuned[memo]
        if torch.compiler.is_compiling():  # no file reads inside a traced call: what the eager calls chose
            return backend, "default", None
        plan = self._get(backend)[0]
        spaces = [k["space"] for k in self.kernel_configs()] if triton else None
        fields = tuning.key_fields(self.ir, self.sizes, first.dtype, device.type, lengths, backward=train,
                                   backend="triton" if triton else "torch")
        winner, source, where = tuning.lookup(fields, plan, spaces)
        tune = tuning.TUNER[0]  # mixerc.autotune.tune (it compiles mixers: registered, not imported here)
        if winner is None and mode == "full" and not tuning.TUNING[0] and tune is not None:
            axes = {ax: n for ax, n in lengths.items() if ax != self._lead[-1]}
            tune(self.spec, self.sizes, int(first.shape[0]), lengths[self._lead[-1]], dtype=first.dtype,
                 axes=axes or None, effort="quick", backward=train, device=device.type,
                 backend="triton" if triton else None)
            memo = memo[:5] + (tuning.GENERATION[0],)
            winner, source, where = tuning.lookup(fields, plan, spaces)
            source = "tuned" if winner is not None else source
        default = tuning.kernel_choices(plan, self._kernel_configs()) if triton else tuning.default_config(plan)
        if winner is None or winner == default:
            picked = (backend, "default" if winner is None else source, where)
        else:
            picked = (("triton" if triton else "config", winner), source, where)
        self._tuned[memo] = picked
        return picked

    @property
    def config(self) -> dict:
        """What runs and where it came from: ``{"source": "default" | "cache" | "file" | "tuned" | "user",
        "from": the tuning entry's path (or None), "label": "chunked/64", "choices": [{"node", "structure",
        "lowering", "chunk"}, ...]}``, for the last call (before any call: what a call without a tuning
        entry runs). ``cache``: the tuning cache's winner for the call's shape bucket (`mixerc autotune`);
        ``file``: a file `mx.load_tuning` pinned; ``tuned``: tuned at that call (``MIXERC_AUTOTUNE=full``);
        ``user``: an explicit backend=, chunk_size= or MIXERC_BACKEND."""
        first = self._resolve()
        key, source, where = self._last or (first, "user" if self._explicit or first != "auto" else "default", None)
        plan = self._get(key)[0]
        choices = key[1] if isinstance(key, tuple) else tuning.default_config(plan)
        if key == "triton":
            choices = tuning.kernel_choices(plan, self._kernel_configs())
        elif source == "user" and not isinstance(key, tuple):
            choices = tuple(tuning.Choice(s.node, s.structure, s.lowering,
                                          s.chunk_size if s.lowering in (*tuning.CHUNKED, "triton") else None)
                            for s in plan.structures)
        return {"source": source, "from": where, "label": tuning.label(choices),
                "choices": [c.as_dict() for c in choices]}

    def run_config(self, config: tuple, *, params: dict | None = None, **inputs):
        """The output of the tuning config ``config`` (`mixerc.tuning.Choice`s, one per structure
        application) on ``inputs``, whatever the cache holds: what the autotuner times. Its variant is
        generated once and kept on the mixer. Choices of the ``triton`` lowering run its kernels with
        their ``kernel`` configs."""
        validate.tensors(inputs)
        self._check_inputs(inputs)
        plan = self._get("auto")[0]
        if not isinstance(config, tuple) or not all(isinstance(c, tuning.Choice) for c in config) or [
                (c.node, c.structure) for c in config] != [
                (s.node, s.structure) for s in plan.structures]:
            raise InputError(f"config {config!r}: expected a tuple of mixerc.tuning.Choice, one per structure "
                             f"application ({', '.join(s.node for s in plan.structures)}), in order")
        if all(c.lowering == "triton" for c in config):
            return self._run(("triton", config), inputs, None, None, params=params)[0]
        key = "auto" if config == tuning.default_config(plan) else ("config", config)
        return self._run(key, inputs, None, None, params=params)[0]

    # -- input contract ------------------------------------------------------------------------
    def _expected(self, name: str, per_position: bool = True) -> tuple:
        dims = self._input_dims[name]
        return dims if per_position else tuple(d for d in dims if d != LENGTH)

    def _check_inputs(self, inputs: dict, per_position: bool = True):
        expected = list(self._input_dims)
        unknown = sorted(set(inputs) - set(expected))
        if unknown:
            raise InputError(f"unknown input(s) {unknown}; spec {self.ir.name!r} takes "
                             f"{', '.join(expected)} (parameters live in the module)")
        missing = [n for n in expected if n not in inputs]
        if missing:
            dims = {n: fmt(self._expected(n, per_position), self.sizes) for n in missing}
            raise InputError("missing input(s): " + ", ".join(f"{n} {d}" for n, d in dims.items()))
        bl = {}
        param = next(iter(self.parameters()), None)
        device = None if param is None else param.device  # else: the first input's device
        for name in expected:
            t = inputs[name]
            dims = self._expected(name, per_position)
            if not isinstance(t, torch.Tensor):
                raise InputError(f"input {name!r} must be a torch.Tensor with dims "
                                 f"{fmt(dims, self.sizes)}, got {type(t).__name__}")
            if name in self._time_inputs:
                _check_time(t, name)
            else:
                _float_dtype(t, name)
            if device is None:
                device, first = t.device, name
            elif t.device != device:
                if param is not None:
                    raise InputError(f"input {name!r} is on {t.device} but the mixer's parameters are on "
                                     f"{device}; move the inputs or call mixer.to({str(t.device)!r})")
                raise InputError(f"input {name!r} is on {t.device} but input {first!r} is on {device}; "
                                 "put all inputs on one device")
            want = fmt(dims, self.sizes)
            if t.dim() != len(dims):
                raise ShapeError(f"input {name!r}: expected {len(dims)} dims {want}, got shape "
                                 f"{tuple(t.shape)} ({t.dim()} dims)")
            for axis, (d, size) in enumerate(zip(dims, t.shape)):
                if d in self._lead:
                    if d in bl and bl[d][1] != size:
                        raise ShapeError(f"input {name!r}: dim {d!r} (axis {axis}) is {size} but input "
                                         f"{bl[d][0]!r} has {d}={bl[d][1]}; all inputs share "
                                         f"{', '.join(self._lead[:-1])} and {self._lead[-1]}")
                    bl.setdefault(d, (name, size))
                elif size != self.sizes[d]:
                    raise ShapeError(f"input {name!r}: expected {want}, got shape {tuple(t.shape)}: dim "
                                     f"{d!r} (axis {axis}) is {size}, the mixer was compiled with "
                                     f"{d}={self.sizes[d]}")
        return bl[BATCH][1], (bl[LENGTH][1] if LENGTH in bl else 1)

    def axes_of(self, inputs: dict) -> dict:
        """The sizes of the symbolic axes besides b and l (a 2-D spec's v), from the inputs."""
        first = next(iter(inputs.values()))
        return {ax: int(first.shape[1 + i]) for i, ax in enumerate(self._grid_axes)}

    def state_shapes(self, batch: int, **axes) -> list[tuple | None]:
        """The shape of each structure's state; None for a structure without one (non-causal). A 2-D
        spec's states span its other sequence axis: pass its size (``state_shapes(b, v=7)``)."""
        missing = [ax for ax in self._grid_axes if ax not in axes]
        if missing or set(axes) - set(self._grid_axes):
            need = ", ".join(f"{ax}=..." for ax in self._grid_axes)
            raise InputError(f"spec {self.ir.name!r} has sequence axes {self.ir.seq_axes}: its states need "
                             + (f"the size of {', '.join(missing)} (pass {need})" if missing
                                else f"no other sizes than batch, got {sorted(axes)}"))
        sizes = {**self.sizes, BATCH: batch, **axes}
        return [None if dims is None else tuple(sizes[d] if isinstance(d, str) else d for d in dims)
                for dims in self._state_dims]

    def _stateless(self) -> list[str]:
        return [self.ir.node(a.args[0]).op for a, dims in zip(self._applies, self._state_dims) if dims is None]

    def _why_stateless(self) -> str:
        """``quasiseparable matrix is not causal`` (the structures' ``stateless_reason``)."""
        return ", ".join(f"{op} matrix {STRUCTURES[op].stateless_reason}" for op in dict.fromkeys(self._stateless()))

    def _check_state(self, state, batch: int, what: str, axes: dict):
        if state is None:
            return None
        def make() -> str:  # init_state's arguments, formatted only for a message (a traced batch is symbolic)
            return ", ".join([str(batch)] + [f"{ax}={n}" for ax, n in axes.items()])
        if not isinstance(state, (torch.Tensor, tuple, list)):
            raise InputError(f"{what} must be a tensor (or a tuple with one per structured matrix), got "
                             f"{type(state).__name__}; make one with mixer.init_state({make()})")
        states = (state,) if isinstance(state, torch.Tensor) else tuple(state)
        shapes = self.state_shapes(batch, **axes)
        if all(sh is None for sh in shapes):
            raise InputError(f"{what}: spec {self.ir.name!r} has no recurrent state (its "
                             f"{self._why_stateless()}); pass None")
        if len(states) != len(shapes):
            pasts = ", then one per mx.diff / mx.shift (its past values)" if len(shapes) > len(self._applies) else ""
            raise InputError(f"{what}: expected {len(shapes)} state tensor(s) (one per structured "
                             f"matrix{pasts}), got {len(states)}; make one with mixer.init_state({make()})")
        for k, (s, shape, dims) in enumerate(zip(states, shapes, self._state_dims)):
            if shape is None:
                if s is not None:
                    raise InputError(f"{what}: entry {k} must be None: that structure "
                                     f"({self._stateless()[0]}) has no recurrent state")
                continue
            if not isinstance(s, torch.Tensor) or tuple(s.shape) != shape:
                got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
                dims = tuple(str(d) for d in dims)  # a past's window is a number
                entry = f" entry {k}:" if len(shapes) > 1 else ""
                raise ShapeError(f"{what}:{entry} expected dims {fmt(dims, {**self.sizes, 'b': batch, **axes})} = "
                                 f"{shape}, got {got}; make one with mixer.init_state({make()})")
            if self.exact_states[k] and s.dtype != torch.float64:
                raise InputError(f"{what}: entry {k} holds past timestamps, kept exact in float64, got {s.dtype}; "
                                 "pass the state a previous call returned, or make one with "
                                 f"mixer.init_state({make()})")
        return states

    def segment_refusals(self, key=None) -> list[str]:
        """The planned lowerings (``"grid2d's fft2 lowering"``) of the backend or tuning key ``key`` (default:
        the mixer's own backend) that refuse ``seq_idx`` although their structure takes segments."""
        plan = self._get(self._resolve() if key is None else key)[0]
        return [f"{s.structure}'s {s.lowering} lowering" for s in plan.structures
                if s.lowering in STRUCTURES[s.structure].unsegmented]

    def compiled_fallbacks(self) -> dict[str, str]:
        """The kinds of call (``"calls with seq_idx"``, ...) whose compile (or compiled entry) failed, so that
        the compiled CPU path ran them eagerly, each with why (warned once per process too); empty while
        every call that took the path ran compiled. Refusals by design are not failures: a lowering that
        loops over the sequence, segments of a Toeplitz matrix (data-dependent sizes)."""
        return {kind: why for _, _, fn in self._compiled.values() if isinstance(fn, compiled.CompiledFn)
                for (_, kind), why in fn.failures.items()}

    def _check_seq_idx(self, seq_idx, b: int, l: int):
        if seq_idx is None:
            return None
        if self.unsegmented:
            raise InputError(f"seq_idx: spec {self.ir.name!r} uses {', '.join(self.unsegmented)}, whose lowerings "
                             "do not take segments yet; run each sequence as its own batch row")
        if not isinstance(seq_idx, torch.Tensor) or seq_idx.dtype.is_floating_point or seq_idx.dtype == torch.bool:
            raise InputError("seq_idx must be an integer tensor of segment ids with dims (b, l)")
        if tuple(seq_idx.shape) != (b, l):
            grid = f" (segments along l, shared by every {', '.join(self._grid_axes)})" if self._grid_axes else ""
            raise ShapeError(f"seq_idx: expected dims (b={b}, l={l}){grid}, got shape {tuple(seq_idx.shape)}")
        return seq_idx

    # -- running -------------------------------------------------------------------------------
    def _params(self, params) -> dict:
        """The spec's parameters: the module's own, or ``params`` (a layer that owns them under
        other names passes them per call; compile with ``parameters=False``)."""
        if params is None:
            if not self.owns_parameters:
                raise InputError(f"this mixer was compiled with parameters=False; pass params= with "
                                 f"{', '.join(self._param_shapes) or 'nothing'}")
            return dict(self.named_parameters())
        if not isinstance(params, dict) or set(params) != set(self._param_shapes):
            got = sorted(params) if isinstance(params, dict) else type(params).__name__
            raise InputError(f"params must be a dict with exactly the spec's parameters "
                             f"{sorted(self._param_shapes)}; got {got}")
        for name, shape in self._param_shapes.items():
            t = params[name]
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ShapeError(f"params[{name!r}]: expected shape {shape} "
                                 f"{fmt(self.ir.node(name).dims, self.sizes)}, got {got}")
            _float_dtype(t, f"params[{name!r}]")
        return dict(params)

    def _run(self, backend, inputs, states, seq_idx, step=False, params=None):
        dts = [t.dtype for k, t in inputs.items() if k not in self._time_inputs]
        params = self._params(params)
        compute = torch.float32
        for dt in dts + [p.dtype for p in params.values()]:
            compute = torch.promote_types(compute, dt)
        out_dtype = dts[0] if dts else compute  # (a spec whose only input is a timestamp)
        for dt in dts[1:]:
            out_dtype = torch.promote_types(out_dtype, dt)
        first = next(iter(inputs.values()))
        kw = {}
        configs = self._configs  # None: every application's default; a tuned key ("triton", choices): theirs
        if isinstance(backend, tuple) and backend[0] == "triton":
            backend, configs = "triton", tuple(dict(c.kernel) for c in backend[1])
        if backend == "triton":  # kernels read any float dtype and accumulate in >= fp32 themselves
            _check_triton(first.device, inputs)
            args = dict(inputs)
            args.update(params)
            kw["step"] = step
            kw["configs"] = configs
        else:
            args = {k: v if k in self._time_inputs else v.to(compute) for k, v in inputs.items()}
            args.update({k: v.to(compute) for k, v in params.items()})
            if states is not None:
                states = tuple(None if s is None else s if exact else s.to(compute)
                               for s, exact in zip(states, self.exact_states))
        b, l = int(first.shape[0]), int(first.shape[len(self._lead) - 1])
        if any(int(first.shape[i]) == 0 for i in range(len(self._lead))):
            # nothing to mix: an empty output in the graph, the state copied through
            sizes = {**self.sizes, **self.axes_of(inputs), BATCH: b, LENGTH: l}
            shape = [sizes[d] for d in self._output_dims]
            y = validate.empty_output(shape, out_dtype, first.device, [*inputs.values(), *params.values()])
            if states is None:
                return y, tuple(self._fresh_states(b, compute, first.device, self.axes_of(inputs)))
            return y, tuple(None if s is None else s.clone() if exact else s.to(compute).clone()
                            for s, exact in zip(states, self.exact_states))
        fn = self._get(backend)[2]
        def call():
            return fn(**args, initial_states=states, seq_idx=seq_idx, **kw)

        allocator.before_call(first.device)
        # the compiled path keeps torch's thread count: dynamo guards on it, so a count the thread policy
        # changed with the machine's load would compile the mixer again (minutes); its fused loops run few
        # parallel regions, which is what the policy protects
        y, finals = call() if isinstance(fn, compiled.CompiledFn) else threads.call(first.device, call)
        # a timestamp's past stays float64 whatever the timestamps' dtype (init_state's, exact to 2**53)
        finals = tuple(s.double() if exact and s is not None else s for s, exact in zip(finals, self.exact_states))
        return y.to(out_dtype), finals

    def materialize(self, *, seq_idx=None, params: dict | None = None, **inputs):
        """The structured matrix of every application as a dense ``(b, H, l, l)`` tensor per head
        (H = 1 for a spec without a head dim): one tensor, or a tuple with several structures.
        ``y = M @ value`` per head, where value is what the spec applies M to; for the ``hydra``
        spec that is x itself, diagonal included. O(l²) memory: for inspection and tests."""
        validate.tensors(inputs)
        b, l = self._check_inputs(inputs)
        seq_idx = self._check_seq_idx(seq_idx, b, l)
        params = self._params(params)
        compute = torch.float32
        for k, t in [*inputs.items(), *params.items()]:
            compute = compute if k in self._time_inputs else torch.promote_types(compute, t.dtype)
        if "materialize" not in self._compiled:
            plan = codegen.plan(self.ir, "reference", self.chunk_size)
            source = codegen.generate(self.ir, plan, self.sizes, materialize=True)
            self._compiled["materialize"] = (plan, source, codegen.load(source, f"<mixerc {self.ir.name} M>"))
        fn = self._compiled["materialize"][2]
        args = {k: v if k in self._time_inputs else v.to(compute) for k, v in [*inputs.items(), *params.items()]}
        return self._pack(fn(**args, initial_states=None, seq_idx=seq_idx))

    def _pack(self, finals):
        return finals[0] if len(finals) == 1 else finals

    def forward(self, *, initial_state=None, return_final_state: bool = False, seq_idx=None, cu_seqlens=None,
                lengths=None, params: dict | None = None, **inputs):
        validate.tensors(inputs)
        b, l = self._check_inputs(inputs)
        device = next(iter(inputs.values())).device
        if cu_seqlens is not None or lengths is not None:
            return self._forward_varlen(inputs, b, l, initial_state, return_final_state, seq_idx, cu_seqlens,
                                        lengths, params)
        states = self._check_state(initial_state, b, "initial_state", self.axes_of(inputs))
        validate.states(states, "initial_state", device)
        seq_idx = self._check_seq_idx(seq_idx, b, l)
        self._last = self._pick(self._resolve(device=device), inputs, device, params)
        refusals = [] if seq_idx is None else self.segment_refusals(self._last[0])
        if refusals:
            raise InputError(f"seq_idx: spec {self.ir.name!r} runs {', '.join(refusals)}, which takes no segments; "
                             "pick a backend whose lowerings do (backend='grid' for grid2d), or run each sequence "
                             "as its own batch row")
        y, finals = self._run(self._on_device(self._last[0], device), inputs, states, seq_idx, params=params)
        return (y, self._pack(finals)) if return_final_state else y

    def _forward_varlen(self, inputs, b, l, initial_state, return_final_state, seq_idx, cu_seqlens, lengths,
                        params):
        """A packed (``cu_seqlens``) or right-padded (``lengths``) batch: see `mixerc.varlen`."""
        if cu_seqlens is not None and lengths is not None:
            raise InputError("pass cu_seqlens (a packed batch) or lengths (a right-padded batch), not both")
        what = "cu_seqlens" if cu_seqlens is not None else "lengths"
        if seq_idx is not None:
            raise InputError(f"seq_idx and {what} both say where sequences start; pass one ({what} alone "
                             "makes one segment per sequence)")
        if initial_state is not None:
            raise InputError(f"initial_state with {what}: a varlen batch starts every sequence from a zero "
                             "state; run the sequences that continue from a state as an ordinary batch "
                             "(b, l, ...) with initial_state, or continue them with step")
        if self._grid_axes:
            raise InputError(f"{what}: spec {self.ir.name!r} has sequence axes {self.ir.seq_axes}; varlen "
                             "batches are for 1-D specs: pass grids of equal size as an ordinary batch")
        if self.unsegmented:
            raise InputError(f"{what}: spec {self.ir.name!r} uses {', '.join(self.unsegmented)}, whose lowerings "
                             "do not take segments yet; run each sequence as its own batch row")
        if b == 0 or l == 0:
            raise ShapeError(f"{what}: the inputs are empty (b={b}, l={l}); a varlen batch holds at least one "
                             "position")
        device = next(iter(inputs.values())).device
        self._last = self._pick(self._resolve(device=device), inputs, device, params)
        backend = self._on_device(self._last[0], device)
        if cu_seqlens is not None:
            lens = varlen.lengths_of_cu_seqlens(cu_seqlens, b, l)
            if not return_final_state:  # the packed row itself: one segment per sequence
                seg = varlen.packed_seq_idx(lens).to(next(iter(inputs.values())).device)
                return self._run(backend, inputs, None, seg, params=params)[0]
            starts = cu_seqlens[:-1]
        else:
            lens = varlen.check_lengths(lengths, b, l)
            starts = torch.arange(b, device=lens.device) * l
        device = next(iter(inputs.values())).device
        rows = varlen.RightAligned(starts.to(device), lens.to(device))
        aligned = {k: rows.gather(v.reshape(b * l, *v.shape[2:])) for k, v in inputs.items()}
        y, finals = self._run(backend, aligned, None, rows.seq_idx, params=params)
        y = rows.scatter(y, b * l).reshape(b, l, *y.shape[2:])
        return (y, self._pack(finals)) if return_final_state else y

    def step(self, state, *args, params: dict | None = None, **inputs):
        """Decode one position: inputs without the ``l`` dim; returns ``(y_t, new_state)``.

        On the triton backend, when no gradient is needed (``torch.no_grad()``, or nothing requires
        grad), a kernel updates the state in place and returns that same tensor; otherwise (and on
        the torch backends) the differentiable token step returns a new state."""
        if self._stateless():
            raise BackendError(f"spec {self.ir.name!r} has no step: its {self._why_stateless()}, so "
                               "one position's output needs the whole sequence; "
                               "call the mixer on the full sequence")
        if self.reads_ahead:
            ops = ", ".join(f"mx.{op}" for op in self.reads_ahead)
            raise BackendError(f"spec {self.ir.name!r} has no step: {ops} read(s) later positions of the "
                               "sequence; call the mixer on the whole sequence")
        validate.positional(self, args, "mixer.step")
        validate.tensors(inputs)
        b, _ = self._check_inputs(inputs, per_position=False)
        states = self._check_state(state, b, "state", self.axes_of(inputs))
        validate.states(states, "state", next(iter(inputs.values())).device)
        if states is None:
            states = self._as_tuple(self.init_state(b, **self.axes_of(inputs)))
        ax = len(self._lead) - 1  # where l goes: after b (and a 2-D spec's other axis)
        one = {k: v.unsqueeze(ax) for k, v in inputs.items()}
        device = next(iter(inputs.values())).device
        triton = self._resolve(device=device) == "triton"
        if triton:
            _check_triton(device, inputs)
        weights = list(self._params(params).values())
        if triton and torch.is_grad_enabled() and any(
                t.requires_grad for t in [*inputs.values(), *states, *weights]):
            triton = False  # the in-place kernel has no backward
        y, finals = self._run("triton" if triton else codegen.STEP, one, states, None, step=triton,
                              params=params)
        if triton:
            # the structures' states were updated in place: hand back the caller's own tensors, not views
            finals = tuple(states[:len(self._applies)]) + tuple(finals[len(self._applies):])
        return y.squeeze(ax), self._pack(finals)

    def _as_tuple(self, s):
        return (s,) if isinstance(s, torch.Tensor) else tuple(s)

    def init_state(self, batch: int, dtype: torch.dtype | None = None, device=None, **axes):
        """Zero state(s) for ``batch`` sequences: a tensor, or a tuple with several structures. A 2-D
        spec's states span its other sequence axis: ``init_state(batch, v=7)``."""
        validate.batch(batch, dtype)
        p = next(iter(self.parameters()), None)
        dtype = dtype or torch.promote_types(torch.float32, p.dtype if p is not None else self.param_dtype)
        device = device or (p.device if p is not None else None)
        return self._pack(self._fresh_states(batch, dtype, device, axes))

    def _fresh_states(self, batch: int, dtype, device, axes: dict) -> list:
        """Zero structure states; sequence ops' pasts all NaN (no position before the first)."""
        return [None if shape is None else torch.full(shape, float("nan") if k >= len(self._applies) else 0.0,
                                                      dtype=torch.float64 if exact else dtype, device=device)
                for k, (shape, exact) in enumerate(zip(self.state_shapes(batch, **axes), self.exact_states))]

    def extra_repr(self) -> str:
        dims = ", ".join(f"{k}={v}" for k, v in self.sizes.items())
        return f"spec={self.ir.name}, dims=({dims}), backend={self.backend}"
