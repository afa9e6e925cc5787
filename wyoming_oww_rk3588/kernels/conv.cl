// One convolution layer of openWakeWord's speech-embedding model as an implicit GEMM:
// rows = (stream, time row, freq bin) outputs, columns = output channels, K = taps x CIN.
// NHWC activations; a work-group computes TM rows x all COUT channels, staging K-chunks of
// the gathered input and of the weights in local memory, RM x RN outputs per work-item.
//
// This file is a template: the host prepends a #define block per layer (and #undefs after).
//   KNAME                 kernel name
//   CIN, COUT, KT, KF     channels; taps on time (1|3, valid) and frequency (1|3, same padding)
//   TOUT, FOUT            output rows and frequency bins per stream
//   PT, PF                max-pool (window = stride) applied to the stored input on the fly
//   STATEFUL              1: streaming time conv, 2 cached input rows (NCHW state) in front;
//                         the joined input's last 2 rows are written out as the new state
//   ACT, ALPHA, FLOOR     1: + bias, LeakyRelu(ALPHA), max(., FLOOR); 0: plain conv
//   X_HALF, Y_HALF, W_HALF  half storage (vload_half/vstore_half) of input/output/weights
//   HALF_MATH             half arithmetic for the inner products (cl_khr_fp16 devices only)
//   RM, RN, MT, NT, KC    tiling: work-group MT*NT items, TM = MT*RM rows, K-chunk KC
//                         (KC a multiple of 4 dividing CIN: vector gather, else a scalar one)

#define TM (MT * RM)
#define WG (MT * NT)
#define KTOT (KT * KF * CIN)
#define XF (FOUT * PF)
#if STATEFUL
#define XT (TOUT * PT)
#else
#define XT ((TOUT + KT - 1) * PT)
#endif
#if X_HALF
#define XTYPE half
#define LOADX(p, i) vload_half((i), (p))
#define LOADX4(p) vload_half4(0, (p))
#else
#define XTYPE float
#define LOADX(p, i) ((p)[i])
#define LOADX4(p) vload4(0, (p))
#endif
#define VEC_GATHER (KC % 4 == 0 && CIN % KC == 0)

#if Y_HALF
#define YTYPE half
#define STOREY(p, i, v) vstore_half((v), (i), (p))
#else
#define YTYPE float
#define STOREY(p, i, v) ((p)[i] = (v))
#endif
#if W_HALF
#define WTYPE half
#define LOADW(p, i) vload_half((i), (p))
#else
#define WTYPE float
#define LOADW(p, i) ((p)[i])
#endif
#if HALF_MATH
#define TILE half
#else
#define TILE float
#endif

__kernel __attribute__((reqd_work_group_size(WG, 1, 1)))
void KNAME(const int batch,
           __global const XTYPE* x, const int x_off,
           __global const float* s_in, const int s_in_off,
           __global float* s_out, const int s_out_off,
           __global const WTYPE* w, __global const float* bias,
           __global YTYPE* y, const int y_off)
{
    __local TILE a_tile[KC][TM + 1];  // +1: consecutive K elements of a row hit other banks
    __local TILE w_tile[KC][COUT];
    const int lid = get_local_id(0);
    const int tn = lid % NT;
    const int tm = lid / NT;
    const int m0 = get_group_id(0) * TM;
    const int rows = batch * (TOUT * FOUT);
    float acc[RM][RN];
    for (int i = 0; i < RM; ++i)
        for (int j = 0; j < RN; ++j) acc[i][j] = 0.0f;

    for (int k0 = 0; k0 < KTOT; k0 += KC) {
#if VEC_GATHER
        // A chunk lies inside one tap (KC divides CIN); each load is 4 consecutive input
        // channels of one row (one vector load, NHWC).
        {
            const int kt = (k0 / CIN) / KF;
            const int kf = (k0 / CIN) % KF;
            for (int e = lid; e < TM * (KC / 4); e += WG) {
                const int kq = (e % (KC / 4)) * 4;
                const int r = e / (KC / 4);
                const int ci = k0 % CIN + kq;
                const int m = m0 + r;
                float4 v = (float4)(0.0f);
                if (m < rows) {
                    const int b = m / (TOUT * FOUT);
                    const int t = (m / FOUT) % TOUT;
                    const int fi = m % FOUT + kf - KF / 2;
                    const int joined = t + kt;
                    if (fi >= 0 && fi < FOUT) {
#if STATEFUL
                        if (joined < 2) {
                            const int s = s_in_off + ((b * CIN + ci) * 2 + joined) * FOUT + fi;
                            v = (float4)(s_in[s], s_in[s + 2 * FOUT], s_in[s + 4 * FOUT], s_in[s + 6 * FOUT]);
                        } else
#endif
                        {
                            const int base = x_off + ((b * XT + (joined - 2 * STATEFUL) * PT) * XF + fi * PF) * CIN + ci;
                            v = LOADX4(x + base);
#if PF == 2
                            v = fmax(v, LOADX4(x + base + CIN));
#endif
#if PT == 2
                            v = fmax(v, LOADX4(x + base + XF * CIN));
#if PF == 2
                            v = fmax(v, LOADX4(x + base + XF * CIN + CIN));
#endif
#endif
                        }
#if STATEFUL
                        if (joined >= TOUT && kf == KF / 2 && (kt == 2 || t == 0)) {
                            const int s = s_out_off + ((b * CIN + ci) * 2 + (joined - TOUT)) * FOUT + fi;
                            s_out[s] = v.x;
                            s_out[s + 2 * FOUT] = v.y;
                            s_out[s + 4 * FOUT] = v.z;
                            s_out[s + 6 * FOUT] = v.w;
                        }
#endif
                    }
                }
                a_tile[kq][r] = (TILE)v.x;
                a_tile[kq + 1][r] = (TILE)v.y;
                a_tile[kq + 2][r] = (TILE)v.z;
                a_tile[kq + 3][r] = (TILE)v.w;
            }
        }
#else
        for (int e = lid; e < TM * KC; e += WG) {
            const int kk = e % KC;
            const int r = e / KC;
            const int m = m0 + r;
            float v = 0.0f;
            if (m < rows) {
                const int k = k0 + kk;
                const int ci = k % CIN;
                const int kt = (k / CIN) / KF;
                const int kf = (k / CIN) % KF;
                const int b = m / (TOUT * FOUT);
                const int t = (m / FOUT) % TOUT;
                const int f = m % FOUT;
                const int fi = f + kf - KF / 2;
                if (fi >= 0 && fi < FOUT) {
                    const int joined = t + kt;  // row of the (state ++ input) sequence
#if STATEFUL
                    if (joined < 2) {
                        v = s_in[s_in_off + ((b * CIN + ci) * 2 + joined) * FOUT + fi];
                    } else
#endif
                    {
                        const int xr = joined - 2 * STATEFUL;
                        const int base = x_off + ((b * XT + xr * PT) * XF + fi * PF) * CIN + ci;
                        v = LOADX(x, base);
#if PF == 2
                        v = fmax(v, LOADX(x, base + CIN));
#endif
#if PT == 2
                        v = fmax(v, LOADX(x, base + XF * CIN));
#if PF == 2
                        v = fmax(v, LOADX(x, base + XF * CIN + CIN));
#endif
#endif
                    }
#if STATEFUL
                    // New state = joined rows TOUT, TOUT+1; written by exactly one loader each.
                    if (joined >= TOUT && kf == KF / 2 && (kt == 2 || t == 0))
                        s_out[s_out_off + ((b * CIN + ci) * 2 + (joined - TOUT)) * FOUT + fi] = v;
#endif
                }
            }
            a_tile[kk][r] = (TILE)v;
        }
#endif
        for (int e = lid; e < KC * COUT; e += WG) {
            const int kk = e / COUT, n = e % COUT;
            w_tile[kk][n] = (TILE)LOADW(w, (k0 + kk) * COUT + n);
        }
        barrier(CLK_LOCAL_MEM_FENCE);
#if HALF_MATH
        // Half products summed per chunk, chunks summed in float: bounded rounding growth.
        half part[RM][RN];
        for (int i = 0; i < RM; ++i)
            for (int j = 0; j < RN; ++j) part[i][j] = (half)0.0f;
#endif
        for (int kk = 0; kk < KC; ++kk) {
            TILE av[RM], wv[RN];
            for (int i = 0; i < RM; ++i) av[i] = a_tile[kk][tm + i * MT];
            for (int j = 0; j < RN; ++j) wv[j] = w_tile[kk][tn + j * NT];
            for (int i = 0; i < RM; ++i)
                for (int j = 0; j < RN; ++j)
#if HALF_MATH
                    part[i][j] = fma(av[i], wv[j], part[i][j]);
#else
                    acc[i][j] = fma(av[i], wv[j], acc[i][j]);
#endif
        }
#if HALF_MATH
        for (int i = 0; i < RM; ++i)
            for (int j = 0; j < RN; ++j) acc[i][j] += (float)part[i][j];
#endif
        barrier(CLK_LOCAL_MEM_FENCE);
    }

    for (int i = 0; i < RM; ++i) {
        const int m = m0 + tm + i * MT;
        if (m >= rows) continue;
        for (int j = 0; j < RN; ++j) {
            const int n = tn + j * NT;
            float v = acc[i][j];
#if ACT
            v += bias[n];
            v = v >= 0.0f ? v : v * ALPHA;
            v = fmax(v, FLOOR);
#endif
            STOREY(y, y_off + m * COUT + n, v);
        }
    }
}

#undef TM
#undef WG
#undef KTOT
#undef XF
#undef XT
#undef XTYPE
#undef LOADX
#undef LOADX4
#undef VEC_GATHER
#undef YTYPE
#undef STOREY
#undef WTYPE
#undef LOADW
#undef TILE
