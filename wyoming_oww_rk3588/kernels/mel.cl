// Melspectrogram of openWakeWord's mel model: power STFT (512 taps, hop 160) -> mel matrix ->
// Clip(CLIP_MIN) -> 10*log10 -> max(x, rowmax - TOP_DB) with the maximum taken per batch row.
// One work-group per batch row (stream), so the per-row maximum is a work-group reduction.
//
// Host #defines: WG (work-group size), PAIRS (frame pairs per chunk held in local memory),
// N_FFT, LOG2_N, HOP, N_BINS, N_MELS, CLIP_MIN, TOP_DB, DB_MUL, DB_DIV, and MEL_FFT:
//   1: the model's filters were verified to be window * DFT, so a radix-2 FFT of the windowed
//      frames gives the same power spectrum (two real frames per complex FFT);
//   0: direct dot products with the model's real/imag filters (any filter bank).

#define CHUNK (2 * PAIRS)
// MEL_SCALE 1: write openWakeWord's x/10 + 2 of the result (what the embedding takes), so the
// features step can feed the embedding kernels without a host round trip.
#ifndef MEL_SCALE
#define MEL_SCALE 0
#endif

inline int bit_reverse(int n) {
    int r = 0;
    for (int i = 0; i < LOG2_N; ++i) r = (r << 1) | ((n >> i) & 1);
    return r;
}

__kernel __attribute__((reqd_work_group_size(WG, 1, 1)))
void melspectrogram(__global const float* audio, const int samples, const int frames,
                    __global const float* window, __global const float2* twiddle,
                    __global const float* filt_re, __global const float* filt_im,
                    __global const float* mel, __global const int* mel_lo, __global const int* mel_hi,
                    __global float* out)
{
#if MEL_FFT
    __local float2 z[PAIRS][N_FFT];
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
        // Windowed frames, two per complex sequence (re: even frame, im: odd), bit-reversed.
        for (int e = lid; e < PAIRS * N_FFT; e += WG) {
            const int p = e / N_FFT, n = e % N_FFT;
            const int fa = f0 + 2 * p, fb = fa + 1;
            const float wn = window[n];
            const float a = fa < frames ? x[fa * HOP + n] * wn : 0.0f;
            const float b = fb < frames ? x[fb * HOP + n] * wn : 0.0f;
            z[p][bit_reverse(n)] = (float2)(a, b);
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int span = 1; span < N_FFT; span <<= 1) {
            for (int e = lid; e < PAIRS * (N_FFT / 2); e += WG) {
                const int p = e / (N_FFT / 2), i = e % (N_FFT / 2);
                const int pos = i & (span - 1);
                const int a = ((i - pos) << 1) + pos;
                const float2 w = twiddle[pos * (N_FFT / 2 / span)];
                const float2 za = z[p][a], zb = z[p][a + span];
                const float2 t = (float2)(w.x * zb.x - w.y * zb.y, w.x * zb.y + w.y * zb.x);
                z[p][a] = za + t;
                z[p][a + span] = za - t;
            }
            barrier(CLK_LOCAL_MEM_FENCE);
        }
        // Split Z = A + iB into the two real frames' spectra: A = (Z[k] + conj Z[N-k]) / 2,
        // B = (Z[k] - conj Z[N-k]) / 2i; only their power is needed.
        for (int e = lid; e < PAIRS * N_BINS; e += WG) {
            const int p = e / N_BINS, k = e % N_BINS;
            const float2 zk = z[p][k & (N_FFT - 1)], zn = z[p][(N_FFT - k) & (N_FFT - 1)];
            const float ar = 0.5f * (zk.x + zn.x), ai = 0.5f * (zk.y - zn.y);
            const float br = 0.5f * (zk.y + zn.y), bi = 0.5f * (zk.x - zn.x);
            power[2 * p][k] = ar * ar + ai * ai;
            power[2 * p + 1][k] = br * br + bi * bi;
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
