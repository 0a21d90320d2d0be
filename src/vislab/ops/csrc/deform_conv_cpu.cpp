// Bilinear sampling kernels of vislab's deformable convolution on CPU (see vislab/ops/deform_conv.py).
//
// Plain C++ with a C interface, called through ctypes on raw pointers: no torch headers (it compiles
// in seconds). The caller splits the work into pieces of rows (bounds[0..pieces]); each entry point runs
// them with a dynamic schedule on `threads` OpenMP threads. Built with -fopenmp, the library asks for
// libgomp.so.1, which resolves to the copy torch has already loaded: the kernels run on torch's own
// OpenMP threads, as an ATen operator does (threads of a second pool would compete with torch's
// threads while those spin-wait after each parallel region). Without OpenMP the pieces run in turn.
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
// Compiled with -O3 -march=native -fopenmp (or -fopenmp-simd: the simd pragmas alone, no threads).
#include <algorithm>
#include <cmath>
#ifdef _OPENMP
#include <omp.h>
#endif
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

// The column of output pixel (bi, wo) of the current row (its sampling points in pts): the values at its
// G' x K points, Cs channels each, modulated, written to o [G', K, Cs]. CS > 0: Cs == CS known at compile
// time (the channel loop unrolls into whole vectors), CS == 0: any Cs.
template <typename T, int CS>
inline void gather_pixel(const Geometry& g, const T* __restrict X, const RowPoints<T>& pts, int64_t bi, int64_t wo,
                         T* __restrict o) {
  const int64_t K = g.kh * g.kw, Gs = g.G * g.r, Cs = CS > 0 ? CS : g.Cs, Wp = g.W + 2 * PAD;
  const int64_t P = (g.H + 2 * PAD) * Wp;
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
        T* __restrict out = o + (gs * K + k) * Cs;
#pragma omp simd
        for (int64_t ch = 0; ch < Cs; ++ch) {
          out[ch] = w00 * a[ch] + w01 * a[Cs + ch] + w10 * c[ch] + w11 * c[Cs + ch];
        }
      }
    }
  }
}

// The backward of gather_pixel for output pixel (bi, ho, wo): from its column gradient gpix [G', K, Cs], the
// input gradient scattered into gX (null: not needed) and the offset and mask gradients of its points.
template <typename T, int CS>
inline void scatter_pixel(const Geometry& g, const T* __restrict X, const RowPoints<T>& pts, int64_t bi, int64_t ho,
                          int64_t wo, const T* __restrict gpix, T* __restrict gX, T* grad_offset, T* grad_mask) {
  const int64_t K = g.kh * g.kw, Gs = g.G * g.r, Cs = CS > 0 ? CS : g.Cs, Wp = g.W + 2 * PAD, L = g.Ho * g.Wo;
  const int64_t P = (g.H + 2 * PAD) * Wp;
  const bool coordinates = grad_offset != nullptr || grad_mask != nullptr;
  for (int64_t gi = 0; gi < g.G; ++gi) {
    for (int64_t k = 0; k < K; ++k) {
      const int64_t q = (gi * K + k) * g.Wo + wo;
      const T ly = pts.ly[q], lx = pts.lx[q], m = pts.m[q], hy = 1 - ly, hx = 1 - lx;
      const T w00 = hy * hx * m, w01 = hy * lx * m, w10 = ly * hx * m, w11 = ly * lx * m;
      T d00 = 0, d01 = 0, d10 = 0, d11 = 0;  // <grad column, corner value>, over the sub-groups
      for (int64_t ri = 0; ri < g.r; ++ri) {
        const int64_t gs = gi * g.r + ri;
        const int64_t corner = (bi * Gs + gs) * P + pts.pixel[q];
        const T* __restrict gc = gpix + (gs * K + k) * Cs;
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

template <typename T>
void im2col_rows(const Geometry& g, const T* __restrict X, const T* offset, const T* mask, T* __restrict cols,
                 RowPoints<T>& pts, int64_t start, int64_t end) {
  const int64_t R = g.G * g.r * g.kh * g.kw * g.Cs;
  for (int64_t row = start; row < end; ++row) {
    pts.compute(g, offset, mask, row / g.Ho, row % g.Ho);
    for (int64_t wo = 0; wo < g.Wo; ++wo) gather_pixel<T, 0>(g, X, pts, row / g.Ho, wo, cols + (row * g.Wo + wo) * R);
  }
}

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
  im2col_rows<T>(g, X, offset, mask, cols, pts, start, end);
}

// The backward of one output row's sampling with one channel per offset group (the row's points in pts): from
// the column gradient g(q, wo) = gcol[q * qs + wo * ws] (q = gi K + k), the offset and mask gradients of the
// points and the input gradient scattered into gX (each null: not needed). Xb, gXb: the image's padded maps
// [G, Hp, Wp]. WS1: ws == 1 (a contiguous row, vectorised as such).
template <typename T, bool WS1>
void single_scatter_row(const Geometry& g, const T* __restrict Xb, const RowPoints<T>& pts, int64_t bi, int64_t ho,
                        const T* __restrict gcol, int64_t qs, int64_t ws, T* gXb, T* grad_offset, T* grad_mask) {
  const int64_t K = g.kh * g.kw, Wp = g.W + 2 * PAD, P = (g.H + 2 * PAD) * Wp, L = g.Ho * g.Wo;
  const int64_t step = WS1 ? 1 : ws;
  for (int64_t gi = 0; gi < g.G; ++gi) {
    const T* Xg = Xb + gi * P;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t q = gi * K + k, q0 = q * g.Wo;
      const int32_t* px = pts.pixel.data() + q0;
      const T *fy = pts.ly.data() + q0, *fx = pts.lx.data() + q0, *fm = pts.m.data() + q0;
      const T* gc = gcol + q * qs;
      if (grad_offset) {
        T* goy = grad_offset + (bi * 2 * g.G * K + 2 * q) * L + ho * g.Wo;
        T* gox = goy + L;
#pragma omp simd
        for (int64_t wo = 0; wo < g.Wo; ++wo) {
          const int64_t p = px[wo];
          const T v = gc[wo * step] * fm[wo], ly = fy[wo], lx = fx[wo];
          const T a00 = Xg[p], a01 = Xg[p + 1], a10 = Xg[p + Wp], a11 = Xg[p + Wp + 1];
          goy[wo] = v * ((a10 - a00) * (1 - lx) + (a11 - a01) * lx);
          gox[wo] = v * ((a01 - a00) * (1 - ly) + (a11 - a10) * ly);
        }
      }
      if (grad_mask) {
        T* gm = grad_mask + (bi * g.G * K + q) * L + ho * g.Wo;
#pragma omp simd
        for (int64_t wo = 0; wo < g.Wo; ++wo) {
          const int64_t p = px[wo];
          const T ly = fy[wo], lx = fx[wo];
          gm[wo] = gc[wo * step] * ((1 - ly) * ((1 - lx) * Xg[p] + lx * Xg[p + 1]) +
                                    ly * ((1 - lx) * Xg[p + Wp] + lx * Xg[p + Wp + 1]));
        }
      }
      if (gXb) {  // scattered: points may share corners, so no vectorisation here
        T* gXg = gXb + gi * P;
        for (int64_t wo = 0; wo < g.Wo; ++wo) {
          const int64_t p = px[wo];
          const T v = gc[wo * step] * fm[wo], ly = fy[wo], lx = fx[wo];
          gXg[p] += (1 - ly) * (1 - lx) * v;
          gXg[p + 1] += (1 - ly) * lx * v;
          gXg[p + Wp] += ly * (1 - lx) * v;
          gXg[p + Wp + 1] += ly * lx * v;
        }
      }
    }
  }
}

template <typename T>
void col2im_rows(const Geometry& g, const T* __restrict X, const T* offset, const T* mask, const T* __restrict gcols,
                 T* __restrict gX, T* grad_offset, T* grad_mask, RowPoints<T>& pts, int64_t start, int64_t end) {
  const int64_t R = g.G * g.r * g.kh * g.kw * g.Cs;
  for (int64_t row = start; row < end; ++row) {
    const int64_t bi = row / g.Ho, ho = row % g.Ho;
    pts.compute(g, offset, mask, bi, ho);
    for (int64_t wo = 0; wo < g.Wo; ++wo) {
      scatter_pixel<T, 0>(g, X, pts, bi, ho, wo, gcols + (row * g.Wo + wo) * R, gX, grad_offset, grad_mask);
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
  const int64_t K = g.kh * g.kw, Gs = g.G * g.r, Cs = g.Cs, Wp = g.W + 2 * PAD;
  const int64_t P = (g.H + 2 * PAD) * Wp;
  RowPoints<T> pts(g);
  if (Cs == 1 && g.r == 1) {  // one channel per offset group: the coordinate gradients vectorise along wo
    for (int64_t row = start; row < end; ++row) {
      const int64_t bi = row / g.Ho, ho = row % g.Ho;
      pts.compute(g, offset, mask, bi, ho);
      single_scatter_row<T, false>(g, X + bi * Gs * P, pts, bi, ho, gcols + row * g.Wo * Gs * K, 1, Gs * K,
                                   gX ? gX + bi * Gs * P : nullptr, grad_offset, grad_mask);
    }
    return;
  }
  col2im_rows<T>(g, X, offset, mask, gcols, gX, grad_offset, grad_mask, pts, start, end);
}

// ---- Fused kernels for few output channels: no column buffer ----------------------------------------
// With C_out small the weight product of a pixel is a few hundred FMAs on data already in L1, while the
// column buffer costs a write and a read of 9 x C values per pixel through the caches: these kernels gather
// the columns of PB pixels into a small local buffer and multiply them there (groups = 1). C_out = CO is a
// compile-time constant so that the PB x CO accumulators stay in registers.
//   Wt   [R, CO]    the weight, transposed (R = G' K Cs in the columns' order)
//   W    [CO, Rp]   the weight, each row zero-padded to Rp = R rounded up to a multiple of VB
//   out / go  the chunk's output / output gradient [b, CO, Ho, Wo] (contiguous)
//   gWt  [R, CO]    this worker's weight-gradient accumulator (null: not needed)

constexpr int64_t PB = 8;   // pixels per block
constexpr int64_t VB = 16;  // column entries per block of the column gradient

inline int64_t padded(int64_t R) { return (R + VB - 1) / VB * VB; }

template <typename T, int CS, int CO>
void fused_forward_rows(const Geometry& g, const T* __restrict X, const T* offset, const T* mask,
                        const T* __restrict Wt, T* __restrict out, RowPoints<T>& pts, int64_t start, int64_t end) {
  const int64_t R = g.G * g.r * g.kh * g.kw * (CS > 0 ? CS : g.Cs), L = g.Ho * g.Wo;
  std::vector<T> v(static_cast<size_t>(PB * R), T(0)), rowbuf(static_cast<size_t>(CO * g.Wo));
  for (int64_t row = start; row < end; ++row) {
    const int64_t bi = row / g.Ho, ho = row % g.Ho;
    pts.compute(g, offset, mask, bi, ho);
    for (int64_t w0 = 0; w0 < g.Wo; w0 += PB) {
      const int64_t np = std::min(PB, g.Wo - w0);
      for (int64_t p = 0; p < np; ++p) gather_pixel<T, CS>(g, X, pts, bi, w0 + p, v.data() + p * R);
      T acc[PB][CO] = {};
      for (int64_t r = 0; r < R; ++r) {
        const T* __restrict wr = Wt + r * CO;
        for (int64_t p = 0; p < PB; ++p) {
          const T vp = v[p * R + r];
#pragma omp simd
          for (int co = 0; co < CO; ++co) acc[p][co] += wr[co] * vp;
        }
      }
      for (int64_t p = 0; p < np; ++p) {
        for (int co = 0; co < CO; ++co) rowbuf[co * g.Wo + w0 + p] = acc[p][co];
      }
    }
    for (int co = 0; co < CO; ++co) {
      std::copy(rowbuf.data() + co * g.Wo, rowbuf.data() + (co + 1) * g.Wo, out + (bi * CO + co) * L + ho * g.Wo);
    }
  }
}

template <typename T, int CS, int CO>
void fused_backward_rows(const Geometry& g, const T* __restrict X, const T* offset, const T* mask,
                         const T* __restrict W, const T* __restrict go, T* __restrict gX, T* grad_offset,
                         T* grad_mask, T* __restrict gWt, RowPoints<T>& pts, int64_t start, int64_t end) {
  const int64_t R = g.G * g.r * g.kh * g.kw * (CS > 0 ? CS : g.Cs), Rp = padded(R), L = g.Ho * g.Wo;
  const bool sampling = gX != nullptr || grad_offset != nullptr || grad_mask != nullptr;
  std::vector<T> v(static_cast<size_t>(PB * R), T(0)), gv(static_cast<size_t>(PB * Rp), T(0));
  std::vector<T> gorow(static_cast<size_t>((g.Wo + PB) * CO), T(0));
  for (int64_t row = start; row < end; ++row) {
    const int64_t bi = row / g.Ho, ho = row % g.Ho;
    pts.compute(g, offset, mask, bi, ho);
    for (int co = 0; co < CO; ++co) {  // go[bi, co, ho, :] -> [wo, co]
      const T* __restrict src = go + (bi * CO + co) * L + ho * g.Wo;
      for (int64_t wo = 0; wo < g.Wo; ++wo) gorow[wo * CO + co] = src[wo];
    }
    for (int64_t w0 = 0; w0 < g.Wo; w0 += PB) {
      const int64_t np = std::min(PB, g.Wo - w0);
      const T* __restrict gp = gorow.data() + w0 * CO;  // [PB, CO]; rows past np are stale, never stored
      if (gWt) {  // grad_W^T += column (x) grad_out, over the block's pixels, PB rows of grad_W^T at a time
        for (int64_t p = 0; p < np; ++p) gather_pixel<T, CS>(g, X, pts, bi, w0 + p, v.data() + p * R);
        for (int64_t r0 = 0; r0 < R; r0 += PB) {
          const int64_t nr = std::min(PB, R - r0);
          T acc[PB][CO] = {};
          for (int64_t p = 0; p < np; ++p) {
            const T* __restrict vp = v.data() + p * R + r0;
            for (int64_t rr = 0; rr < PB; ++rr) {
              const T x = rr < nr ? vp[rr] : T(0);
#pragma omp simd
              for (int co = 0; co < CO; ++co) acc[rr][co] += gp[p * CO + co] * x;
            }
          }
          for (int64_t rr = 0; rr < nr; ++rr) {
#pragma omp simd
            for (int co = 0; co < CO; ++co) gWt[(r0 + rr) * CO + co] += acc[rr][co];
          }
        }
      }
      if (!sampling) continue;
      for (int64_t r0 = 0; r0 < Rp; r0 += VB) {  // the block's column gradients W^T grad_out, VB entries at a time
        T acc[PB][VB] = {};
        for (int co = 0; co < CO; ++co) {
          const T* __restrict wr = W + co * Rp + r0;
          for (int64_t p = 0; p < PB; ++p) {
            const T gpc = gp[p * CO + co];
#pragma omp simd
            for (int64_t j = 0; j < VB; ++j) acc[p][j] += wr[j] * gpc;
          }
        }
        for (int64_t p = 0; p < PB; ++p) {
          for (int64_t j = 0; j < VB; ++j) gv[p * Rp + r0 + j] = acc[p][j];
        }
      }
      for (int64_t p = 0; p < np; ++p) {
        scatter_pixel<T, CS>(g, X, pts, bi, ho, w0 + p, gv.data() + p * Rp, gX, grad_offset, grad_mask);
      }
    }
  }
}

// The sampled, modulated values v[q, wo] (q = gi K + k) of one output row, one channel per offset group; Xb:
// the image's padded maps [G, Hp, Wp].
template <typename T>
void single_values(const Geometry& g, const T* __restrict Xb, const RowPoints<T>& pts, T* __restrict v) {
  const int64_t K = g.kh * g.kw, Wp = g.W + 2 * PAD, P = (g.H + 2 * PAD) * Wp;
  for (int64_t gi = 0; gi < g.G; ++gi) {
    const T* Xg = Xb + gi * P;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t q0 = (gi * K + k) * g.Wo;
      const int32_t* px = pts.pixel.data() + q0;
      const T *fy = pts.ly.data() + q0, *fx = pts.lx.data() + q0, *fm = pts.m.data() + q0;
      T* __restrict o = v + q0;
#pragma omp simd
      for (int64_t wo = 0; wo < g.Wo; ++wo) {
        const int64_t p = px[wo];
        const T ly = fy[wo], lx = fx[wo];
        o[wo] = fm[wo] * ((1 - ly) * ((1 - lx) * Xg[p] + lx * Xg[p + 1]) + ly * ((1 - lx) * Xg[p + Wp] + lx * Xg[p + Wp + 1]));
      }
    }
  }
}

// One channel per offset group (a grayscale first layer): R = G K values per pixel, so the row's sampled values
// v[q, wo] and every product are vectorised along the output row instead (any C_out).
template <typename T>
void fused_forward_single(const Geometry& g, const T* __restrict X, const T* offset, const T* mask,
                          const T* __restrict Wt, T* __restrict out, int64_t C_out, RowPoints<T>& pts, int64_t start,
                          int64_t end) {
  const int64_t K = g.kh * g.kw, R = g.G * K, Wp = g.W + 2 * PAD, P = (g.H + 2 * PAD) * Wp, L = g.Ho * g.Wo;
  std::vector<T> v(static_cast<size_t>(R * g.Wo));
  for (int64_t row = start; row < end; ++row) {
    const int64_t bi = row / g.Ho, ho = row % g.Ho;
    pts.compute(g, offset, mask, bi, ho);
    single_values(g, X + bi * g.G * P, pts, v.data());
    for (int64_t co = 0; co < C_out; ++co) {
      T* __restrict o = out + (bi * C_out + co) * L + ho * g.Wo;
      for (int64_t wo = 0; wo < g.Wo; ++wo) o[wo] = 0;
      for (int64_t q = 0; q < R; ++q) {
        const T wq = Wt[q * C_out + co];
        const T* __restrict vq = v.data() + q * g.Wo;
#pragma omp simd
        for (int64_t wo = 0; wo < g.Wo; ++wo) o[wo] += wq * vq[wo];
      }
    }
  }
}

template <typename T>
void fused_backward_single(const Geometry& g, const T* __restrict X, const T* offset, const T* mask,
                           const T* __restrict W, const T* __restrict go, T* __restrict gX, T* grad_offset,
                           T* grad_mask, T* __restrict gWt, int64_t C_out, RowPoints<T>& pts, int64_t start,
                           int64_t end) {
  const int64_t K = g.kh * g.kw, R = g.G * K, Rp = padded(R), Wp = g.W + 2 * PAD, P = (g.H + 2 * PAD) * Wp;
  const int64_t L = g.Ho * g.Wo;
  std::vector<T> v(static_cast<size_t>(R * g.Wo)), gv(static_cast<size_t>(R * g.Wo));
  for (int64_t row = start; row < end; ++row) {
    const int64_t bi = row / g.Ho, ho = row % g.Ho;
    pts.compute(g, offset, mask, bi, ho);
    const T* gorow = go + bi * C_out * L + ho * g.Wo;  // grad_out[bi, co, ho, :] at gorow + co * L
    if (gWt) {  // grad_W[co, q] += <grad_out[co, :], v[q, :]> over the row
      single_values(g, X + bi * g.G * P, pts, v.data());
      for (int64_t q = 0; q < R; ++q) {
        const T* __restrict vq = v.data() + q * g.Wo;
        for (int64_t co = 0; co < C_out; ++co) {
          const T* __restrict gc = gorow + co * L;
          T sum = 0;
#pragma omp simd reduction(+ : sum)
          for (int64_t wo = 0; wo < g.Wo; ++wo) sum += gc[wo] * vq[wo];
          gWt[q * C_out + co] += sum;
        }
      }
    }
    if (gX == nullptr && grad_offset == nullptr && grad_mask == nullptr) continue;
    for (int64_t q = 0; q < R; ++q) {  // the column gradient gv[q, :] = sum_co W[co, q] grad_out[co, :]
      T* __restrict gq = gv.data() + q * g.Wo;
      for (int64_t wo = 0; wo < g.Wo; ++wo) gq[wo] = 0;
      for (int64_t co = 0; co < C_out; ++co) {
        const T wq = W[co * Rp + q];
        const T* __restrict gc = gorow + co * L;
#pragma omp simd
        for (int64_t wo = 0; wo < g.Wo; ++wo) gq[wo] += wq * gc[wo];
      }
    }
    single_scatter_row<T, true>(g, X + bi * g.G * P, pts, bi, ho, gv.data(), g.Wo, 1,
                                gX ? gX + bi * g.G * P : nullptr, grad_offset, grad_mask);
  }
}

template <typename T, int CS>
bool fused_forward_co(const Geometry& g, const T* X, const T* offset, const T* mask, const T* Wt, T* out,
                      int64_t C_out, RowPoints<T>& pts, int64_t start, int64_t end) {
  switch (C_out) {
    case 8: fused_forward_rows<T, CS, 8>(g, X, offset, mask, Wt, out, pts, start, end); return true;
    case 16: fused_forward_rows<T, CS, 16>(g, X, offset, mask, Wt, out, pts, start, end); return true;
    default: return false;
  }
}

template <typename T, int CS>
bool fused_backward_co(const Geometry& g, const T* X, const T* offset, const T* mask, const T* W, const T* go,
                       T* gX, T* grad_offset, T* grad_mask, T* gWt, int64_t C_out, RowPoints<T>& pts, int64_t start,
                       int64_t end) {
  switch (C_out) {
    case 8: fused_backward_rows<T, CS, 8>(g, X, offset, mask, W, go, gX, grad_offset, grad_mask, gWt, pts, start, end);
      return true;
    case 16: fused_backward_rows<T, CS, 16>(g, X, offset, mask, W, go, gX, grad_offset, grad_mask, gWt, pts, start,
                                           end);
      return true;
    default: return false;
  }
}

// Returns false (nothing done) for an output-channel count without a fused kernel: 8 and 16 have one, and any
// count with one channel per offset group.
template <typename T>
bool fused_forward(const T* X, const T* offset, const T* mask, const T* Wt, T* out, const int64_t* geo,
                   int64_t C_out, int64_t start, int64_t end) {
  const Geometry g(geo);
  RowPoints<T> pts(g);
  if (g.Cs == 1 && g.r == 1) {
    fused_forward_single<T>(g, X, offset, mask, Wt, out, C_out, pts, start, end);
    return true;
  }
  switch (g.Cs) {
    case 16: return fused_forward_co<T, 16>(g, X, offset, mask, Wt, out, C_out, pts, start, end);
    case 32: return fused_forward_co<T, 32>(g, X, offset, mask, Wt, out, C_out, pts, start, end);
    default: return fused_forward_co<T, 0>(g, X, offset, mask, Wt, out, C_out, pts, start, end);
  }
}

template <typename T>
bool fused_backward(const T* X, const T* offset, const T* mask, const T* W, const T* go, T* gX, T* grad_offset,
                    T* grad_mask, T* gWt, const int64_t* geo, int64_t C_out, int64_t start, int64_t end) {
  const Geometry g(geo);
  RowPoints<T> pts(g);
  if (g.Cs == 1 && g.r == 1) {
    fused_backward_single<T>(g, X, offset, mask, W, go, gX, grad_offset, grad_mask, gWt, C_out, pts, start, end);
    return true;
  }
  switch (g.Cs) {
    case 16: return fused_backward_co<T, 16>(g, X, offset, mask, W, go, gX, grad_offset, grad_mask, gWt, C_out, pts,
                                             start, end);
    case 32: return fused_backward_co<T, 32>(g, X, offset, mask, W, go, gX, grad_offset, grad_mask, gWt, C_out, pts,
                                             start, end);
    default: return fused_backward_co<T, 0>(g, X, offset, mask, W, go, gX, grad_offset, grad_mask, gWt, C_out, pts,
                                            start, end);
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

// body(piece, start, end) for every piece of rows [bounds[i], bounds[i + 1]), dynamically scheduled (a thread
// whose core is busy elsewhere takes fewer pieces); the pieces, not the threads, decide every result.
template <typename F>
void run_pieces(const int64_t* bounds, int64_t pieces, int64_t threads, F body) {
  if (threads <= 1) {  // no OpenMP construct at all: safe in a forked child, whose inherited pool is dead
    for (int64_t i = 0; i < pieces; ++i) body(i, bounds[i], bounds[i + 1]);
    return;
  }
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(static_cast<int>(threads))
#endif
  for (int64_t i = 0; i < pieces; ++i) body(i, bounds[i], bounds[i + 1]);
}

// Where piece j (output rows [a, z)) scatters its input gradient. mode 0: nowhere (null); 1: the shared
// chunk-shaped buffer gX, the piece's whole images zeroed first; 2: a one-image buffer of the piece's own
// (gX + j * image), zeroed, returned shifted so that the kernel's image index a / ho lands on it.
template <typename T>
T* piece_gradient(T* gX, int64_t mode, int64_t image, int64_t ho, int64_t j, int64_t a, int64_t z) {
  if (mode == 0 || gX == nullptr) return nullptr;
  if (mode == 1) {
    std::fill(gX + (a / ho) * image, gX + (z / ho) * image, T(0));
    return gX;
  }
  T* own = gX + j * image;
  std::fill(own, own + image, T(0));
  return own - (a / ho) * image;
}

bool fused_supported(const Geometry& g, int64_t C_out) {
  return (g.Cs == 1 && g.r == 1) || C_out == 8 || C_out == 16;
}

template <typename T>
void pad_all(const T* input, const int64_t* strides, T* X, const int64_t* geo, const int64_t* bounds,
             int64_t pieces, int64_t threads) {
  run_pieces(bounds, pieces, threads, [&](int64_t, int64_t a, int64_t z) { pad<T>(input, strides, X, geo, a, z); });
}

template <typename T>
void unpad_all(const T* gX, int64_t parts, int64_t part_stride, T* grad_input, const int64_t* geo,
               const int64_t* bounds, int64_t pieces, int64_t threads) {
  run_pieces(bounds, pieces, threads,
             [&](int64_t, int64_t a, int64_t z) { unpad<T>(gX, parts, part_stride, grad_input, geo, a, z); });
}

template <typename T>
void im2col_all(const T* X, const T* offset, const T* mask, T* cols, const int64_t* geo, const int64_t* bounds,
                int64_t pieces, int64_t threads) {
  run_pieces(bounds, pieces, threads,
             [&](int64_t, int64_t a, int64_t z) { im2col<T>(X, offset, mask, cols, geo, a, z); });
}

template <typename T>
void col2im_all(const T* X, const T* offset, const T* mask, const T* gcols, T* gX, int64_t mode, int64_t image,
                T* grad_offset, T* grad_mask, const int64_t* geo, const int64_t* bounds, int64_t pieces,
                int64_t threads) {
  const int64_t ho = Geometry(geo).Ho;
  run_pieces(bounds, pieces, threads, [&](int64_t j, int64_t a, int64_t z) {
    col2im_coordinates<T>(X, offset, mask, gcols, piece_gradient(gX, mode, image, ho, j, a, z), grad_offset,
                          grad_mask, geo, a, z);
  });
}

template <typename T>
int fused_forward_all(const T* X, const T* offset, const T* mask, const T* Wt, T* out, const int64_t* geo,
                      int64_t C_out, const int64_t* bounds, int64_t pieces, int64_t threads) {
  if (!fused_supported(Geometry(geo), C_out)) return 0;
  run_pieces(bounds, pieces, threads, [&](int64_t, int64_t a, int64_t z) {
    fused_forward<T>(X, offset, mask, Wt, out, geo, C_out, a, z);
  });
  return 1;
}

// gWt: one [R, C_out] weight-gradient accumulator per piece, gwt_stride elements apart (null: not needed)
template <typename T>
int fused_backward_all(const T* X, const T* offset, const T* mask, const T* W, const T* go, T* gX, int64_t mode,
                       int64_t image, T* grad_offset, T* grad_mask, T* gWt, int64_t gwt_stride, const int64_t* geo,
                       int64_t C_out, const int64_t* bounds, int64_t pieces, int64_t threads) {
  const Geometry g(geo);
  if (!fused_supported(g, C_out)) return 0;
  run_pieces(bounds, pieces, threads, [&](int64_t j, int64_t a, int64_t z) {
    fused_backward<T>(X, offset, mask, W, go, piece_gradient(gX, mode, image, g.Ho, j, a, z), grad_offset,
                      grad_mask, gWt ? gWt + j * gwt_stride : nullptr, geo, C_out, a, z);
  });
  return 1;
}

}  // namespace

extern "C" {

#define VISLAB_ENTRIES(T, S)                                                                                      \
  void vislab_deform_pad_##S(const T* input, const int64_t* strides, T* X, const int64_t* geo,                   \
                             const int64_t* bounds, int64_t pieces, int64_t threads) {                            \
    pad_all<T>(input, strides, X, geo, bounds, pieces, threads);                                                 \
  }                                                                                                               \
  void vislab_deform_unpad_##S(const T* gX, int64_t parts, int64_t part_stride, T* grad_input, const int64_t* geo, \
                               const int64_t* bounds, int64_t pieces, int64_t threads) {                          \
    unpad_all<T>(gX, parts, part_stride, grad_input, geo, bounds, pieces, threads);                              \
  }                                                                                                               \
  void vislab_deform_im2col_##S(const T* X, const T* offset, const T* mask, T* cols, const int64_t* geo,         \
                                const int64_t* bounds, int64_t pieces, int64_t threads) {                         \
    im2col_all<T>(X, offset, mask, cols, geo, bounds, pieces, threads);                                          \
  }                                                                                                               \
  void vislab_deform_col2im_##S(const T* X, const T* offset, const T* mask, const T* gcols, T* gX, int64_t mode,   \
                                int64_t image, T* grad_offset, T* grad_mask, const int64_t* geo,                  \
                                const int64_t* bounds, int64_t pieces, int64_t threads) {                         \
    col2im_all<T>(X, offset, mask, gcols, gX, mode, image, grad_offset, grad_mask, geo, bounds, pieces, threads); \
  }                                                                                                               \
  int vislab_deform_fused_forward_##S(const T* X, const T* offset, const T* mask, const T* Wt, T* out,            \
                                      const int64_t* geo, int64_t C_out, const int64_t* bounds, int64_t pieces,   \
                                      int64_t threads) {                                                          \
    return fused_forward_all<T>(X, offset, mask, Wt, out, geo, C_out, bounds, pieces, threads);                  \
  }                                                                                                               \
  int vislab_deform_fused_backward_##S(const T* X, const T* offset, const T* mask, const T* W, const T* go, T* gX, \
                                       int64_t mode, int64_t image, T* grad_offset, T* grad_mask, T* gWt,         \
                                       int64_t gwt_stride, const int64_t* geo, int64_t C_out,                     \
                                       const int64_t* bounds, int64_t pieces, int64_t threads) {                  \
    return fused_backward_all<T>(X, offset, mask, W, go, gX, mode, image, grad_offset, grad_mask, gWt, gwt_stride, \
                                 geo, C_out, bounds, pieces, threads);                                            \
  }

VISLAB_ENTRIES(float, f32)
VISLAB_ENTRIES(double, f64)

#undef VISLAB_ENTRIES

// 1 when built with OpenMP (the pieces run on several threads), 0 when the pieces run in turn
int vislab_deform_openmp() {
#ifdef _OPENMP
  return 1;
#else
  return 0;
#endif
}

// omp_get_max_threads() of the runtime the kernels run on: with torch's, what torch.set_num_threads set (-1: no
// OpenMP)
int vislab_deform_omp_max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return -1;
#endif
}

int vislab_deform_abi_version() { return 5; }

}  // extern "C"
