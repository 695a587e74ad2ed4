// Experiment (session 12, compiled for sm_90 here, not yet run on a GPU): a W4A16 decode GEMV on the
// tensor cores, y[m, n] = sum_k x[m, k] * (q[n, k] - z[n, g]) * s[n, g] for M <= 8 rows of bf16 x, with
// the int4 weights in layout.py's fragment order and each row's scale and zero point per group in its
// scale_zero words. probe.py builds it (torch.utils.cpp_extension) and measures it against the Triton
// GEMV (engine/layers/quantization/triton/w4a16_gemv.py).
//
// Each warp owns TILES 16-row tiles of weights (A of mma.sync.m16n8k16) over a range of K; x's rows are
// the 8 columns of B (lane g holds token g's pairs), loaded once for all the tiles. Per 32-bit word, i.e.
// per 16 x 16 tile and lane: four lop3 lift nibble pairs into bf16 pairs 128 + q, four bf16x2 adds take
// off 128 + z exactly (q - z in -15..15), one mma multiplies and sums in float32. A 64-column chunk lies
// inside one group, so its 4 mma go to a temporary that is scaled per row and added to the accumulator.
// K split over gridDim.y: each split stores float32 partials and the last block of a row tile to arrive
// sums them in split order (a counter per block, reset by that block): one launch, the same bits every
// run.
#include <cuda_bf16.h>
#include <stdint.h>

namespace w4a16_mma {

constexpr int WARPS = 4;        // per block
constexpr int GROUP_SIZE = 128;  // of the weights; a multiple of 64: a chunk lies inside one group

__device__ __forceinline__ uint32_t lift(uint32_t w) {
  // nibbles at bits 0 and 16 -> the bf16 pair (128 + q_lo, 128 + q_hi): 0x4300 is bf16 128.0, whose
  // 7-bit mantissa then holds q exactly
  uint32_t r;
  asm("lop3.b32 %0, %1, 0x000F000F, 0x43004300, 0xea;" : "=r"(r) : "r"(w));
  return r;
}

__device__ __forceinline__ uint32_t add_pair(uint32_t a, uint32_t b) {
  // a * 1.0 + b per bf16 lane: (128 + q) - (128 + z) = q - z, exact
  uint32_t r;
  asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(0x3F803F80u), "r"(b));
  return r;
}

__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// acc: this lane's (row0, token 2t), (row0, token 2t + 1), (row0 + 8, token 2t), (row0 + 8, token 2t + 1)
__device__ __forceinline__ void store_rows(const float (&acc)[4], __nv_bfloat16* y, int M, int stride_ym,
                                           int row0, int t) {
#pragma unroll
  for (int r = 0; r < 2; ++r)
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      const int token = 2 * t + c;
      if (token < M) y[(size_t)token * stride_ym + row0 + 8 * r] = __float2bfloat16(acc[2 * r + c]);
    }
}

// w: [N / 16, K / 64, 32] uint4 (layout.py); x: [M, K] bf16, rows stride_xm, 4-byte aligned;
// scale_zero: [N / 16, num_groups, 8] uint2 (layout.py); y: [M, N] bf16; part: [gridDim.y, M, N] float32
// and counters (one per block column, zero) when K is split.
template <int DEPTH, int TILES>
__global__ void __launch_bounds__(WARPS * 32)
    gemv(const uint4* __restrict__ w, const __nv_bfloat16* __restrict__ x, const uint2* __restrict__ scale_zero,
         __nv_bfloat16* __restrict__ y, float* __restrict__ part, int* __restrict__ counters, int M, int N, int K,
         int stride_xm, int stride_ym, int num_groups, int chunks_per_split) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int first_tile = (blockIdx.x * WARPS + (threadIdx.x >> 5)) * TILES;  // this warp's TILES row tiles
  const int k_chunks = K / 64;
  const int j_begin = blockIdx.y * chunks_per_split;
  const int j_end = min(j_begin + chunks_per_split, k_chunks);
  // 32-bit element offsets from the base pointers; lanes of tokens past M read token 0's x: B's column g
  // only reaches D's column g, which is then not stored
  const int x_lane = (g < M ? g : 0) * stride_xm + 2 * t;
  bool tile_ok[TILES];
  int w_lane[TILES], sz_lane[TILES];  // in uint4 / uint2 units
#pragma unroll
  for (int i = 0; i < TILES; ++i) {
    const int tile = first_tile + i;
    tile_ok[i] = tile < N / 16;
    const int read_tile = tile_ok[i] ? tile : 0;  // a tile past N reads tile 0, unused
    w_lane[i] = (read_tile * k_chunks + j_begin) * 32 + lane;
    sz_lane[i] = read_tile * num_groups * 8 + g;
  }
  float acc[TILES][4] = {};
#if __CUDA_ARCH__ >= 900
  // Programmatic dependent launch (engine/layers/triton/pdl.py's contract): x is the previous kernel's
  // output; once past the wait, the next kernel may be scheduled. No-ops in a plain launch.
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;");
#endif
  for (int j0 = j_begin; j0 < j_end; j0 += DEPTH) {
    uint4 words[DEPTH][TILES];
#pragma unroll
    for (int d = 0; d < DEPTH; ++d)
#pragma unroll
      for (int i = 0; i < TILES; ++i)
        if (j0 + d < j_end) words[d][i] = __ldcs(w + w_lane[i] + (j0 - j_begin + d) * 32);  // read once
#pragma unroll
    for (int d = 0; d < DEPTH; ++d) {
      const int j = j0 + d;
      if (j >= j_end) break;
      // B per step: token g's columns (2t, 2t + 1) and (2t + 8, 2t + 9)
      const unsigned int* xs = reinterpret_cast<const unsigned int*>(x + x_lane + j * 64);
      uint32_t b[4][2];
#pragma unroll
      for (int s = 0; s < 4; ++s) {
        b[s][0] = __ldg(xs + 8 * s);
        b[s][1] = __ldg(xs + 8 * s + 4);
      }
      const int group = j / (GROUP_SIZE / 64);
#pragma unroll
      for (int i = 0; i < TILES; ++i) {
        // (scale, -(128 + zero)) of rows g and g + 8 as bf16 (low, high) halves
        const uint2 sz = __ldg(scale_zero + sz_lane[i] + group * 8);
        const float s0 = __uint_as_float(sz.x << 16), s1 = __uint_as_float(sz.y << 16);
        const uint32_t nz0 = __byte_perm(sz.x, 0, 0x3232), nz1 = __byte_perm(sz.y, 0, 0x3232);
        const uint32_t step_words[4] = {words[d][i].x, words[d][i].y, words[d][i].z, words[d][i].w};
        float chunk[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int s = 0; s < 4; ++s) {
          const uint32_t q = step_words[s];
          const uint32_t a[4] = {add_pair(lift(q), nz0), add_pair(lift(q >> 4), nz1), add_pair(lift(q >> 8), nz0),
                                 add_pair(lift(q >> 12), nz1)};
          mma(chunk, a, b[s][0], b[s][1]);
        }
        acc[i][0] += chunk[0] * s0;
        acc[i][1] += chunk[1] * s0;
        acc[i][2] += chunk[2] * s1;
        acc[i][3] += chunk[3] * s1;
      }
    }
  }
  if (gridDim.y == 1) {
#pragma unroll
    for (int i = 0; i < TILES; ++i)
      if (tile_ok[i]) store_rows(acc[i], y, M, stride_ym, (first_tile + i) * 16 + g, t);
    return;
  }
#pragma unroll
  for (int i = 0; i < TILES; ++i) {
    if (!tile_ok[i]) continue;
    const int row0 = (first_tile + i) * 16 + g;
#pragma unroll
    for (int r = 0; r < 2; ++r)
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int token = 2 * t + c;
        if (token < M) part[((size_t)blockIdx.y * M + token) * N + row0 + 8 * r] = acc[i][2 * r + c];
      }
  }
  __threadfence();  // every partial lands before this block counts its arrival
  __syncthreads();
  __shared__ bool last;
  if (threadIdx.x == 0) {
    last = atomicAdd(&counters[blockIdx.x], 1) == (int)gridDim.y - 1;
    if (last) counters[blockIdx.x] = 0;  // for the next launch: every other block has arrived
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
#pragma unroll
  for (int i = 0; i < TILES; ++i) {
    if (!tile_ok[i]) continue;
    const int row0 = (first_tile + i) * 16 + g;
    float total[4] = {0.f, 0.f, 0.f, 0.f};
    for (int split = 0; split < (int)gridDim.y; ++split)  // split order: the same sum every run
#pragma unroll
      for (int r = 0; r < 2; ++r)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const int token = 2 * t + c;
          if (token < M) total[2 * r + c] += __ldcg(&part[((size_t)split * M + token) * N + row0 + 8 * r]);
        }
    store_rows(total, y, M, stride_ym, row0, t);
  }
}

}  // namespace w4a16_mma
