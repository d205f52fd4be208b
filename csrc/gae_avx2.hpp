// GAE for narrow float64 rollouts (N in {4, 8, 12, 16}, contiguous rows) with AVX2
// intrinsics. The portable kernel (gae.hpp) is latency-bound there and GCC widens its
// byte masks to 64-bit lanes through three unpack steps per vector; here one
// vpmovzxbq per four lanes does it. Same operations in the same order as gae.hpp
// (products are commutative), so the answers are equal bit for bit; the tests and
// `python -m ppo_core.verify` compare both against the spec on machines with AVX2.
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(PPO_CORE_NO_CLONES)
#define PPO_CORE_HAVE_AVX2_GAE 1

#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "strided.hpp"

namespace ppo_core {

// True when gae_narrow_f64_avx2 handles this call.
inline bool gae_narrow_f64_applies(std::ptrdiff_t n_n, const View2<double>& r,
                                   const View2<double>& v, const View2<double>& nv,
                                   const View2<std::uint8_t>& tm,
                                   const View2<std::uint8_t>& tr) {
    return n_n > 0 && n_n <= 16 && n_n % 4 == 0 && r.row_contiguous() &&
           v.row_contiguous() && nv.row_contiguous() && tm.row_contiguous() &&
           tr.row_contiguous() && __builtin_cpu_supports("avx2");
}

namespace detail {

// Four bytes (0/1 masks) -> four 64-bit lanes, all ones where the byte is 0.
__attribute__((target("avx2"))) inline __m256d keep_where_zero(std::uint32_t bytes) {
    const __m256i wide = _mm256_cvtepu8_epi64(_mm_cvtsi32_si128(static_cast<int>(bytes)));
    return _mm256_castsi256_pd(_mm256_cmpeq_epi64(wide, _mm256_setzero_si256()));
}

template <int K, bool HasCarry>  // one time step of K vectors of 4 doubles (N = 4K)
__attribute__((target("avx2"), always_inline)) inline void gae_narrow_f64_row(
    const double* r, const double* v, const double* nv, const std::uint8_t* tm,
    const std::uint8_t* tr, __m256d g, __m256d g_l, __m256d* carry, double* adv,
    double* ret) {
    for (int k = 0; k < K; ++k) {
        std::uint32_t tm4, tr4;
        std::memcpy(&tm4, tm + 4 * k, 4);
        std::memcpy(&tr4, tr + 4 * k, 4);
        const __m256d vn = _mm256_loadu_pd(v + 4 * k);
        const __m256d boot =
            _mm256_and_pd(keep_where_zero(tm4), _mm256_mul_pd(g, _mm256_loadu_pd(nv + 4 * k)));
        __m256d a = _mm256_sub_pd(_mm256_add_pd(_mm256_loadu_pd(r + 4 * k), boot), vn);
        if constexpr (HasCarry)
            a = _mm256_add_pd(a, _mm256_and_pd(keep_where_zero(tm4 | tr4),
                                               _mm256_mul_pd(g_l, carry[k])));
        carry[k] = a;
        _mm256_storeu_pd(adv + 4 * k, a);
        _mm256_storeu_pd(ret + 4 * k, _mm256_add_pd(a, vn));
    }
}

template <int K>
__attribute__((target("avx2"))) void gae_narrow_f64(
    std::ptrdiff_t n_t, View2<double> rewards, View2<double> values,
    View2<double> next_values, View2<std::uint8_t> terminated,
    View2<std::uint8_t> truncated, double gamma, double gl, double* advantages,
    double* returns) {
    if (n_t == 0) return;
    const __m256d g = _mm256_set1_pd(gamma);
    const __m256d g_l = _mm256_set1_pd(gl);
    __m256d carry[K];
    for (int k = 0; k < K; ++k) carry[k] = _mm256_setzero_pd();  // unread at t = T-1
    // Walk raw pointers backwards by each array's row stride (in bytes).
    const char *r = rewards.data, *v = values.data, *nv = next_values.data;
    const char *tm = terminated.data, *tr = truncated.data;
    const std::ptrdiff_t sr = rewards.stride_t, sv = values.stride_t,
                         snv = next_values.stride_t, stm = terminated.stride_t,
                         s_tr = truncated.stride_t;
    for (std::ptrdiff_t t = n_t - 1; t >= 0; --t) {
        const auto* rt = reinterpret_cast<const double*>(r + t * sr);
        const auto* vt = reinterpret_cast<const double*>(v + t * sv);
        const auto* nvt = reinterpret_cast<const double*>(nv + t * snv);
        const auto* tmt = reinterpret_cast<const std::uint8_t*>(tm + t * stm);
        const auto* trt = reinterpret_cast<const std::uint8_t*>(tr + t * s_tr);
        if (t == n_t - 1)  // A_T = 0: the rollout's last step has no carry
            gae_narrow_f64_row<K, false>(rt, vt, nvt, tmt, trt, g, g_l, carry,
                                         advantages + t * 4 * K, returns + t * 4 * K);
        else
            gae_narrow_f64_row<K, true>(rt, vt, nvt, tmt, trt, g, g_l, carry,
                                        advantages + t * 4 * K, returns + t * 4 * K);
    }
}

}  // namespace detail

// Precondition: gae_narrow_f64_applies(...) returned true.
inline void gae_narrow_f64_avx2(std::ptrdiff_t n_t, std::ptrdiff_t n_n,
                                const View2<double>& r, const View2<double>& v,
                                const View2<double>& nv, const View2<std::uint8_t>& tm,
                                const View2<std::uint8_t>& tr, double gamma, double lam,
                                double* adv, double* ret) {
    const double gl = gamma * lam;
    switch (n_n / 4) {
        case 1: return detail::gae_narrow_f64<1>(n_t, r, v, nv, tm, tr, gamma, gl, adv, ret);
        case 2: return detail::gae_narrow_f64<2>(n_t, r, v, nv, tm, tr, gamma, gl, adv, ret);
        case 3: return detail::gae_narrow_f64<3>(n_t, r, v, nv, tm, tr, gamma, gl, adv, ret);
        default: return detail::gae_narrow_f64<4>(n_t, r, v, nv, tm, tr, gamma, gl, adv, ret);
    }
}

}  // namespace ppo_core

#endif
