// Runs carafe.cu on the CPU: the few CUDA names the kernels use, and a launcher that walks the launch grid.
//
// The kernels need no barriers, shared memory or atomics, so running each thread of each block to completion,
// one after another, computes what the GPU computes. Build (tests/host_launcher.py does):
//   g++ -O1 -shared -fPIC -DCARAFE_K=5 -DCARAFE_S=2 -DCARAFE_FEATURES=half_bits -DCARAFE_MASKS=float
//       host_shim.cpp -o carafe.so
// and call emulate_<kernel>(grid_x, grid_y, block_x, args...) through ctypes.

struct dim3_t { unsigned int x, y, z; };
static dim3_t blockIdx, blockDim, threadIdx;

#define __global__
#define __restrict__

#include "carafe.cu"

template <typename Kernel, typename... Args>
static void emulate(unsigned int grid_x, unsigned int grid_y, unsigned int block_x, Kernel kernel, Args... args) {
    blockDim = {block_x, 1, 1};
    for (unsigned int by = 0; by < grid_y; ++by)
        for (unsigned int bx = 0; bx < grid_x; ++bx)
            for (unsigned int tx = 0; tx < block_x; ++tx) {
                blockIdx = {bx, by, 0};
                threadIdx = {tx, 0, 0};
                kernel(args...);
            }
}

#define EMULATE(NAME, ...) extern "C" void emulate_##NAME(unsigned int gx, unsigned int gy, unsigned int bx, __VA_ARGS__)

EMULATE(carafe_forward, const feature_t* f, const mask_t* m, feature_t* o, index_t n, index_t c, index_t h,
        index_t w, index_t g, index_t chunk) {
    emulate(gx, gy, bx, carafe_forward, f, m, o, n, c, h, w, g, chunk);
}

EMULATE(carafe_backward_masks, const feature_t* go, const feature_t* f, mask_t* gm, index_t n, index_t c,
        index_t h, index_t w, index_t g) {
    emulate(gx, gy, bx, carafe_backward_masks, go, f, gm, n, c, h, w, g);
}

EMULATE(carafe_backward_features, const feature_t* go, const mask_t* m, feature_t* gf, index_t n, index_t c,
        index_t h, index_t w, index_t g) {
    emulate(gx, gy, bx, carafe_backward_features, go, m, gf, n, c, h, w, g);
}
