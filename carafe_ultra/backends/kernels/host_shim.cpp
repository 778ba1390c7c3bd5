// Runs carafe.cu on the CPU: the few CUDA names the kernels use, and a launcher that walks the launch grid.
//
// The threads of a block run as coroutines (ucontext), each on a stack of its own: one runs until it reaches
// __syncthreads() or ends, then the next; once every thread of the block waits at the barrier, each resumes in turn.
// So the phases between barriers run in the order the GPU guarantees, shared memory (a static array here) is shared
// by the block, and a kernel without barriers simply runs thread after thread. A block whose threads do not all
// reach the same barriers (undefined on a GPU) is reported instead of run on. Build (carafe_ultra/experiments/
// host_shim.py does):
//   g++ -O1 -std=c++17 -shared -fPIC -DCARAFE_K=5 -DCARAFE_S=2 -DCARAFE_FEATURES=half_bits -DCARAFE_MASKS=float
//       -DCARAFE_FORWARD=pixel -DCARAFE_BACKWARD_MASKS=pixel -DCARAFE_BACKWARD_FEATURES=gather host_shim.cpp -o carafe.so
// and call emulate_carafe_<kernel>(grid_x, grid_y, block_x, first_block_x, args...) through ctypes: it
// runs the blocks first_block_x <= blockIdx.x < grid_x (all of them from 0; a later start emulates the tail of a
// launch too large to run whole) and returns 0, or 1 if a block's threads diverged at a barrier.

#include <ucontext.h>

#include <functional>
#include <vector>

struct dim3_t { unsigned int x, y, z; };
static dim3_t blockIdx, blockDim, threadIdx;

#define __global__
#define __restrict__
#define __shared__ static  // one array for the block being run (blocks run one after another)

static void __syncthreads();

#include "carafe.cu"

namespace {

constexpr size_t kStackBytes = 256 * 1024;  // register arrays of the largest specialisations live on these stacks

struct Thread {
    ucontext_t context;
    std::vector<char> stack = std::vector<char>(kStackBytes);
    bool done = false;
    unsigned barriers = 0;  // barriers reached so far
};

ucontext_t scheduler;
std::vector<Thread> threads;
unsigned current;
const std::function<void()>* kernel_call;

void thread_main() {
    (*kernel_call)();
    threads[current].done = true;  // then uc_link returns to the scheduler
}

// Runs one block; false if its threads did not all reach the same barriers.
bool run_block(unsigned block_x) {
    if (threads.size() < block_x) threads.resize(block_x);
    for (unsigned t = 0; t < block_x; ++t) {
        Thread& thread = threads[t];
        getcontext(&thread.context);
        thread.context.uc_stack.ss_sp = thread.stack.data();
        thread.context.uc_stack.ss_size = thread.stack.size();
        thread.context.uc_link = &scheduler;
        makecontext(&thread.context, thread_main, 0);
        thread.done = false;
        thread.barriers = 0;
    }
    for (unsigned phase = 0;; ++phase) {
        for (unsigned t = 0; t < block_x; ++t) {
            if (threads[t].done) continue;
            threadIdx = {t, 0, 0};
            current = t;
            swapcontext(&scheduler, &threads[t].context);
        }
        unsigned finished = 0;
        for (unsigned t = 0; t < block_x; ++t) {
            finished += threads[t].done;
            if (!threads[t].done && threads[t].barriers != phase + 1) return false;
        }
        if (finished == block_x) return true;
        if (finished) return false;  // some ended while others wait at a barrier
    }
}

int emulate(unsigned grid_x, unsigned grid_y, unsigned block_x, unsigned first_x, const std::function<void()>& call) {
    kernel_call = &call;
    blockDim = {block_x, 1, 1};
    for (unsigned by = 0; by < grid_y; ++by)
        for (unsigned bx = first_x; bx < grid_x; ++bx) {
            blockIdx = {bx, by, 0};
            if (!run_block(block_x)) return 1;
        }
    return 0;
}

}  // namespace

static void __syncthreads() {
    Thread& thread = threads[current];
    ++thread.barriers;
    swapcontext(&thread.context, &scheduler);
}

// emulate_<entry point>(grid_x, grid_y, block_x, first_block_x, the entry point's own arguments)
extern "C" int emulate_carafe_forward(unsigned gx, unsigned gy, unsigned bx, unsigned first, const feature_t* f,
                                      const mask_t* m, feature_t* out, index_t n, index_t c, index_t h, index_t w,
                                      index_t g, index_t chunk) {
    return emulate(gx, gy, bx, first, [&] { carafe_forward(f, m, out, n, c, h, w, g, chunk); });
}

extern "C" int emulate_carafe_backward_masks(unsigned gx, unsigned gy, unsigned bx, unsigned first,
                                             const feature_t* go, const feature_t* f, mask_t* gm, index_t n,
                                             index_t c, index_t h, index_t w, index_t g) {
    return emulate(gx, gy, bx, first, [&] { carafe_backward_masks(go, f, gm, n, c, h, w, g); });
}

extern "C" int emulate_carafe_backward_features(unsigned gx, unsigned gy, unsigned bx, unsigned first,
                                                const feature_t* go, const mask_t* m, feature_t* gf, index_t n,
                                                index_t c, index_t h, index_t w, index_t g, index_t chunk) {
    return emulate(gx, gy, bx, first, [&] { carafe_backward_features(go, m, gf, n, c, h, w, g, chunk); });
}

extern "C" int emulate_carafe_down_forward(unsigned gx, unsigned gy, unsigned bx, unsigned first, const feature_t* f,
                                           const mask_t* m, feature_t* out, index_t n, index_t c, index_t h,
                                           index_t w, index_t g, index_t chunk) {
    return emulate(gx, gy, bx, first, [&] { carafe_down_forward(f, m, out, n, c, h, w, g, chunk); });
}

extern "C" int emulate_carafe_down_backward_masks(unsigned gx, unsigned gy, unsigned bx, unsigned first,
                                                  const feature_t* go, const feature_t* f, mask_t* gm, index_t n,
                                                  index_t c, index_t h, index_t w, index_t g) {
    return emulate(gx, gy, bx, first, [&] { carafe_down_backward_masks(go, f, gm, n, c, h, w, g); });
}

extern "C" int emulate_carafe_down_backward_features(unsigned gx, unsigned gy, unsigned bx, unsigned first,
                                                     const feature_t* go, const mask_t* m, feature_t* gf, index_t n,
                                                     index_t c, index_t h, index_t w, index_t g, index_t chunk) {
    return emulate(gx, gy, bx, first, [&] { carafe_down_backward_features(go, m, gf, n, c, h, w, g, chunk); });
}

#ifdef CARAFE_SHIM_SELF_TEST
// Kernels that test the shim itself (tests/test_cuda_kernels_on_cpu.py builds them in): one reads, after a barrier,
// what its neighbour wrote before it; in the other, half the threads end without reaching the barrier.
extern "C" __global__ void self_test_neighbours(long long* out) {
    __shared__ long long written[1024];
    written[threadIdx.x] = blockIdx.x * 1000 + threadIdx.x;
    __syncthreads();
    out[blockIdx.x * blockDim.x + threadIdx.x] = written[(threadIdx.x + 1) % blockDim.x];
}

extern "C" __global__ void self_test_divergent(long long* out) {
    if (threadIdx.x % 2) return;
    __syncthreads();
    out[threadIdx.x] = 1;
}

extern "C" int emulate_self_test_neighbours(unsigned gx, unsigned gy, unsigned bx, unsigned first, long long* out) {
    return emulate(gx, gy, bx, first, [&] { self_test_neighbours(out); });
}

extern "C" int emulate_self_test_divergent(unsigned gx, unsigned gy, unsigned bx, unsigned first, long long* out) {
    return emulate(gx, gy, bx, first, [&] { self_test_divergent(out); });
}
#endif
