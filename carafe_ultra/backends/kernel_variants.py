"""The designs ("variants") of each CUDA kernel, how each is launched, and the one table the CUDA path runs from.

Every variant of a kernel computes exactly the same function; a module of kernels/carafe.cu is built with one variant
of each kernel (``-DCARAFE_FORWARD=row`` and so on, see :class:`~carafe_ultra.backends.kernel_types.Specialisation`).
They differ in what one thread owns (hence how many times each feature or mask value is read) and in how much index
arithmetic a step costs. All of them run in CI through the host shim against the float64 reference.
:data:`SELECTED` is the table: it keeps the first designs until a GPU has measured the others side by side
(``python -m carafe_ultra gpu-check``); benchmarks/NOTES.md has each variant's static budget.
"""

from __future__ import annotations

from dataclasses import dataclass

# Every launch uses blocks of this many threads; the split variant is built around it (32 lanes x 4 slices).
THREADS_PER_BLOCK = 128
SPLIT_LANES, SPLIT_SLICES = 32, 4  # CARAFE_LANES and CARAFE_SLICES of kernels/carafe.cu
# Channels per thread in the variants that chunk the channels: fewer means more threads (parallelism) and more
# re-reads of the mask values each thread keeps in registers.
CHANNEL_CHUNK = 64
LARGEST_32_BIT_OFFSET = 2**31 - 1


@dataclass(frozen=True)
class Variant:
    """One design of one kernel.

    Attributes:
        kernel: "forward", "backward_masks" or "backward_features"; "down_" before them for the downsampling's.
        name: the variant, e.g. "row" (``-DCARAFE_FORWARD=row``).
        unit: what one thread owns: "pixel" (an output pixel), "row" (the S output pixels of one output row that share
            a source pixel), "block" (all S x S output pixels of a source pixel), "input" (one input element), "input
            pixel" (one input pixel of one group), "split" (an output pixel's share of a group's channels: one of
            SPLIT_SLICES threads).
        chunked: threads also split the group's channels into chunks of CHANNEL_CHUNK (grid rows); else a thread
            covers all of them (or one, for "input").
        offsets_32_bit: offsets within a plane are 32-bit (see :func:`fits_32_bit_offsets`).
        outputs_per_step: output elements one step of the thread's hot loop accounts for, as a power of S (0, 1 or 2):
            the static budget divides a step's instructions by it.
        register_arrays: the floats a thread keeps in register arrays, as coefficients (a, b, c) of
            K*K * (a + b*S + c*S*S): see :meth:`register_floats`.
        summary: the design in a line.
    """

    kernel: str
    name: str
    unit: str
    chunked: bool
    offsets_32_bit: bool
    outputs_per_step: int
    register_arrays: tuple[int, int, int]
    summary: str

    def register_floats(self, kernel_size: int, scale: int) -> int:
        """Floats a thread of this variant keeps in register arrays (masks, window values, accumulators): past about
        150 the compiler spills some to local memory (benchmarks/NOTES.md)."""
        a, b, c = self.register_arrays
        return kernel_size**2 * (a + b * scale + c * scale**2)

    def geometry(self, shape: tuple[int, int, int, int], groups: int, scale: int) -> tuple[int, int, tuple[int, ...]]:
        """(threads, grid rows, trailing int arguments) of a launch for features of ``shape`` (N, C, H, W)."""
        n, channels, height, width = shape
        per_group = channels // groups
        units = {
            "pixel": n * groups * height * width * scale**2,
            "row": n * groups * height * width * scale,
            "block": n * groups * height * width,
            "input": n * channels * height * width,
            "input pixel": n * groups * height * width,
            "down pixel": n * groups * -(-height // scale) * -(-width // scale),
        }
        if self.unit == "split":  # whole warps of output pixels, SPLIT_SLICES warps to a block
            threads = -(-units["pixel"] // SPLIT_LANES) * SPLIT_LANES * SPLIT_SLICES
        else:
            threads = units[self.unit]
        dims = (n, channels, height, width, groups)
        if self.kernel.endswith("backward_masks"):
            return threads, 1, dims
        if not self.chunked:
            return threads, 1, (*dims, 1)
        chunks = max(1, -(-per_group // CHANNEL_CHUNK))
        return threads, chunks, (*dims, -(-per_group // chunks))


VARIANTS: dict[str, dict[str, Variant]] = {}
for _variant in (
    Variant("forward", "pixel", "pixel", True, False, 0, (1, 0, 0),
            "thread per output pixel, K*K masks in registers, every tap bounds-checked, 64-bit offsets"),
    Variant("forward", "pixel_interior", "pixel", True, True, 0, (2, 0, 0),
            "as pixel, but windows inside the input skip the checks; 32-bit offsets within a plane"),
    Variant("forward", "row", "row", True, True, 1, (1, 1, 0),
            "thread per S outputs of a row sharing a source pixel: each feature read once for S outputs"),
    Variant("forward", "block", "block", True, True, 2, (1, 0, 1),
            "thread per source pixel, all S*S outputs: each feature read once for S*S outputs"),
    Variant("backward_masks", "pixel", "pixel", False, False, 0, (1, 0, 0),
            "thread per output pixel over all the group's channels, every tap bounds-checked, 64-bit offsets"),
    Variant("backward_masks", "row", "row", False, True, 1, (1, 1, 0),
            "thread per S outputs of a row: each feature read once for S outputs; interior windows unchecked"),
    Variant("backward_masks", "split", "split", False, True, 0, (2, 0, 0),
            "4 threads per output pixel, each a slice of the channels, summed in shared memory (4x the threads)"),
    Variant("backward_features", "gather", "input", False, False, 2, (0, 0, 0),
            "thread per input element, gathering K*K*S*S grad_out and mask values"),
    Variant("backward_features", "gather_channels", "input pixel", True, True, 2, (0, 0, 1),
            "thread per input pixel over a chunk of channels, its K*K*S*S mask values in registers"),
):
    VARIANTS.setdefault(_variant.kernel, {})[_variant.name] = _variant

KERNELS = tuple(VARIANTS)

# CARAFE++ downsampling's kernels (the carafe_down_* entry points): one design each, built into every module.
DOWN_VARIANTS: dict[str, Variant] = {v.kernel: v for v in (
    Variant("down_forward", "pixel", "down pixel", True, False, 0, (1, 0, 0),
            "thread per output pixel, K*K masks in registers, every tap bounds-checked, 64-bit offsets"),
    Variant("down_backward_masks", "pixel", "down pixel", False, False, 0, (1, 0, 0),
            "thread per output pixel over all the group's channels, every tap bounds-checked, 64-bit offsets"),
    Variant("down_backward_features", "gather", "input", False, False, 0, (0, 0, 0),
            "thread per input element, gathering the at most ceil(K/S)^2 outputs whose window reads it"),
)}
DOWN_KERNELS = tuple(DOWN_VARIANTS)
ENTRY_POINTS = tuple(f"carafe_{kernel}" for kernel in (*KERNELS, *DOWN_KERNELS))  # every module's

# The variant the CUDA path runs for each kernel: the first designs, until a GPU has measured the others.
SELECTED: dict[str, str] = {"forward": "pixel", "backward_masks": "pixel", "backward_features": "gather"}


def variant(kernel: str, name: str) -> Variant:
    """The variant ``name`` of ``kernel``; raises ``ValueError`` listing the known ones otherwise."""
    try:
        return VARIANTS[kernel][name]
    except KeyError:
        known = ", ".join(f"{k}: {'/'.join(v)}" for k, v in VARIANTS.items())
        raise ValueError(f"no kernel variant {kernel}/{name}; known: {known}") from None


def fits_32_bit_offsets(height: int, width: int, kernel_size: int, scale: int) -> bool:
    """Whether every offset the 32-bit variants form within a plane fits an int: they reach up to a window's size
    beyond an output plane (H*S x W*S)."""
    return (height + kernel_size) * (width + kernel_size) * scale**2 <= LARGEST_32_BIT_OFFSET


def variants_for(shape: tuple[int, int, int, int], kernel_size: int, scale: int,
                 table: dict[str, str] | None = None) -> dict[str, str]:
    """The variant of each kernel to run for features of ``shape``: the table's (``SELECTED`` by default), except
    the kernel's first design (64-bit offsets throughout) where a plane is too large for 32-bit offsets."""
    table = SELECTED if table is None else table
    fits = fits_32_bit_offsets(*shape[2:], kernel_size, scale)
    return {kernel: table[kernel] if fits or not variant(kernel, table[kernel]).offsets_32_bit else next(iter(VARIANTS[kernel]))
            for kernel in KERNELS}


def variant_sets() -> list[dict[str, str]]:
    """Few tables that together hold every variant: the i-th takes each kernel's i-th variant, or its first design
    where it has fewer (the cheapest to build). One module per table builds them all, for the tests and the budget."""
    most = max(len(names) for names in VARIANTS.values())
    return [{kernel: list(names)[i if i < len(names) else 0] for kernel, names in VARIANTS.items()} for i in range(most)]
