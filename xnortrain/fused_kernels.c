/* Fused CPU kernels of the xnor quantizer, loaded by fused.py (see there and quantizers.py
 * for the formulas). Each kernel walks one filter (row) at a time, so a row's passes run in
 * L1 cache and the weights are read from memory once:
 *
 *   binarize: step 4. Per filter o, returning whether some |W_i| > 1:
 *       alpha_o    = ||W[o]||_1 / n
 *       W~[o, i]   = W[o, i] >= 0 ? alpha_o : -alpha_o            (sign(0) = sign(-0.0) = +1)
 *
 *   project_binarize: steps 1-2, then step 4 as binarize does it. Per filter o, with W[o]
 *   viewed as (C_in, k):
 *       W[o, c, j] = clip(W[o, c, j] - mean_c W[o, c, j], -1, 1)   (centring only if `centre`)
 *
 *   binarized_grad: step 7 for |W_i| <= 1 (every W after the projection). Per filter o:
 *       m_o     = mean_j sign_j G_j = (W~[o] . G[o]) / (n alpha_o)   (mean_j G_j if alpha_o = 0)
 *       g[o, i] = scale * (alpha_o * G[o, i] + sign_i * m_o),  sign_i = W~[o, i] >= 0 ? 1 : -1
 *
 * Sums accumulate in double, in the same order in both binarizing kernels, so W~ of a given W
 * is the same bits whichever kernel made it. Built for float and double by the macro below.
 *
 * Weights of PARALLEL size or more spread their filters over OpenMP threads when fused.py
 * builds with -fopenmp (torch's own libgomp); each filter is still one thread's work, so the
 * results do not depend on the number of threads. */
#include <stdint.h>
#include <stdlib.h>

#define PARALLEL(size) ((size) >= 65536) /* smaller weights cost less than waking a thread */

#define DEFINE_KERNELS(T, SUFFIX)                                                               \
    static inline T clip_##SUFFIX(T v) { return v < (T)-1 ? (T)-1 : (v > (T)1 ? (T)1 : v); }    \
                                                                                                \
    /* W~ of one filter; returns 1 if some |W_i| > 1 */                                         \
    static int binarize_row_##SUFFIX(const T *row, T *bin, T *alpha, int64_t n) {               \
        double l1 = 0.0;                                                                        \
        T largest = 0;                                                                          \
        _Pragma("omp simd reduction(+:l1) reduction(max:largest)")                              \
        for (int64_t i = 0; i < n; ++i) {                                                       \
            const T v = row[i] < 0 ? -row[i] : row[i];                                          \
            l1 += v;                                                                            \
            largest = largest > v ? largest : v;                                                \
        }                                                                                       \
        const T a = (T)(l1 / (double)n);                                                        \
        *alpha = a;                                                                             \
        _Pragma("omp simd")                                                                     \
        for (int64_t i = 0; i < n; ++i) bin[i] = row[i] >= 0 ? a : -a;                          \
        return largest > 1;                                                                     \
    }                                                                                           \
                                                                                                \
    int binarize_##SUFFIX(const T *w, T *w_bin, T *alpha, int64_t c_out, int64_t n) {           \
        int clipped = 0;                                                                        \
        _Pragma("omp parallel for schedule(static) reduction(|:clipped) if(PARALLEL(c_out * n))")     \
        for (int64_t o = 0; o < c_out; ++o)                                                     \
            clipped |= binarize_row_##SUFFIX(w + o * n, w_bin + o * n, alpha + o, n);           \
        return clipped;                                                                         \
    }                                                                                           \
                                                                                                \
    /* steps 1-2 on one filter, viewed as (C_in, k); `mean` has room for k doubles */           \
    static void project_row_##SUFFIX(T *row, double *mean, int64_t c_in, int64_t k, int centre) { \
        const int64_t n = c_in * k;                                                             \
        if (centre && k == 1) { /* Linear, 1x1 conv: one mean per filter */                     \
            double sum = 0.0;                                                                   \
            _Pragma("omp simd reduction(+:sum)")                                                \
            for (int64_t i = 0; i < n; ++i) sum += row[i];                                      \
            mean[0] = sum / (double)c_in;                                                       \
        } else if (centre) {                                                                    \
            for (int64_t j = 0; j < k; ++j) mean[j] = 0.0;                                      \
            for (int64_t c = 0; c < c_in; ++c)                                                  \
                for (int64_t j = 0; j < k; ++j) mean[j] += row[c * k + j];                      \
            for (int64_t j = 0; j < k; ++j) mean[j] /= (double)c_in;                            \
        } else {                                                                                \
            for (int64_t j = 0; j < k; ++j) mean[j] = 0.0;                                      \
        }                                                                                       \
        if (k == 1) {                                                                           \
            const T m = (T)mean[0];                                                             \
            _Pragma("omp simd")                                                                 \
            for (int64_t i = 0; i < n; ++i) row[i] = clip_##SUFFIX(row[i] - m);                 \
        } else {                                                                                \
            for (int64_t c = 0; c < c_in; ++c) {                                                \
                T *x = row + c * k;                                                             \
                for (int64_t j = 0; j < k; ++j) x[j] = clip_##SUFFIX(x[j] - (T)mean[j]);        \
            }                                                                                   \
        }                                                                                       \
    }                                                                                           \
                                                                                                \
    /* returns -1 if out of memory, else 0 */                                                   \
    int project_binarize_##SUFFIX(T *w, T *w_bin, T *alpha, int64_t c_out, int64_t c_in,        \
                                  int64_t k, int centre) {                                      \
        const int64_t n = c_in * k;                                                             \
        int failed = 0;                                                                         \
        _Pragma("omp parallel if(PARALLEL(c_out * n)) reduction(|:failed)")                     \
        {                                                                                       \
            double *mean = malloc((size_t)k * sizeof(double)); /* one per thread */             \
            failed = mean == NULL;                                                              \
            _Pragma("omp for schedule(static)")                                                 \
            for (int64_t o = 0; o < c_out; ++o) {                                               \
                if (failed) continue; /* every thread must still reach the loop's barrier */    \
                project_row_##SUFFIX(w + o * n, mean, c_in, k, centre);                         \
                binarize_row_##SUFFIX(w + o * n, w_bin + o * n, alpha + o, n);                  \
            }                                                                                   \
            free(mean);                                                                         \
        }                                                                                       \
        return failed ? -1 : 0;                                                                 \
    }                                                                                           \
                                                                                                \
    void binarized_grad_##SUFFIX(const T *w_bin, const T *g, const T *alpha, T *out,           \
                                 int64_t c_out, int64_t n, double scale) {                     \
        _Pragma("omp parallel for schedule(static) if(PARALLEL(c_out * n))")                    \
        for (int64_t o = 0; o < c_out; ++o) {                                                   \
            const T *bin = w_bin + o * n, *grad = g + o * n;                                    \
            const double a = alpha[o];                                                          \
            double dot = 0.0;                                                                   \
            if (a > 0) {                                                                        \
                _Pragma("omp simd reduction(+:dot)")                                            \
                for (int64_t i = 0; i < n; ++i) dot += (double)bin[i] * grad[i];                \
                dot /= a;                                                                       \
            } else {                                                                            \
                _Pragma("omp simd reduction(+:dot)")                                            \
                for (int64_t i = 0; i < n; ++i) dot += grad[i];                                 \
            }                                                                                   \
            const T scaled_alpha = (T)(scale * a), scaled_mean = (T)(scale * dot / (double)n);  \
            T *dst = out + o * n;                                                               \
            _Pragma("omp simd")                                                                 \
            for (int64_t i = 0; i < n; ++i)                                                     \
                dst[i] = scaled_alpha * grad[i] + (bin[i] >= 0 ? scaled_mean : -scaled_mean);   \
        }                                                                                       \
    }

DEFINE_KERNELS(float, f32)
DEFINE_KERNELS(double, f64)
