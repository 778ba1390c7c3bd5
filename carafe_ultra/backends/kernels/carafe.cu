// CARAFE forward and backward kernels (mmcv semantics; see carafe_ultra/functional.py), and those of CARAFE++'s
// downsampling (the carafe_down_* entry points, near the end).
//
// One source, two compilers: NVRTC builds it for GPUs (carafe_ultra/backends/cupy_launcher.py), and
// host_shim.cpp builds the very same text with g++ so CI can run every kernel on a CPU. That is why the kernels
// reach CUDA only through the few names the shim provides: blockIdx, blockDim, threadIdx, __global__, __shared__
// and __syncthreads. They use no atomics, so every result is bitwise deterministic.
//
// Each kernel (forward, backward_masks, backward_features) comes in several designs, "variants", and a module is
// built with one variant of each (-DCARAFE_FORWARD=... below); carafe_ultra/backends/kernel_variants.py says what
// one thread of each owns, how it is launched and which variant the CUDA path runs. benchmarks/NOTES.md has their
// static budgets.
//
// Compile-time constants (-D): CARAFE_K (odd kernel size), CARAFE_S (scale factor), the variants (at the end), and
// the storage types
// CARAFE_FEATURES (of features, output and their gradients) and CARAFE_MASKS (of masks and their gradient),
// each one of float, half_bits, bf16_bits: under autocast float16 features meet float32 masks, and neither is
// converted. Layout: contiguous NCHW features (N, C, H, W), masks (N, G*K*K, H*S, W*S), output
// (N, C, H*S, W*S). Indexing across planes is 64-bit; the variants marked so in kernel_variants.py use 32-bit
// offsets within one plane (the CUDA path runs them only where a plane has fewer than 2**31 elements).
// Accumulation is in float32 for every storage type.

#ifndef CARAFE_K
#error "define CARAFE_K"
#endif
#ifndef CARAFE_S
#error "define CARAFE_S"
#endif
#if !defined(CARAFE_FEATURES) || !defined(CARAFE_MASKS)
#error "define CARAFE_FEATURES and CARAFE_MASKS (float, half_bits or bf16_bits)"
#endif

#define CARAFE_R ((CARAFE_K - 1) / 2)
#define CARAFE_TAPS (CARAFE_K * CARAFE_K)
// The split variant of backward_masks: a block is CARAFE_LANES output pixels (one warp's worth, so loads stay
// coalesced) times CARAFE_SLICES slices of the group's channels, whose partial sums meet in shared memory.
#define CARAFE_LANES 32
#define CARAFE_SLICES 4

typedef long long index_t;

// Storage types: 16-bit floats travel as their bits, converted to float on load and back on store.
struct half_bits { unsigned short bits; };
struct bf16_bits { unsigned short bits; };

#if defined(__CUDACC_RTC__) || defined(__CUDACC__)
#define CARAFE_DEVICE __device__ __forceinline__
#define CARAFE_UNROLL _Pragma("unroll")  // register arrays need every index known at compile time
static CARAFE_DEVICE float f32_from_bits(unsigned int u) { return __uint_as_float(u); }
static CARAFE_DEVICE unsigned int bits_from_f32(float f) { return __float_as_uint(f); }
static CARAFE_DEVICE float half_to_float(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
static CARAFE_DEVICE unsigned short float_to_half(float f) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
#else
#define CARAFE_DEVICE static inline
#define CARAFE_UNROLL
CARAFE_DEVICE float f32_from_bits(unsigned int u) { float f; __builtin_memcpy(&f, &u, 4); return f; }
CARAFE_DEVICE unsigned int bits_from_f32(float f) { unsigned int u; __builtin_memcpy(&u, &f, 4); return u; }
CARAFE_DEVICE float half_to_float(unsigned short h) { _Float16 v; __builtin_memcpy(&v, &h, 2); return (float)v; }
CARAFE_DEVICE unsigned short float_to_half(float f) { _Float16 v = (_Float16)f; unsigned short h; __builtin_memcpy(&h, &v, 2); return h; }
#endif

CARAFE_DEVICE float load(const float* p) { return *p; }
CARAFE_DEVICE float load(const half_bits* p) { return half_to_float(p->bits); }
CARAFE_DEVICE float load(const bf16_bits* p) { return f32_from_bits((unsigned int)p->bits << 16); }

CARAFE_DEVICE void store(float* p, float v) { *p = v; }
CARAFE_DEVICE void store(half_bits* p, float v) { p->bits = float_to_half(v); }
CARAFE_DEVICE void store(bf16_bits* p, float v) {
    unsigned int u = bits_from_f32(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN stays a (quiet) NaN
        p->bits = (unsigned short)((u >> 16) | 0x40u);
        return;
    }
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
    p->bits = (unsigned short)(u >> 16);
}

CARAFE_DEVICE index_t global_thread() { return (index_t)blockIdx.x * blockDim.x + threadIdx.x; }

// The channels [first, end) of group g that chunk number `chunk` (of chunk_size channels) covers.
CARAFE_DEVICE void channel_chunk_range(index_t g, index_t per_group, index_t chunk, index_t chunk_size,
                                       index_t& first, index_t& end) {
    first = g * per_group + chunk * chunk_size;
    const index_t group_end = (g + 1) * per_group;
    end = first + chunk_size < group_end ? first + chunk_size : group_end;
}

// A tile of RY x RX output pixels that share one source pixel (RY, RX each 1 or CARAFE_S), as a thread of the
// per-output-pixel kernels owns it: tiles are numbered with the column fastest, then the row, group and batch.
struct Tile {
    index_t n, g;    // batch and group
    index_t oh, ow;  // its first output pixel
    index_t ph, pw;  // its source pixel (oh / S, ow / S)
    index_t plane;   // out_h * out_w
};

// Fills t for tile number `index`; false for the numbers past the last tile.
template <int RY, int RX>
CARAFE_DEVICE bool claim_tile(index_t index, index_t batch, index_t groups, index_t height, index_t width, Tile& t) {
    const index_t out_w = width * CARAFE_S, rows = height * CARAFE_S / RY, cols = out_w / RX;
    t.plane = height * CARAFE_S * out_w;
    if (index >= batch * groups * rows * cols) return false;
    t.ow = index % cols * RX;
    t.oh = (index / cols) % rows * RY;
    t.g = (index / (rows * cols)) % groups;
    t.n = index / (rows * cols * groups);
    t.ph = t.oh / CARAFE_S;
    t.pw = t.ow / CARAFE_S;
    return true;
}

// ---------------------------------------------------------------------------------------------------------------
// The first designs: one thread per output pixel, 64-bit offsets everywhere, every tap bounds-checked.

// Calls visit(tap, y * width + x) for each tap (i, j) of the window around (ph, pw) that lies inside the
// input; taps outside count as zero, so they are simply skipped.
template <typename Visit>
CARAFE_DEVICE void for_each_inside_tap(index_t ph, index_t pw, index_t height, index_t width, Visit visit) {
    for (int i = 0; i < CARAFE_K; ++i) {
        const index_t y = ph + i - CARAFE_R;
        if (y < 0 || y >= height) continue;
        for (int j = 0; j < CARAFE_K; ++j) {
            const index_t x = pw + j - CARAFE_R;
            if (x < 0 || x >= width) continue;
            visit(i * CARAFE_K + j, y * width + x);
        }
    }
}

// The output pixel `at` of the plane of `plane` values of batch item n, whose window centres on input pixel (ph, pw),
// over the chunk of group g's channels that blockIdx.y picks: its K*K mask values (those of its group, from `mask`)
// are read once into registers and reused by every channel. The upsampling's and the downsampling's per-pixel
// forward kernels both run it.
template <typename F, typename M>
CARAFE_DEVICE void reassemble_pixel(const F* __restrict__ features, const M* __restrict__ mask, F* __restrict__ out,
                                    index_t n, index_t channels, index_t height, index_t width, index_t groups,
                                    index_t g, index_t plane, index_t at, index_t ph, index_t pw,
                                    index_t channel_chunk) {
    float weight[CARAFE_TAPS];
    for (int tap = 0; tap < CARAFE_TAPS; ++tap) weight[tap] = load(mask + tap * plane);
    index_t first, end;
    channel_chunk_range(g, channels / groups, blockIdx.y, channel_chunk, first, end);
    for (index_t c = first; c < end; ++c) {
        const F* source = features + (n * channels + c) * height * width;
        float acc = 0.f;
        for_each_inside_tap(ph, pw, height, width, [&](int tap, index_t at) { acc += load(source + at) * weight[tap]; });
        store(out + (n * channels + c) * plane + at, acc);
    }
}

// The masks' gradient at that output pixel: for each tap, the sum over the channels [first, end) of grad_out times
// the tap's source pixel, stored from `grad` (0 for taps outside). A plain sum, no atomics.
template <typename F, typename M>
CARAFE_DEVICE void mask_grads_pixel(const F* __restrict__ grad_out, const F* __restrict__ features,
                                    M* __restrict__ grad, index_t n, index_t channels, index_t height, index_t width,
                                    index_t plane, index_t at, index_t ph, index_t pw, index_t first, index_t end) {
    float acc[CARAFE_TAPS];
    for (int tap = 0; tap < CARAFE_TAPS; ++tap) acc[tap] = 0.f;
    for (index_t c = first; c < end; ++c) {
        const float go = load(grad_out + (n * channels + c) * plane + at);
        const F* source = features + (n * channels + c) * height * width;
        for_each_inside_tap(ph, pw, height, width, [&](int tap, index_t at) { acc[tap] += go * load(source + at); });
    }
    for (int tap = 0; tap < CARAFE_TAPS; ++tap) store(grad + tap * plane, acc[tap]);
}

// One thread per (batch, group, output row, output column), over a chunk of the group's channels
// (blockIdx.y picks the chunk); adjacent threads write adjacent output columns.
template <typename F, typename M>
CARAFE_DEVICE void forward_pixel(const F* __restrict__ features, const M* __restrict__ masks, F* __restrict__ out,
                                 index_t batch, index_t channels, index_t height, index_t width, index_t groups,
                                 index_t channel_chunk) {
    Tile p;
    if (!claim_tile<1, 1>(global_thread(), batch, groups, height, width, p)) return;
    const index_t at = p.oh * width * CARAFE_S + p.ow;
    reassemble_pixel(features, masks + (p.n * groups + p.g) * CARAFE_TAPS * p.plane + at, out, p.n, channels, height,
                     width, groups, p.g, p.plane, at, p.ph, p.pw, channel_chunk);
}

// grad_masks[n, g*K*K + tap, oh, ow] = sum over the group's channels of grad_out * the tap's source pixel.
// Same mapping as forward_pixel, all channels of the group per thread.
template <typename F, typename M>
CARAFE_DEVICE void backward_masks_pixel(const F* __restrict__ grad_out, const F* __restrict__ features,
                                        M* __restrict__ grad_masks, index_t batch, index_t channels, index_t height,
                                        index_t width, index_t groups) {
    Tile p;
    if (!claim_tile<1, 1>(global_thread(), batch, groups, height, width, p)) return;
    const index_t at = p.oh * width * CARAFE_S + p.ow, per_group = channels / groups;
    mask_grads_pixel(grad_out, features, grad_masks + (p.n * groups + p.g) * CARAFE_TAPS * p.plane + at, p.n,
                     channels, height, width, p.plane, at, p.ph, p.pw, p.g * per_group, (p.g + 1) * per_group);
}

// grad_features[n, c, h, w]: gathered from every output pixel whose window reads (h, w). Output pixels
// (oh, ow) with source (ph, pw) = (h - i + R, w - j + R) read it through tap (i, j), for all S*S of them.
template <typename F, typename M>
CARAFE_DEVICE void backward_features_gather(const F* __restrict__ grad_out, const M* __restrict__ masks,
                                            F* __restrict__ grad_features, index_t batch, index_t channels,
                                            index_t height, index_t width, index_t groups,
                                            index_t /* channel_chunk: one channel per thread */) {
    const index_t out_h = height * CARAFE_S, out_w = width * CARAFE_S, plane = out_h * out_w;
    const index_t index = global_thread();
    if (index >= batch * channels * height * width) return;
    const index_t w = index % width, h = (index / width) % height;
    const index_t c = (index / (height * width)) % channels, n = index / (height * width * channels);
    const index_t g = c / (channels / groups);

    const F* grad = grad_out + (n * channels + c) * plane;
    const M* mask = masks + (n * groups + g) * CARAFE_TAPS * plane;
    float acc = 0.f;
    for (int i = 0; i < CARAFE_K; ++i) {
        const index_t ph = h - i + CARAFE_R;
        if (ph < 0 || ph >= height) continue;
        for (int j = 0; j < CARAFE_K; ++j) {
            const index_t pw = w - j + CARAFE_R;
            if (pw < 0 || pw >= width) continue;
            const M* tap_mask = mask + (i * CARAFE_K + j) * plane;
            for (int dy = 0; dy < CARAFE_S; ++dy) {
                const index_t row = (ph * CARAFE_S + dy) * out_w + pw * CARAFE_S;
                for (int dx = 0; dx < CARAFE_S; ++dx) acc += load(grad + row + dx) * load(tap_mask + row + dx);
            }
        }
    }
    store(grad_features + index, acc);
}

// ---------------------------------------------------------------------------------------------------------------
// Tiled designs: a thread reads each feature of a source window once per channel for all the output pixels of its
// tile, windows wholly inside the input take a path without bounds checks, and offsets within a plane are 32-bit.

// The K x K window around one source pixel, as offsets within a feature plane.
struct Window {
    int corner;          // offset of tap (0, 0), (ph - R) * width + (pw - R); negative at the top-left border
    int stride;          // the plane's width
    unsigned rows, cols; // bit i (j) set: window row i (column j) lies inside the input
    bool interior;       // every tap inside
};

CARAFE_DEVICE Window window_at(index_t ph, index_t pw, index_t height, index_t width) {
    Window w;
    w.corner = (int)((ph - CARAFE_R) * width + pw - CARAFE_R);
    w.stride = (int)width;
    w.rows = w.cols = 0;
    for (int i = 0; i < CARAFE_K; ++i) {
        const index_t y = ph + i - CARAFE_R, x = pw + i - CARAFE_R;
        w.rows |= (unsigned)(y >= 0 && y < height) << i;
        w.cols |= (unsigned)(x >= 0 && x < width) << i;
    }
    w.interior = w.rows == (1u << CARAFE_K) - 1 && w.cols == w.rows;
    return w;
}

CARAFE_DEVICE bool inside(const Window& w, int i, int j) { return (w.rows >> i & 1u) && (w.cols >> j & 1u); }

// The window's features in one plane; taps outside are not read (Interior: none are outside).
template <bool Interior, typename F>
CARAFE_DEVICE void load_window(const F* plane, const Window& w, float value[CARAFE_TAPS]) {
CARAFE_UNROLL
    for (int i = 0; i < CARAFE_K; ++i) {
        const F* row = plane + (w.corner + i * w.stride);
CARAFE_UNROLL
        for (int j = 0; j < CARAFE_K; ++j)
            value[i * CARAFE_K + j] = Interior || inside(w, i, j) ? load(row + j) : 0.f;
    }
}

// Forward over the channels [first, end) for one tile, its RY*RX*K*K mask values in registers.
template <bool Interior, int RY, int RX, typename F>
CARAFE_DEVICE void forward_tile_channels(const F* features, F* out, const Tile& t, const Window& w,
                                         const float (&weight)[RY][RX][CARAFE_TAPS], index_t first, index_t end,
                                         index_t input_plane, index_t out_w) {
    for (index_t c = first; c < end; ++c) {
        float value[CARAFE_TAPS];
        load_window<Interior>(features + c * input_plane, w, value);
        F* target = out + c * t.plane + t.oh * out_w + t.ow;
CARAFE_UNROLL
        for (int dy = 0; dy < RY; ++dy) {
CARAFE_UNROLL
            for (int dx = 0; dx < RX; ++dx) {
                float acc = 0.f;
CARAFE_UNROLL
                for (int i = 0; i < CARAFE_K; ++i)
CARAFE_UNROLL
                    for (int j = 0; j < CARAFE_K; ++j)
                        if (Interior || inside(w, i, j))
                            acc += value[i * CARAFE_K + j] * weight[dy][dx][i * CARAFE_K + j];
                store(target + dy * out_w + dx, acc);
            }
        }
    }
}

// One thread per tile of RY x RX output pixels (pixel_interior 1 x 1, row 1 x S, block S x S) over a chunk of
// the group's channels (blockIdx.y picks it): each feature of the window is read once per channel for all
// RY*RX outputs, whose mask values sit in registers for the whole chunk.
template <int RY, int RX, typename F, typename M>
CARAFE_DEVICE void forward_tile(const F* __restrict__ features, const M* __restrict__ masks, F* __restrict__ out,
                                index_t batch, index_t channels, index_t height, index_t width, index_t groups,
                                index_t channel_chunk) {
    Tile t;
    if (!claim_tile<RY, RX>(global_thread(), batch, groups, height, width, t)) return;
    const index_t out_w = width * CARAFE_S, input_plane = height * width;

    float weight[RY][RX][CARAFE_TAPS];
    const M* mask = masks + (t.n * groups + t.g) * CARAFE_TAPS * t.plane + t.oh * out_w + t.ow;
CARAFE_UNROLL
    for (int tap = 0; tap < CARAFE_TAPS; ++tap)
CARAFE_UNROLL
        for (int dy = 0; dy < RY; ++dy)
CARAFE_UNROLL
            for (int dx = 0; dx < RX; ++dx) weight[dy][dx][tap] = load(mask + tap * t.plane + dy * out_w + dx);

    index_t first, end;
    channel_chunk_range(t.g, channels / groups, blockIdx.y, channel_chunk, first, end);
    const F* batch_features = features + t.n * channels * input_plane;
    F* batch_out = out + t.n * channels * t.plane;
    const Window w = window_at(t.ph, t.pw, height, width);
    if (w.interior)
        forward_tile_channels<true>(batch_features, batch_out, t, w, weight, first, end, input_plane, out_w);
    else
        forward_tile_channels<false>(batch_features, batch_out, t, w, weight, first, end, input_plane, out_w);
}

// Adds, for the channels [first, end), grad_out * feature into acc[dy][dx][tap] for the tile's outputs.
template <bool Interior, int RY, int RX, typename F>
CARAFE_DEVICE void mask_grads_tile_channels(const F* grad_out, const F* features, const Tile& t, const Window& w,
                                            float (&acc)[RY][RX][CARAFE_TAPS], index_t first, index_t end,
                                            index_t input_plane, index_t out_w) {
    for (index_t c = first; c < end; ++c) {
        float value[CARAFE_TAPS];
        load_window<Interior>(features + c * input_plane, w, value);
        const F* grad = grad_out + c * t.plane + t.oh * out_w + t.ow;
CARAFE_UNROLL
        for (int dy = 0; dy < RY; ++dy)
CARAFE_UNROLL
            for (int dx = 0; dx < RX; ++dx) {
                const float go = load(grad + dy * out_w + dx);
CARAFE_UNROLL
                for (int i = 0; i < CARAFE_K; ++i)
CARAFE_UNROLL
                    for (int j = 0; j < CARAFE_K; ++j)
                        if (Interior || inside(w, i, j)) acc[dy][dx][i * CARAFE_K + j] += go * value[i * CARAFE_K + j];
            }
    }
}

template <int RY, int RX, typename F>
CARAFE_DEVICE void mask_grads_tile(const F* grad_out, const F* features, const Tile& t, const Window& w,
                                   float (&acc)[RY][RX][CARAFE_TAPS], index_t first, index_t end, index_t input_plane,
                                   index_t out_w) {
CARAFE_UNROLL
    for (int dy = 0; dy < RY; ++dy)
CARAFE_UNROLL
        for (int dx = 0; dx < RX; ++dx)
CARAFE_UNROLL
            for (int tap = 0; tap < CARAFE_TAPS; ++tap) acc[dy][dx][tap] = 0.f;
    if (w.interior)
        mask_grads_tile_channels<true>(grad_out, features, t, w, acc, first, end, input_plane, out_w);
    else
        mask_grads_tile_channels<false>(grad_out, features, t, w, acc, first, end, input_plane, out_w);
}

// backward_masks with one thread per tile of 1 x S output pixels (row) and all channels of the group: each feature
// of the window is read once per channel for the S outputs of the row.
template <typename F, typename M>
CARAFE_DEVICE void backward_masks_row(const F* __restrict__ grad_out, const F* __restrict__ features,
                                      M* __restrict__ grad_masks, index_t batch, index_t channels, index_t height,
                                      index_t width, index_t groups) {
    Tile t;
    if (!claim_tile<1, CARAFE_S>(global_thread(), batch, groups, height, width, t)) return;
    const index_t out_w = width * CARAFE_S, input_plane = height * width, per_group = channels / groups;
    const index_t first = t.g * per_group;
    float acc[1][CARAFE_S][CARAFE_TAPS];
    mask_grads_tile(grad_out + t.n * channels * t.plane, features + t.n * channels * input_plane, t,
                    window_at(t.ph, t.pw, height, width), acc, first, first + per_group, input_plane, out_w);
    M* grad = grad_masks + (t.n * groups + t.g) * CARAFE_TAPS * t.plane + t.oh * out_w + t.ow;
CARAFE_UNROLL
    for (int tap = 0; tap < CARAFE_TAPS; ++tap)
CARAFE_UNROLL
        for (int dx = 0; dx < CARAFE_S; ++dx) store(grad + tap * t.plane + dx, acc[0][dx][tap]);  // 0 outside
}

// backward_masks with CARAFE_SLICES threads per output pixel: block b holds output pixels [32 b, 32 b + 32)
// (one per lane, so loads stay coalesced) and CARAFE_SLICES consecutive slices of their group's channels, one per
// warp. Each thread sums its slice; the slices' sums meet in shared memory and are added in slice order.
template <typename F, typename M>
CARAFE_DEVICE void backward_masks_split(const F* __restrict__ grad_out, const F* __restrict__ features,
                                        M* __restrict__ grad_masks, index_t batch, index_t channels, index_t height,
                                        index_t width, index_t groups) {
    __shared__ float partial[CARAFE_SLICES][CARAFE_TAPS][CARAFE_LANES];
    const int lane = threadIdx.x % CARAFE_LANES, slice = threadIdx.x / CARAFE_LANES;
    Tile t;
    // Every thread reaches the barrier, also those past the last pixel (their sums are never stored).
    const bool owns = claim_tile<1, 1>((index_t)blockIdx.x * CARAFE_LANES + lane, batch, groups, height, width, t);
    float acc[1][1][CARAFE_TAPS];
    if (owns) {
        const index_t out_w = width * CARAFE_S, input_plane = height * width, per_group = channels / groups;
        const index_t per_slice = (per_group + CARAFE_SLICES - 1) / CARAFE_SLICES;
        index_t first, end;
        channel_chunk_range(t.g, per_group, slice, per_slice, first, end);
        mask_grads_tile(grad_out + t.n * channels * t.plane, features + t.n * channels * input_plane, t,
                        window_at(t.ph, t.pw, height, width), acc, first, end > first ? end : first, input_plane,
                        out_w);
    }
    for (int tap = 0; tap < CARAFE_TAPS; ++tap) partial[slice][tap][lane] = owns ? acc[0][0][tap] : 0.f;
    __syncthreads();
    if (!owns) return;
    M* grad = grad_masks + (t.n * groups + t.g) * CARAFE_TAPS * t.plane + t.oh * width * CARAFE_S + t.ow;
    for (int tap = slice; tap < CARAFE_TAPS; tap += CARAFE_SLICES) {  // the block's threads share the stores
        float sum = partial[0][tap][lane];
        for (int s = 1; s < CARAFE_SLICES; ++s) sum += partial[s][tap][lane];
        store(grad + tap * t.plane, sum);
    }
}

// Adds, for the channels [first, end), the gradient reaching input pixel (h, w) from every output pixel whose
// window reads it: tap (i, j) of source pixel (h + R - i, w + R - j), whose S x S output pixels start at output
// offset corner - (i * S) * out_w - j * S, corner being that of source pixel (h + R, w + R). mask[i][j][dy][dx]
// holds the mask value of tap (i, j) at each of them; taps whose source pixel lies outside the input are skipped
// (their window row K-1-i or column K-1-j of (h, w) is outside).
template <bool Interior, typename F>
CARAFE_DEVICE void features_grad_channels(const F* grad_out, F* grad_features, const Window& w, int corner,
                                          int out_w, const float (&mask)[CARAFE_K][CARAFE_K][CARAFE_S][CARAFE_S],
                                          index_t first, index_t end, index_t input_plane, index_t plane, index_t at) {
    for (index_t c = first; c < end; ++c) {
        const F* grad = grad_out + c * plane;
        float acc = 0.f;
CARAFE_UNROLL
        for (int i = 0; i < CARAFE_K; ++i)
CARAFE_UNROLL
            for (int j = 0; j < CARAFE_K; ++j) {
                if (!(Interior || inside(w, CARAFE_K - 1 - i, CARAFE_K - 1 - j))) continue;
CARAFE_UNROLL
                for (int dy = 0; dy < CARAFE_S; ++dy) {
                    const F* row = grad + (corner + (dy - i * CARAFE_S) * out_w - j * CARAFE_S);
CARAFE_UNROLL
                    for (int dx = 0; dx < CARAFE_S; ++dx) acc += load(row + dx) * mask[i][j][dy][dx];
                }
            }
        store(grad_features + c * input_plane + at, acc);
    }
}

// backward_features with one thread per (batch, group, input row, input column) over a chunk of the group's
// channels (blockIdx.y picks it): the K*K*S*S mask values that reach the pixel are read once into registers and
// reused by every channel of the chunk, instead of once per channel as gather does.
template <typename F, typename M>
CARAFE_DEVICE void backward_features_gather_channels(const F* __restrict__ grad_out, const M* __restrict__ masks,
                                                     F* __restrict__ grad_features, index_t batch, index_t channels,
                                                     index_t height, index_t width, index_t groups,
                                                     index_t channel_chunk) {
    const index_t index = global_thread();
    const index_t input_plane = height * width, out_w = width * CARAFE_S, plane = input_plane * CARAFE_S * CARAFE_S;
    if (index >= batch * groups * input_plane) return;
    const index_t at = index % input_plane, g = (index / input_plane) % groups, n = index / (input_plane * groups);
    const index_t h = at / width, w = at % width;
    const Window window = window_at(h, w, height, width);
    const int corner = (int)((h + CARAFE_R) * CARAFE_S * out_w + (w + CARAFE_R) * CARAFE_S);

    float mask[CARAFE_K][CARAFE_K][CARAFE_S][CARAFE_S];
    const M* group_masks = masks + (n * groups + g) * CARAFE_TAPS * plane;
CARAFE_UNROLL
    for (int i = 0; i < CARAFE_K; ++i)
CARAFE_UNROLL
        for (int j = 0; j < CARAFE_K; ++j)
CARAFE_UNROLL
            for (int dy = 0; dy < CARAFE_S; ++dy)
CARAFE_UNROLL
                for (int dx = 0; dx < CARAFE_S; ++dx) {
                    const bool reads = inside(window, CARAFE_K - 1 - i, CARAFE_K - 1 - j);
                    const index_t offset = corner + (dy - i * CARAFE_S) * out_w - j * CARAFE_S + dx;
                    mask[i][j][dy][dx] = reads ? load(group_masks + (i * CARAFE_K + j) * plane + offset) : 0.f;
                }

    index_t first, end;
    channel_chunk_range(g, channels / groups, blockIdx.y, channel_chunk, first, end);
    const F* batch_grad = grad_out + n * channels * plane;
    F* batch_features = grad_features + n * channels * input_plane;
    if (window.interior)
        features_grad_channels<true>(batch_grad, batch_features, window, corner, (int)out_w, mask, first, end,
                                     input_plane, plane, at);
    else
        features_grad_channels<false>(batch_grad, batch_features, window, corner, (int)out_w, mask, first, end,
                                      input_plane, plane, at);
}

// ---------------------------------------------------------------------------------------------------------------
// CARAFE++ downsampling (carafe_downsample in carafe_ultra/functional.py): output pixel (oh, ow) of the
// ceil(H/S) x ceil(W/S) output reassembles the K x K window around input pixel (S*oh, S*ow). Masks
// (N, G*K*K, ceil(H/S), ceil(W/S)), output (N, C, ceil(H/S), ceil(W/S)). One design per kernel, built into every
// module: 64-bit offsets, every tap bounds-checked, no atomics.

CARAFE_DEVICE index_t down_size(index_t size) { return (size + CARAFE_S - 1) / CARAFE_S; }

// An output pixel of the downsampling as its thread owns it: column fastest, then the row, group and batch.
struct DownPixel {
    index_t n, g;    // batch and group
    index_t oh, ow;  // the output pixel
    index_t plane;   // out_h * out_w
};

// Fills p for output pixel number `index`; false for the numbers past the last pixel.
CARAFE_DEVICE bool claim_down_pixel(index_t index, index_t batch, index_t groups, index_t height, index_t width,
                                    DownPixel& p) {
    const index_t out_h = down_size(height), out_w = down_size(width);
    p.plane = out_h * out_w;
    if (index >= batch * groups * p.plane) return false;
    p.ow = index % out_w;
    p.oh = index / out_w % out_h;
    p.g = index / p.plane % groups;
    p.n = index / (p.plane * groups);
    return true;
}

// One thread per (batch, group, output row, output column), over a chunk of the group's channels (blockIdx.y picks
// the chunk).
template <typename F, typename M>
CARAFE_DEVICE void down_forward_pixel(const F* __restrict__ features, const M* __restrict__ masks,
                                      F* __restrict__ out, index_t batch, index_t channels, index_t height,
                                      index_t width, index_t groups, index_t channel_chunk) {
    DownPixel p;
    if (!claim_down_pixel(global_thread(), batch, groups, height, width, p)) return;
    const index_t at = p.oh * down_size(width) + p.ow;
    reassemble_pixel(features, masks + (p.n * groups + p.g) * CARAFE_TAPS * p.plane + at, out, p.n, channels, height,
                     width, groups, p.g, p.plane, at, p.oh * CARAFE_S, p.ow * CARAFE_S, channel_chunk);
}

// grad_masks[n, g*K*K + tap, oh, ow] = sum over the group's channels of grad_out * the tap's source pixel; one
// thread per output pixel, all channels of its group.
template <typename F, typename M>
CARAFE_DEVICE void down_backward_masks_pixel(const F* __restrict__ grad_out, const F* __restrict__ features,
                                             M* __restrict__ grad_masks, index_t batch, index_t channels,
                                             index_t height, index_t width, index_t groups) {
    DownPixel p;
    if (!claim_down_pixel(global_thread(), batch, groups, height, width, p)) return;
    const index_t at = p.oh * down_size(width) + p.ow, per_group = channels / groups;
    mask_grads_pixel(grad_out, features, grad_masks + (p.n * groups + p.g) * CARAFE_TAPS * p.plane + at, p.n,
                     channels, height, width, p.plane, at, p.oh * CARAFE_S, p.ow * CARAFE_S, p.g * per_group,
                     (p.g + 1) * per_group);
}

// grad_features[n, c, h, w]: gathered from the output pixels whose window reads (h, w). Output pixel (oh, ow) reads
// it through tap (i, j) when S*oh = h + R - i and S*ow = w + R - j: at most ceil(K/S)^2 of them, one per channel.
template <typename F, typename M>
CARAFE_DEVICE void down_backward_features_gather(const F* __restrict__ grad_out, const M* __restrict__ masks,
                                                 F* __restrict__ grad_features, index_t batch, index_t channels,
                                                 index_t height, index_t width, index_t groups,
                                                 index_t /* channel_chunk: one channel per thread */) {
    const index_t out_h = down_size(height), out_w = down_size(width), plane = out_h * out_w;
    const index_t index = global_thread();
    if (index >= batch * channels * height * width) return;
    const index_t w = index % width, h = (index / width) % height;
    const index_t c = (index / (height * width)) % channels, n = index / (height * width * channels);
    const index_t g = c / (channels / groups);

    const F* grad = grad_out + (n * channels + c) * plane;
    const M* mask = masks + (n * groups + g) * CARAFE_TAPS * plane;
    float acc = 0.f;
    for (int i = 0; i < CARAFE_K; ++i) {
        const index_t y = h + CARAFE_R - i;
        if (y < 0 || y % CARAFE_S != 0 || y / CARAFE_S >= out_h) continue;
        for (int j = 0; j < CARAFE_K; ++j) {
            const index_t x = w + CARAFE_R - j;
            if (x < 0 || x % CARAFE_S != 0 || x / CARAFE_S >= out_w) continue;
            const index_t at = y / CARAFE_S * out_w + x / CARAFE_S;
            acc += load(grad + at) * load(mask + (i * CARAFE_K + j) * plane + at);
        }
    }
    store(grad_features + index, acc);
}

// ---------------------------------------------------------------------------------------------------------------
// The C entry points of this specialisation, one per kernel, each running the variant its -D option names
// (-DCARAFE_FORWARD=row runs forward_tile<1, S>): a module holds only the variants the CUDA path runs.
#if !defined(CARAFE_FORWARD) || !defined(CARAFE_BACKWARD_MASKS) || !defined(CARAFE_BACKWARD_FEATURES)
#error "define CARAFE_FORWARD, CARAFE_BACKWARD_MASKS and CARAFE_BACKWARD_FEATURES (the variants to build)"
#endif
#define CARAFE_FORWARD_pixel forward_pixel
#define CARAFE_FORWARD_pixel_interior forward_tile<1, 1>
#define CARAFE_FORWARD_row forward_tile<1, CARAFE_S>
#define CARAFE_FORWARD_block forward_tile<CARAFE_S, CARAFE_S>
#define CARAFE_BACKWARD_MASKS_pixel backward_masks_pixel
#define CARAFE_BACKWARD_MASKS_row backward_masks_row
#define CARAFE_BACKWARD_MASKS_split backward_masks_split
#define CARAFE_BACKWARD_FEATURES_gather backward_features_gather
#define CARAFE_BACKWARD_FEATURES_gather_channels backward_features_gather_channels
#define CARAFE_CONCAT(a, b) a##b
#define CARAFE_VARIANT(kernel, variant) CARAFE_CONCAT(kernel, variant)

typedef CARAFE_FEATURES feature_t;
typedef CARAFE_MASKS mask_t;

// The forward and backward_features entry points take the channels per chunk last (gather ignores it); the
// backward_masks ones do not chunk.
extern "C" __global__ void carafe_forward(const feature_t* features, const mask_t* masks, feature_t* out,
                                          index_t batch, index_t channels, index_t height, index_t width,
                                          index_t groups, index_t channel_chunk) {
    CARAFE_VARIANT(CARAFE_FORWARD_, CARAFE_FORWARD)(features, masks, out, batch, channels, height, width, groups,
                                                    channel_chunk);
}

extern "C" __global__ void carafe_backward_masks(const feature_t* grad_out, const feature_t* features,
                                                 mask_t* grad_masks, index_t batch, index_t channels,
                                                 index_t height, index_t width, index_t groups) {
    CARAFE_VARIANT(CARAFE_BACKWARD_MASKS_, CARAFE_BACKWARD_MASKS)(grad_out, features, grad_masks, batch, channels,
                                                                  height, width, groups);
}

extern "C" __global__ void carafe_backward_features(const feature_t* grad_out, const mask_t* masks,
                                                    feature_t* grad_features, index_t batch, index_t channels,
                                                    index_t height, index_t width, index_t groups,
                                                    index_t channel_chunk) {
    CARAFE_VARIANT(CARAFE_BACKWARD_FEATURES_, CARAFE_BACKWARD_FEATURES)(grad_out, masks, grad_features, batch,
                                                                        channels, height, width, groups,
                                                                        channel_chunk);
}

// The downsampling entry points, with the same arguments as their upsampling counterparts.
extern "C" __global__ void carafe_down_forward(const feature_t* features, const mask_t* masks, feature_t* out,
                                               index_t batch, index_t channels, index_t height, index_t width,
                                               index_t groups, index_t channel_chunk) {
    down_forward_pixel(features, masks, out, batch, channels, height, width, groups, channel_chunk);
}

extern "C" __global__ void carafe_down_backward_masks(const feature_t* grad_out, const feature_t* features,
                                                      mask_t* grad_masks, index_t batch, index_t channels,
                                                      index_t height, index_t width, index_t groups) {
    down_backward_masks_pixel(grad_out, features, grad_masks, batch, channels, height, width, groups);
}

extern "C" __global__ void carafe_down_backward_features(const feature_t* grad_out, const mask_t* masks,
                                                         feature_t* grad_features, index_t batch, index_t channels,
                                                         index_t height, index_t width, index_t groups,
                                                         index_t channel_chunk) {
    down_backward_features_gather(grad_out, masks, grad_features, batch, channels, height, width, groups,
                                  channel_chunk);
}
