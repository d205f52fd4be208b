// GAE(gamma, lambda) and discounted returns over time-major (T, N) rollouts.
// Header-only, stateless, no Python: outputs are caller-provided C-contiguous (T, N)
// buffers. Inputs are strided views; masks are bool (one byte, 0 or 1).
//
// Equations (Schulman et al. 2015, eq. 16-18, with terminated/truncated split):
//   done_t  = terminated_t | truncated_t
//   delta_t = r_t + gamma * (1 - terminated_t) * next_values_t - values_t
//   A_t     = delta_t + gamma * lam * (1 - done_t) * A_{t+1},   A_T = 0
//   R_t     = A_t + values_t
#pragma once

#include <cstddef>

#include "strided.hpp"

namespace ppo_core {

// The (1 - mask) factors of the equations are selects, not multiplies: a terminated
// step ignores next_values entirely and a done step ignores A_{t+1}, even when they
// hold inf or NaN (0 * inf would be NaN and leak across the episode boundary).
//
// Rows are processed from t = T-1 down to 0; the carry A_{t+1} is read back from the
// output row just written, which is contiguous, so the inner loop over n is a plain
// fused multiply-add loop that the compiler vectorizes when the inputs are contiguous.
template <typename T>
void gae(std::ptrdiff_t n_t, std::ptrdiff_t n_n,
         View2<T> rewards, View2<T> values, View2<T> next_values,
         View2<bool> terminated, View2<bool> truncated,
         T gamma, T lam, T* advantages, T* returns) {
    const T gl = gamma * lam;
    const bool contiguous = rewards.row_contiguous() && values.row_contiguous() &&
                            next_values.row_contiguous() && terminated.row_contiguous() &&
                            truncated.row_contiguous();
    for (std::ptrdiff_t t = n_t - 1; t >= 0; --t) {
        T* adv = advantages + t * n_n;
        T* ret = returns + t * n_n;
        const T* carry = (t + 1 < n_t) ? advantages + (t + 1) * n_n : nullptr;
        if (contiguous) {
            const T* r = rewards.row(t);
            const T* v = values.row(t);
            const T* nv = next_values.row(t);
            const bool* term = terminated.row(t);
            const bool* trunc = truncated.row(t);
            for (std::ptrdiff_t n = 0; n < n_n; ++n) {
                const T boot = term[n] ? T(0) : gamma * nv[n];
                const T next_a = (carry && !(term[n] | trunc[n])) ? gl * carry[n] : T(0);
                const T a = r[n] + boot - v[n] + next_a;
                adv[n] = a;
                ret[n] = a + v[n];
            }
        } else {
            for (std::ptrdiff_t n = 0; n < n_n; ++n) {
                const bool term = terminated(t, n);
                const T boot = term ? T(0) : gamma * next_values(t, n);
                const T next_a =
                    (carry && !(term | truncated(t, n))) ? gl * carry[n] : T(0);
                const T v = values(t, n);
                const T a = rewards(t, n) + boot - v + next_a;
                adv[n] = a;
                ret[n] = a + v;
            }
        }
    }
}

// Discounted reward-to-go:
//   B_t = G_{t+1} if step t did not end an episode and t < T-1, else next_values_t
//   G_t = r_t + gamma * (1 - terminated_t) * B_t
// next_values may be absent (has_next_values == false): read as zeros.
template <typename T>
void discounted_returns(std::ptrdiff_t n_t, std::ptrdiff_t n_n,
                        View2<T> rewards, View2<bool> terminated, View2<bool> truncated,
                        View2<T> next_values, bool has_next_values, T gamma, T* out) {
    for (std::ptrdiff_t t = n_t - 1; t >= 0; --t) {
        T* g = out + t * n_n;
        const T* carry = (t + 1 < n_t) ? out + (t + 1) * n_n : nullptr;
        for (std::ptrdiff_t n = 0; n < n_n; ++n) {
            const bool term = terminated(t, n);
            const bool done = term | truncated(t, n);
            const T nv = has_next_values ? next_values(t, n) : T(0);
            const T boot = (carry && !done) ? carry[n] : nv;
            g[n] = rewards(t, n) + (term ? T(0) : gamma * boot);
        }
    }
}

// next_values[t] = final_values[t] where done[t] (if given), else values[t+1] for
// t < T-1, else last_values.
template <typename T>
void next_values_from(std::ptrdiff_t n_t, std::ptrdiff_t n_n, View2<T> values,
                      View1<T> last_values, View2<T> final_values, View2<bool> done,
                      bool has_final, T* out) {
    for (std::ptrdiff_t t = 0; t < n_t; ++t) {
        T* o = out + t * n_n;
        for (std::ptrdiff_t n = 0; n < n_n; ++n) {
            T x = (t + 1 < n_t) ? values(t + 1, n) : last_values[n];
            if (has_final && done(t, n)) x = final_values(t, n);
            o[n] = x;
        }
    }
}

}  // namespace ppo_core
