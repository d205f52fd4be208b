// The only file that includes pybind11: NumPy buffers in, pointers and byte strides
// out, the GIL released around the pure loops. The facade (ppo_core/__init__.py)
// validates arguments and converts dtypes; the checks here are a second line of
// defence so that a direct call into _core can raise but never crash.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <optional>
#include <tuple>
#include <vector>

#include "dispatch.hpp"

namespace py = pybind11;
using ppo_core::View1;
using ppo_core::View2;

namespace {

std::string shape_str(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) {
        s += std::to_string(a.shape(i));
        if (a.ndim() == 1 || i + 1 < a.ndim()) s += ",";
        if (i + 1 < a.ndim()) s += " ";
    }
    return s + ")";
}

template <typename T>
void require_dtype(const py::array& a, const char* name) {
    if (a.dtype().num() != py::dtype::of<T>().num())
        throw py::type_error(std::string(name) + ": expected dtype " +
                             std::string(py::str(py::dtype::of<T>())) + ", got " +
                             std::string(py::str(a.dtype())));
}

// (T,) or (T, N) arrays all of the same shape.
void require_rollout_shape(const py::array& a, const py::array& ref, const char* name) {
    if (ref.ndim() < 1 || ref.ndim() > 2)
        throw py::value_error(std::string(name) + ": expected shape (T,) or (T, N), got " +
                              shape_str(ref));
    bool same = a.ndim() == ref.ndim();
    for (py::ssize_t i = 0; same && i < a.ndim(); ++i) same = a.shape(i) == ref.shape(i);
    if (!same)
        throw py::value_error(std::string(name) + ": shape " + shape_str(a) +
                              " differs from " + shape_str(ref));
}

// A (T,) array is read as (T, 1); its column stride is never used to move, so it is
// set to the item size, which lets a contiguous (T,) array take the fast path.
template <typename T>
View2<T> view2(const py::array& a) {
    const char* p = static_cast<const char*>(a.data());
    return {p, a.strides(0),
            a.ndim() == 2 ? a.strides(1) : static_cast<py::ssize_t>(sizeof(T))};
}

template <typename T>
View1<T> view1(const py::array& a) {
    if (a.ndim() != 1) throw py::value_error("internal: expected a 1-d array");
    return {static_cast<const char*>(a.data()), a.strides(0)};
}

py::ssize_t cols(const py::array& a) { return a.ndim() == 2 ? a.shape(1) : 1; }

template <typename T>
py::array_t<T> empty_like_shape(const py::array& ref) {
    std::vector<py::ssize_t> shape(ref.shape(), ref.shape() + ref.ndim());
    return py::array_t<T>(shape);
}

// Two outputs of `ref`'s shape carved from one allocation, each starting on a 64-byte
// cache line. Why one block: glibc serves a fresh process's first large blocks with
// mmap and returns freed heap tops above its trim threshold, so two separate 256 KiB
// outputs page-faulted on every call (~100 faults, ~80 us at (2048, 16) float64, 4x the
// kernel); freeing one block of twice the size raises both thresholds past it, after
// which calls reuse warm heap memory. Why aligned: NumPy's large arrays start 16 bytes
// into a page, so every other 32-byte store would straddle two cache lines (measured:
// ~25% slower at (2048, 16) float64). Both results keep the block alive (their .base).
template <typename T>
std::pair<py::array_t<T>, py::array_t<T>> two_outputs_like(const py::array& ref) {
    constexpr std::uintptr_t line = 64;
    constexpr py::ssize_t pad = line / sizeof(T);
    std::vector<py::ssize_t> one(ref.shape(), ref.shape() + ref.ndim());
    py::ssize_t n = 1;
    for (auto d : one) n *= d;
    py::array_t<T> block(2 * n + 2 * pad);
    auto align = [](T* p) {
        const auto u = reinterpret_cast<std::uintptr_t>(p);
        return reinterpret_cast<T*>((u + line - 1) & ~(line - 1));
    };
    T* first = align(block.mutable_data());
    T* second = align(first + n);
    return {py::array_t<T>(one, first, block), py::array_t<T>(one, second, block)};
}

template <typename T>
std::tuple<py::array, py::array> gae_impl(const py::array& rewards, const py::array& values,
                                          const py::array& next_values,
                                          const py::array& terminated,
                                          const py::array& truncated, double gamma,
                                          double lam) {
    require_rollout_shape(rewards, rewards, "rewards");
    require_rollout_shape(values, rewards, "values");
    require_rollout_shape(next_values, rewards, "next_values");
    require_rollout_shape(terminated, rewards, "terminated");
    require_rollout_shape(truncated, rewards, "truncated");
    require_dtype<T>(values, "values");
    require_dtype<T>(next_values, "next_values");
    require_dtype<bool>(terminated, "terminated");
    require_dtype<bool>(truncated, "truncated");
    auto [adv, ret] = two_outputs_like<T>(rewards);
    const auto n_t = rewards.shape(0), n_n = cols(rewards);
    auto r = view2<T>(rewards), v = view2<T>(values), nv = view2<T>(next_values);
    auto term = view2<std::uint8_t>(terminated), trunc = view2<std::uint8_t>(truncated);
    T* pa = adv.mutable_data();
    T* pr = ret.mutable_data();
    {
        // Safe without the GIL: the views point into arrays that the caller's frame
        // keeps alive, the outputs are fresh, and no Python object is touched.
        py::gil_scoped_release release;
        ppo_core::dispatch::gae_any<T>(n_t, n_n, r, v, nv, term, trunc, T(gamma), T(lam), pa, pr);
    }
    return {adv, ret};
}

template <typename T>
py::array discounted_returns_impl(const py::array& rewards, const py::array& terminated,
                                  const py::array& truncated,
                                  const std::optional<py::array>& next_values,
                                  double gamma) {
    require_rollout_shape(rewards, rewards, "rewards");
    require_rollout_shape(terminated, rewards, "terminated");
    require_rollout_shape(truncated, rewards, "truncated");
    require_dtype<bool>(terminated, "terminated");
    require_dtype<bool>(truncated, "truncated");
    View2<T> nv{nullptr, 0, 0};
    if (next_values) {
        require_rollout_shape(*next_values, rewards, "next_values");
        require_dtype<T>(*next_values, "next_values");
        nv = view2<T>(*next_values);
    }
    auto out = empty_like_shape<T>(rewards);
    const auto n_t = rewards.shape(0), n_n = cols(rewards);
    auto r = view2<T>(rewards);
    auto term = view2<std::uint8_t>(terminated), trunc = view2<std::uint8_t>(truncated);
    T* po = out.mutable_data();
    const bool has_nv = next_values.has_value();
    {
        py::gil_scoped_release release;  // as in gae_impl
        ppo_core::discounted_returns<T>(n_t, n_n, r, term, trunc, nv, has_nv, T(gamma), po);
    }
    return out;
}

template <typename T>
py::array next_values_from_impl(const py::array& values, const py::array& last_values,
                                const std::optional<py::array>& final_values,
                                const std::optional<py::array>& done) {
    require_rollout_shape(values, values, "values");
    require_dtype<T>(last_values, "last_values");
    const auto n_t = values.shape(0), n_n = cols(values);
    // last_values has shape values.shape[1:]; a (T,) rollout has a 0-d last value,
    // which we read as a 1-d view of one element.
    if (last_values.ndim() != values.ndim() - 1 ||
        (values.ndim() == 2 && last_values.shape(0) != n_n))
        throw py::value_error("last_values: shape " + shape_str(last_values) +
                              " is not values.shape[1:] for values of shape " +
                              shape_str(values));
    View1<T> last{static_cast<const char*>(last_values.data()),
                  last_values.ndim() == 1 ? last_values.strides(0) : 0};
    View2<T> fv{nullptr, 0, 0};
    View2<std::uint8_t> d{nullptr, 0, 0};
    const bool has_final = final_values.has_value() && done.has_value();
    if (has_final) {
        require_rollout_shape(*final_values, values, "final_values");
        require_rollout_shape(*done, values, "done");
        require_dtype<T>(*final_values, "final_values");
        require_dtype<bool>(*done, "done");
        fv = view2<T>(*final_values);
        d = view2<std::uint8_t>(*done);
    }
    auto out = empty_like_shape<T>(values);
    auto v = view2<T>(values);
    T* po = out.mutable_data();
    {
        py::gil_scoped_release release;  // as in gae_impl
        ppo_core::next_values_from<T>(n_t, n_n, v, last, fv, d, has_final, po);
    }
    return out;
}

// clip_coef must be > 0 (and not NaN). In the kernel's dtype it is rounded to nearest,
// saturating at the largest finite value: a finite clip_coef stays finite (1e39 in
// float32 is FLT_MAX, not inf, so old + clip(-inf, -eps, eps) is old - eps as in
// double, not inf - inf). It may round to 0 (1e-50 in float32), which the kernels read
// as eps = 0, clipping to old_values or to ratio 1 as double does with old +- 1e-50 and
// 1 +- 1e-50; never as "no clipping" (that is clip_coef None).
template <typename T>
T clip_in(double clip_coef) {
    if (!(clip_coef > 0.0))
        throw py::value_error("clip_coef: expected a number > 0, got " +
                              std::string(py::str(py::float_(clip_coef))));
    constexpr double kMax = static_cast<double>(std::numeric_limits<T>::max());
    return clip_coef > kMax ? std::numeric_limits<T>::max() : static_cast<T>(clip_coef);
}

void require_1d_same(const py::array& a, const py::array& ref, const char* name) {
    if (a.ndim() != 1 || a.shape(0) != ref.shape(0))
        throw py::value_error(std::string(name) + ": expected a 1-d array of length " +
                              std::to_string(ref.shape(0)) + ", got shape " + shape_str(a));
}

template <typename T>
std::tuple<double, py::array, double, double> clipped_surrogate_impl(
    const py::array& new_log_prob, const py::array& old_log_prob,
    const py::array& advantages, double clip_coef) {
    require_1d_same(new_log_prob, new_log_prob, "new_log_prob");
    require_1d_same(old_log_prob, new_log_prob, "old_log_prob");
    require_1d_same(advantages, new_log_prob, "advantages");
    require_dtype<T>(old_log_prob, "old_log_prob");
    require_dtype<T>(advantages, "advantages");
    const T eps = clip_in<T>(clip_coef);
    const auto n = new_log_prob.shape(0);
    if (n == 0) throw py::value_error("new_log_prob: empty input (a mean over nothing)");
    auto grad = py::array_t<T>(n);
    auto nlp = view1<T>(new_log_prob), olp = view1<T>(old_log_prob),
         adv = view1<T>(advantages);
    T* pg = grad.mutable_data();
    ppo_core::SurrogateStats s;
    {
        py::gil_scoped_release release;  // as in gae_impl
        s = ppo_core::dispatch::clipped_surrogate(n, nlp, olp, adv, eps, pg);
    }
    return {s.loss, grad, s.clip_fraction, s.approx_kl};
}

template <typename T>
std::tuple<double, py::array, double> clipped_value_loss_impl(const py::array& values,
                                                              const py::array& old_values,
                                                              const py::array& returns,
                                                              std::optional<double> clip_coef) {
    require_1d_same(values, values, "values");
    require_1d_same(old_values, values, "old_values");
    require_1d_same(returns, values, "returns");
    require_dtype<T>(old_values, "old_values");
    require_dtype<T>(returns, "returns");
    const bool clip = clip_coef.has_value();
    const T eps = clip ? clip_in<T>(*clip_coef) : T(0);
    const auto n = values.shape(0);
    if (n == 0) throw py::value_error("values: empty input (a mean over nothing)");
    auto grad = py::array_t<T>(n);
    auto v = view1<T>(values), old = view1<T>(old_values), ret = view1<T>(returns);
    T* pg = grad.mutable_data();
    ppo_core::ValueLossStats s;
    {
        py::gil_scoped_release release;  // as in gae_impl
        s = ppo_core::dispatch::clipped_value_loss(n, v, old, ret, clip, eps, pg);
    }
    return {s.loss, grad, s.clip_fraction};
}

// Dispatch on the dtype of the first value-carrying array.
template <typename F32, typename F64>
auto by_dtype(const py::array& first, const char* name, F32 f32, F64 f64) {
    if (first.dtype().num() == py::dtype::of<float>().num()) return f32();
    if (first.dtype().num() == py::dtype::of<double>().num()) return f64();
    throw py::type_error(std::string(name) + ": expected dtype float32 or float64, got " +
                         std::string(py::str(first.dtype())));
}

void register_advantages(py::module_& m) {
    m.def(
        "gae",
        [](const py::array& rewards, const py::array& values, const py::array& next_values,
           const py::array& terminated, const py::array& truncated, double gamma,
           double lam) {
            return by_dtype(
                rewards, "rewards",
                [&] { return gae_impl<float>(rewards, values, next_values, terminated,
                                             truncated, gamma, lam); },
                [&] { return gae_impl<double>(rewards, values, next_values, terminated,
                                              truncated, gamma, lam); });
        },
        py::arg("rewards"), py::arg("values"), py::arg("next_values"), py::arg("terminated"),
        py::arg("truncated"), py::kw_only(), py::arg("gamma"), py::arg("lam"));
    m.def(
        "discounted_returns",
        [](const py::array& rewards, const py::array& terminated, const py::array& truncated,
           const std::optional<py::array>& next_values, double gamma) {
            return by_dtype(
                rewards, "rewards",
                [&] { return discounted_returns_impl<float>(rewards, terminated, truncated,
                                                            next_values, gamma); },
                [&] { return discounted_returns_impl<double>(rewards, terminated, truncated,
                                                             next_values, gamma); });
        },
        py::arg("rewards"), py::arg("terminated"), py::arg("truncated"),
        py::arg("next_values") = py::none(), py::kw_only(), py::arg("gamma"));
    m.def(
        "next_values_from",
        [](const py::array& values, const py::array& last_values,
           const std::optional<py::array>& final_values, const std::optional<py::array>& done) {
            return by_dtype(
                values, "values",
                [&] { return next_values_from_impl<float>(values, last_values, final_values, done); },
                [&] { return next_values_from_impl<double>(values, last_values, final_values, done); });
        },
        py::arg("values"), py::arg("last_values"), py::kw_only(),
        py::arg("final_values") = py::none(), py::arg("done") = py::none());
}

void register_losses(py::module_& m) {
    m.def(
        "clipped_surrogate",
        [](const py::array& new_log_prob, const py::array& old_log_prob,
           const py::array& advantages, double clip_coef) {
            return by_dtype(
                new_log_prob, "new_log_prob",
                [&] { return clipped_surrogate_impl<float>(new_log_prob, old_log_prob, advantages, clip_coef); },
                [&] { return clipped_surrogate_impl<double>(new_log_prob, old_log_prob, advantages, clip_coef); });
        },
        py::arg("new_log_prob"), py::arg("old_log_prob"), py::arg("advantages"), py::kw_only(),
        py::arg("clip_coef"));
    m.def(
        "clipped_value_loss",
        [](const py::array& values, const py::array& old_values, const py::array& returns,
           std::optional<double> clip_coef) {
            return by_dtype(
                values, "values",
                [&] { return clipped_value_loss_impl<float>(values, old_values, returns, clip_coef); },
                [&] { return clipped_value_loss_impl<double>(values, old_values, returns, clip_coef); });
        },
        py::arg("values"), py::arg("old_values"), py::arg("returns"), py::kw_only(),
        py::arg("clip_coef"));
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "ppo_core's compiled kernels. Import ppo_core, not this module.";
    register_advantages(m);
    register_losses(m);
}
