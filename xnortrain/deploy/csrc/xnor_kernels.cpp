// XNOR-popcount kernels for binary layers: conv2d(sign(x), alpha * sign(W)) + bias and
// linear(sign(x), alpha * sign(W)) + bias, with sign(0) = +1; optionally of sign(a * x + b),
// a and b one per input channel, the BatchNorm before the sign folded into the packing.
//
// Layout (channels-last, 64 channels a word): bit c % 64 of word c / 64 holds the sign of
// channel c, 1 for +1 and 0 for -1; the bits past the last channel are 0 in both inputs and
// weights, so their XOR adds nothing. Weights come with each group's filters interleaved eight
// at a time, (groups, blocks, KH, KW, words, 8) int64 with zero filters filling the last block
// (`kernel_layout` in xnor_layers.py, done once when a layer is built), so that both popcount
// paths read eight filters' words of one patch position side by side. The input is packed to
// (N, H, W, groups, words) and multiplied by the weights as a packed GEMM, a row of A being an
// output pixel's patch (KH * KW * words per group):
//
//     dot(a, w) = C * taps - 2 * popcount(A XOR W)
//
// With one group and no dilation along x, a patch's kernel row is kw adjacent pixels of the
// packed input, so A is read in place (an implicit GEMM) from an input packed with a border
// of zero words as wide as the padding; otherwise the patches are gathered first (binary
// im2col). Read in place from a narrow input, whose kernel row of kw taps of C channels fits
// one word (kw * C <= 64, as in a ResNet's 16-channel stage), each word of the input is
// rebuilt as the whole kernel row that starts there, tap j at bits j * C, and the weights
// alike (`pack_kernel_rows`, `kernel_row_weights`): a patch is one word per kernel row, not kw.
// Zero padding is 0, neither +1 nor -1: a tap outside the image is a zero word (or zero bits)
// in A, so its XOR counts the weight's own set bits, which the epilogue takes back out
// (popcount(W[o, tap]) per padded tap) before out = alpha_o * dot + bias_o.
//
// Linked convs (one group): where the next conv reads only sign(a * relu(out) + b), a and b
// its input map, that bit is a monotone function of the integer dot, 1 on an interval
// low_o <= dot <= high_o that the caller finds once (`sign_bounds`); the epilogue writes those
// bits, packed as the next conv's input (N, H, W, words), instead of out, and the next conv
// takes them without packing; a max pool between them pools the bits (sign_max_pool2d).
//
// Portability: the popcount loops use __builtin_popcountll. On x86-64 they carry
// target("popcnt"), so the file builds for every x86-64 CPU without -march flags and the
// builtin becomes the POPCNT instruction; `hardware_popcount` lets the loader refuse the
// kernels on a CPU without POPCNT (pre-2008), which then runs the PyTorch path. On aarch64
// the builtin is NEON's CNT, part of the base architecture. No -march=native: the cached
// library must run on any CPU of its architecture. The wider AVX-512 VPOPCNTDQ path below
// is compiled with its own target attribute and chosen at run time, by the CPU's report.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#if defined(__x86_64__) || defined(__i386__)
#define POPCOUNT_TARGET __attribute__((target("popcnt")))
#else
#define POPCOUNT_TARGET
#endif

namespace {

using word_t = uint64_t;
constexpr int64_t kBits = 64;
// A thread's tile: rows of output pixels by output channels; its weights (up to 64 rows of
// KH * KW * words) stay in L1/L2 while the tile's pixel rows stream past them.
constexpr int64_t kTileRows = 32, kTileCols = 64;
constexpr int kBlockRows = 4, kBlockCols = 4;  // register block of popcount accumulators
constexpr int64_t kLanes = 8;  // filters interleaved a word apart in the weights
// Work (word popcounts, packed floats or gathered words) below which a loop stays on the
// calling thread: handing a part to another core (waking it, joining it, and the layer's data
// crossing between the cores' caches) costs more than a few microseconds of work saves.
constexpr int64_t kMinTaskWork = int64_t{1} << 18;
// A float the packing reads counts as this many units of that work: the packing splits over
// the threads at a quarter of the popcounts' size (measured on the packages at batch 1: NIN
// and ResNet-18 at 224x224, whose first binary layers pack a large float input, 5-9% faster
// than with a float as one unit; ResNet-20 and AlexNet within the noise).
constexpr int64_t kPackedFloatWork = 4;

// at::parallel_for's grain for items of `work_per_item` each: a task gets at least kMinTaskWork.
int64_t grain_for(int64_t work_per_item) { return std::max<int64_t>(1, kMinTaskWork / std::max<int64_t>(1, work_per_item)); }

int64_t words_for(int64_t channels) { return (channels + kBits - 1) / kBits; }

struct Geometry {
  int64_t groups, channels_per_group, words_per_group;
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
  int64_t n, h, w, oh, ow;

  int64_t taps() const { return kh * kw; }
  int64_t depth() const { return taps() * words_per_group; }  // words of one group's patch
  bool pointwise() const { return kh == 1 && kw == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0; }
  // a patch's kernel row is kw adjacent pixels of the (bordered) packed input: read in place
  bool patches_in_place() const { return groups == 1 && dw == 1 && !pointwise(); }
  // a narrow input's kernel row, kw taps of at most 64 / kw channels, fits one word (`pack_kernel_rows`)
  bool dense_rows() const { return patches_in_place() && kw > 1 && kw * channels_per_group <= kBits; }
  // words of a kernel row and of a patch as the popcounts read them: one a kernel row where the rows are dense
  int64_t kernel_row_words() const { return dense_rows() ? 1 : kw * words_per_group; }
  int64_t patch_words() const { return kh * kernel_row_words(); }
};

// The AVX-512 paths (the popcounts, the float32 epilogue and the float32 packing) are built
// with a target attribute and used only where the CPU reports AVX-512 F, VL, DQ and VPOPCNTDQ
// (Ice Lake, Zen 4 and later) and XNORTRAIN_NO_AVX512 is unset.
#if defined(__x86_64__)
#define WIDE_TARGET __attribute__((target("avx512f,avx512vl,avx512dq,avx512vpopcntdq")))

bool avx512_path() {
  static const bool supported = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                                __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vpopcntdq");
  const char* off = std::getenv("XNORTRAIN_NO_AVX512");
  return supported && !(off && *off && std::string(off) != "0");
}
#else
bool avx512_path() { return false; }
#endif

// One word of sign bits from `bits` (<= 64) contiguous channels through their affine map
// (a folded BatchNorm, or a = 1, b = 0): bit i = a[i] * src[i] + b[i] >= 0, so sign(0) = +1.
template <typename scalar_t>
inline word_t sign_word(const scalar_t* src, const scalar_t* a, const scalar_t* b, int64_t bits) {
  word_t word = 0;
  for (int64_t i = 0; i < bits; ++i) word |= word_t{src[i] * a[i] + b[i] >= 0} << i;
  return word;
}

#if defined(__x86_64__)
// Float32 channels four at a time with SSE2, part of every x86-64 CPU (a multiply and an add,
// no fused multiply-add, as the scalar rule rounds): the comparison counts -0.0 and +0.0 as +1.
template <>
inline word_t sign_word<float>(const float* src, const float* a, const float* b, int64_t bits) {
  const __m128 zero = _mm_setzero_ps();
  word_t word = 0;
  int64_t i = 0;
  for (; i + 4 <= bits; i += 4) {
    const __m128 mapped = _mm_add_ps(_mm_mul_ps(_mm_loadu_ps(src + i), _mm_loadu_ps(a + i)), _mm_loadu_ps(b + i));
    word |= word_t(_mm_movemask_ps(_mm_cmpge_ps(mapped, zero))) << i;
  }
  for (; i < bits; ++i) word |= word_t{src[i] * a[i] + b[i] >= 0} << i;
  return word;
}

// Sign words of `width` pixels' `bits` (<= 64) contiguous float32 channels, `sw` floats from
// one pixel to the next, into out[col * out_stride]: sixteen channels a compare, whose mask is
// their sixteen bits (a multiply and an add, as sign_word rounds).
WIDE_TARGET void sign_words_wide(const float* src, int64_t sw, const float* a, const float* b, int64_t bits,
                                 int64_t width, word_t* out, int64_t out_stride) {
  constexpr int64_t kChunk = 16, kChunks = kBits / kChunk;
  const int64_t chunks = (bits + kChunk - 1) / kChunk;
  __mmask16 lanes[kChunks];
  __m512 scale[kChunks], shift[kChunks];
  for (int64_t k = 0; k < chunks; ++k) {
    const int64_t left = bits - k * kChunk;
    lanes[k] = left >= kChunk ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
    scale[k] = _mm512_maskz_loadu_ps(lanes[k], a + k * kChunk);
    shift[k] = _mm512_maskz_loadu_ps(lanes[k], b + k * kChunk);
  }
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t col = 0; col < width; ++col) {
    word_t word = 0;
    for (int64_t k = 0; k < chunks; ++k) {
      const __m512 x = _mm512_maskz_loadu_ps(lanes[k], src + col * sw + k * kChunk);
      const __m512 mapped = _mm512_add_ps(_mm512_mul_ps(x, scale[k]), shift[k]);
      word |= word_t{_mm512_mask_cmp_ps_mask(lanes[k], mapped, zero, _CMP_GE_OQ)} << (k * kChunk);
    }
    out[col * out_stride] = word;
  }
}

// Bit i % 32 of `half` for the pixels of `lanes` where a * x + b >= 0, x sixteen pixels of
// one channel.
WIDE_TARGET inline __m512i set_sign_bits(__m512i half, __mmask16 lanes, const float* x, float a, float b, int64_t i) {
  const __m512 mapped = _mm512_add_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(lanes, x), _mm512_set1_ps(a)), _mm512_set1_ps(b));
  const __mmask16 set = _mm512_mask_cmp_ps_mask(lanes, mapped, _mm512_setzero_ps(), _CMP_GE_OQ);
  return _mm512_mask_or_epi32(half, set, half, _mm512_set1_epi32(static_cast<int>(1u << (i % 32))));
}

// The same words from `bits` (<= 64) channel rows `sc` floats apart whose pixels are
// contiguous (NCHW): sixteen pixels a compare, each channel's bits set in the sixteen pixels'
// 32-bit halves at once, then the halves joined into words eight pixels at a time.
WIDE_TARGET void sign_words_planar_wide(const float* src, int64_t sc, const float* a, const float* b, int64_t bits,
                                        int64_t width, word_t* out, int64_t out_stride) {
  constexpr int64_t kPixels = 16;
  for (int64_t col = 0; col < width; col += kPixels) {
    const int64_t left = width - col;
    const __mmask16 lanes = left >= kPixels ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
    __m512i low = _mm512_setzero_si512(), high = _mm512_setzero_si512();
    for (int64_t i = 0; i < std::min<int64_t>(bits, 32); ++i) low = set_sign_bits(low, lanes, src + i * sc + col, a[i], b[i], i);
    for (int64_t i = 32; i < bits; ++i) high = set_sign_bits(high, lanes, src + i * sc + col, a[i], b[i], i);
    alignas(64) word_t words[kPixels];
    for (int k = 0; k < 2; ++k) {
      const __m256i low8 = k ? _mm512_extracti64x4_epi64(low, 1) : _mm512_castsi512_si256(low);
      const __m256i high8 = k ? _mm512_extracti64x4_epi64(high, 1) : _mm512_castsi512_si256(high);
      _mm512_store_si512(words + 8 * k, _mm512_or_si512(_mm512_cvtepu32_epi64(low8),
                                                        _mm512_slli_epi64(_mm512_cvtepu32_epi64(high8), 32)));
    }
    for (int64_t j = 0; j < std::min(kPixels, left); ++j) out[(col + j) * out_stride] = words[j];
  }
}
#endif

// The packed input, pixels of `groups * words_per_group` words, channels-last: image row y of
// image n starts at first + n * image_words + y * row_words. Bordered, it holds the zero
// padding as zero words around each image (`ph` rows above and below, `pw` pixels left and
// right), so that a patch's kernel row lies in place as kw adjacent pixels.
struct PackedInput {
  at::Tensor words;
  word_t* first;
  int64_t row_words, image_words;

  // A buffer for the signs of input x, its border zero.
  static PackedInput for_input(const at::Tensor& x, const Geometry& g, bool bordered) {
    const auto options = x.options().dtype(at::kLong);
    const PackedInput shape(g, bordered);
    const int64_t size = g.n * shape.image_words;
    return PackedInput(g, bordered, shape.has_border() ? at::zeros({size}, options) : at::empty({size}, options));
  }

  // The words a previous layer packed, (N, H, W, words) contiguous: used as they are, or
  // copied row by row into a bordered buffer, or into a buffer of the layer's own where its
  // kernel rows are dense (packed in place).
  static PackedInput of_signs(const at::Tensor& signs, const Geometry& g, bool bordered) {
    if (!PackedInput(g, bordered).has_border() && !g.dense_rows()) return PackedInput(g, false, signs);
    PackedInput packed = for_input(signs, g, bordered);
    const word_t* src = reinterpret_cast<const word_t*>(signs.data_ptr<int64_t>());
    const int64_t pixel_words = g.groups * g.words_per_group;
    at::parallel_for(0, g.n * g.h, grain_for(g.w * pixel_words), [&](int64_t begin, int64_t end) {
      for (int64_t line = begin; line < end; ++line)
        std::copy_n(src + line * g.w * pixel_words, g.w * pixel_words, packed.row(line / g.h, line % g.h));
    });
    return packed;
  }

  word_t* row(int64_t n, int64_t y) const { return first + n * image_words + y * row_words; }

 private:
  int64_t ph, pw;

  PackedInput(const Geometry& g, bool bordered, at::Tensor buffer = {})
      : words(std::move(buffer)), ph(bordered ? g.ph : 0), pw(bordered ? g.pw : 0) {
    const int64_t pixel_words = g.groups * g.words_per_group;
    row_words = (g.w + 2 * pw) * pixel_words, image_words = (g.h + 2 * ph) * row_words;
    first = words.defined() ? reinterpret_cast<word_t*>(words.data_ptr<int64_t>()) + ph * row_words + pw * pixel_words
                            : nullptr;
  }

  bool has_border() const { return ph || pw; }
};

// Signs of a * x + b (x (N, C, H, W), a and b one per channel) into the packed input's words,
// 64 channels a word. Channels-last input builds each word from contiguous channels; other
// layouts go an image row at a time, one channel row after another, so that reads stay
// sequential. `wide`: float32 input packs on AVX-512.
template <typename scalar_t>
void pack_signs(const at::Tensor& x, const scalar_t* a, const scalar_t* b, const Geometry& g,
                [[maybe_unused]] bool wide, const PackedInput& packed) {
  const scalar_t* data = x.data_ptr<scalar_t>();
  const int64_t sn = x.stride(0), sc = x.stride(1), sh = x.stride(2), sw = x.stride(3);
  const int64_t pixel_words = g.groups * g.words_per_group;
  const int64_t rows_grain = grain_for(kPackedFloatWork * g.w * g.groups * g.channels_per_group);
  // fill(src, row, word, first channel, bits) for each (row, word)
  auto word_slots = [&](auto&& fill) {
    at::parallel_for(0, g.n * g.h, rows_grain, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const scalar_t* src = data + row / g.h * sn + row % g.h * sh;
        for (int64_t group = 0; group < g.groups; ++group)
          for (int64_t k = 0; k < g.words_per_group; ++k) {
            const int64_t channel = group * g.channels_per_group + k * kBits;
            fill(src + channel * sc, row, group * g.words_per_group + k, channel,
                 std::min(kBits, g.channels_per_group - k * kBits));
          }
      }
    });
  };
  if (sc == 1) {
    word_slots([&](const scalar_t* src, int64_t row, int64_t word, int64_t channel, int64_t bits) {
      word_t* out = packed.row(row / g.h, row % g.h) + word;
#if defined(__x86_64__)
      if constexpr (std::is_same_v<scalar_t, float>) {
        if (wide) return sign_words_wide(src, sw, a + channel, b + channel, bits, g.w, out, pixel_words);
      }
#endif
      for (int64_t col = 0; col < g.w; ++col) out[col * pixel_words] = sign_word(src + col * sw, a + channel, b + channel, bits);
    });
    return;
  }
  // 32-bit halves, so that the compiler can compare and shift four float32 columns at once
  word_slots([&](const scalar_t* src, int64_t row, int64_t word, int64_t channel, int64_t bits) {
#if defined(__x86_64__)
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (wide && sw == 1)
        return sign_words_planar_wide(src, sc, a + channel, b + channel, bits, g.w,
                                      packed.row(row / g.h, row % g.h) + word, pixel_words);
    }
#endif
    std::vector<uint32_t> low(g.w, 0), high(g.w, 0);
    for (int64_t i = 0; i < bits; ++i) {
      uint32_t* half = i < 32 ? low.data() : high.data();
      const scalar_t* values = src + i * sc;
      const scalar_t ai = a[channel + i], bi = b[channel + i];
      const int shift = i % 32;
      if (sw == 1) {
        for (int64_t col = 0; col < g.w; ++col) half[col] |= uint32_t{values[col] * ai + bi >= 0} << shift;
      } else {
        for (int64_t col = 0; col < g.w; ++col) half[col] |= uint32_t{values[col * sw] * ai + bi >= 0} << shift;
      }
    }
    word_t* out = packed.row(row / g.h, row % g.h) + word;
    for (int64_t col = 0; col < g.w; ++col) out[col * pixel_words] = word_t{high[col]} << 32 | low[col];
  });
}

// words[x] |= taps[x] << shift for x < count, two buffers: a loop the compiler vectorizes.
void or_shifted(word_t* __restrict words, const word_t* __restrict taps, int64_t count, int64_t shift) {
  for (int64_t x = 0; x < count; ++x) words[x] |= taps[x] << shift;
}

// Dense kernel rows (`Geometry::dense_rows`, the packed input bordered): word x of each image
// row becomes the kernel row that starts there, its taps j = 0 .. kw at bits j * C, so that a
// patch's kernel row is one word and the popcounts read kw times fewer words. Each row is copied
// aside and rebuilt from the copy a tap at a time. The border rows stay zero.
void pack_kernel_rows(const PackedInput& packed, const Geometry& g) {
  const int64_t width = g.w + 2 * g.pw, starts = width - g.kw + 1;  // bordered row; where a kernel row fits
  at::parallel_for(0, g.n * g.h, grain_for(starts * g.kw), [&](int64_t begin, int64_t end) {
    std::vector<word_t> pixels(width);
    for (int64_t line = begin; line < end; ++line) {
      word_t* row = packed.row(line / g.h, line % g.h) - g.pw;
      std::copy_n(row, width, pixels.data());
      for (int64_t j = 1; j < g.kw; ++j) or_shifted(row, pixels.data() + j, starts, j * g.channels_per_group);
    }
  });
}

// The weights for dense kernel rows, from weights in the kernel layout (blocks, KH, KW, 1, 8):
// filter o's kernel row i as one word, its taps j at bits j * C, (blocks, KH, 8).
std::vector<word_t> kernel_row_weights(const word_t* w8, const Geometry& g, int64_t blocks) {
  std::vector<word_t> rows(blocks * g.kh * kLanes, 0);
  for (int64_t row = 0; row < blocks * g.kh; ++row)
    for (int64_t j = 0; j < g.kw; ++j)
      for (int64_t lane = 0; lane < kLanes; ++lane)
        rows[row * kLanes + lane] |= w8[(row * g.kw + j) * kLanes + lane] << (j * g.channels_per_group);
  return rows;
}

// Patch rows (pixels, groups, taps * words) gathered from the packed input (not bordered), for
// the layers whose patches do not lie in place (several groups, or dilation along x); taps
// outside the image are zero words. Output lines go to the threads; a tap of one word (up to
// 64 channels in one group) is copied as a word, wider ones word by word.
void gather_patches(const PackedInput& packed, const Geometry& g, word_t* patches) {
  const int64_t pixel_words = g.groups * g.words_per_group, row_words = g.groups * g.depth();
  at::parallel_for(0, g.n * g.oh, grain_for(g.ow * row_words), [&](int64_t begin, int64_t end) {
    for (int64_t line = begin; line < end; ++line) {
      const int64_t n = line / g.oh, oy = line % g.oh;
      word_t* row = patches + line * g.ow * row_words;
      for (int64_t ox = 0; ox < g.ow; ++ox, row += row_words) {
        for (int64_t i = 0; i < g.kh; ++i) {
          const int64_t y = oy * g.sh - g.ph + i * g.dh;
          for (int64_t j = 0; j < g.kw; ++j) {
            const int64_t x = ox * g.sw - g.pw + j * g.dw;
            word_t* tap = row + (i * g.kw + j) * g.words_per_group;
            if (y < 0 || y >= g.h || x < 0 || x >= g.w) {
              for (int64_t group = 0; group < g.groups; ++group)
                std::fill_n(tap + group * g.depth(), g.words_per_group, word_t{0});
              continue;
            }
            const word_t* src = packed.row(n, y) + x * pixel_words;
            if (pixel_words == 1) {  // up to 64 channels, one group: one word (a loop here becomes a memmove call)
              *tap = *src;
              continue;
            }
            for (int64_t group = 0; group < g.groups; ++group)
              std::copy_n(src + group * g.words_per_group, g.words_per_group, tap + group * g.depth());
          }
        }
      }
    }
  });
}

// A tile's dots, for row r and column c (filter o0 + c) from the popcount of A[r] XOR W[c]:
// dot = real_bits[r] - 2 * (popcount - padded[r][c]), padded[r] null for pixels whose taps
// all lie inside the image.
struct Dots {
  const int64_t* real_bits;
  const int32_t* const* padded;

  int64_t of(int64_t r, int64_t c, int64_t count) const {
    return real_bits[r] - 2 * (count - (padded[r] ? padded[r][c] : 0));
  }
};

// The float epilogue: out[r][c] = alpha_c * dot + bias_c (bias null: + 0), then + residual[r][c]
// where a residual sum reads the conv's output (null: none), rounded in that order, as
// PyTorch rounds the conv's output and then the sum.
template <typename scalar_t>
struct FloatOutput {
  Dots dots;
  const scalar_t* alpha;
  const scalar_t* bias;
  scalar_t* out;  // (pixels, C_out), at the tile's first row and column
  int64_t ldo;
  const scalar_t* residual;  // laid out as out

  void finish(int64_t r, int64_t c, int64_t count) const {
    const scalar_t dot = static_cast<scalar_t>(dots.of(r, c, count));
    const scalar_t y = alpha[c] * dot + (bias ? bias[c] : scalar_t(0));
    out[r * ldo + c] = residual ? y + residual[r * ldo + c] : y;
  }
};

// The epilogue of a linked conv: bit c of row r's bytes is 1 where low_c <= dot <= high_c,
// the dots at which the next layer's sign of its input is +1 (the caller's `sign_bounds`).
struct SignOutput {
  Dots dots;
  const int64_t *low, *high;
  uint8_t* signs;  // (pixels, bytes), zeroed, at the tile's first row and byte
  int64_t ldb;

  void finish(int64_t r, int64_t c, int64_t count) const {
    const int64_t dot = dots.of(r, c, count);
    if (low[c] <= dot && dot <= high[c]) signs[r * ldb + c / 8] |= uint8_t(1u << (c % 8));
  }
};

// The patch rows a tile multiplies, `span` words for each of `kernel_rows` kernel rows: word
// i * span + k of row r (kernel row i) at a[i * kernel_row_step + r * lda + k]. Gathered rows
// are one span of all their words; rows read in place from the bordered packed input have one
// span per kernel row (its kw taps, adjacent pixels), lda the words from one output pixel's
// patch to the next's (the stride times a pixel's words).
struct PatchRows {
  const word_t* a;
  int64_t lda, span, kernel_rows, kernel_row_step;

  int64_t depth() const { return kernel_rows * span; }
  PatchRows from(int64_t r) const { return {a + r * lda, lda, span, kernel_rows, kernel_row_step}; }
};

// out for an MR x NR block of patch rows and filters: popcount(A[r] XOR W[c]) accumulated in
// registers over the rows' words, then the epilogue. `w` points at filter c0's lane of its
// interleaved block, so filter c0 + c's word d is w[d * kLanes + c].
template <typename Epilogue, int MR, int NR>
POPCOUNT_TARGET inline void xnor_block(const PatchRows& p, const word_t* w, const Epilogue& e, int64_t r0,
                                       int64_t c0) {
  int64_t acc[MR][NR] = {};
  for (int64_t i = 0; i < p.kernel_rows; ++i) {
    const word_t* a = p.a + i * p.kernel_row_step;
    const word_t* wi = w + i * p.span * kLanes;
    for (int64_t k = 0; k < p.span; ++k) {
      word_t av[MR], wv[NR];
      for (int r = 0; r < MR; ++r) av[r] = a[r * p.lda + k];
      for (int c = 0; c < NR; ++c) wv[c] = wi[k * kLanes + c];
      for (int r = 0; r < MR; ++r)
        for (int c = 0; c < NR; ++c) acc[r][c] += __builtin_popcountll(av[r] ^ wv[c]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < NR; ++c) e.finish(r0 + r, c0 + c, acc[r][c]);
}

// Filter c's lane in weights `w8` interleaved kLanes filters at a time, `depth` words each.
inline const word_t* filter_lane(const word_t* w8, int64_t c, int64_t depth) {
  return w8 + c / kLanes * depth * kLanes + c % kLanes;
}

template <typename Epilogue, int MR>
POPCOUNT_TARGET void xnor_rows(const PatchRows& p, const word_t* w8, int64_t cols, const Epilogue& e,
                               int64_t r0) {
  static_assert(kLanes % kBlockCols == 0, "a register block of filters lies within one interleaved block");
  int64_t c = 0;
  for (; c + kBlockCols <= cols; c += kBlockCols)
    xnor_block<Epilogue, MR, kBlockCols>(p, filter_lane(w8, c, p.depth()), e, r0, c);
  for (; c < cols; ++c) xnor_block<Epilogue, MR, 1>(p, filter_lane(w8, c, p.depth()), e, r0, c);
}

// A tile: rows patch rows against cols filters of W (interleaved, from the tile's first
// filter, which starts a block).
template <typename Epilogue>
POPCOUNT_TARGET void xnor_tile(const PatchRows& p, const word_t* w8, int64_t rows, int64_t cols,
                               const Epilogue& e) {
  int64_t r = 0;
  for (; r + kBlockRows <= rows; r += kBlockRows) xnor_rows<Epilogue, kBlockRows>(p.from(r), w8, cols, e, r);
  for (; r < rows; ++r) xnor_rows<Epilogue, 1>(p.from(r), w8, cols, e, r);
}

#if defined(__x86_64__)
// AVX-512 VPOPCNTDQ (Ice Lake, Zen 4 and later): eight filters a vector, one 512-bit XOR and
// popcount per word of a patch row, against the weights' interleaved blocks of eight filters
// (blocks, depth, 8). A register block is MR patch rows by NB vectors of eight filters.
constexpr int kWide = kLanes, kWideBlocks = 2;

// Row r's dots with eight filters c0 .. c0 + 8 (`lanes` of them valid) from their popcounts.
WIDE_TARGET inline __m512i wide_dots(const Dots& d, int64_t r, int64_t c0, __mmask8 lanes, __m512i count) {
  if (const int32_t* padded = d.padded[r])
    count = _mm512_sub_epi64(count, _mm512_cvtepi32_epi64(_mm256_maskz_loadu_epi32(lanes, padded + c0)));
  return _mm512_sub_epi64(_mm512_set1_epi64(d.real_bits[r]), _mm512_slli_epi64(count, 1));
}

// The epilogue of one vector of eight filters c0 .. c0 + 8 for patch rows r0 .. r0 + MR, from
// their popcounts, each filter's terms loaded once for the rows. Float32 out: the dots
// converted from int64 lanes to float32 in one instruction; signs out: two integer compares
// give the row's byte of eight bits. Float64 out goes one filter at a time.
template <typename Epilogue, int MR>
WIDE_TARGET inline void finish_wide(const Epilogue& e, int64_t r0, int64_t c0, int64_t cols,
                                    const __m512i (&counts)[MR]) {
  const int64_t valid = std::min<int64_t>(kWide, cols - c0);
  const __mmask8 lanes = static_cast<__mmask8>((1u << valid) - 1);
  if constexpr (std::is_same_v<Epilogue, SignOutput>) {
    const __m512i low = _mm512_maskz_loadu_epi64(lanes, e.low + c0), high = _mm512_maskz_loadu_epi64(lanes, e.high + c0);
    for (int r = 0; r < MR; ++r) {
      const __m512i dot = wide_dots(e.dots, r0 + r, c0, lanes, counts[r]);
      const __mmask8 above_low = _mm512_mask_cmp_epi64_mask(lanes, low, dot, _MM_CMPINT_LE);
      e.signs[(r0 + r) * e.ldb + c0 / 8] = _mm512_mask_cmp_epi64_mask(above_low, dot, high, _MM_CMPINT_LE);
    }
  } else if constexpr (std::is_same_v<Epilogue, FloatOutput<float>>) {
    const __m256 alpha = _mm256_maskz_loadu_ps(lanes, e.alpha + c0);
    const __m256 bias = e.bias ? _mm256_maskz_loadu_ps(lanes, e.bias + c0) : _mm256_setzero_ps();
    for (int r = 0; r < MR; ++r) {
      const __m512i dot = wide_dots(e.dots, r0 + r, c0, lanes, counts[r]);
      __m256 y = _mm256_add_ps(_mm256_mul_ps(alpha, _mm512_cvtepi64_ps(dot)), bias);
      if (e.residual) y = _mm256_add_ps(y, _mm256_maskz_loadu_ps(lanes, e.residual + (r0 + r) * e.ldo + c0));
      _mm256_mask_storeu_ps(e.out + (r0 + r) * e.ldo + c0, lanes, y);
    }
  } else {
    for (int r = 0; r < MR; ++r) {
      alignas(64) int64_t lane_counts[kWide];
      _mm512_store_si512(lane_counts, counts[r]);
      for (int64_t c = 0; c < valid; ++c) e.finish(r0 + r, c0 + c, lane_counts[c]);
    }
  }
}

template <typename Epilogue, int MR, int NB>
WIDE_TARGET void xnor_block_wide(const PatchRows& p, const word_t* w8, int64_t cols, const Epilogue& e,
                                 int64_t r0, int64_t c0) {
  const int64_t depth = p.depth();
  __m512i acc[MR][NB];
  for (int r = 0; r < MR; ++r)
    for (int b = 0; b < NB; ++b) acc[r][b] = _mm512_setzero_si512();
  const word_t* a = p.a;
  const int64_t lda = p.lda, span = p.span, step = p.kernel_row_step;
  for (int64_t d = 0, k = 0; d < depth; ++d) {
    __m512i wv[NB];
    for (int b = 0; b < NB; ++b) wv[b] = _mm512_loadu_si512(w8 + (b * depth + d) * kWide);
    for (int r = 0; r < MR; ++r) {
      const __m512i av = _mm512_set1_epi64(static_cast<long long>(a[r * lda + k]));
      for (int b = 0; b < NB; ++b)
        acc[r][b] = _mm512_add_epi64(acc[r][b], _mm512_popcnt_epi64(_mm512_xor_si512(av, wv[b])));
    }
    if (++k == span) k = 0, a += step;
  }
  for (int b = 0; b < NB; ++b) {
    __m512i counts[MR];
    for (int r = 0; r < MR; ++r) counts[r] = acc[r][b];
    finish_wide<Epilogue, MR>(e, r0, c0 + b * kWide, cols, counts);
  }
}

template <typename Epilogue, int NB>
WIDE_TARGET void xnor_rows_wide(const PatchRows& p, const word_t* w8, int64_t rows, int64_t cols,
                                const Epilogue& e, int64_t c) {
  int64_t r = 0;
  for (; r + kBlockRows <= rows; r += kBlockRows)
    xnor_block_wide<Epilogue, kBlockRows, NB>(p.from(r), w8, cols, e, r, c);
  for (; r < rows; ++r) xnor_block_wide<Epilogue, 1, NB>(p.from(r), w8, cols, e, r, c);
}

template <typename Epilogue>
WIDE_TARGET void xnor_tile_wide(const PatchRows& p, const word_t* w8, int64_t rows, int64_t cols,
                                const Epilogue& e) {
  int64_t c = 0;
  for (; c + kWide * kWideBlocks <= cols; c += kWide * kWideBlocks)
    xnor_rows_wide<Epilogue, kWideBlocks>(p, w8 + c / kWide * p.depth() * kWide, rows, cols, e, c);
  for (; c < cols; c += kWide) xnor_rows_wide<Epilogue, 1>(p, w8 + c / kWide * p.depth() * kWide, rows, cols, e, c);
}

#endif

// The taps [first, last) of a kernel axis that lie inside the image for each output position
// along it (taps outside are a prefix and a suffix, since the input position grows with the
// tap), as an index into `spans`, the distinct spans in order of appearance.
std::vector<int64_t> span_of_each_output(int64_t outputs, int64_t size, int64_t taps, int64_t stride, int64_t pad,
                                         int64_t dilation, std::vector<std::pair<int64_t, int64_t>>& spans) {
  std::vector<int64_t> span(outputs);
  for (int64_t o = 0; o < outputs; ++o) {
    int64_t first = 0, last = taps;
    while (first < taps && o * stride - pad + first * dilation < 0) ++first;
    while (last > first && o * stride - pad + (last - 1) * dilation >= size) --last;
    const auto found = std::find(spans.begin(), spans.end(), std::make_pair(first, last));
    span[o] = found - spans.begin();
    if (found == spans.end()) spans.emplace_back(first, last);
  }
  return span;
}

// Zero padding's terms by border class. An output pixel's taps inside the image are a
// rectangle of the kernel, a span of rows by a span of columns; pixels with the same spans
// form a class (the interior, each edge and corner band). Per class: the real bits of a
// patch (channels times the taps inside) and, unless every tap is inside, each filter's set
// bits at the taps outside, which the zero words there made count as differing. The sums
// come from each filter's 2-D prefix sums of its set bits per tap, four lookups a class; each
// sum is a loop over the filters, which the compiler vectorizes.
struct BorderClasses {
  std::vector<std::pair<int64_t, int64_t>> row_spans, col_spans;
  std::vector<int64_t> row_span, col_span, real_bits;  // span of each output row and column; per class
  std::vector<int32_t> outside_bits;                    // (classes, filters)
  std::vector<uint8_t> interior;                        // per class: every tap inside

  // tap_bits (KH, KW, filters): each filter's set bits (+1 weights) at each tap
  BorderClasses(const Geometry& g, const int32_t* tap_bits, int64_t filters) {
    row_span = span_of_each_output(g.oh, g.h, g.kh, g.sh, g.ph, g.dh, row_spans);
    col_span = span_of_each_output(g.ow, g.w, g.kw, g.sw, g.pw, g.dw, col_spans);
    // prefix (kh + 1, kw + 1, filters): at (i, j), each filter's set bits at the taps above row i, left of column j
    std::vector<int32_t> prefix((g.kh + 1) * (g.kw + 1) * filters, 0);
    auto at = [&](int64_t i, int64_t j) { return prefix.data() + (i * (g.kw + 1) + j) * filters; };
    for (int64_t i = 0; i < g.kh; ++i)
      for (int64_t j = 0; j < g.kw; ++j) {
        const int32_t* tap = tap_bits + (i * g.kw + j) * filters;
        const int32_t *left = at(i + 1, j), *up = at(i, j + 1), *corner = at(i, j);
        int32_t* sum = at(i + 1, j + 1);
        for (int64_t f = 0; f < filters; ++f) sum[f] = tap[f] + left[f] + up[f] - corner[f];
      }
    const int64_t classes = row_spans.size() * col_spans.size();
    outside_bits.resize(classes * filters), real_bits.reserve(classes), interior.reserve(classes);
    const int32_t* all = at(g.kh, g.kw);
    for (const auto& [r0, r1] : row_spans)
      for (const auto& [c0, c1] : col_spans) {
        int32_t* outside = outside_bits.data() + real_bits.size() * filters;
        real_bits.push_back(g.channels_per_group * (r1 - r0) * (c1 - c0));
        interior.push_back(r1 - r0 == g.kh && c1 - c0 == g.kw);
        const int32_t *inside = at(r1, c1), *above = at(r0, c1), *left = at(r1, c0), *corner = at(r0, c0);
        for (int64_t f = 0; f < filters; ++f) outside[f] = all[f] - (inside[f] - above[f] - left[f] + corner[f]);
      }
  }

  int64_t of(int64_t oy, int64_t ox) const { return row_span[oy] * static_cast<int64_t>(col_spans.size()) + col_span[ox]; }
};

// The epilogue's row terms for pixels p0 .. p0 + rows and filters from o0: the real bits of
// each patch, and for a patch with padded taps the set bits of each filter there (from
// `classes`; null where there is no padding).
struct RowTerms {
  std::vector<int64_t> real_bits;
  std::vector<const int32_t*> padded;

  void fill(const Geometry& g, int64_t p0, int64_t rows, int64_t o0, int64_t filters, const BorderClasses* classes) {
    if (!classes) {  // every tap of every patch lies inside the image
      padded.assign(rows, nullptr);
      real_bits.assign(rows, g.channels_per_group * g.taps());
      return;
    }
    padded.resize(rows), real_bits.resize(rows);
    int64_t oy = p0 / g.ow % g.oh, ox = p0 % g.ow;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t k = classes->of(oy, ox);
      real_bits[r] = classes->real_bits[k];
      padded[r] = classes->interior[k] ? nullptr : classes->outside_bits.data() + k * filters + o0;
      if (++ox == g.ow) ox = 0, oy = (oy + 1) % g.oh;
    }
  }
};

// The affine map of the input before its sign, a and b one per input channel: a folded
// BatchNorm's (tensors), or, undefined, a = 1 and b = 0.
struct InputMap {
  at::Tensor scale, bias;
};

// An InputMap's a and b as pointers; the identity map's ones and zeros are held here, so that a
// layer without a folded BatchNorm allocates no tensors for them.
template <typename scalar_t>
struct ChannelMap {
  std::vector<scalar_t> ones, zeros;
  const scalar_t *scale, *bias;

  ChannelMap(const InputMap& map, int64_t channels) {
    if (map.scale.defined()) {
      scale = map.scale.data_ptr<scalar_t>(), bias = map.bias.data_ptr<scalar_t>();
      return;
    }
    ones.assign(channels, scalar_t(1)), zeros.assign(channels, scalar_t(0));
    scale = ones.data(), bias = zeros.data();
  }
};

// A layer's input: floats x (N, C, H, W), whose signs of a * x + b (`map`) the layer packs, or,
// `signs`, the words of its signs that the layer before packed, (N, H, W, words).
struct LayerInput {
  const at::Tensor& x;
  InputMap map;
  bool signs;
};

// A layer's output: floats y (N, C_out, OH, OW), channels-last, plus `residual` (of y's shape
// and layout) where defined, or, with `bounds` (2, C_out), the words of the bits
// low_c <= dot <= high_c, (N, OH, OW, words): the next layer's packed input, with no float
// output written and read back.
struct LayerOutput {
  at::Tensor tensor;
  c10::optional<at::Tensor> bounds;
  at::Tensor residual;
};

// The row tiles of a conv's output, up to kTileRows output pixels each, with their patch
// rows. Read in place (`PackedInput` bordered), a tile lies within one output line, along which
// the patches are a constant stride apart; gathered, or a 1x1 conv's packed pixels, tiles run
// over all pixels.
struct RowTiles {
  const Geometry& g;
  const PackedInput& packed;
  const word_t* gathered;  // null: read in place, or the packed pixels of a 1x1 conv of stride 1
  int64_t per_line, count;

  RowTiles(const Geometry& g, const PackedInput& packed, const word_t* gathered)
      : g(g), packed(packed), gathered(gathered), per_line((g.ow + kTileRows - 1) / kTileRows) {
    count = in_place() ? g.n * g.oh * per_line : (g.n * g.oh * g.ow + kTileRows - 1) / kTileRows;
  }

  bool in_place() const { return g.patches_in_place(); }
  int64_t full_rows() const { return std::min(kTileRows, in_place() ? g.ow : g.n * g.oh * g.ow); }

  struct Tile {
    int64_t first_pixel, rows;
    PatchRows patches;
  };

  Tile operator()(int64_t tile, int64_t group) const {
    if (in_place()) {
      const int64_t line = tile / per_line, ox = tile % per_line * kTileRows;
      const word_t* a = packed.row(line / g.oh, line % g.oh * g.sh - g.ph) + (ox * g.sw - g.pw) * g.words_per_group;
      return {line * g.ow + ox, std::min(kTileRows, g.ow - ox),
              {a, g.sw * g.words_per_group, g.kernel_row_words(), g.kh, g.dh * packed.row_words}};
    }
    const int64_t first = tile * kTileRows, lda = g.groups * g.depth();
    const word_t* a = (gathered ? gathered : packed.first) + first * lda + group * g.depth();
    return {first, std::min(kTileRows, g.n * g.oh * g.ow - first), {a, lda, g.depth(), 1, 0}};
  }
};

// The packed input of a layer: its input's signs packed, or the words the layer before packed.
template <typename scalar_t>
PackedInput packed_input(const LayerInput& in, const Geometry& g, bool wide, bool bordered) {
  PackedInput packed = in.signs ? PackedInput::of_signs(in.x, g, bordered) : PackedInput::for_input(in.x, g, bordered);
  if (!in.signs) {
    const ChannelMap<scalar_t> affine(in.map, g.groups * g.channels_per_group);
    pack_signs<scalar_t>(in.x, affine.scale, affine.bias, g, wide, packed);
  }
  if (g.dense_rows()) pack_kernel_rows(packed, g);
  return packed;
}

template <typename Epilogue>
void multiply_tile([[maybe_unused]] bool wide, const PatchRows& p, const word_t* w8, int64_t rows, int64_t cols,
                   const Epilogue& e) {
#if defined(__x86_64__)
  if (wide) return xnor_tile_wide<Epilogue>(p, w8, rows, cols, e);
#endif
  xnor_tile<Epilogue>(p, w8, rows, cols, e);
}

// `tap_bits` (KH, KW, C_out): each filter's set bits at each tap, for the padded taps' terms
// (null without padding).
template <typename scalar_t>
void xnor_conv_kernel(const LayerInput& in, const Geometry& g, const at::Tensor& weight, const int32_t* tap_bits,
                      const at::Tensor& alpha, const c10::optional<at::Tensor>& bias, const LayerOutput& out) {
  const int64_t filters = alpha.numel(), per_group = filters / g.groups;
  const bool wide = avx512_path();
  const PackedInput packed = packed_input<scalar_t>(in, g, wide, g.patches_in_place());
  at::Tensor gathered;
  word_t* gathered_rows = nullptr;
  if (!g.patches_in_place() && !g.pointwise()) {
    gathered = at::empty({g.n * g.oh * g.ow * g.groups * g.depth()}, packed.words.options());
    gathered_rows = reinterpret_cast<word_t*>(gathered.data_ptr<int64_t>());
    gather_patches(packed, g, gathered_rows);
  }
  const RowTiles row_tiles(g, packed, gathered_rows);
  const word_t* w8 = reinterpret_cast<const word_t*>(weight.data_ptr<int64_t>());
  std::unique_ptr<BorderClasses> classes;
  if (g.ph > 0 || g.pw > 0) classes = std::make_unique<BorderClasses>(g, tap_bits, filters);
  const int64_t group_blocks = (per_group + kLanes - 1) / kLanes;
  std::vector<word_t> dense_weights;
  if (g.dense_rows()) dense_weights = kernel_row_weights(w8, g, group_blocks), w8 = dense_weights.data();
  const scalar_t* alpha_data = alpha.data_ptr<scalar_t>();
  const scalar_t* bias_data = bias ? bias->data_ptr<scalar_t>() : nullptr;
  scalar_t* out_data = out.bounds ? nullptr : out.tensor.data_ptr<scalar_t>();
  const scalar_t* residual_data = out.residual.defined() ? out.residual.data_ptr<scalar_t>() : nullptr;
  // the signs' words as bytes, little-endian: bit c % 8 of byte c / 8 of a pixel holds channel c
  uint8_t* out_signs = out.bounds ? reinterpret_cast<uint8_t*>(out.tensor.data_ptr<int64_t>()) : nullptr;
  const int64_t* low = out.bounds ? out.bounds->data_ptr<int64_t>() : nullptr;
  const int64_t* high = low ? low + filters : nullptr;
  const int64_t out_bytes = words_for(filters) * int64_t{sizeof(word_t)};

  const int64_t col_tiles = (per_group + kTileCols - 1) / kTileCols;
  static_assert(kTileCols % kLanes == 0, "a tile's first filter starts an interleaved block");
  static_assert(kTileCols % kBits == 0 && kLanes == 8, "with one group, a tile's filters start a word of output "
                "signs, and eight of them are one byte");
  const int64_t tile_work = row_tiles.full_rows() * std::min(kTileCols, per_group) * g.patch_words();  // popcounts
  const int64_t tiles = row_tiles.count * col_tiles;
  at::parallel_for(0, tiles * g.groups, grain_for(tile_work), [&](int64_t begin, int64_t end) {
    RowTerms terms;
    for (int64_t t = begin; t < end; ++t) {
      const int64_t group = t / tiles, tile = t % tiles;
      const RowTiles::Tile rows = row_tiles(tile / col_tiles, group);
      const int64_t o0 = group * per_group + tile % col_tiles * kTileCols;
      const int64_t cols = std::min(kTileCols, (group + 1) * per_group - o0);
      terms.fill(g, rows.first_pixel, rows.rows, o0, filters, classes.get());
      const Dots dots{terms.real_bits.data(), terms.padded.data()};
      const int64_t block = group * group_blocks + (o0 - group * per_group) / kLanes;
      const word_t* w = w8 + block * g.patch_words() * kLanes;
      if (out_signs)
        multiply_tile(wide, rows.patches, w, rows.rows, cols,
                      SignOutput{dots, low + o0, high + o0, out_signs + rows.first_pixel * out_bytes + o0 / 8, out_bytes});
      else
        multiply_tile(wide, rows.patches, w, rows.rows, cols,
                      FloatOutput<scalar_t>{dots, alpha_data + o0, bias_data ? bias_data + o0 : nullptr,
                                            out_data + rows.first_pixel * filters + o0, filters,
                                            residual_data ? residual_data + rows.first_pixel * filters + o0 : nullptr});
    }
  });
}

// `dtype`: the float dtype of the layer's input and output (alpha's, where the input is packed signs).
void check_layer(const at::Tensor& x, at::ScalarType dtype, const at::Tensor& weight, const at::Tensor& alpha,
                 const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.device().is_cpu(), "xnortrain XNOR kernels run on the CPU");
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "input must be float32 or float64");
  TORCH_CHECK(weight.scalar_type() == at::kLong && weight.is_contiguous(), "packed weights must be contiguous int64");
  TORCH_CHECK(alpha.scalar_type() == dtype && alpha.is_contiguous() && alpha.dim() == 1,
              "alpha must hold one contiguous value of the input's dtype per output channel");
  TORCH_CHECK(!bias || (bias->scalar_type() == dtype && bias->is_contiguous() && bias->numel() == alpha.numel()),
              "bias must hold one contiguous value of the input's dtype per output channel");
}

// The input map a, b of a layer of `channels` input channels: both tensors, or neither.
InputMap input_map(at::ScalarType dtype, int64_t channels, const c10::optional<at::Tensor>& scale,
                  const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(scale.has_value() == bias.has_value(), "input_scale and input_bias come together");
  if (!scale) return {};
  for (const at::Tensor& t : {*scale, *bias})
    TORCH_CHECK(t.scalar_type() == dtype && t.is_contiguous() && t.numel() == channels,
                "input_scale and input_bias must hold one contiguous value of the layer's dtype per input channel");
  return {*scale, *bias};
}

// The output tensor of a layer of geometry g: floats (plus `residual`, channels-last), or, with
// `bounds`, the words of its bits.
LayerOutput layer_output(const Geometry& g, const at::Tensor& alpha, const c10::optional<at::Tensor>& bounds,
                         const c10::optional<at::Tensor>& residual = {}) {
  TORCH_CHECK(g.oh > 0 && g.ow > 0, "the kernel does not fit the padded input");
  const int64_t filters = alpha.numel();
  if (residual) {
    TORCH_CHECK(!bounds, "an XNOR conv adds a residual to float outputs only, not with sign_bounds");
    const std::vector<int64_t> shape{g.n, filters, g.oh, g.ow};
    TORCH_CHECK(residual->device().is_cpu() && residual->scalar_type() == alpha.scalar_type() &&
                    residual->sizes() == at::IntArrayRef(shape),
                "residual must be a CPU tensor of the conv output's shape (N, C_out, OH, OW) and dtype");
  }
  if (!bounds)
    return {at::empty({g.n, filters, g.oh, g.ow}, alpha.options().memory_format(at::MemoryFormat::ChannelsLast)), {},
            residual ? residual->contiguous(at::MemoryFormat::ChannelsLast) : at::Tensor()};
  TORCH_CHECK(g.groups == 1, "an XNOR conv packs the signs of its output with one group only");
  TORCH_CHECK(bounds->scalar_type() == at::kLong && bounds->is_contiguous() && bounds->dim() == 2 &&
                  bounds->size(0) == 2 && bounds->size(1) == filters,
              "sign_bounds must be contiguous int64 (2, C_out): each output channel's lowest and highest dot of bit 1");
  return {at::zeros({g.n, g.oh, g.ow, words_for(filters)}, alpha.options().dtype(at::kLong)), bounds};
}

void run_conv(const LayerInput& in, const Geometry& g, const at::Tensor& weight, const int32_t* tap_bits,
              const at::Tensor& alpha, const c10::optional<at::Tensor>& bias, const LayerOutput& out) {
  AT_DISPATCH_FLOATING_TYPES(alpha.scalar_type(), "xnor_conv2d", [&] {
    xnor_conv_kernel<scalar_t>(in, g, weight, tap_bits, alpha, bias, out);
  });
}

// The weights' shape in the kernel's layout: (groups, blocks, KH, KW, words, 8).
void check_layout(const at::Tensor& weight, int64_t groups, int64_t filters, int64_t channels_per_group) {
  TORCH_CHECK(weight.dim() == 6 && weight.size(0) == groups && weight.size(5) == kLanes &&
                  weight.size(1) == (filters / groups + kLanes - 1) / kLanes,
              "packed weights must be (groups, blocks of 8 filters, KH, KW, words, 8): xnor_layers.kernel_layout");
  TORCH_CHECK(weight.size(4) == words_for(channels_per_group), "packed weights do not fit the input's channels");
}

// x: floats (N, C, H, W), or, with signs_channels > 0, the packed signs (N, H, W, words) of
// that many channels, which the layer before wrote (its sign_bounds). `tap_bits`: the weights'
// set bits per tap and filter (`xnor_layers.tap_bits`). `residual`: a tensor of the output's
// shape added to it in the epilogue (a residual sum that reads the conv's output).
at::Tensor xnor_conv2d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& tap_bits,
                       const at::Tensor& alpha, const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                       at::IntArrayRef padding,
                       at::IntArrayRef dilation, int64_t groups, const c10::optional<at::Tensor>& input_scale,
                       const c10::optional<at::Tensor>& input_bias, int64_t signs_channels,
                       const c10::optional<at::Tensor>& sign_bounds, const c10::optional<at::Tensor>& residual) {
  const bool signs = signs_channels > 0;
  check_layer(x, signs ? alpha.scalar_type() : x.scalar_type(), weight, alpha, bias);
  TORCH_CHECK(x.dim() == 4, "xnor_conv2d takes input (N, C, H, W), or packed signs (N, H, W, words)");
  TORCH_CHECK(!signs || (x.scalar_type() == at::kLong && x.is_contiguous() && x.size(3) == words_for(signs_channels) &&
                         groups == 1 && !input_scale),
              "packed signs must be contiguous int64 (N, H, W, words) for one group, with no input map");
  const int64_t channels = signs ? signs_channels : x.size(1), h = x.size(signs ? 1 : 2), w = x.size(signs ? 2 : 3);
  TORCH_CHECK(groups > 0 && channels % groups == 0 && alpha.numel() % groups == 0,
              "groups must divide the input and output channels");
  check_layout(weight, groups, alpha.numel(), channels / groups);
  Geometry g{groups, channels / groups, weight.size(4), weight.size(2), weight.size(3), stride[0], stride[1],
             padding[0], padding[1], dilation[0], dilation[1], x.size(0), h, w, 0, 0};
  g.oh = (g.h + 2 * g.ph - g.dh * (g.kh - 1) - 1) / g.sh + 1;
  g.ow = (g.w + 2 * g.pw - g.dw * (g.kw - 1) - 1) / g.sw + 1;
  TORCH_CHECK(tap_bits.scalar_type() == at::kInt && tap_bits.is_contiguous() &&
                  tap_bits.sizes() == at::IntArrayRef({g.kh, g.kw, alpha.numel()}),
              "tap_bits must be contiguous int32 (KH, KW, C_out): each filter's set bits at each tap, "
              "xnor_layers.tap_bits");
  const LayerOutput out = layer_output(g, alpha, sign_bounds, residual);
  run_conv({x, input_map(alpha.scalar_type(), channels, input_scale, input_bias), signs}, g, weight,
           tap_bits.data_ptr<int32_t>(), alpha, bias, out);
  return out.tensor;
}

at::Tensor xnor_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& alpha,
                       const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& input_scale,
                       const c10::optional<at::Tensor>& input_bias) {
  check_layer(x, x.scalar_type(), weight, alpha, bias);
  TORCH_CHECK(x.dim() >= 1, "xnor_linear takes input (*, F)");
  const int64_t features = x.size(-1);
  check_layout(weight, 1, alpha.numel(), features);  // a linear layer is a 1x1 conv on 1x1 images
  auto rows = x.reshape({-1, features, 1, 1});
  Geometry g{1, features, weight.size(4), 1, 1, 1, 1, 0, 0, 1, 1, rows.size(0), 1, 1, 1, 1};
  const LayerOutput out = layer_output(g, alpha, {});
  run_conv({rows, input_map(x.scalar_type(), features, input_scale, input_bias), false}, g, weight,
           nullptr, alpha, bias, out);  // no padding: no border terms
  auto shape = x.sizes().vec();
  shape.back() = alpha.numel();
  return out.tensor.view(shape);
}

// Max pooling of packed signs (N, H, W, words), the bits of sign(a * x + b) of the next
// layer's input map: a * x + b rises with x where a >= 0 and falls where a < 0 (rounding
// keeps both monotone), so sign(a * max(window) + b) is the OR of the window's bits there and
// their AND where a < 0 (`falling`, one word of such channels' bits per input word). Taps in
// the padding take no part, as -inf in max_pool2d. Dilation 1.
at::Tensor sign_max_pool2d(const at::Tensor& signs, const at::Tensor& falling, at::IntArrayRef kernel,
                           at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode) {
  TORCH_CHECK(signs.scalar_type() == at::kLong && signs.is_contiguous() && signs.dim() == 4,
              "packed signs must be contiguous int64 (N, H, W, words)");
  TORCH_CHECK(falling.scalar_type() == at::kLong && falling.is_contiguous() && falling.numel() == signs.size(3),
              "falling must hold one int64 word per word of the signs");
  const int64_t n = signs.size(0), h = signs.size(1), w = signs.size(2), words = signs.size(3);
  auto pooled_size = [&](int64_t size, int64_t k, int64_t s, int64_t p) {
    int64_t out = (size + 2 * p - k + (ceil_mode ? s - 1 : 0)) / s + 1;
    if (ceil_mode && (out - 1) * s >= size + p) --out;  // the last window starts inside the image or its left padding
    return out;
  };
  const int64_t oh = pooled_size(h, kernel[0], stride[0], padding[0]), ow = pooled_size(w, kernel[1], stride[1], padding[1]);
  TORCH_CHECK(oh > 0 && ow > 0, "the pooling window does not fit the padded input");
  auto out = at::empty({n, oh, ow, words}, signs.options());
  const word_t* src = reinterpret_cast<const word_t*>(signs.data_ptr<int64_t>());
  const word_t* falls = reinterpret_cast<const word_t*>(falling.data_ptr<int64_t>());
  word_t* dst = reinterpret_cast<word_t*>(out.data_ptr<int64_t>());
  at::parallel_for(0, n * oh, grain_for(ow * words * kernel[0] * kernel[1]), [&](int64_t begin, int64_t end) {
    for (int64_t line = begin; line < end; ++line) {
      const int64_t image = line / oh, y0 = line % oh * stride[0] - padding[0];
      const int64_t y1 = std::min(y0 + kernel[0], h);
      for (int64_t ox = 0; ox < ow; ++ox) {
        const int64_t x0 = ox * stride[1] - padding[1], x1 = std::min(x0 + kernel[1], w);
        for (int64_t k = 0; k < words; ++k) {
          word_t any = 0, all = ~word_t{0};
          for (int64_t y = std::max<int64_t>(y0, 0); y < y1; ++y)
            for (int64_t x = std::max<int64_t>(x0, 0); x < x1; ++x) {
              const word_t bits = src[((image * h + y) * w + x) * words + k];
              any |= bits, all &= bits;
            }
          dst[(line * ow + ox) * words + k] = (any & ~falls[k]) | (all & falls[k]);
        }
      }
    }
  });
  return out;
}

bool hardware_popcount() {
#if defined(__x86_64__) || defined(__i386__)
  return __builtin_cpu_supports("popcnt");
#else
  return true;
#endif
}

std::string popcount_path() { return avx512_path() ? "AVX-512 VPOPCNTDQ" : "64-bit POPCNT"; }

}  // namespace

TORCH_LIBRARY(xnortrain, m) {
  m.def("xnor_conv2d(Tensor x, Tensor weight, Tensor tap_bits, Tensor alpha, Tensor? bias, int[2] stride, "
        "int[2] padding, int[2] dilation, int groups, Tensor? input_scale=None, Tensor? input_bias=None, "
        "int signs_channels=0, Tensor? sign_bounds=None, Tensor? residual=None) -> Tensor");
  m.def("xnor_linear(Tensor x, Tensor weight, Tensor alpha, Tensor? bias, Tensor? input_scale=None, "
        "Tensor? input_bias=None) -> Tensor");
  m.def("sign_max_pool2d(Tensor signs, Tensor falling, int[2] kernel, int[2] stride, int[2] padding, "
        "bool ceil_mode) -> Tensor");
  m.def("hardware_popcount() -> bool", &hardware_popcount);
  m.def("popcount_path() -> str", &popcount_path);
}

TORCH_LIBRARY_IMPL(xnortrain, CPU, m) {
  m.impl("xnor_conv2d", &xnor_conv2d);
  m.impl("xnor_linear", &xnor_linear);
  m.impl("sign_max_pool2d", &sign_max_pool2d);
}
