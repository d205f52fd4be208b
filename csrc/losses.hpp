// PPO's clipped surrogate objective and clipped value loss, with their analytic
// gradients, over n elements. Header-only, stateless, no Python.
// Inputs are 1-d strided views; grad is a caller-provided contiguous buffer.
//
// Why the loops look the way they do: without -ffast-math (which we forbid: it breaks
// NaN propagation and changes rounding) the compiler neither vectorizes a call to
// std::exp nor reorders a floating-point sum. So the element-wise part runs over blocks
// of kBlock elements in a loop with no floating-point reduction and no call (exp_vec
// below is straight-line code), writing the gradient and each element's terms of the
// sums to a small buffer; then those terms are added into kLanes double accumulators,
// element i into lane i % kLanes, combined in a fixed order at the end. The result does
// not depend on the ISA the loop was compiled for (both target_clones agree bit for
// bit) nor on the input's strides.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "strided.hpp"

// Lambdas that wrap a kernel's loop are force-inlined too, so the loop is compiled for
// the ISA of the target_clones entry point that calls it.
#if defined(__GNUC__) || defined(__clang__)
#define PPO_CORE_LAMBDA_INLINE __attribute__((always_inline))
#else
#define PPO_CORE_LAMBDA_INLINE
#endif

namespace ppo_core {

struct SurrogateStats {
    double loss;
    double clip_fraction;
    double approx_kl;
};

namespace detail {

template <typename To, typename From>
PPO_CORE_INLINE To bit_cast(From x) {
    static_assert(sizeof(To) == sizeof(From), "bit_cast between types of one size");
    To y;
    std::memcpy(&y, &x, sizeof y);
    return y;
}

constexpr double kLog2e = 1.4426950408889634;
// ln 2 = kLn2Hi + kLn2Lo (fdlibm's split): kLn2Hi has its low 21 bits zero, so k * kLn2Hi
// is exact for the |k| <= 1077 used here (Cody and Waite's range reduction).
constexpr double kLn2Hi = 6.93147180369123816490e-01;
constexpr double kLn2Lo = 1.90821492927058770002e-10;
// 1.5 * 2^52: for |x| < 2^51, x + kShifter rounds x to the nearest integer k and leaves
// k's two's complement in the low bits of the result.
constexpr double kShifter = 6755399441055744.0;

// 2^k from t = k + kShifter, -1022 <= k <= 1023: adding the bias to the low bits and
// shifting them into the exponent field builds the double 2^k.
PPO_CORE_INLINE double pow2_from_shifted(double t) {
    return bit_cast<double>((bit_cast<std::uint64_t>(t) + 1023u) << 52);
}

// e^x = 2^k e^r with k = round(x / ln 2), r = x - k ln 2 (|r| <= ln2 / 2 + tiny), e^r by
// its Taylor series to degree kDegree, summed as 1 + (r + r^2 q) so the last rounding is
// the only large one. Truncation relative to e^r: at most |r|^(d+1) / ((d+1)! e^r), worst
// at r = -ln2/2: < 2^-57 for d = 13 (the double exp) and < 2^-31.5 for d = 8 (the float
// exp, whose result is then rounded to float, half an ulp = 2^-24). Returns e^r; k +
// kShifter in t.
template <int kDegree = 13>
PPO_CORE_INLINE double exp_reduced(double x, double& t) {
    static_assert(kDegree == 13 || kDegree == 8, "degrees with a stated error bound");
    t = x * kLog2e + kShifter;
    const double kd = t - kShifter;
    const double r = (x - kd * kLn2Hi) - kd * kLn2Lo;
    double q;
    if constexpr (kDegree == 13) {
        q = 1.0 / 6227020800.0;
        q = q * r + 1.0 / 479001600.0;
        q = q * r + 1.0 / 39916800.0;
        q = q * r + 1.0 / 3628800.0;
        q = q * r + 1.0 / 362880.0;
        q = q * r + 1.0 / 40320.0;
    } else {
        q = 1.0 / 40320.0;
    }
    q = q * r + 1.0 / 5040.0;
    q = q * r + 1.0 / 720.0;
    q = q * r + 1.0 / 120.0;
    q = q * r + 1.0 / 24.0;
    q = q * r + 1.0 / 6.0;
    q = q * r + 0.5;
    return 1.0 + (r + (r * r) * q);
}

// e^x for double, within 1 ulp of the exact value (tests/test_exp.py holds it against
// np.exp); +-0, +-inf, NaN, overflow to inf and subnormal or zero results as std::exp.
// Straight-line code so that a loop calling it vectorizes: the only selects clamp x to
// [kLo, kHi], bounds at which the arithmetic itself gives exactly 0 and inf (no select
// on the result, which the compiler would turn into boolean logic it cannot vectorize).
PPO_CORE_INLINE double exp_vec(double x) {
    // e^710 > DBL_MAX: 2^1024 overflows to inf. e^-746 < 2^-1076: rounds to 0.
    constexpr double kHi = 710.0;
    constexpr double kLo = -746.0;
    const double xc = x < kLo ? kLo : (x > kHi ? kHi : x);  // a NaN stays NaN
    double t;
    const double p = exp_reduced(xc, t);
    // 2^k as 2^k1 * 2^k2 with k1 = round(k / 2): both factors are normal for
    // -1077 <= k <= 1024, and a subnormal result is rounded once, by the last product.
    const double kd = t - kShifter;
    const double t1 = kd * 0.5 + kShifter;
    const double t2 = (kd - (t1 - kShifter)) + kShifter;
    return (p * pow2_from_shifted(t1)) * pow2_from_shifted(t2);
}

// e^x for float, computed in double (degree 8, error < 2^-31.5 before the one rounding to
// float) and rounded once: within 1 ulp (almost always the correctly rounded float, as
// glibc's expf); special values as std::exp.
PPO_CORE_INLINE float exp_vec(float x) {
    // e^89 > FLT_MAX: rounds to inf. e^-104 < 2^-150: rounds to 0.
    constexpr float kHi = 89.0f;
    constexpr float kLo = -104.0f;
    const float xc = x < kLo ? kLo : (x > kHi ? kHi : x);
    double t;
    const double p = exp_reduced<8>(static_cast<double>(xc), t);
    return static_cast<float>(p * pow2_from_shifted(t));  // |k| <= 151: one exact factor
}

constexpr std::ptrdiff_t kBlock = 256;  // elements per block (buffers: 6 KiB on the stack)
constexpr int kLanes = 8;               // double accumulators per sum

// The sums of a loss: kLanes partial sums each, element i added to lane i % kLanes in
// index order.
template <int kSums>
struct LaneSums {
    double lane[kSums][kLanes] = {};

    // Adds terms[s][0..m) of a block that starts at a multiple of kLanes.
    PPO_CORE_INLINE void add(const double (*terms)[kBlock], std::ptrdiff_t m) {
        std::ptrdiff_t k = 0;
        for (; k + kLanes <= m; k += kLanes)
            for (int s = 0; s < kSums; ++s)
                for (int j = 0; j < kLanes; ++j) lane[s][j] += terms[s][k + j];
        for (int j = 0; k < m; ++k, ++j)
            for (int s = 0; s < kSums; ++s) lane[s][j] += terms[s][k];
    }

    PPO_CORE_INLINE double total(int s) const {
        const double* l = lane[s];
        return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
    }
};
static_assert(kBlock % kLanes == 0, "a block starts at lane 0");

// Offsets a view (or a pointer) to element i0.
template <typename T>
PPO_CORE_INLINE const T* advance(const T* p, std::ptrdiff_t i0) { return p + i0; }
template <typename T>
PPO_CORE_INLINE View1<T> advance(View1<T> v, std::ptrdiff_t i0) {
    return {v.data + i0 * v.stride, v.stride};
}

// A per-block counter as wide as T, so the comparison masks need no widening (m <= kBlock).
template <typename T>
using Count = std::conditional_t<sizeof(T) == 4, std::int32_t, std::int64_t>;

// One block of the surrogate: writes g[0..m) and terms {-objective, KL term}; returns
// the number of elements with |ratio - 1| > eps.
template <typename T, typename In>
PPO_CORE_INLINE std::ptrdiff_t surrogate_block(std::ptrdiff_t m, In nlp, In olp, In adv, T clip_coef,
                                               T inv_n, T* g, double (*terms)[kBlock]) {
    const T lo = T(1) - clip_coef;
    const T hi = T(1) + clip_coef;
    // The exponentials first, in a loop of their own: in one loop with the comparisons
    // below, the compiler specializes them for exp_vec's clamped inputs (a ratio known
    // to be 0 or inf) into boolean selects that it then cannot vectorize.
    T ratios[kBlock];
    for (std::ptrdiff_t i = 0; i < m; ++i) ratios[i] = exp_vec(nlp[i] - olp[i]);
    Count<T> c = 0;
    for (std::ptrdiff_t i = 0; i < m; ++i) {
        const T a = adv[i];
        const T log_ratio = nlp[i] - olp[i];
        const T ratio = ratios[i];
        const T unclipped = ratio * a;
        const T r_c = ratio < lo ? lo : (ratio > hi ? hi : ratio);
        const T clipped_obj = r_c * a;
        // min() that returns NaN when either side is NaN (clipped_obj is NaN only when
        // unclipped is: a NaN ratio or advantage; r_c is finite otherwise).
        const T obj = clipped_obj < unclipped ? clipped_obj : unclipped;
        const bool active = ((a > T(0)) & (ratio > hi)) | ((a < T(0)) & (ratio < lo));
        g[i] = active ? T(0) : -a * ratio * inv_n;
        terms[0][i] = -static_cast<double>(obj);
        terms[1][i] = static_cast<double>((ratio - T(1)) - log_ratio);
        c += std::fabs(ratio - T(1)) > clip_coef;
    }
    return c;
}

// One element of the clipped value loss by the spec's rule, NaN included: v_c is NaN
// where d = v - old is (old + clip(NaN) is NaN), and max(sq, sq_c) propagates a NaN
// (neither comparison holds exactly when one is NaN; then sq + sq_c and err + err_c
// are NaN, as x * x is NaN only for a NaN x). A NaN element is not counted as clipped.
template <typename T>
PPO_CORE_INLINE bool value_element(T v, T old, T r, T clip_coef, T inv_n, T& g, double& term) {
    const T d = v - old;
    const T v_c = d < -clip_coef ? old - clip_coef
                : (d > clip_coef ? old + clip_coef : (d == d ? v : d));
    const T err = v - r;
    const T err_c = v_c - r;
    const T sq = err * err;
    const T sq_c = err_c * err_c;
    const bool take_c = sq_c > sq;
    const bool take_u = sq >= sq_c;
    term = 0.5 * static_cast<double>(take_c ? sq_c : (take_u ? sq : sq + sq_c));
    g = take_c ? (std::fabs(d) < clip_coef ? err_c * inv_n : T(0))
               : (take_u ? err * inv_n : (err + err_c) * inv_n);
    return take_c;
}

// One block of the value loss: writes g[0..m) and terms {half squared error}; returns
// the number of elements where the clipped term is larger.
template <typename T, typename In>
PPO_CORE_INLINE std::ptrdiff_t value_block(std::ptrdiff_t m, In val, In oldv, In ret, bool clip,
                                           T clip_coef, T inv_n, T* g, double (*terms)[kBlock]) {
    Count<T> c = 0;
    if (!clip) {
        for (std::ptrdiff_t i = 0; i < m; ++i) {
            const T err = val[i] - ret[i];
            terms[0][i] = 0.5 * static_cast<double>(err * err);
            g[i] = err * inv_n;
        }
        return 0;
    }
    // The vectorized loop below is value_element with two selects fewer: for a finite
    // old value they agree exactly (d is NaN only for a NaN v, whose sq is NaN too, and
    // v_c is finite or v, so sq_c is NaN only when sq is). Where an old value is inf or
    // NaN the block is redone element by element.
    Count<T> nonfinite_old = 0;
    constexpr T kMax = std::numeric_limits<T>::max();
    for (std::ptrdiff_t i = 0; i < m; ++i) {
        const T v = val[i];
        const T old = oldv[i];
        const T d = v - old;
        // v_c is v itself inside the clip range (not old + (v - old), which can round
        // away from v and make a tie look like a clipped element).
        const T v_c = d < -clip_coef ? old - clip_coef : (d > clip_coef ? old + clip_coef : v);
        const T err = v - ret[i];
        const T err_c = v_c - ret[i];
        const T sq = err * err;
        const T sq_c = err_c * err_c;
        // The unclipped term also when either is NaN: with a finite old value that is
        // sq, so the NaN reaches the loss.
        const bool take_c = sq_c > sq;
        c += take_c;
        terms[0][i] = 0.5 * static_cast<double>(take_c ? sq_c : sq);
        g[i] = take_c ? (std::fabs(d) < clip_coef ? err_c * inv_n : T(0)) : err * inv_n;
        nonfinite_old |= !(std::fabs(old) <= kMax);
    }
    if (nonfinite_old) {
        c = 0;
        for (std::ptrdiff_t i = 0; i < m; ++i)
            c += value_element(val[i], oldv[i], ret[i], clip_coef, inv_n, g[i], terms[0][i]);
    }
    return c;
}

// Runs block(m, a, b, c, g, terms) over [0, n) in blocks of kBlock, on raw pointers when
// all three views are contiguous, and adds each block's terms into sums; returns the
// blocks' counts summed.
template <typename T, int kSums, typename Block>
PPO_CORE_INLINE std::ptrdiff_t for_blocks(std::ptrdiff_t n, View1<T> a, View1<T> b, View1<T> c, T* grad,
                                          LaneSums<kSums>& sums, Block block) {
    double terms[kSums][kBlock];
    std::ptrdiff_t count = 0;
    const bool contiguous = a.contiguous() && b.contiguous() && c.contiguous();
    for (std::ptrdiff_t i0 = 0; i0 < n; i0 += kBlock) {
        const std::ptrdiff_t m = n - i0 < kBlock ? n - i0 : kBlock;
        if (contiguous)
            count += block(m, advance(&a[0], i0), advance(&b[0], i0), advance(&c[0], i0), grad + i0, terms);
        else
            count += block(m, advance(a, i0), advance(b, i0), advance(c, i0), grad + i0, terms);
        sums.add(terms, m);
    }
    return count;
}

}  // namespace detail

// ratio = exp(new - old)
// loss  = -mean(min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A))
// grad  = 0 where (A > 0 and ratio > 1 + eps) or (A < 0 and ratio < 1 - eps),
//         else -A * ratio / n  (strict inequalities: at ratio == 1 +- eps the
//         unclipped gradient, as autograd of min(ratio*A, clamp(ratio)*A) gives)
// clip_fraction = mean(|ratio - 1| > eps); approx_kl = mean((ratio - 1) - log ratio)
//
// Sums are accumulated in double so a float32 loss over 10^6 elements keeps its
// precision. NaN anywhere propagates to the loss (the comparisons are written so that
// a NaN ratio or advantage never selects a finite branch silently).
template <typename T>
PPO_CORE_INLINE SurrogateStats clipped_surrogate(std::ptrdiff_t n, View1<T> new_log_prob,
                                 View1<T> old_log_prob, View1<T> advantages, T clip_coef,
                                 T* grad) {
    const T inv_n = T(1) / T(n);
    detail::LaneSums<2> sums;  // -objective, KL term
    const std::ptrdiff_t clipped = detail::for_blocks(
        n, new_log_prob, old_log_prob, advantages, grad, sums,
        [&](std::ptrdiff_t m, auto nlp, auto olp, auto adv, T* g,
            double (*terms)[detail::kBlock]) PPO_CORE_LAMBDA_INLINE {
            return detail::surrogate_block(m, nlp, olp, adv, clip_coef, inv_n, g, terms);
        });
    const double dn = static_cast<double>(n);
    return {sums.total(0) / dn, static_cast<double>(clipped) / dn, sums.total(1) / dn};
}

struct ValueLossStats {
    double loss;
    double clip_fraction;
};

// clip = false (clip_coef None in the facade): no clipping, old_values is not read:
//   loss = 0.5 * mean((v - R)^2),  grad = (v - R) / n
// clip = true, with v_c = old + clip(v - old, -eps, eps):
//   loss = 0.5 * mean(max((v - R)^2, (v_c - R)^2))
//   grad = (v - R) / n    where (v - R)^2 >= (v_c - R)^2   (ties: the unclipped rule)
//        = (v_c - R) / n  where the clipped term is larger and |v - old| < eps
//        = 0              elsewhere
//   clip_fraction = mean((v_c - R)^2 > (v - R)^2)
// eps is the caller's clip_coef rounded to T, which may be 0 (float32 flushes 1e-50 to
// 0): that is still clipping, to v_c = old, as old +- 1e-50 is in double. No value of
// eps means "no clipping"; only clip = false does.
// NaN (the spec's rule): v_c is NaN where v - old is, max() propagates a NaN squared
// error, so an element with a NaN input (or inf - inf) has a NaN term and gradient and
// is not counted as clipped. Without clipping old_values is not read.
template <typename T>
PPO_CORE_INLINE ValueLossStats clipped_value_loss(std::ptrdiff_t n, View1<T> values, View1<T> old_values,
                                  View1<T> returns, bool clip, T clip_coef, T* grad) {
    const T inv_n = T(1) / T(n);
    detail::LaneSums<1> sums;
    const std::ptrdiff_t clipped = detail::for_blocks(
        n, values, old_values, returns, grad, sums,
        [&](std::ptrdiff_t m, auto v, auto old, auto ret, T* g,
            double (*terms)[detail::kBlock]) PPO_CORE_LAMBDA_INLINE {
            return detail::value_block(m, v, old, ret, clip, clip_coef, inv_n, g, terms);
        });
    const double dn = static_cast<double>(n);
    return {sums.total(0) / dn, static_cast<double>(clipped) / dn};
}

}  // namespace ppo_core
