"""`CompiledMixer`: the nn.Module a compiled spec becomes, and the input contract it enforces."""

from __future__ import annotations

import torch
from torch import nn

from . import cache, codegen, validate
from .ir import STRUCTURES, BackendError, Graph, InputError, ShapeError
from .ir.dims import BATCH, LENGTH, fmt
from .settings import setting


def _float_dtype(t: torch.Tensor, name: str) -> torch.dtype:
    if not t.is_floating_point():
        raise InputError(f"input {name!r} has dtype {t.dtype}; expected a floating-point tensor "
                         "(float32, float64, float16 or bfloat16)")
    return t.dtype


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

    ``forward(**inputs, initial_state=None, return_final_state=False, seq_idx=None)``,
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
        self._has_triton = all(STRUCTURES[graph.node(a.args[0]).op].supports("triton", a.attrs["layout"])
                               for a in self._applies)
        self._compiled: dict[str, tuple] = {}
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
        if backend not in codegen.backends():
            raise BackendError(f"unknown backend {backend!r} (from backend=); choose one of "
                               f"{', '.join(codegen.backends())}")
        if backend == "auto" and device is not None and device.type == "cuda" and self._has_triton:
            return "triton"
        return backend

    def _get(self, backend: str):
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
        self._configs = tuple(configs)

    def _kernel_configs(self) -> tuple:
        """This mixer's configs, one immutable mapping per application: the module's defaults until
        `set_kernel_config` replaces one."""
        if self._configs is None:
            module = self._triton_module()
            self._configs = tuple(getattr(module, f"k{k}_DEFAULT") for k in range(len(self._applies)))
        return self._configs

    def _triton_module(self):
        import sys
        fn = self._get("triton")[2]
        return sys.modules[fn.__module__]

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
                if d in (BATCH, LENGTH):
                    if d in bl and bl[d][1] != size:
                        raise ShapeError(f"input {name!r}: dim {d!r} (axis {axis}) is {size} but input "
                                         f"{bl[d][0]!r} has {d}={bl[d][1]}; all inputs share b and l")
                    bl.setdefault(d, (name, size))
                elif size != self.sizes[d]:
                    raise ShapeError(f"input {name!r}: expected {want}, got shape {tuple(t.shape)}: dim "
                                     f"{d!r} (axis {axis}) is {size}, the mixer was compiled with "
                                     f"{d}={self.sizes[d]}")
        return bl[BATCH][1], (bl[LENGTH][1] if LENGTH in bl else 1)

    def state_shapes(self, batch: int) -> list[tuple | None]:
        """The shape of each structure's state; None for a structure without one (non-causal)."""
        return [None if dims is None else tuple(batch if d == BATCH else self.sizes[d] for d in dims)
                for dims in self._state_dims]

    def _stateless(self) -> list[str]:
        return [self.ir.node(a.args[0]).op for a, dims in zip(self._applies, self._state_dims) if dims is None]

    def _why_stateless(self) -> str:
        """``quasiseparable matrix is not causal`` (the structures' ``stateless_reason``)."""
        return ", ".join(f"{op} matrix {STRUCTURES[op].stateless_reason}" for op in dict.fromkeys(self._stateless()))

    def _check_state(self, state, batch: int, what: str):
        if state is None:
            return None
        if not isinstance(state, (torch.Tensor, tuple, list)):
            raise InputError(f"{what} must be a tensor (or a tuple with one per structured matrix), got "
                             f"{type(state).__name__}; make one with mixer.init_state({batch})")
        states = (state,) if isinstance(state, torch.Tensor) else tuple(state)
        shapes = self.state_shapes(batch)
        if all(sh is None for sh in shapes):
            raise InputError(f"{what}: spec {self.ir.name!r} has no recurrent state (its "
                             f"{self._why_stateless()}); pass None")
        if len(states) != len(shapes):
            raise InputError(f"{what}: expected {len(shapes)} state tensor(s) (one per structured "
                             f"matrix), got {len(states)}")
        for k, (s, shape, dims) in enumerate(zip(states, shapes, self._state_dims)):
            if shape is None:
                if s is not None:
                    raise InputError(f"{what}: entry {k} must be None: that structure "
                                     f"({self._stateless()[0]}) has no recurrent state")
                continue
            if not isinstance(s, torch.Tensor) or tuple(s.shape) != shape:
                got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
                raise ShapeError(f"{what}: expected dims {fmt(dims, {**self.sizes, 'b': batch})} = "
                                 f"{shape}, got {got}; make one with mixer.init_state({batch})")
        return states

    def _check_seq_idx(self, seq_idx, b: int, l: int):
        if seq_idx is None:
            return None
        if not isinstance(seq_idx, torch.Tensor) or seq_idx.dtype.is_floating_point or seq_idx.dtype == torch.bool:
            raise InputError("seq_idx must be an integer tensor of segment ids with dims (b, l)")
        if tuple(seq_idx.shape) != (b, l):
            raise ShapeError(f"seq_idx: expected dims (b={b}, l={l}), got shape {tuple(seq_idx.shape)}")
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
        dts = [t.dtype for t in inputs.values()]
        params = self._params(params)
        compute = torch.float32
        for dt in dts + [p.dtype for p in params.values()]:
            compute = torch.promote_types(compute, dt)
        out_dtype = dts[0]
        for dt in dts[1:]:
            out_dtype = torch.promote_types(out_dtype, dt)
        first = next(iter(inputs.values()))
        kw = {}
        if backend == "triton":  # kernels read any float dtype and accumulate in >= fp32 themselves
            _check_triton(first.device, inputs)
            args = dict(inputs)
            args.update(params)
            kw["step"] = step
            kw["configs"] = self._configs  # None: every application's default
        else:
            args = {k: v.to(compute) for k, v in inputs.items()}
            args.update({k: v.to(compute) for k, v in params.items()})
            if states is not None:
                states = tuple(None if s is None else s.to(compute) for s in states)
        b, l = (int(s) for s in first.shape[:2])
        if b == 0 or l == 0:  # nothing to mix: an empty output in the graph, the state copied through
            shape = [b if d == "b" else l if d == "l" else self.sizes[d] for d in self._output_dims]
            y = validate.empty_output(shape, out_dtype, first.device, [*inputs.values(), *params.values()])
            return y, validate.passed_states(states, self.state_shapes(b), compute, first.device)
        fn = self._get(backend)[2]
        y, finals = fn(**args, initial_states=states, seq_idx=seq_idx, **kw)
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
        for t in [*inputs.values(), *params.values()]:
            compute = torch.promote_types(compute, t.dtype)
        if "materialize" not in self._compiled:
            plan = codegen.plan(self.ir, "reference", self.chunk_size)
            source = codegen.generate(self.ir, plan, self.sizes, materialize=True)
            self._compiled["materialize"] = (plan, source, codegen.load(source, f"<mixerc {self.ir.name} M>"))
        fn = self._compiled["materialize"][2]
        args = {k: v.to(compute) for k, v in [*inputs.items(), *params.items()]}
        return self._pack(fn(**args, initial_states=None, seq_idx=seq_idx))

    def _pack(self, finals):
        return finals[0] if len(finals) == 1 else finals

    def forward(self, *, initial_state=None, return_final_state: bool = False, seq_idx=None,
                params: dict | None = None, **inputs):
        validate.tensors(inputs)
        b, l = self._check_inputs(inputs)
        states = self._check_state(initial_state, b, "initial_state")
        validate.states(states, "initial_state", next(iter(inputs.values())).device)
        seq_idx = self._check_seq_idx(seq_idx, b, l)
        device = next(iter(inputs.values())).device
        y, finals = self._run(self._resolve(device=device), inputs, states, seq_idx, params=params)
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
        validate.positional(self, args, "mixer.step")
        validate.tensors(inputs)
        b, _ = self._check_inputs(inputs, per_position=False)
        states = self._check_state(state, b, "state")
        validate.states(states, "state", next(iter(inputs.values())).device)
        if states is None:
            states = self._as_tuple(self.init_state(b))
        one = {k: v.unsqueeze(1) for k, v in inputs.items()}
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
            finals = states  # updated in place: hand back the caller's own tensors, not views
        return y.squeeze(1), self._pack(finals)

    def _as_tuple(self, s):
        return (s,) if isinstance(s, torch.Tensor) else tuple(s)

    def init_state(self, batch: int, dtype: torch.dtype | None = None, device=None):
        """Zero state(s) for ``batch`` sequences: a tensor, or a tuple with several structures."""
        validate.batch(batch, dtype)
        p = next(iter(self.parameters()), None)
        dtype = dtype or torch.promote_types(torch.float32, p.dtype if p is not None else self.param_dtype)
        device = device or (p.device if p is not None else None)
        return self._pack([None if shape is None else torch.zeros(shape, dtype=dtype, device=device)
                           for shape in self.state_shapes(batch)])

    def extra_repr(self) -> str:
        dims = ", ".join(f"{k}={v}" for k, v in self.sizes.items())
        return f"spec={self.ir.name}, dims=({dims}), backend={self.backend}"
