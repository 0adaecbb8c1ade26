// FMA peak of this CPU (scripts/fma-peak.sh): per thread, 12 independent FMA chains on ymm or
// zmm registers, so the FMA units, not their latency, bound the rate. The figure the CPU
// kernels are compared with ("% of peak" in bench --profile notes). Mode `bf16` runs
// `vdpbf16ps` on zmm (AVX512_BF16): each instruction is 16 lanes x 2 products, counted as 64
// flops, the peak of the `--precision bf16` CPU kernels. Mode `amx` runs `tdpbf16ps` on the AMX
// tiles (AMX-BF16): four independent 16x16 f32 tiles, each instruction 16x16x32 products,
// counted as 16,384 flops, the peak of the bf16 tile kernels (after asking Linux for the tile
// state).
#define _GNU_SOURCE
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>

static long iters = 200000000;
static int zmm = 0;

__attribute__((target("avx2,fma"))) static float run_ymm(long n) {
    __m256 a0 = _mm256_set1_ps(1.0f + 0 * 0.001f), a1 = _mm256_set1_ps(1.0f + 1 * 0.001f), a2 = _mm256_set1_ps(1.0f + 2 * 0.001f), a3 = _mm256_set1_ps(1.0f + 3 * 0.001f), a4 = _mm256_set1_ps(1.0f + 4 * 0.001f), a5 = _mm256_set1_ps(1.0f + 5 * 0.001f), a6 = _mm256_set1_ps(1.0f + 6 * 0.001f), a7 = _mm256_set1_ps(1.0f + 7 * 0.001f), a8 = _mm256_set1_ps(1.0f + 8 * 0.001f), a9 = _mm256_set1_ps(1.0f + 9 * 0.001f), a10 = _mm256_set1_ps(1.0f + 10 * 0.001f), a11 = _mm256_set1_ps(1.0f + 11 * 0.001f);
    const __m256 b = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
    for (long i = 0; i < n; i++) {
#define F(x) x = _mm256_fmadd_ps(x, b, c)
        F(a0); F(a1); F(a2); F(a3); F(a4); F(a5); F(a6); F(a7); F(a8); F(a9); F(a10); F(a11);
#undef F
        __asm__ volatile("" : "+x"(a0), "+x"(a1), "+x"(a2), "+x"(a3), "+x"(a4), "+x"(a5));
        __asm__ volatile("" : "+x"(a6), "+x"(a7), "+x"(a8), "+x"(a9), "+x"(a10), "+x"(a11));
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                             _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
    s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
    float out[8];
    _mm256_storeu_ps(out, s);
    return out[0];
}

__attribute__((target("avx512f"))) static float run_zmm(long n) {
    __m512 a0 = _mm512_set1_ps(1.0f + 0 * 0.001f), a1 = _mm512_set1_ps(1.0f + 1 * 0.001f), a2 = _mm512_set1_ps(1.0f + 2 * 0.001f), a3 = _mm512_set1_ps(1.0f + 3 * 0.001f), a4 = _mm512_set1_ps(1.0f + 4 * 0.001f), a5 = _mm512_set1_ps(1.0f + 5 * 0.001f), a6 = _mm512_set1_ps(1.0f + 6 * 0.001f), a7 = _mm512_set1_ps(1.0f + 7 * 0.001f), a8 = _mm512_set1_ps(1.0f + 8 * 0.001f), a9 = _mm512_set1_ps(1.0f + 9 * 0.001f), a10 = _mm512_set1_ps(1.0f + 10 * 0.001f), a11 = _mm512_set1_ps(1.0f + 11 * 0.001f);
    const __m512 b = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
    for (long i = 0; i < n; i++) {
#define F(x) x = _mm512_fmadd_ps(x, b, c)
        F(a0); F(a1); F(a2); F(a3); F(a4); F(a5); F(a6); F(a7); F(a8); F(a9); F(a10); F(a11);
#undef F
        __asm__ volatile("" : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4), "+v"(a5));
        __asm__ volatile("" : "+v"(a6), "+v"(a7), "+v"(a8), "+v"(a9), "+v"(a10), "+v"(a11));
    }
    __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                             _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
    s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));
    return _mm512_reduce_add_ps(s);
}

__attribute__((target("avx512f,avx512bf16"))) static float run_bf16(long n) {
    __m512 a0 = _mm512_set1_ps(0), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0,
           a8 = a0, a9 = a0, a10 = a0, a11 = a0;
    const __m512bh b = (__m512bh)_mm512_set1_epi16(0x3f80), c = (__m512bh)_mm512_set1_epi16(0x3380);
    for (long i = 0; i < n; i++) {
#define F(x) x = _mm512_dpbf16_ps(x, b, c)
        F(a0); F(a1); F(a2); F(a3); F(a4); F(a5); F(a6); F(a7); F(a8); F(a9); F(a10); F(a11);
#undef F
        __asm__ volatile("" : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4), "+v"(a5));
        __asm__ volatile("" : "+v"(a6), "+v"(a7), "+v"(a8), "+v"(a9), "+v"(a10), "+v"(a11));
    }
    __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                             _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
    s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));
    return _mm512_reduce_add_ps(s);
}

/* Tile configuration: palette 1, tiles 0-7 of 16 rows x 64 bytes. */
static void amx_configure(void) {
    uint8_t cfg[64] = {0};
    cfg[0] = 1;
    for (int t = 0; t < 8; t++) {
        cfg[16 + 2 * t] = 64;
        cfg[48 + t] = 16;
    }
    __asm__ volatile("ldtilecfg %0" : : "m"(cfg));
}

static float run_amx(long n) {
    static uint16_t ones[16 * 32] __attribute__((aligned(64)));
    for (int i = 0; i < 16 * 32; i++) ones[i] = 0x3f80; /* bf16 1.0 */
    amx_configure();
    __asm__ volatile("tilezero %%tmm0\n tilezero %%tmm1\n tilezero %%tmm2\n tilezero %%tmm3" ::);
    __asm__ volatile("tileloadd (%0,%1,1), %%tmm4\n tileloadd (%0,%1,1), %%tmm5\n"
                     "tileloadd (%0,%1,1), %%tmm6\n tileloadd (%0,%1,1), %%tmm7"
                     : : "r"(ones), "r"((long)64) : "memory");
    for (long i = 0; i < n / 16; i++) {
        __asm__ volatile("tdpbf16ps %%tmm6, %%tmm4, %%tmm0\n tdpbf16ps %%tmm7, %%tmm4, %%tmm1\n"
                         "tdpbf16ps %%tmm6, %%tmm5, %%tmm2\n tdpbf16ps %%tmm7, %%tmm5, %%tmm3" ::);
    }
    static float out[256] __attribute__((aligned(64)));
    __asm__ volatile("tilestored %%tmm0, (%0,%1,1)\n tilerelease" : : "r"(out), "r"((long)64) : "memory");
    return out[0];
}

static int bf16 = 0, amx = 0;

static void *worker(void *p) {
    float r = amx ? run_amx(iters) : bf16 ? run_bf16(iters) : zmm ? run_zmm(iters) : run_ymm(iters);
    *(float *)p = r;
    return NULL;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    zmm = argc > 2 && strcmp(argv[2], "zmm") == 0;
    bf16 = argc > 2 && strcmp(argv[2], "bf16") == 0;
    amx = argc > 2 && strcmp(argv[2], "amx") == 0;
    if (argc > 3) iters = atol(argv[3]);
    /* ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA: without it the first tile instruction faults. */
    if (amx && syscall(SYS_arch_prctl, 0x1023, 18) != 0) {
        fprintf(stderr, "amx: the kernel did not grant the AMX tile state\n");
        return 1;
    }
    pthread_t t[64];
    float r[64];
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < threads; i++) pthread_create(&t[i], NULL, worker, &r[i]);
    for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double s = (b.tv_sec - a.tv_sec) + 1e-9 * (b.tv_nsec - a.tv_nsec);
    double flops = amx ? 2.0 * 4 * 16 * 16 * 32 * (double)(iters / 16) * threads
                       : 2.0 * 12 * (bf16 ? 32 : zmm ? 16 : 8) * (double)iters * threads;
    printf("%s %d threads: %.1f GFLOP/s (%.3f s, checksum %g)\n",
           amx ? "bf16 amx" : bf16 ? "bf16 zmm" : zmm ? "zmm" : "ymm", threads,
           flops / s / 1e9, s, (double)r[0]);
    return 0;
}
