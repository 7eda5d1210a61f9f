"""Device meshes and the one table of sharding rules.

A mesh has two axes, ``data`` (the batch is split over it: data parallelism) and ``model`` (tensor
parallelism: attention heads, MLP hidden units and the vocabulary are split over it). Every
parameter carries logical axis names (``nn.with_logical_partitioning`` in ``models/layers.py``);
``RULES`` maps them to mesh axes, in this order (flax's first-match priority):

==============  =========  ==================================================================
logical axis    mesh axis  what it is
==============  =========  ==================================================================
``batch``       ``data``   rows of a batch (token ids, masks, pooled vectors, top-k outputs)
``vocab``       ``model``  rows of the token embedding and of the LM head
``heads``       ``model``  query heads (q kernel/bias columns, o kernel rows)
``kv_heads``    ``model``  key/value heads (k, v kernels and biases)
``mlp``         ``model``  MLP hidden units (gate/up/fc_in columns, down/fc_out rows)
``embed``       (none)     the residual stream: replicated
``embed_proj``  (none)     OPT's project_in/out width: replicated
``norm``        (none)     norm scales and biases: replicated
``positions``   (none)     learned position embeddings (GPT-2, OPT): replicated
``layers``      (none)     the stacked-layer axis of ``nn.scan``: replicated
==============  =========  ==================================================================

So a parameter is split over ``model`` along at most one dimension and replicated over ``data``;
with ``model=1`` every parameter is whole on every device (pure data parallelism).

**Fallback**: a dimension is split only when the split is whole: ``heads`` / ``kv_heads`` need the
*number of heads* (not just the width) to be a multiple of the ``model`` axis, so no head is cut in
two; ``vocab`` and ``mlp`` need their size to be a multiple. Otherwise that dimension is
replicated (logged once per logical axis), never an error and never an uneven split. E.g. a GQA
model with 2 KV heads on ``model=4`` keeps k/v replicated and splits q/o over its query heads; a
vocabulary of 50257 on ``model=2`` keeps the embedding and LM head replicated (the top-k is still
split: see :func:`keytok_jax.projection.sharded_topk_projection`).

Logical names not in the table are refused (``ValueError``), so a new name cannot be silently
replicated.
"""
from __future__ import annotations

import logging
import math
import re
from typing import Mapping

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

log = logging.getLogger("keytok_jax")

MESH_AXES = ("data", "model")

# logical axis → mesh axis (None: replicated). The single source of truth; see the module docstring.
RULES: tuple[tuple[str, str | None], ...] = (
    ("batch", "data"),
    ("vocab", "model"),
    ("heads", "model"),
    ("kv_heads", "model"),
    ("mlp", "model"),
    ("embed", None),
    ("embed_proj", None),
    ("norm", None),
    ("positions", None),
    ("layers", None),
)
LOGICAL_AXES = tuple(name for name, _ in RULES)


# ----------------------------------------------------------------------------- meshes

def parse_mesh_spec(spec) -> dict[str, int]:
    """``"data=4,model=2"`` (or a mapping such as a YAML ``mesh: {data: 4, model: 2}``) →
    ``{"data": 4, "model": 2}``. A missing axis has size 1; one axis may be ``-1`` (the rest of
    the devices)."""
    if isinstance(spec, Mapping):
        items = [(str(k), v) for k, v in spec.items()]
    else:
        text = str(spec).strip()
        items = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            m = re.fullmatch(r"([A-Za-z_]+)\s*=\s*(-?\d+)", part)
            if not m:
                raise ValueError(f"mesh {text!r}: expected AXIS=SIZE pairs like 'data=4,model=2', got {part!r}")
            items.append((m.group(1), m.group(2)))
        if not items:
            raise ValueError(f"mesh {spec!r}: expected AXIS=SIZE pairs like 'data=4,model=2'")
    sizes: dict[str, int] = {}
    for name, value in items:
        if name not in MESH_AXES:
            raise ValueError(f"mesh {spec!r}: unknown axis {name!r}; the axes are {MESH_AXES}")
        if name in sizes:
            raise ValueError(f"mesh {spec!r}: axis {name!r} given twice")
        try:
            size = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"mesh {spec!r}: size of {name!r} must be an integer, got {value!r}") from None
        if size == 0 or size < -1:
            raise ValueError(f"mesh {spec!r}: size of {name!r} must be positive (or -1 for the rest), got {size}")
        sizes[name] = size
    if list(sizes.values()).count(-1) > 1:
        raise ValueError(f"mesh {spec!r}: at most one axis may be -1")
    return {axis: sizes.get(axis, 1) for axis in MESH_AXES}


def parse_mesh(spec, devices=None, global_mesh: bool = False) -> Mesh | None:
    """A :class:`jax.sharding.Mesh` with axes ``("data", "model")`` from ``"data=D,model=M"``.

    Rule: ``D * M`` must not exceed the device count: ``jax.devices()`` in one process. In a
    multi-process job, ``jax.local_devices()`` (this process's own: each process runs its own mesh
    over whole store shards), or with ``global_mesh`` every process's devices (one mesh spanning
    the hosts, stepped in lock-step: see :func:`process_groups`).
    Equal: the mesh uses every device (laid out by ``mesh_utils`` for the interconnect). Fewer: it
    uses the first ``D * M`` devices (logged). ``-1`` for one axis means the rest:
    ``"model=2,data=-1"``. ``None`` or an existing ``Mesh`` pass through.
    """
    if spec is None or isinstance(spec, Mesh):
        return spec
    sizes = parse_mesh_spec(spec)
    if devices is None:
        devices = jax.local_devices() if jax.process_count() > 1 and not global_mesh else jax.devices()
    devices = list(devices)
    n = len(devices)
    known = math.prod(s for s in sizes.values() if s != -1)
    for axis, size in sizes.items():
        if size == -1:
            if n % known:
                raise ValueError(f"mesh {spec!r}: {n} devices are not a multiple of {known}")
            sizes[axis] = n // known
    total = math.prod(sizes.values())
    shape = tuple(sizes[a] for a in MESH_AXES)
    desc = ",".join(f"{a}={sizes[a]}" for a in MESH_AXES)
    if total > n:
        raise ValueError(f"mesh {desc} needs {total} devices; only {n} available "
                         f"({jax.default_backend()}). On CPU, XLA_FLAGS="
                         f"--xla_force_host_platform_device_count={total} fakes {total} devices")
    if total < n:
        log.info("mesh %s uses the first %d of %d devices", desc, total, n)
        grid = np.asarray(devices[:total], dtype=object).reshape(shape)
    else:
        try:
            grid = mesh_utils.create_device_mesh(shape, devices=devices)
        except Exception:  # unusual topologies: plain order
            grid = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(grid, MESH_AXES)


def spans_processes(mesh: Mesh | None) -> bool:
    """Whether some of the mesh's devices belong to other processes (then every step is collective
    and all processes must run the same steps in the same order)."""
    return mesh is not None and any(d.process_index != jax.process_index() for d in mesh.devices.flat)


def process_groups(mesh: Mesh) -> tuple[int, int, int, bool]:
    """How the processes of a mesh that spans hosts share the batch:
    ``(group, num_groups, rows_per_data_shard, is_writer)``.

    A process feeds the batch rows of the ``data`` indices its devices hold. Processes holding the
    same ``data`` indices (the ``model`` axis spans them) must feed identical rows, so they form a
    group that embeds the same documents; the lowest process id of a group writes them. Groups are
    numbered by their lowest process id, so process 0 is in group 0 and writes. The third value is
    how many ``data`` indices each group holds (equal for all groups, else ``ValueError``)."""
    owner = np.vectorize(lambda d: d.process_index, otypes=[int])(mesh.devices)
    held: dict[int, tuple[int, ...]] = {}
    for p in np.unique(owner):
        held[int(p)] = tuple(int(i) for i in np.unique(np.nonzero(owner == p)[0]))
    blocks = sorted(set(held.values()), key=lambda b: min(p for p, h in held.items() if h == b))
    if len({len(b) for b in blocks}) != 1 or len({i for b in blocks for i in b}) != sum(map(len, blocks)):
        raise ValueError(f"mesh {mesh_str(mesh)}: processes hold overlapping or unequal parts of the data "
                         f"axis ({held}); lay the devices out so each process holds whole data rows")
    if jax.process_index() not in held or len(held) != jax.process_count():
        raise ValueError(f"mesh {mesh_str(mesh)} leaves out the devices of some processes (it holds "
                         f"processes {sorted(held)} of {jax.process_count()}); a mesh over several "
                         f"processes must use every process's devices")
    me = held[jax.process_index()]
    group = blocks.index(me)
    writer = jax.process_index() == min(p for p, h in held.items() if h == me)
    return group, len(blocks), len(me), writer


def mesh_str(mesh: Mesh | None) -> str | None:
    return None if mesh is None else ",".join(f"{a}={mesh.shape[a]}" for a in mesh.axis_names)


def axis_size(mesh: Mesh | None, axis: str) -> int:
    return 1 if mesh is None or axis not in mesh.axis_names else int(mesh.shape[axis])


# ----------------------------------------------------------------------------- parameters

def _is_boxed(x) -> bool:
    return isinstance(x, nn.Partitioned)


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def logical_spec(names) -> P:
    """The mesh PartitionSpec that ``RULES`` gives the logical names (no divisibility check)."""
    unknown = [n for n in names if n is not None and n not in LOGICAL_AXES]
    if unknown:
        raise ValueError(f"logical axis names {unknown} have no rule in keytok_jax.sharding.RULES")
    return nn.logical_to_mesh_axes(tuple(names), RULES)


def param_specs(boxed, mesh: Mesh, cfg=None, notes: list | None = None):
    """PartitionSpec per parameter (a tree shaped like ``nn.unbox(boxed)``) from the rules, with the
    whole-split fallback of the module docstring. ``boxed``: the logically partitioned (abstract or
    concrete) parameters, e.g. ``loading.convert.abstract_variables(cfg, dtype)``. ``cfg`` (a
    ``DecoderConfig``) lets ``heads`` / ``kv_heads`` be checked in heads, not just in width.
    Fallback notes are logged and appended to ``notes`` when given."""
    units = {}
    if cfg is not None:
        units = {"heads": cfg.num_heads, "kv_heads": cfg.num_kv_heads}
    fallbacks: dict[str, list[str]] = {}
    reasons: dict[str, str] = {}

    def one(path, leaf):
        if not _is_boxed(leaf):
            raise ValueError(f"parameter {_path_str(path)} has no logical axis names")
        names = tuple(leaf.names)
        shape = tuple(leaf.value.shape)
        spec = list(logical_spec(names))
        spec += [None] * (len(shape) - len(spec))
        for i, (name, axis) in enumerate(zip(names, spec)):
            if axis is None:
                continue
            size = math.prod(mesh.shape[a] for a in ((axis,) if isinstance(axis, str) else axis))
            count = units.get(name)
            if count is None or shape[i] % count:
                count = shape[i]
            if count % size:
                spec[i] = None
                what = "heads" if name in units and count == units[name] else "rows"
                reasons[name] = f"{count} {what} do not split evenly over {axis}={size}"
                fallbacks.setdefault(name, []).append(_path_str(path))
        return P(*spec)

    specs = jax.tree_util.tree_map_with_path(one, boxed, is_leaf=_is_boxed)
    for name, paths in fallbacks.items():
        msg = f"sharding: {name}: {reasons[name]}; replicating {', '.join(paths)}"
        log.info(msg)
        if notes is not None:
            notes.append(msg)
    return specs


def param_shardings(boxed, mesh: Mesh, cfg=None, notes: list | None = None):
    """``NamedSharding`` per parameter: :func:`param_specs` on ``mesh``."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), param_specs(boxed, mesh, cfg, notes),
                        is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Rows over the ``batch`` rule's axis (``data``), the rest whole."""
    return NamedSharding(mesh, logical_spec(("batch",) + (None,) * (ndim - 1)))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def place(tree, shardings):
    """Put each leaf (numpy or jax) on its sharding. Each device receives only its own slice:
    ``make_array_from_callback`` reads ``leaf[index]`` per addressable device, so with several
    processes each one materializes only the shards it owns."""
    def put(x, sharding):
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        if isinstance(x, jax.Array) and x.is_fully_addressable and jax.process_count() == 1:
            return jax.device_put(x, sharding)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    return jax.tree.map(put, tree, shardings)


__all__ = ["RULES", "MESH_AXES", "LOGICAL_AXES", "parse_mesh", "parse_mesh_spec", "mesh_str", "axis_size",
           "spans_processes", "process_groups", "logical_spec", "param_specs", "param_shardings", "batch_sharding", "replicated", "place"]
