// Is GAE at (T, N) = (2048, 16) float64 limited by its recursion or by memory traffic?
//
// Times, in one process on the same buffers:
//   kernel     ppo_core's GAE as the Python API runs it (dispatch::gae_any<double>);
//   no_carry   the same loads, masks, arithmetic and stores with the carry
//              gamma*lam*A_{t+1} dropped, so no step waits for the previous one;
//   memcpy     copying two of the input arrays into the two outputs (1 MiB moved).
// If kernel ~= no_carry, the recursion costs nothing and the time is the memory traffic:
// 3 value arrays + 2 masks read, 2 outputs written (~1.3 MiB, plus the outputs' cache
// line reads). Two placements of the inputs: 64-byte aligned (as PyTorch allocates) and
// 16 bytes past a 64-byte boundary (as NumPy's large arrays start, malloc's mmap
// header), where every other 32-byte load straddles two cache lines. The outputs are
// aligned in both, as the binding allocates them.
//
// Build and run from the repository root (x86-64 with AVX2):
//   g++ -O3 -std=c++17 -ffp-contract=off -Icsrc benchmarks/gae_floor.cpp -o /tmp/gae_floor
//   /tmp/gae_floor [T N]
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "dispatch.hpp"

using ppo_core::View2;

namespace {

// One time step of the no-carry variant for a row of n doubles (n % 4 == 0).
__attribute__((target("avx2"))) void no_carry(long n_t, long n, const double* r, const double* v,
                                              const double* nv, const std::uint8_t* tm,
                                              const std::uint8_t* tr, double gamma, double* adv,
                                              double* ret) {
    const __m256d g = _mm256_set1_pd(gamma);
    for (long t = n_t - 1; t >= 0; --t) {
        for (long j = 0; j < n; j += 4) {
            const long i = t * n + j;
            std::uint32_t m4, d4;
            std::memcpy(&m4, tm + i, 4);
            std::memcpy(&d4, tr + i, 4);
            const __m256i mt = _mm256_cvtepu8_epi64(_mm_cvtsi32_si128(static_cast<int>(m4)));
            const __m256i md = _mm256_cvtepu8_epi64(_mm_cvtsi32_si128(static_cast<int>(m4 | d4)));
            const __m256d keep_t = _mm256_castsi256_pd(_mm256_cmpeq_epi64(mt, _mm256_setzero_si256()));
            const __m256d keep_d = _mm256_castsi256_pd(_mm256_cmpeq_epi64(md, _mm256_setzero_si256()));
            const __m256d vn = _mm256_loadu_pd(v + i);
            const __m256d boot = _mm256_and_pd(keep_t, _mm256_mul_pd(g, _mm256_loadu_pd(nv + i)));
            __m256d a = _mm256_sub_pd(_mm256_add_pd(_mm256_loadu_pd(r + i), boot), vn);
            a = _mm256_and_pd(keep_d, a);  // stands in for the masked carry, without reading it
            _mm256_storeu_pd(adv + i, a);
            _mm256_storeu_pd(ret + i, _mm256_add_pd(a, vn));
        }
    }
}

template <typename F>
double best_us(F f, int calls = 200, int repeats = 25) {
    double best = 1e30;
    for (int k = 0; k < repeats; ++k) {
        const auto t0 = std::chrono::steady_clock::now();
        for (int c = 0; c < calls; ++c) f();
        const auto t1 = std::chrono::steady_clock::now();
        best = std::min(best, std::chrono::duration<double, std::micro>(t1 - t0).count() / calls);
    }
    return best;
}

}  // namespace

int main(int argc, char** argv) {
    const long T = argc > 2 ? std::atol(argv[1]) : 2048, N = argc > 2 ? std::atol(argv[2]) : 16;
    if (T <= 0 || N <= 0 || N % 4 != 0) {
        std::fprintf(stderr, "usage: gae_floor [T N], N a multiple of 4\n");
        return 2;
    }
    const long n = T * N;
    const long bytes = n * static_cast<long>(sizeof(double));
    std::printf("GAE float64 (T, N) = (%ld, %ld): %.2f MiB read + written per call\n", T, N,
                (5.0 * bytes + 2.0 * n) / (1 << 20));
    for (const long in_offset : {0L, 16L}) {
        // Each array in its own page-aligned region, inputs shifted by in_offset bytes.
        std::vector<std::vector<char>> store;
        auto region = [&](long offset) {
            store.emplace_back(bytes + 2 * 4096);
            const auto u = reinterpret_cast<std::uintptr_t>(store.back().data());
            return reinterpret_cast<char*>(((u + 4095) & ~std::uintptr_t(4095)) + offset);
        };
        auto* r = reinterpret_cast<double*>(region(in_offset));
        auto* v = reinterpret_cast<double*>(region(in_offset));
        auto* nv = reinterpret_cast<double*>(region(in_offset));
        auto* tm = reinterpret_cast<std::uint8_t*>(region(in_offset));
        auto* tr = reinterpret_cast<std::uint8_t*>(region(in_offset));
        auto* adv = reinterpret_cast<double*>(region(0));
        auto* ret = reinterpret_cast<double*>(region(0));
        std::mt19937_64 rng(0);
        std::normal_distribution<double> normal;
        std::bernoulli_distribution ends(0.01);
        for (long i = 0; i < n; ++i) {
            r[i] = normal(rng), v[i] = normal(rng), nv[i] = normal(rng);
            tm[i] = ends(rng), tr[i] = ends(rng);
        }
        const long row = N * static_cast<long>(sizeof(double));
        const View2<double> R{reinterpret_cast<const char*>(r), row, sizeof(double)};
        const View2<double> V{reinterpret_cast<const char*>(v), row, sizeof(double)};
        const View2<double> NV{reinterpret_cast<const char*>(nv), row, sizeof(double)};
        const View2<std::uint8_t> TM{reinterpret_cast<const char*>(tm), N, 1};
        const View2<std::uint8_t> TR{reinterpret_cast<const char*>(tr), N, 1};
        const double kernel = best_us([&] {
            ppo_core::dispatch::gae_any<double>(T, N, R, V, NV, TM, TR, 0.99, 0.95, adv, ret);
        });
        const double loose = best_us([&] { no_carry(T, N, r, v, nv, tm, tr, 0.99, adv, ret); });
        const double copy = best_us([&] {
            std::memcpy(adv, r, bytes);
            std::memcpy(ret, v, bytes);
            asm volatile("" ::: "memory");
        });
        std::printf("inputs %s:\n", in_offset ? "16 bytes past a cache line (NumPy)" : "64-byte aligned");
        std::printf("  kernel    %8.2f us\n  no_carry  %8.2f us  (kernel / no_carry = %.2f)\n", kernel,
                    loose, kernel / loose);
        std::printf("  memcpy    %8.2f us  for 2 x %.2f MiB (%.1f GB/s read + written)\n", copy,
                    bytes / double(1 << 20), 4.0 * bytes / copy / 1e3);
    }
    return 0;
}
