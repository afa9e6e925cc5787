// Melspectrogram of openWakeWord's mel model: power STFT (512 taps, hop 160) -> mel matrix ->
// Clip(CLIP_MIN) -> 10*log10 -> max(x, rowmax - TOP_DB) with the maximum taken per batch row.
// One work-group per batch row (stream), so the per-row maximum is a work-group reduction.
//
// Host #defines: WG (work-group size), PAIRS (frame pairs per chunk held in local memory),
// N_FFT, LOG2_N, HOP, N_BINS, N_MELS, CLIP_MIN, TOP_DB, DB_MUL, DB_DIV, and MEL_FFT:
//   1: the model's filters were verified to be window * DFT, so a radix-2 FFT of the windowed
//      frames gives the same power spectrum. Each real frame is one N/2-point complex FFT of
//      its even and odd samples, computed in float-float (hi + lo, ~48 bits): a float32 FFT's
//      rounding, relative to the frame's loudest bins, moves the quiet bins just above the
//      top-80 dB floor enough to shift embeddings by ~2e-3; float-float keeps them within
//      1e-4 of the CPU's rFFT, on devices without fp64 (Mali has none) as well;
//   0: direct dot products with the model's real/imag filters (any filter bank).

#define CHUNK (2 * PAIRS)
// MEL_SCALE 1: write openWakeWord's x/10 + 2 of the result (what the embedding takes), so the
// features step can feed the embedding kernels without a host round trip.
#ifndef MEL_SCALE
#define MEL_SCALE 0
#endif

#define HALF (N_FFT / 2)

// Float-float numbers (x: hi, y: lo). Exact error terms need IEEE single arithmetic and fma,
// which OpenCL requires; nothing here may be reassociated (no -cl-fast-relaxed-math).
inline float2 ff_two_sum(float a, float b) {
    const float s = a + b, v = s - a;
    return (float2)(s, (a - (s - v)) + (b - v));
}
inline float2 ff_norm(float a, float b) { const float s = a + b; return (float2)(s, b - (s - a)); }
inline float2 ff_add(float2 a, float2 b) { const float2 s = ff_two_sum(a.x, b.x); return ff_norm(s.x, s.y + (a.y + b.y)); }
inline float2 ff_mul(float2 a, float2 b) {
    const float p = a.x * b.x;
    return ff_norm(p, fma(a.x, b.y, fma(a.y, b.x, fma(a.x, b.x, -p))));
}
inline float2 ff_exact_mul(float a, float b) { const float p = a * b; return (float2)(p, fma(a, b, -p)); }
// Complex float-float: (re.hi, re.lo, im.hi, im.lo).
inline float4 cff_add(float4 a, float4 b) { return (float4)(ff_add(a.xy, b.xy), ff_add(a.zw, b.zw)); }
inline float4 cff_mul(float4 w, float4 z) {
    return (float4)(ff_add(ff_mul(w.xy, z.xy), -ff_mul(w.zw, z.zw)), ff_add(ff_mul(w.xy, z.zw), ff_mul(w.zw, z.xy)));
}

inline int bit_reverse_half(int n) {
    int r = 0;
    for (int i = 0; i < LOG2_N - 1; ++i) r = (r << 1) | ((n >> i) & 1);
    return r;
}

__kernel __attribute__((reqd_work_group_size(WG, 1, 1)))
void melspectrogram(__global const float* audio, const int samples, const int frames,
                    __global const float* window, __global const float4* twiddle,
                    __global const float* filt_re, __global const float* filt_im,
                    __global const float* mel, __global const int* mel_lo, __global const int* mel_hi,
                    __global float* out)
{
#if MEL_FFT
    __local float4 z[CHUNK][HALF];
#else
    __local float xs[CHUNK][N_FFT];
#endif
    __local float power[CHUNK][N_BINS];
    __local float red[WG];
    const int lid = get_local_id(0);
    const __global float* x = audio + (size_t)get_group_id(0) * samples;
    __global float* y = out + (size_t)get_group_id(0) * frames * N_MELS;
    float rowmax = -INFINITY;

    for (int f0 = 0; f0 < frames; f0 += CHUNK) {
        const int nf = min(CHUNK, frames - f0);
#if MEL_FFT
        // Windowed frames, one per complex sequence (re: even samples, im: odd), bit-reversed.
        for (int e = lid; e < CHUNK * HALF; e += WG) {
            const int fr = e / HALF, n = e % HALF;
            const int f = f0 + fr;
            const float a = f < frames ? x[f * HOP + 2 * n] : 0.0f;
            const float b = f < frames ? x[f * HOP + 2 * n + 1] : 0.0f;
            z[fr][bit_reverse_half(n)] = (float4)(ff_exact_mul(a, window[2 * n]), ff_exact_mul(b, window[2 * n + 1]));
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        // N/2-point FFT: its twiddles exp(-2 pi i pos / 2span) are every (HALF/span)-th of the table.
        for (int span = 1; span < HALF; span <<= 1) {
            for (int e = lid; e < CHUNK * (HALF / 2); e += WG) {
                const int p = e / (HALF / 2), i = e % (HALF / 2);
                const int pos = i & (span - 1);
                const int a = ((i - pos) << 1) + pos;
                const float4 za = z[p][a], t = cff_mul(twiddle[pos * (HALF / span)], z[p][a + span]);
                z[p][a] = cff_add(za, t);
                z[p][a + span] = cff_add(za, -t);
            }
            barrier(CLK_LOCAL_MEM_FENCE);
        }
        // Even/odd samples' spectra E = (Z[k] + conj Z[N/2-k]) / 2, O = (Z[k] - conj Z[N/2-k]) / 2i;
        // X[k] = E + exp(-2 pi i k / N) O for k = 0 .. N/2 (halving is exact).
        for (int e = lid; e < CHUNK * N_BINS; e += WG) {
            const int p = e / N_BINS, k = e % N_BINS;
            const float4 zk = z[p][k & (HALF - 1)], zn = z[p][(HALF - k) & (HALF - 1)];
            const float4 even = 0.5f * (float4)(ff_add(zk.xy, zn.xy), ff_add(zk.zw, -zn.zw));
            const float4 odd = 0.5f * (float4)(ff_add(zk.zw, zn.zw), ff_add(zn.xy, -zk.xy));
            const float4 w = k < HALF ? twiddle[k] : (float4)(-1.0f, 0.0f, 0.0f, 0.0f);
            const float4 spec = cff_add(even, cff_mul(w, odd));
            const float re = spec.x + spec.y, im = spec.z + spec.w;
            power[p][k] = re * re + im * im;
        }
#else
        for (int e = lid; e < CHUNK * N_FFT; e += WG) {
            const int fr = e / N_FFT, n = e % N_FFT;
            xs[fr][n] = f0 + fr < frames ? x[(f0 + fr) * HOP + n] : 0.0f;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int e = lid; e < nf * N_BINS; e += WG) {
            const int fr = e / N_BINS, k = e % N_BINS;
            float re = 0.0f, im = 0.0f;
            for (int n = 0; n < N_FFT; ++n) {
                re = fma(xs[fr][n], filt_re[k * N_FFT + n], re);
                im = fma(xs[fr][n], filt_im[k * N_FFT + n], im);
            }
            power[fr][k] = re * re + im * im;
        }
#endif
        barrier(CLK_LOCAL_MEM_FENCE);
        // Mel filterbank over each filter's nonzero bins, then dB; keep this row's maximum.
        for (int e = lid; e < nf * N_MELS; e += WG) {
            const int fr = e / N_MELS, m = e % N_MELS;
            float s = 0.0f;
            for (int k = mel_lo[m]; k < mel_hi[m]; ++k) s = fma(power[fr][k], mel[k * N_MELS + m], s);
            const float db = log(fmax(s, CLIP_MIN)) * DB_MUL / DB_DIV;
            y[f0 * N_MELS + e] = db;
            rowmax = fmax(rowmax, db);
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }

    red[lid] = rowmax;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = WG / 2; s > 0; s >>= 1) {
        if (lid < s) red[lid] = fmax(red[lid], red[lid + s]);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const float floor_db = red[0] - TOP_DB;
    // Each work-item rereads only what it wrote itself, so no global fence is needed.
    for (int f0 = 0; f0 < frames; f0 += CHUNK) {
        const int nf = min(CHUNK, frames - f0);
#if MEL_SCALE
        for (int e = lid; e < nf * N_MELS; e += WG) y[f0 * N_MELS + e] = fmax(y[f0 * N_MELS + e], floor_db) / 10.0f + 2.0f;
#else
        for (int e = lid; e < nf * N_MELS; e += WG) y[f0 * N_MELS + e] = fmax(y[f0 * N_MELS + e], floor_db);
#endif
    }
}
