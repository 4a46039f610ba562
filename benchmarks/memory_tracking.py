"""Shared by the benchmarks: an in-memory workload of Omniglot-sized tasks, and exact live-tensor memory on CPU.

On CPU torch keeps no allocator statistics, so :class:`LiveTensorBytes` (a ``TorchDispatchMode``) tracks every
tensor storage: the storages alive when it is entered (found through ``gc``) and every storage an operator takes or
returns while it is active, each counted once, with a ``weakref.finalize`` that subtracts its bytes when the storage
is freed. :func:`verify_tracker` checks it on a hand-made example before a benchmark relies on it.
"""

from __future__ import annotations

import gc
import warnings
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from lightning_meta.data import ImageTensorDataset, Task, TaskFamily

CLASSES = 20


class RandomImageFamily(TaskFamily):
    """Tasks of random 28x28 grey ``uint8`` images with ``classes`` labels, in memory (no glyph data needed)."""

    def __init__(self, num_tasks: int = 10, per_class: int = 20, classes: int = CLASSES, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self._tasks = []
        for index in range(num_tasks + 2):
            images = torch.randint(0, 256, (classes * per_class, 1, 28, 28), generator=generator, dtype=torch.uint8)
            labels = torch.arange(classes).repeat_interleave(per_class)
            data = ImageTensorDataset(images, labels)
            self._tasks.append(Task(f"random-{index}", data, data, classes))

    def tasks(self, split):
        self._check_split(split)
        return {"train": self._tasks[:-2], "val": self._tasks[-2:-1], "test": self._tasks[-1:]}[split]


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of live tensor storages (current and peak), tracked exactly at operator granularity.

    Every storage is counted once, from the moment the tracker first sees it (alive when the mode is entered, or
    taken or returned by an operator while it is active) until a ``weakref.finalize`` on its Python object reports
    that it was freed. torch keeps a single Python object per storage for as long as the storage lives, which
    makes both the de-duplication (views share a storage) and the finalizer exact; :func:`verify_tracker` checks
    this on the running torch.
    """

    def __init__(self) -> None:
        super().__init__()
        self.sizes: dict[int, int] = {}  # id of the storage's Python object -> bytes counted for it
        self.current = 0
        self.peak = 0

    def __enter__(self):
        gc.collect()
        with warnings.catch_warnings():  # isinstance() on some deprecated module attributes warns
            warnings.simplefilter("ignore")
            for obj in gc.get_objects():
                if isinstance(obj, torch.Tensor):
                    self._see(obj)
        self.peak = self.current
        return super().__enter__()

    def reset_peak(self) -> None:
        self.peak = self.current

    def _free(self, key: int) -> None:
        self.current -= self.sizes.pop(key, 0)

    def _see(self, tensor: torch.Tensor) -> None:
        if tensor.is_meta or tensor.layout != torch.strided or tensor.device.type != "cpu":
            return
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # e.g. opaque oneDNN tensors
            return
        key, size = id(storage), storage.nbytes()
        old = self.sizes.get(key)
        if old is None:
            weakref.finalize(storage, self._free, key)
            self.sizes[key] = size
            self.current += size
        elif old != size:  # resized in place
            self.sizes[key] = size
            self.current += size - old
        else:
            return
        self.peak = max(self.peak, self.current)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for value in tree_flatten((args, kwargs))[0]:
            if isinstance(value, torch.Tensor):
                self._see(value)
        out = func(*args, **kwargs)
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self._see(value)
        return out


def gc_live_tensor_bytes() -> int:
    """Independent check: bytes of the distinct storages of all tensors that ``gc`` can reach."""
    storages: dict[int, int] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tensors = [obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor)]
    for tensor in tensors:
        if not tensor.is_meta and tensor.layout == torch.strided and tensor.device.type == "cpu":
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def verify_tracker() -> None:
    """Allocate N bytes, view, free, allocate, resize; with a pre-existing tensor. Raises if a count is off."""
    n = 1 << 20
    before = torch.empty(n // 4)  # exists before the tracker: counted once, from the start
    tracker = LiveTensorBytes()
    with tracker:
        base = tracker.current
        checks = []
        a = torch.empty(n // 4)  # n bytes
        view = a[10:].view(-1, 2)  # a view: no new storage
        checks.append(("allocate n + view", tracker.current - base, n))
        before.add_(1.0)  # in-place on a pre-existing storage: already counted
        checks.append(("in-place on pre-existing", tracker.current - base, n))
        del a, view
        checks.append(("free", tracker.current - base, 0))
        b = torch.empty(n // 8)  # n / 2 bytes
        checks.append(("allocate n/2", tracker.current - base, n // 2))
        c = torch.empty(0)
        c.resize_(n // 4)
        checks.append(("resize 0 -> n", tracker.current - base, n + n // 2))
        d = b * 2  # an operator's output
        checks.append(("operator output", tracker.current - base, 2 * n))
        del b, c, d
        checks.append(("free all", tracker.current - base, 0))
        checks.append(("peak", tracker.peak - base, 2 * n))
    del before
    bad = [f"{what}: counted {got}, expected {want}" for what, got, want in checks if got != want]
    if bad:
        raise RuntimeError("LiveTensorBytes is not exact on this torch:\n  " + "\n  ".join(bad))
