// Bilinear sampling kernels of vislab's deformable convolution on CPU (see vislab/ops/deform_conv.py).
//
// Plain C++ with a C interface, called through ctypes on raw pointers: no torch headers (it compiles
// in seconds) and no threads of its own. The caller splits the work into ranges of output rows and
// runs one range per Python thread (ctypes releases the GIL), so no OpenMP team spins while the
// cores are busy elsewhere.
//
// Layouts (all contiguous):
//   X       the chunk's input, zero-padded by PAD = 2 on each side, channels last, per channel
//           sub-group: [b, G', H + 4, W + 4, Cs]   (G' = G * r sub-groups of Cs channels)
//   offset  [b, 2 * G * K, Ho, Wo], (dy, dx) pairs per tap k = i * kw + j, offset group outermost
//   mask    [b, G * K, Ho, Wo] or null
//   cols    [b, Ho, Wo, G', K, Cs]: the sampled, modulated values ("im2col" columns)
//
// A sampling point reads y = ho * sh - ph + i * dh + dy clamped to [-2, H] (and x likewise); its four
// corners lie in the padded map, so a point outside reads the zero border: torchvision's rule (zero
// outside, each corner outside counts 0) without a bounds test. A NaN coordinate reads the border.
// Compiled with -O3 -march=native -fopenmp-simd (the simd pragmas need no OpenMP runtime).
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

constexpr int64_t PAD = 2;

struct Geometry {
  int64_t b, Ho, Wo, G, r, kh, kw, Cs, H, W, sh, sw, ph, pw, dh, dw;
  explicit Geometry(const int64_t* g)
      : b(g[0]), Ho(g[1]), Wo(g[2]), G(g[3]), r(g[4]), kh(g[5]), kw(g[6]), Cs(g[7]), H(g[8]), W(g[9]),
        sh(g[10]), sw(g[11]), ph(g[12]), pw(g[13]), dh(g[14]), dw(g[15]) {}
};

// The sampling points of one output row (bi, ho), in the order (g, k, wo): the top-left corner's flat
// index in one padded map, the fractional parts and the modulation. A whole row at a time, so that the
// coordinate arithmetic vectorises along wo (where the offsets are contiguous). Coordinates are
// computed in T, as torchvision does (float32 for float32 data).
template <typename T>
struct RowPoints {
  std::vector<int32_t> pixel;
  std::vector<T> ly, lx, m;

  explicit RowPoints(const Geometry& g) {
    const size_t n = static_cast<size_t>(g.G * g.kh * g.kw * g.Wo);
    pixel.resize(n);
    ly.resize(n);
    lx.resize(n);
    m.resize(n);
  }

  void compute(const Geometry& g, const T* offset, const T* mask, int64_t bi, int64_t ho) {
    const int64_t K = g.kh * g.kw, L = g.Ho * g.Wo, Wp = g.W + 2 * PAD;
    const T lo = -static_cast<T>(PAD), hi_y = static_cast<T>(g.H), hi_x = static_cast<T>(g.W);
    for (int64_t gi = 0; gi < g.G; ++gi) {
      for (int64_t i = 0; i < g.kh; ++i) {
        for (int64_t j = 0; j < g.kw; ++j) {
          const int64_t k = i * g.kw + j, q = (gi * K + k) * g.Wo;
          const T* __restrict oy = offset + (bi * 2 * g.G * K + 2 * (gi * K + k)) * L + ho * g.Wo;
          const T* __restrict ox = oy + L;
          const T by = static_cast<T>(ho * g.sh - g.ph + i * g.dh);
          const T bx = static_cast<T>(j * g.dw - g.pw);
          const T sw = static_cast<T>(g.sw);
          int32_t* __restrict px = pixel.data() + q;
          T* __restrict fy = ly.data() + q;
          T* __restrict fx = lx.data() + q;
#pragma omp simd
          for (int64_t wo = 0; wo < g.Wo; ++wo) {
            T y = by + oy[wo];
            T x = bx + static_cast<T>(wo) * sw + ox[wo];
            y = y > lo ? y : lo;  // a NaN coordinate fails the test and goes to the border
            y = y < hi_y ? y : hi_y;
            x = x > lo ? x : lo;
            x = x < hi_x ? x : hi_x;
            const T y0 = std::floor(y), x0 = std::floor(x);
            px[wo] = static_cast<int32_t>((static_cast<int64_t>(y0) + PAD) * Wp + static_cast<int64_t>(x0) + PAD);
            fy[wo] = y - y0;
            fx[wo] = x - x0;
          }
          T* __restrict mm = m.data() + q;
          if (mask) {
            const T* __restrict mk = mask + (bi * g.G * K + gi * K + k) * L + ho * g.Wo;
            for (int64_t wo = 0; wo < g.Wo; ++wo) mm[wo] = mk[wo];
          } else {
            for (int64_t wo = 0; wo < g.Wo; ++wo) mm[wo] = T(1);
          }
        }
      }
    }
  }
};

// cols for the output rows [start, end) of the chunk (row = bi * Ho + ho)
template <typename T>
void im2col(const T* __restrict X, const T* offset, const T* mask, T* __restrict cols, const int64_t* geo,
            int64_t start, int64_t end) {
  const Geometry g(geo);
  const int64_t K = g.kh * g.kw, Gs = g.G * g.r, Cs = g.Cs, Wp = g.W + 2 * PAD;
  const int64_t P = (g.H + 2 * PAD) * Wp;
  RowPoints<T> pts(g);
  if (Cs == 1 && g.r == 1) {  // one channel per offset group (a grayscale input): vectorise along wo
    for (int64_t row = start; row < end; ++row) {
      const int64_t bi = row / g.Ho, ho = row % g.Ho;
      pts.compute(g, offset, mask, bi, ho);
      T* out_row = cols + row * g.Wo * Gs * K;
      for (int64_t gi = 0; gi < g.G; ++gi) {
        const T* Xb = X + (bi * Gs + gi) * P;
        for (int64_t k = 0; k < K; ++k) {
          const int64_t q0 = (gi * K + k) * g.Wo, step = Gs * K;
          const int32_t* px = pts.pixel.data() + q0;
          const T *fy = pts.ly.data() + q0, *fx = pts.lx.data() + q0, *fm = pts.m.data() + q0;
          T* o = out_row + gi * K + k;
#pragma omp simd
          for (int64_t wo = 0; wo < g.Wo; ++wo) {
            const int64_t p = px[wo];
            const T ly = fy[wo], lx = fx[wo], m = fm[wo];
            o[wo * step] = m * ((1 - ly) * ((1 - lx) * Xb[p] + lx * Xb[p + 1]) +
                                ly * ((1 - lx) * Xb[p + Wp] + lx * Xb[p + Wp + 1]));
          }
        }
      }
    }
    return;
  }
  for (int64_t row = start; row < end; ++row) {
    const int64_t bi = row / g.Ho, ho = row % g.Ho;
    pts.compute(g, offset, mask, bi, ho);
    for (int64_t wo = 0; wo < g.Wo; ++wo) {
      T* out_pixel = cols + ((row * g.Wo + wo) * Gs) * K * Cs;
      for (int64_t gi = 0; gi < g.G; ++gi) {
        for (int64_t k = 0; k < K; ++k) {
          const int64_t q = (gi * K + k) * g.Wo + wo;
          const T ly = pts.ly[q], lx = pts.lx[q], m = pts.m[q];
          const T w00 = (1 - ly) * (1 - lx) * m, w01 = (1 - ly) * lx * m;
          const T w10 = ly * (1 - lx) * m, w11 = ly * lx * m;
          for (int64_t ri = 0; ri < g.r; ++ri) {
            const int64_t gs = gi * g.r + ri;
            const T* a = X + ((bi * Gs + gs) * P + pts.pixel[q]) * Cs;
            const T* c = a + Wp * Cs;
            T* __restrict o = out_pixel + (gs * K + k) * Cs;
#pragma omp simd
            for (int64_t ch = 0; ch < Cs; ++ch) {
              o[ch] = w00 * a[ch] + w01 * a[Cs + ch] + w10 * c[ch] + w11 * c[Cs + ch];
            }
          }
        }
      }
    }
  }
}

// For the output rows [start, end): the input gradient of the padded input, accumulated into gX (a
// buffer of X's shape private to the calling thread, zeroed by the caller; null: not needed), and the offset
// and mask gradients (null: not needed), from the column gradient gcols (the layout of cols).
template <typename T>
void col2im_coordinates(const T* __restrict X, const T* offset, const T* mask, const T* __restrict gcols,
                        T* __restrict gX, T* grad_offset, T* grad_mask, const int64_t* geo, int64_t start,
                        int64_t end) {
  const Geometry g(geo);
  const int64_t K = g.kh * g.kw, Gs = g.G * g.r, Cs = g.Cs, Wp = g.W + 2 * PAD, L = g.Ho * g.Wo;
  const int64_t P = (g.H + 2 * PAD) * Wp;
  const bool coordinates = grad_offset != nullptr || grad_mask != nullptr;
  RowPoints<T> pts(g);
  if (Cs == 1 && g.r == 1) {  // one channel per offset group: the coordinate gradients vectorise along wo
    for (int64_t row = start; row < end; ++row) {
      const int64_t bi = row / g.Ho, ho = row % g.Ho;
      pts.compute(g, offset, mask, bi, ho);
      const T* grad_row = gcols + row * g.Wo * Gs * K;
      for (int64_t gi = 0; gi < g.G; ++gi) {
        const T* Xb = X + (bi * Gs + gi) * P;
        for (int64_t k = 0; k < K; ++k) {
          const int64_t q0 = (gi * K + k) * g.Wo, step = Gs * K;
          const int32_t* px = pts.pixel.data() + q0;
          const T *fy = pts.ly.data() + q0, *fx = pts.lx.data() + q0, *fm = pts.m.data() + q0;
          const T* gc = grad_row + gi * K + k;
          if (grad_offset) {
            T* goy = grad_offset + (bi * 2 * g.G * K + 2 * (gi * K + k)) * L + ho * g.Wo;
            T* gox = goy + L;
#pragma omp simd
            for (int64_t wo = 0; wo < g.Wo; ++wo) {
              const int64_t p = px[wo];
              const T v = gc[wo * step] * fm[wo], ly = fy[wo], lx = fx[wo];
              const T a00 = Xb[p], a01 = Xb[p + 1], a10 = Xb[p + Wp], a11 = Xb[p + Wp + 1];
              goy[wo] = v * ((a10 - a00) * (1 - lx) + (a11 - a01) * lx);
              gox[wo] = v * ((a01 - a00) * (1 - ly) + (a11 - a10) * ly);
            }
          }
          if (grad_mask) {
            T* gm = grad_mask + (bi * g.G * K + gi * K + k) * L + ho * g.Wo;
#pragma omp simd
            for (int64_t wo = 0; wo < g.Wo; ++wo) {
              const int64_t p = px[wo];
              const T ly = fy[wo], lx = fx[wo];
              gm[wo] = gc[wo * step] * ((1 - ly) * ((1 - lx) * Xb[p] + lx * Xb[p + 1]) +
                                        ly * ((1 - lx) * Xb[p + Wp] + lx * Xb[p + Wp + 1]));
            }
          }
          if (gX) {  // scattered: points may share corners, so no vectorisation here
            T* gXb = gX + (bi * Gs + gi) * P;
            for (int64_t wo = 0; wo < g.Wo; ++wo) {
              const int64_t p = px[wo];
              const T v = gc[wo * step] * fm[wo], ly = fy[wo], lx = fx[wo];
              gXb[p] += (1 - ly) * (1 - lx) * v;
              gXb[p + 1] += (1 - ly) * lx * v;
              gXb[p + Wp] += ly * (1 - lx) * v;
              gXb[p + Wp + 1] += ly * lx * v;
            }
          }
        }
      }
    }
    return;
  }
  for (int64_t row = start; row < end; ++row) {
    const int64_t bi = row / g.Ho, ho = row % g.Ho;
    pts.compute(g, offset, mask, bi, ho);
    for (int64_t wo = 0; wo < g.Wo; ++wo) {
      const T* grad_pixel = gcols + ((row * g.Wo + wo) * Gs) * K * Cs;
      for (int64_t gi = 0; gi < g.G; ++gi) {
        for (int64_t k = 0; k < K; ++k) {
          const int64_t q = (gi * K + k) * g.Wo + wo;
          const T ly = pts.ly[q], lx = pts.lx[q], m = pts.m[q], hy = 1 - ly, hx = 1 - lx;
          const T w00 = hy * hx * m, w01 = hy * lx * m, w10 = ly * hx * m, w11 = ly * lx * m;
          T d00 = 0, d01 = 0, d10 = 0, d11 = 0;  // <grad column, corner value>, over the sub-groups
          for (int64_t ri = 0; ri < g.r; ++ri) {
            const int64_t gs = gi * g.r + ri;
            const int64_t corner = (bi * Gs + gs) * P + pts.pixel[q];
            const T* __restrict gc = grad_pixel + (gs * K + k) * Cs;
            if (coordinates) {
              const T* a = X + corner * Cs;
              const T* c = a + Wp * Cs;
              T s00 = 0, s01 = 0, s10 = 0, s11 = 0;
#pragma omp simd reduction(+ : s00, s01, s10, s11)
              for (int64_t ch = 0; ch < Cs; ++ch) {
                s00 += gc[ch] * a[ch];
                s01 += gc[ch] * a[Cs + ch];
                s10 += gc[ch] * c[ch];
                s11 += gc[ch] * c[Cs + ch];
              }
              d00 += s00;
              d01 += s01;
              d10 += s10;
              d11 += s11;
            }
            if (gX) {
              T* __restrict a = gX + corner * Cs;
              T* __restrict c = a + Wp * Cs;
#pragma omp simd
              for (int64_t ch = 0; ch < Cs; ++ch) {
                const T v = gc[ch];
                a[ch] += w00 * v;
                a[Cs + ch] += w01 * v;
                c[ch] += w10 * v;
                c[Cs + ch] += w11 * v;
              }
            }
          }
          if (!coordinates) continue;
          const int64_t at = ho * g.Wo + wo;
          if (grad_offset) {
            T* go = grad_offset + (bi * 2 * g.G * K + 2 * (gi * K + k)) * L + at;
            go[0] = ((d10 - d00) * hx + (d11 - d01) * lx) * m;
            go[L] = ((d01 - d00) * hy + (d11 - d10) * ly) * m;
          }
          if (grad_mask) {
            grad_mask[(bi * g.G * K + gi * K + k) * L + at] = (d00 * hx + d01 * lx) * hy + (d10 * hx + d11 * lx) * ly;
          }
        }
      }
    }
  }
}

// X's interior for the rows [start, end) of (bi, gs, y): X[bi, gs, y + 2, x + 2, c] = input[bi, gs * Cs + c, y, x]
// for an input of any strides (elements); the zero border is never written.
template <typename T>
void pad(const T* __restrict input, const int64_t* strides, T* __restrict X, const int64_t* geo, int64_t start,
         int64_t end) {
  const Geometry g(geo);
  const int64_t Gs = g.G * g.r, Cs = g.Cs, Wp = g.W + 2 * PAD, Hp = g.H + 2 * PAD;
  const int64_t s0 = strides[0], s1 = strides[1], s2 = strides[2], s3 = strides[3];
  for (int64_t row = start; row < end; ++row) {
    const int64_t y = row % g.H, gs = (row / g.H) % Gs, bi = row / (g.H * Gs);
    const T* in = input + bi * s0 + gs * Cs * s1 + y * s2;
    T* out = X + (((bi * Gs + gs) * Hp + y + PAD) * Wp + PAD) * Cs;
    if (s1 == 1) {  // channels last: copy runs of channels
      for (int64_t x = 0; x < g.W; ++x) {
        for (int64_t c = 0; c < Cs; ++c) out[x * Cs + c] = in[x * s3 + c];
      }
    } else {
      for (int64_t c = 0; c < Cs; ++c) {
        for (int64_t x = 0; x < g.W; ++x) out[x * Cs + c] = in[c * s1 + x * s3];
      }
    }
  }
}

// grad_input[bi, gs * Cs + c, y, x] = sum over the parts of gX[part, bi, gs, y + 2, x + 2, c] for the rows
// [start, end) of (bi, gs, y); grad_input contiguous [b, C, H, W], the parts part_stride elements apart.
template <typename T>
void unpad(const T* __restrict gX, int64_t parts, int64_t part_stride, T* __restrict grad_input, const int64_t* geo,
           int64_t start, int64_t end) {
  const Geometry g(geo);
  const int64_t Gs = g.G * g.r, Cs = g.Cs, Wp = g.W + 2 * PAD, Hp = g.H + 2 * PAD;
  for (int64_t row = start; row < end; ++row) {
    const int64_t y = row % g.H, gs = (row / g.H) % Gs, bi = row / (g.H * Gs);
    const T* in = gX + (((bi * Gs + gs) * Hp + y + PAD) * Wp + PAD) * Cs;
    T* out = grad_input + ((bi * Gs + gs) * Cs * g.H + y) * g.W;
    for (int64_t c = 0; c < Cs; ++c) {
      for (int64_t x = 0; x < g.W; ++x) {
        T v = in[x * Cs + c];
        for (int64_t p = 1; p < parts; ++p) v += in[p * part_stride + x * Cs + c];
        out[c * g.H * g.W + x] = v;
      }
    }
  }
}

}  // namespace

extern "C" {

void vislab_deform_pad_f32(const float* input, const int64_t* strides, float* X, const int64_t* geo, int64_t start,
                           int64_t end) {
  pad<float>(input, strides, X, geo, start, end);
}

void vislab_deform_pad_f64(const double* input, const int64_t* strides, double* X, const int64_t* geo,
                           int64_t start, int64_t end) {
  pad<double>(input, strides, X, geo, start, end);
}

void vislab_deform_unpad_f32(const float* gX, int64_t parts, int64_t part_stride, float* grad_input,
                             const int64_t* geo, int64_t start, int64_t end) {
  unpad<float>(gX, parts, part_stride, grad_input, geo, start, end);
}

void vislab_deform_unpad_f64(const double* gX, int64_t parts, int64_t part_stride, double* grad_input,
                             const int64_t* geo, int64_t start, int64_t end) {
  unpad<double>(gX, parts, part_stride, grad_input, geo, start, end);
}


void vislab_deform_im2col_f32(const float* X, const float* offset, const float* mask, float* cols,
                              const int64_t* geo, int64_t start, int64_t end) {
  im2col<float>(X, offset, mask, cols, geo, start, end);
}

void vislab_deform_im2col_f64(const double* X, const double* offset, const double* mask, double* cols,
                              const int64_t* geo, int64_t start, int64_t end) {
  im2col<double>(X, offset, mask, cols, geo, start, end);
}

void vislab_deform_col2im_f32(const float* X, const float* offset, const float* mask, const float* gcols, float* gX,
                              float* grad_offset, float* grad_mask, const int64_t* geo, int64_t start, int64_t end) {
  col2im_coordinates<float>(X, offset, mask, gcols, gX, grad_offset, grad_mask, geo, start, end);
}

void vislab_deform_col2im_f64(const double* X, const double* offset, const double* mask, const double* gcols,
                              double* gX, double* grad_offset, double* grad_mask, const int64_t* geo, int64_t start,
                              int64_t end) {
  col2im_coordinates<double>(X, offset, mask, gcols, gX, grad_offset, grad_mask, geo, start, end);
}

int vislab_deform_abi_version() { return 3; }

}  // extern "C"
