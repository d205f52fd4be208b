// Entry points that the bindings call: one plain function per kernel and dtype.
// On x86-64 with GCC or Clang each is compiled twice (target_clones): for AVX2, and
// for the baseline the wheel targets; the loader picks the one the CPU supports, so a
// wheel built on one machine still runs on any x86-64. The kernels are force-inlined
// into each clone. -ffp-contract=off (CMakeLists.txt) keeps both clones, and every
// platform, rounding exactly as the spec's order of operations says.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "gae.hpp"
#include "gae_avx2.hpp"
#include "losses.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(PPO_CORE_NO_CLONES)
#define PPO_CORE_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define PPO_CORE_CLONES
#endif

namespace ppo_core::dispatch {

#define PPO_CORE_DEFINE_FOR(T)                                                             \
    PPO_CORE_CLONES inline void gae(std::ptrdiff_t n_t, std::ptrdiff_t n_n, View2<T> r,   \
                                    View2<T> v, View2<T> nv, View2<std::uint8_t> term,     \
                                    View2<std::uint8_t> trunc, T gamma, T lam, T* adv,     \
                                    T* ret) {                                              \
        ppo_core::gae<T>(n_t, n_n, r, v, nv, term, trunc, gamma, lam, adv, ret);           \
    }                                                                                      \
    PPO_CORE_CLONES inline SurrogateStats clipped_surrogate(                               \
        std::ptrdiff_t n, View1<T> nlp, View1<T> olp, View1<T> adv, T eps, T* grad) {      \
        return ppo_core::clipped_surrogate<T>(n, nlp, olp, adv, eps, grad);                \
    }                                                                                      \
    PPO_CORE_CLONES inline ValueLossStats clipped_value_loss(                              \
        std::ptrdiff_t n, View1<T> v, View1<T> old, View1<T> ret, bool clip, T eps,        \
        T* grad) {                                                                         \
        return ppo_core::clipped_value_loss<T>(n, v, old, ret, clip, eps, grad);           \
    }

PPO_CORE_DEFINE_FOR(float)
PPO_CORE_DEFINE_FOR(double)
#undef PPO_CORE_DEFINE_FOR

// Narrow float64 rollouts take the AVX2 intrinsics kernel where the CPU has it.
inline void gae_f64(std::ptrdiff_t n_t, std::ptrdiff_t n_n, View2<double> r, View2<double> v,
                    View2<double> nv, View2<std::uint8_t> term, View2<std::uint8_t> trunc,
                    double gamma, double lam, double* adv, double* ret) {
#ifdef PPO_CORE_HAVE_AVX2_GAE
    if (gae_narrow_f64_applies(n_n, r, v, nv, term, trunc))
        return gae_narrow_f64_avx2(n_t, n_n, r, v, nv, term, trunc, gamma, lam, adv, ret);
#endif
    gae(n_t, n_n, r, v, nv, term, trunc, gamma, lam, adv, ret);
}

template <typename T>
void gae_any(std::ptrdiff_t n_t, std::ptrdiff_t n_n, View2<T> r, View2<T> v, View2<T> nv,
             View2<std::uint8_t> term, View2<std::uint8_t> trunc, T gamma, T lam, T* adv,
             T* ret) {
    if constexpr (std::is_same_v<T, double>)
        gae_f64(n_t, n_n, r, v, nv, term, trunc, gamma, lam, adv, ret);
    else
        gae(n_t, n_n, r, v, nv, term, trunc, gamma, lam, adv, ret);
}

}  // namespace ppo_core::dispatch
