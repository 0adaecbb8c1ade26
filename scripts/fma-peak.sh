#!/usr/bin/env bash
# Measures this CPU's f32 FMA peak with 1 and 2 threads, in ymm (AVX2) and, where the CPU has
# AVX-512, zmm registers, its vdpbf16ps peak where it has AVX512_BF16 and its AMX tdpbf16ps peak
# where it has AMX-BF16: the denominators of the "% of peak" figures of the CPU kernels (f32 and
# --precision bf16).
#
#   scripts/fma-peak.sh [ITERATIONS]      (default 200000000 per thread; ~0.3 s a run)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
cc -O2 -pthread "$here/fma_peak.c" -o "$out/fma_peak"
iters="${1:-200000000}"
grep -m1 "model name" /proc/cpuinfo || true
for threads in 1 2; do
    "$out/fma_peak" "$threads" ymm "$iters"
    if grep -qw avx512f /proc/cpuinfo; then
        "$out/fma_peak" "$threads" zmm "$iters"
    fi
    if grep -qw avx512_bf16 /proc/cpuinfo; then
        "$out/fma_peak" "$threads" bf16 "$iters"
    fi
    if grep -qw amx_bf16 /proc/cpuinfo; then
        "$out/fma_peak" "$threads" amx "$iters"
    fi
done
