// CARAFE forward and backward kernels (mmcv semantics; see carafe_ultra/functional.py).
//
// One source, two compilers: NVRTC builds it for GPUs (carafe_ultra/backends/cupy_launcher.py), and
// host_shim.cpp builds the very same text with g++ so CI can run every kernel on a CPU. That is why the
// kernels use no shared memory, no barriers and no atomics (which also makes them deterministic), and reach
// CUDA only through the few names the shim provides: blockIdx, blockDim, threadIdx and __global__.
//
// Compile-time constants (-D): CARAFE_K (odd kernel size), CARAFE_S (scale factor), and the storage types
// CARAFE_FEATURES (of features, output and their gradients) and CARAFE_MASKS (of masks and their gradient),
// each one of float, half_bits, bf16_bits: under autocast float16 features meet float32 masks, and neither is
// converted. Layout: contiguous NCHW features (N, C, H, W), masks (N, G*K*K, H*S, W*S), output
// (N, C, H*S, W*S). All indexing is 64-bit. Accumulation is in float32 for every storage type.

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

typedef long long index_t;

// Storage types: 16-bit floats travel as their bits, converted to float on load and back on store.
struct half_bits { unsigned short bits; };
struct bf16_bits { unsigned short bits; };

#if defined(__CUDACC_RTC__) || defined(__CUDACC__)
#define CARAFE_DEVICE __device__ __forceinline__
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

// The output pixel a thread of the per-output-pixel kernels owns (ow fastest), as those kernels index it.
struct OutputPixel {
    index_t n, g;    // batch and group
    index_t ph, pw;  // its source pixel (oh / S, ow / S)
    index_t at;      // oh * out_w + ow: its offset within one output plane
    index_t plane;   // out_h * out_w
};

// Fills p for this thread; false for the threads past the last output pixel.
CARAFE_DEVICE bool claim_output_pixel(index_t batch, index_t groups, index_t height, index_t width, OutputPixel& p) {
    const index_t out_h = height * CARAFE_S, out_w = width * CARAFE_S;
    const index_t index = global_thread();
    p.plane = out_h * out_w;
    if (index >= batch * groups * p.plane) return false;
    const index_t ow = index % out_w, oh = (index / out_w) % out_h;
    p.g = (index / p.plane) % groups;
    p.n = index / (p.plane * groups);
    p.ph = oh / CARAFE_S;
    p.pw = ow / CARAFE_S;
    p.at = oh * out_w + ow;
    return true;
}

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

// One thread per (batch, group, output row, output column), over a chunk of the group's channels
// (blockIdx.y picks the chunk): the K*K mask values are read once into registers and reused by every
// channel; adjacent threads write adjacent output columns.
template <typename F, typename M>
CARAFE_DEVICE void forward(const F* __restrict__ features, const M* __restrict__ masks, F* __restrict__ out,
                           index_t batch, index_t channels, index_t height, index_t width, index_t groups,
                           index_t channel_chunk) {
    OutputPixel p;
    if (!claim_output_pixel(batch, groups, height, width, p)) return;

    float weight[CARAFE_TAPS];
    const M* mask = masks + (p.n * groups + p.g) * CARAFE_TAPS * p.plane + p.at;
    for (int tap = 0; tap < CARAFE_TAPS; ++tap) weight[tap] = load(mask + tap * p.plane);

    const index_t per_group = channels / groups;
    const index_t first = p.g * per_group + (index_t)blockIdx.y * channel_chunk;
    const index_t end = first + channel_chunk < (p.g + 1) * per_group ? first + channel_chunk : (p.g + 1) * per_group;
    for (index_t c = first; c < end; ++c) {
        const F* source = features + (p.n * channels + c) * height * width;
        float acc = 0.f;
        for_each_inside_tap(p.ph, p.pw, height, width, [&](int tap, index_t at) { acc += load(source + at) * weight[tap]; });
        store(out + (p.n * channels + c) * p.plane + p.at, acc);
    }
}

// grad_masks[n, g*K*K + tap, oh, ow] = sum over the group's channels of grad_out * the tap's source pixel.
// Same mapping as forward, all channels of the group per thread: a plain sum, no atomics.
template <typename F, typename M>
CARAFE_DEVICE void backward_masks(const F* __restrict__ grad_out, const F* __restrict__ features,
                                  M* __restrict__ grad_masks, index_t batch, index_t channels, index_t height,
                                  index_t width, index_t groups) {
    OutputPixel p;
    if (!claim_output_pixel(batch, groups, height, width, p)) return;

    float acc[CARAFE_TAPS];
    for (int tap = 0; tap < CARAFE_TAPS; ++tap) acc[tap] = 0.f;
    const index_t per_group = channels / groups;
    for (index_t c = p.g * per_group; c < (p.g + 1) * per_group; ++c) {
        const float go = load(grad_out + (p.n * channels + c) * p.plane + p.at);
        const F* source = features + (p.n * channels + c) * height * width;
        for_each_inside_tap(p.ph, p.pw, height, width, [&](int tap, index_t at) { acc[tap] += go * load(source + at); });
    }
    M* grad = grad_masks + (p.n * groups + p.g) * CARAFE_TAPS * p.plane + p.at;
    for (int tap = 0; tap < CARAFE_TAPS; ++tap) store(grad + tap * p.plane, acc[tap]);  // 0 for taps outside
}

// grad_features[n, c, h, w]: gathered from every output pixel whose window reads (h, w). Output pixels
// (oh, ow) with source (ph, pw) = (h - i + R, w - j + R) read it through tap (i, j), for all S*S of them.
template <typename F, typename M>
CARAFE_DEVICE void backward_features(const F* __restrict__ grad_out, const M* __restrict__ masks,
                                     F* __restrict__ grad_features, index_t batch, index_t channels,
                                     index_t height, index_t width, index_t groups) {
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

// The C entry points of this specialisation.
typedef CARAFE_FEATURES feature_t;
typedef CARAFE_MASKS mask_t;

extern "C" __global__ void carafe_forward(const feature_t* features, const mask_t* masks, feature_t* out,
                                          index_t batch, index_t channels, index_t height, index_t width,
                                          index_t groups, index_t channel_chunk) {
    forward(features, masks, out, batch, channels, height, width, groups, channel_chunk);
}

extern "C" __global__ void carafe_backward_masks(const feature_t* grad_out, const feature_t* features,
                                                 mask_t* grad_masks, index_t batch, index_t channels,
                                                 index_t height, index_t width, index_t groups) {
    backward_masks(grad_out, features, grad_masks, batch, channels, height, width, groups);
}

extern "C" __global__ void carafe_backward_features(const feature_t* grad_out, const mask_t* masks,
                                                    feature_t* grad_features, index_t batch, index_t channels,
                                                    index_t height, index_t width, index_t groups) {
    backward_features(grad_out, masks, grad_features, batch, channels, height, width, groups);
}
