// PPO's clipped surrogate objective and clipped value loss, with their analytic
// gradients, in one fused pass over n elements. Header-only, stateless, no Python.
// Inputs are 1-d strided views; grad is a caller-provided contiguous buffer.
#pragma once

#include <cmath>
#include <cstddef>

#include "strided.hpp"

namespace ppo_core {

struct SurrogateStats {
    double loss;
    double clip_fraction;
    double approx_kl;
};

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
    const T lo = T(1) - clip_coef;
    const T hi = T(1) + clip_coef;
    const T inv_n = T(1) / T(n);
    double loss = 0.0, kl = 0.0;
    std::ptrdiff_t clipped = 0;
    auto body = [&](T nlp, T olp, T a, T& g) {
        const T log_ratio = nlp - olp;
        const T ratio = std::exp(log_ratio);
        const T unclipped = ratio * a;
        const T r_c = ratio < lo ? lo : (ratio > hi ? hi : ratio);
        const T clipped_obj = r_c * a;
        // min() that returns NaN when either side is NaN.
        const T obj = clipped_obj < unclipped ? clipped_obj : unclipped;
        const bool active = (a > T(0) && ratio > hi) || (a < T(0) && ratio < lo);
        g = active ? T(0) : -a * ratio * inv_n;
        loss -= static_cast<double>(obj);
        kl += static_cast<double>((ratio - T(1)) - log_ratio);
        clipped += std::fabs(ratio - T(1)) > clip_coef;
    };
    if (new_log_prob.contiguous() && old_log_prob.contiguous() && advantages.contiguous()) {
        const T* nlp = &new_log_prob[0];
        const T* olp = &old_log_prob[0];
        const T* adv = &advantages[0];
        for (std::ptrdiff_t i = 0; i < n; ++i) body(nlp[i], olp[i], adv[i], grad[i]);
    } else {
        for (std::ptrdiff_t i = 0; i < n; ++i)
            body(new_log_prob[i], old_log_prob[i], advantages[i], grad[i]);
    }
    const double dn = static_cast<double>(n);
    return {loss / dn, static_cast<double>(clipped) / dn, kl / dn};
}

struct ValueLossStats {
    double loss;
    double clip_fraction;
};

// clip_coef <= 0 means "no clipping" here (the facade maps None to it):
//   loss = 0.5 * mean((v - R)^2),  grad = (v - R) / n
// otherwise, with v_c = old + clip(v - old, -eps, eps):
//   loss = 0.5 * mean(max((v - R)^2, (v_c - R)^2))
//   grad = (v - R) / n    where (v - R)^2 >= (v_c - R)^2   (ties: the unclipped rule)
//        = (v_c - R) / n  where the clipped term is larger and |v - old| < eps
//        = 0              elsewhere
//   clip_fraction = mean((v_c - R)^2 > (v - R)^2)
template <typename T>
PPO_CORE_INLINE ValueLossStats clipped_value_loss(std::ptrdiff_t n, View1<T> values, View1<T> old_values,
                                  View1<T> returns, T clip_coef, T* grad) {
    const T inv_n = T(1) / T(n);
    double loss = 0.0;
    std::ptrdiff_t clipped = 0;
    if (!(clip_coef > T(0))) {
        for (std::ptrdiff_t i = 0; i < n; ++i) {
            const T err = values[i] - returns[i];
            loss += 0.5 * static_cast<double>(err * err);
            grad[i] = err * inv_n;
        }
        return {loss / static_cast<double>(n), 0.0};
    }
    for (std::ptrdiff_t i = 0; i < n; ++i) {
        const T v = values[i];
        const T old = old_values[i];
        const T ret = returns[i];
        const T d = v - old;
        // v_c is v itself inside the clip range (not old + (v - old), which can round
        // away from v and make a tie look like a clipped element).
        const T v_c = d < -clip_coef ? old - clip_coef : (d > clip_coef ? old + clip_coef : v);
        const T err = v - ret;
        const T err_c = v_c - ret;
        const T sq = err * err;
        const T sq_c = err_c * err_c;
        if (sq_c > sq) {
            ++clipped;
            loss += 0.5 * static_cast<double>(sq_c);
            grad[i] = std::fabs(d) < clip_coef ? err_c * inv_n : T(0);
        } else {
            // Also taken when either is NaN, so the NaN reaches the loss.
            loss += 0.5 * static_cast<double>(sq);
            grad[i] = err * inv_n;
        }
    }
    const double dn = static_cast<double>(n);
    return {loss / dn, static_cast<double>(clipped) / dn};
}

}  // namespace ppo_core
