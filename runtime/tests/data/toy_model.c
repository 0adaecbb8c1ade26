/* A tiny "generated" model for the runtime's tests, written to the generated-code ABI
 * (include/densenetc_abi.h) exactly as the compiler's CPU backend emits it: everything lives in
 * the arena, one task function per kernel, each handed to the runtime's parallel-for.
 *
 *   arena floats [0, 96)    input  [BATCH=2][H=4][W=4][C=3]  (NHWC; the runtime copies it in)
 *   arena floats [96, 98)   mean of each batch item
 *   arena floats [128, 138) output [BATCH][CLASSES=5]        (the runtime copies it out)
 *   weights: scale[CLASSES], shift[CLASSES]
 *
 *   kernel 0 "mean":   mean[b]   = mean of input[b]                       (BATCH tasks)
 *   kernel 1 "affine": out[b][k] = scale[k] * mean[b] + shift[k]          (BATCH*CLASSES tasks)
 *
 * -DTOY_ABI_VERSION=N changes the reported ABI version and -DTOY_NO_RUN_KERNEL leaves out a
 * symbol, to test the loader's checks. */
#include <stdint.h>

#include "densenetc_abi.h"

#ifndef TOY_ABI_VERSION
#define TOY_ABI_VERSION DNC_ABI_VERSION
#endif

#define BATCH 2
#define PIXELS (3 * 4 * 4)
#define CLASSES 5
#define MEAN 96
#define OUTPUT 128

static void mean_task(const DncContext *ctx, int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; b++) {
        float sum = 0.0f;
        for (int i = 0; i < PIXELS; i++) sum += ctx->arena[b * PIXELS + i];
        ctx->arena[MEAN + b] = sum / (float)PIXELS;
    }
}

static void affine_task(const DncContext *ctx, int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; i++) {
        int64_t b = i / CLASSES, k = i % CLASSES;
        ctx->arena[OUTPUT + i] = ctx->weights[k] * ctx->arena[MEAN + b] + ctx->weights[CLASSES + k];
    }
}

static const DncTaskFn TASKS[] = {mean_task, affine_task};
static const int64_t TASK_COUNTS[] = {BATCH, BATCH * CLASSES};
#define KERNELS 2

void dnc_run(const DncContext *ctx) {
    for (int i = 0; i < KERNELS; i++) ctx->parallel_for(ctx->pool, TASKS[i], ctx, TASK_COUNTS[i]);
}

#ifndef TOY_NO_RUN_KERNEL
int32_t dnc_run_kernel(const DncContext *ctx, int64_t i) {
    if (i < 0 || i >= KERNELS) return -1;
    ctx->parallel_for(ctx->pool, TASKS[i], ctx, TASK_COUNTS[i]);
    return 0;
}
#endif

int32_t dnc_abi_version(void) { return TOY_ABI_VERSION; }
int64_t dnc_kernel_count(void) { return KERNELS; }
int64_t dnc_kernel_tasks(int64_t i) { return i < 0 || i >= KERNELS ? -1 : TASK_COUNTS[i]; }
