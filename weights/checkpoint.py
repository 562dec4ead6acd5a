"""Reading safetensors files: a full check of the header, then tensors one at a time.

Format (huggingface/safetensors): an unsigned little-endian u64 N, N bytes of UTF-8 JSON
`{name: {"dtype": "F16", "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {...}}`, then
the data; offsets count from the end of the header. The data must be covered exactly, without holes
or overlaps, so a file cannot hide anything else.

A module is built on the `meta` device and each of its tensors is replaced by the file's tensor as
soon as it is ready, so the model exists once: tensors already in the target dtype, for the CPU,
are the file's own pages (mapped copy-on-write, read by the OS on first use); every other tensor
is converted straight from a read-only mapping whose pages are released right after, since mapped
pages count in the process's resident memory. The peak is the loaded model plus one tensor in the
file's dtype.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

import safeio
from weights.errors import WeightsError

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U64": torch.uint64,
    "U32": torch.uint32,
    "U16": torch.uint16,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
MAX_HEADER_BYTES = 100_000_000  # the limit of the safetensors library itself
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")
CONVERT_HINT = (
    "pickles can run code when loaded; convert it to .safetensors (e.g. in an environment you trust: "
    "safetensors.torch.save_file(torch.load(path, weights_only=True)['state_dict'], 'model.safetensors')) "
    "or download the .safetensors release of the model"
)


@dataclass(frozen=True)
class TensorInfo:
    """One header entry; `begin` and `end` are absolute byte positions in the file."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class Header:
    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    stamp: tuple[int, int, int] = (0, 0, 0)  # (size, mtime_ns, inode) when the header was read

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: info.shape for name, info in self.tensors.items()}


def file_stamp(stat: os.stat_result) -> tuple[int, int, int]:
    return stat.st_size, stat.st_mtime_ns, stat.st_ino


def check_unchanged(path: Path, stamp: tuple[int, int, int], stat: os.stat_result) -> None:
    """Refuse a file replaced or rewritten since its header was checked (its size, time or inode
    moved): the checked header no longer describes it. Overwriting in place while pages are mapped
    cannot be caught this way (the process then dies of SIGBUS; see the README)."""
    if stamp != (0, 0, 0) and file_stamp(stat) != stamp:
        raise WeightsError(
            f"{path} changed while it was being loaded (size, modification time or inode differ from "
            "when its header was read); let the copy or download finish, then run again"
        )


def refuse_pickle(path: Path) -> None:
    """Refuse pickles and zip archives (torch.save's format) by name and by their first bytes."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise WeightsError(f"{path} is a PyTorch pickle ({path.suffix}) and is not opened: {CONVERT_HINT}")
    with path.open("rb") as f:
        start = f.read(9)
    # A safetensors header is JSON: byte 8 is "{", so a header length such as 0x280 (bytes 80 02),
    # which looks like a pickle's PROTO opcode, is not mistaken for one.
    if start[8:9] == b"{":
        return
    # zip: local file header "PK\3\4"; pickle protocols 2-5 open with PROTO (0x80) and the version.
    if start.startswith(b"PK\x03\x04") or (len(start) >= 2 and start[0] == 0x80 and 2 <= start[1] <= 5):
        raise WeightsError(
            f"{path} holds a pickle or zip archive, not safetensors, and is not opened: {CONVERT_HINT}"
        )


def read_header(path: str | os.PathLike) -> Header:
    """Parse and check the whole header against the file size before any tensor is read."""
    path = Path(path)
    safeio.check_regular(path)
    refuse_pickle(path)
    stat = path.stat()
    size = stat.st_size
    corrupt = f"{path} is not a valid safetensors file"
    redownload = "re-download or re-convert it"
    if size < 8:
        raise WeightsError(f"{corrupt}: it has {size} bytes, too few for a header; {redownload}")
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > MAX_HEADER_BYTES:
            raise WeightsError(f"{corrupt}: its header length {length} exceeds the format's 100 MB limit")
        if length > size - 8:
            raise WeightsError(
                f"{corrupt}: its header length {length} runs past the end of the file ({size} bytes), "
                f"so the file is truncated or not safetensors; {redownload}"
            )
        raw = f.read(length)
    header = safeio.parse_json(raw, f"{corrupt}: its header", redownload, WeightsError)
    if not isinstance(header, dict):
        raise WeightsError(f"{corrupt}: its header is JSON but not an object; {redownload}")

    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise WeightsError(f"{corrupt}: __metadata__ is not an object of strings; {redownload}")
    data_start = 8 + length
    tensors = {name: _tensor_info(name, entry, data_start, corrupt) for name, entry in header.items()}
    _check_coverage(tensors, data_start, size, corrupt)
    return Header(path, tensors, metadata, file_stamp(stat))


def _tensor_info(name: str, entry: object, data_start: int, corrupt: str) -> TensorInfo:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise WeightsError(f"{corrupt}: the entry of {name!r} is not {{dtype, shape, data_offsets}}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPES:
        raise WeightsError(
            f"{corrupt}: {name!r} has unknown dtype {dtype!r} (known: {', '.join(DTYPES)}); convert the file"
        )
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise WeightsError(f"{corrupt}: {name!r} has shape {shape!r}, not a list of sizes")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
        raise WeightsError(f"{corrupt}: {name!r} has data_offsets {offsets!r}, not [begin, end]")
    begin, end = offsets
    if begin < 0 or begin > end:
        raise WeightsError(f"{corrupt}: {name!r} has data_offsets [{begin}, {end}], which run backwards")
    expected = math.prod(shape) * DTYPES[dtype].itemsize
    if end - begin != expected:
        raise WeightsError(
            f"{corrupt}: {name!r} ({dtype}, shape {shape}) needs {expected} bytes but its data_offsets "
            f"[{begin}, {end}] hold {end - begin}"
        )
    return TensorInfo(DTYPES[dtype], tuple(shape), data_start + begin, data_start + end)


def _check_coverage(tensors: dict[str, TensorInfo], data_start: int, size: int, corrupt: str) -> None:
    """The tensors' byte ranges, in order, must tile the data section exactly."""
    position, previous = data_start, None
    for name, info in sorted(tensors.items(), key=lambda item: (item[1].begin, item[1].end)):
        if info.begin < position:
            raise WeightsError(f"{corrupt}: the bytes of {name!r} overlap those of {previous!r}")
        if info.begin > position:
            raise WeightsError(
                f"{corrupt}: {info.begin - position} bytes before {name!r} belong to no tensor (a hole)"
            )
        if info.end > size:
            raise WeightsError(
                f"{corrupt}: {name!r} ends at byte {info.end} but the file has {size} bytes, so it is "
                "truncated; re-download it"
            )
        position, previous = info.end, name
    if position != size:
        raise WeightsError(f"{corrupt}: {size - position} bytes after the last tensor belong to no tensor")


def read_tensors(
    path: Path,
    infos: Iterable[tuple[str, TensorInfo]],
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    stamp: tuple[int, int, int] = (0, 0, 0),
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) for the given header entries in file order: floating tensors in `dtype`
    (when given), all on `device`.

    A tensor that needs no conversion (already in its dtype, for the CPU) is mapped, not read: its
    storage is the file's pages, copy-on-write (the file never changes), which the OS reads on first
    use and may drop again under memory pressure. Any other tensor is converted straight from a
    read-only mapping, whose pages are then released (MADV_DONTNEED), so the source bytes never stay
    resident next to the converted copy: at most one tensor's worth of them is mapped in at a time.
    With the header's `stamp`, a file changed since its header was read is refused, before and after
    the tensors are read (WeightsError).
    """
    device = torch.device(device)
    with Path(path).open("rb") as f:
        check_unchanged(Path(path), stamp, os.fstat(f.fileno()))  # `stamp`: the header's, if given
        size = os.fstat(f.fileno()).st_size
        storage = None
        with mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as source:
            for name, info in sorted(infos, key=lambda item: item[1].begin):
                target = dtype if dtype is not None and info.dtype.is_floating_point else info.dtype
                if device.type == "cpu" and target == info.dtype and info.begin % info.dtype.itemsize == 0:
                    if storage is None:
                        storage = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=size)
                    offset = info.begin // info.dtype.itemsize  # in elements
                    yield name, torch.empty(0, dtype=info.dtype).set_(storage, offset, info.shape)
                    continue
                yield name, _convert(source, info, target, device)
                # Drop the source pages from this process (page-aligned range; a shared boundary
                # page is simply read again if the next tensor needs it).
                start = info.begin - info.begin % mmap.PAGESIZE
                if info.end > start:
                    source.madvise(mmap.MADV_DONTNEED, start, info.end - start)
        check_unchanged(Path(path), stamp, os.fstat(f.fileno()))  # rewritten in place meanwhile


def _convert(source: mmap.mmap, info: TensorInfo, target: torch.dtype, device: torch.device) -> torch.Tensor:
    """The tensor at info's byte range of the mapping, as a new tensor of `target` dtype on `device`."""
    if info.end == info.begin:
        return torch.empty(info.shape, dtype=target, device=device)
    with warnings.catch_warnings():  # the mapping is read-only, and we only read it
        warnings.simplefilter("ignore", UserWarning)
        raw = torch.frombuffer(source, dtype=torch.uint8, offset=info.begin, count=info.end - info.begin)
    if info.begin % info.dtype.itemsize:  # an unaligned tensor cannot be viewed in place
        raw = raw.clone()
    # safetensors data is little-endian, as on x86 and ARM
    out = torch.empty(info.shape, dtype=target, device=device)
    out.copy_(raw.view(info.dtype).reshape(info.shape))
    return out


class _SkipInit(TorchFunctionMode):
    """Makes every `torch.nn.init` call a no-op."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init":
            return kwargs["tensor"] if "tensor" in kwargs else args[0]
        return func(*args, **kwargs)


@contextmanager
def empty_modules() -> Iterator[None]:
    """Modules built inside get parameters on the meta device (shapes only, no memory) and skip their
    initialisers, which compute nothing there; torch's meta `normal_` would also import torch._dynamo
    on first use, about 2 s."""
    with torch.device("meta"), _SkipInit():
        yield


def assign(module: nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Replace the (meta) parameter or buffer `name` of `module` by `tensor`, frozen (shapes are
    checked beforehand)."""
    owner_name, _, attr = name.rpartition(".")
    owner = module.get_submodule(owner_name)
    if attr in dict(owner.named_parameters(recurse=False)):
        setattr(owner, attr, nn.Parameter(tensor, requires_grad=False))
    else:
        setattr(owner, attr, tensor)


def unloaded(module: nn.Module) -> list[str]:
    """Names of tensors still on the meta device (a buffer outside the state dict was never filled)."""
    return [name for name, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
