// Strided views over caller-owned memory: the kernels take raw pointers, sizes and
// byte strides, so a NumPy view or a torch tensor with any (even negative) strides is
// read in place, without a copy. No Python in this file.
#pragma once

#include <cstddef>
#include <cstdint>

// Kernels are force-inlined into the per-ISA entry points of dispatch.hpp.
#if defined(__GNUC__) || defined(__clang__)
#define PPO_CORE_INLINE inline __attribute__((always_inline))
#else
#define PPO_CORE_INLINE inline
#endif

namespace ppo_core {

// A read-only 2-d view (T rows = time, N columns = environments), strides in bytes.
template <typename T>
struct View2 {
    const char* data;
    std::ptrdiff_t stride_t;
    std::ptrdiff_t stride_n;

    const T& operator()(std::ptrdiff_t t, std::ptrdiff_t n) const {
        return *reinterpret_cast<const T*>(data + t * stride_t + n * stride_n);
    }
    const T* row(std::ptrdiff_t t) const {
        return reinterpret_cast<const T*>(data + t * stride_t);
    }
    bool row_contiguous() const { return stride_n == static_cast<std::ptrdiff_t>(sizeof(T)); }

    // Row t as a 1-d strided view, indexable like a pointer.
    struct StridedRow {
        const char* data;
        std::ptrdiff_t stride;
        const T& operator[](std::ptrdiff_t n) const {
            return *reinterpret_cast<const T*>(data + n * stride);
        }
    };
    StridedRow strided_row(std::ptrdiff_t t) const { return {data + t * stride_t, stride_n}; }
};

// A read-only 1-d view, stride in bytes.
template <typename T>
struct View1 {
    const char* data;
    std::ptrdiff_t stride;

    const T& operator[](std::ptrdiff_t i) const {
        return *reinterpret_cast<const T*>(data + i * stride);
    }
    bool contiguous() const { return stride == static_cast<std::ptrdiff_t>(sizeof(T)); }
};

}  // namespace ppo_core
