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
#include <cstdint>
#include <cstring>

#include "strided.hpp"

namespace ppo_core {

// The (1 - mask) factors of the equations are selects, not multiplies: a terminated
// step ignores next_values entirely and a done step ignores A_{t+1}, even when they
// hold inf or NaN (0 * inf would be NaN and leak across the episode boundary).
// keep_if(k, x) is that select written as a bit mask (x where k, else +0.0): it has no
// branch, so the compiler vectorizes the loops below. Masks are bytes (0 or 1):
// NumPy's bool layout, read as uint8_t because GCC does not vectorize loads of bool.
template <typename T>
struct BitsOf;
template <>
struct BitsOf<float> { using type = std::uint32_t; };
template <>
struct BitsOf<double> { using type = std::uint64_t; };

template <typename T>
PPO_CORE_INLINE T keep_if(std::uint8_t keep, T x) {
    using U = typename BitsOf<T>::type;
    U bits;
    std::memcpy(&bits, &x, sizeof bits);
    bits &= U(0) - U(keep != 0);
    std::memcpy(&x, &bits, sizeof bits);
    return x;
}

// One time step of the recursion. HasCarry is false for the rollout's last step
// (A_T = 0). Get is a row accessor, so that the contiguous and the strided layouts
// run the very same expression in the same order (equal answers, bit for bit).
template <typename T, bool HasCarry, typename Row, typename MaskRow>
PPO_CORE_INLINE void gae_row(std::ptrdiff_t n_n, Row r, Row v, Row nv, MaskRow term, MaskRow trunc,
                    T gamma, T gl, const T* __restrict carry, T* __restrict adv,
                    T* __restrict ret) {
    for (std::ptrdiff_t n = 0; n < n_n; ++n) {
        const T vn = v[n];
        const std::uint8_t tm = term[n];
        T a = r[n] + keep_if<T>(!tm, gamma * nv[n]) - vn;
        if constexpr (HasCarry) a += keep_if<T>(!(tm | trunc[n]), gl * carry[n]);
        adv[n] = a;
        ret[n] = a + vn;
    }
}

// Narrow rollouts (few environments, long T) are latency-bound: each step waits for
// A_{t+1}. When a whole row fits in kBlock columns (two cache lines), the carries stay
// in registers for the whole backward sweep over t. Wider rollouts are
// bandwidth-bound and sweep row by row, reading the carry back from the output row
// just written (still in L1), so every input streams once in memory order. (Sweeping
// several column blocks one after the other was measured 3-10x slower on rollouts
// larger than the cache: each pass uses one line per row and defeats the prefetcher.)
// All paths run the same expression in the same order: equal answers, bit for bit.
template <typename T>
constexpr std::ptrdiff_t kBlock = 128 / sizeof(T);

template <typename T, std::ptrdiff_t W>
PPO_CORE_INLINE void gae_block(std::ptrdiff_t n_t, std::ptrdiff_t n_n, std::ptrdiff_t c0,
                      std::ptrdiff_t w, const View2<T>& rewards, const View2<T>& values,
                      const View2<T>& next_values, const View2<std::uint8_t>& terminated,
                      const View2<std::uint8_t>& truncated, T gamma, T gl,
                      T* __restrict advantages, T* __restrict returns) {
    // W > 0: a full block of compile-time width (unrolled, vectorized); W == 0: the tail.
    const std::ptrdiff_t width = W > 0 ? W : w;
    T carry[kBlock<T>];  // W <= kBlock
    for (std::ptrdiff_t t = n_t - 1; t >= 0; --t) {
        const T* __restrict r = rewards.row(t) + c0;
        const T* __restrict v = values.row(t) + c0;
        const T* __restrict nv = next_values.row(t) + c0;
        const std::uint8_t* __restrict tm = terminated.row(t) + c0;
        const std::uint8_t* __restrict tr = truncated.row(t) + c0;
        T* __restrict adv = advantages + t * n_n + c0;
        T* __restrict ret = returns + t * n_n + c0;
        const bool has_carry = t + 1 < n_t;
        for (std::ptrdiff_t j = 0; j < width; ++j) {
            const T vn = v[j];
            const std::uint8_t term = tm[j];
            T a = r[j] + keep_if<T>(!term, gamma * nv[j]) - vn;
            if (has_carry) a += keep_if<T>(!(term | tr[j]), gl * carry[j]);
            carry[j] = a;
            adv[j] = a;
            ret[j] = a + vn;
        }
    }
}

template <typename T>
PPO_CORE_INLINE void gae(std::ptrdiff_t n_t, std::ptrdiff_t n_n,
         View2<T> rewards, View2<T> values, View2<T> next_values,
         View2<std::uint8_t> terminated, View2<std::uint8_t> truncated,
         T gamma, T lam, T* advantages, T* returns) {
    const T gl = gamma * lam;
    const bool contiguous = rewards.row_contiguous() && values.row_contiguous() &&
                            next_values.row_contiguous() && terminated.row_contiguous() &&
                            truncated.row_contiguous();
    if (contiguous && n_n == kBlock<T>) {
        gae_block<T, kBlock<T>>(n_t, n_n, 0, n_n, rewards, values, next_values, terminated,
                                truncated, gamma, gl, advantages, returns);
        return;
    }
    if (contiguous && n_n < kBlock<T>) {
        gae_block<T, 0>(n_t, n_n, 0, n_n, rewards, values, next_values, terminated,
                        truncated, gamma, gl, advantages, returns);
        return;
    }
    for (std::ptrdiff_t t = n_t - 1; t >= 0; --t) {
        T* adv = advantages + t * n_n;
        T* ret = returns + t * n_n;
        const T* carry = advantages + (t + 1) * n_n;
        const bool has_carry = t + 1 < n_t;
        if (contiguous) {
            const T *r = rewards.row(t), *v = values.row(t), *nv = next_values.row(t);
            const std::uint8_t *tm = terminated.row(t), *tr = truncated.row(t);
            if (has_carry)
                gae_row<T, true>(n_n, r, v, nv, tm, tr, gamma, gl, carry, adv, ret);
            else
                gae_row<T, false>(n_n, r, v, nv, tm, tr, gamma, gl, carry, adv, ret);
        } else {
            auto r = rewards.strided_row(t), v = values.strided_row(t),
                 nv = next_values.strided_row(t);
            auto tm = terminated.strided_row(t), tr = truncated.strided_row(t);
            if (has_carry)
                gae_row<T, true>(n_n, r, v, nv, tm, tr, gamma, gl, carry, adv, ret);
            else
                gae_row<T, false>(n_n, r, v, nv, tm, tr, gamma, gl, carry, adv, ret);
        }
    }
}

// Discounted reward-to-go:
//   B_t = G_{t+1} if step t did not end an episode and t < T-1, else next_values_t
//   G_t = r_t + gamma * (1 - terminated_t) * B_t
// next_values may be absent (has_next_values == false): read as zeros.
template <typename T>
void discounted_returns(std::ptrdiff_t n_t, std::ptrdiff_t n_n,
                        View2<T> rewards, View2<std::uint8_t> terminated,
                        View2<std::uint8_t> truncated,
                        View2<T> next_values, bool has_next_values, T gamma, T* out) {
    for (std::ptrdiff_t t = n_t - 1; t >= 0; --t) {
        T* g = out + t * n_n;
        const T* carry = (t + 1 < n_t) ? out + (t + 1) * n_n : nullptr;
        for (std::ptrdiff_t n = 0; n < n_n; ++n) {
            const bool term = terminated(t, n) != 0;
            const bool done = term || truncated(t, n) != 0;
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
                      View1<T> last_values, View2<T> final_values, View2<std::uint8_t> done,
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
