/* A tiny "generated" model for the runtime's tests, written to the generated-code ABI
 * (include/densenetc_abi.h) exactly as the compiler's CPU backend must be:
 *
 *   input  [BATCH, 3, 4, 4] (NCHW)      weights: scale[CLASSES], shift[CLASSES]
 *   arena[b]          = mean of input[b]                      (parallel over b)
 *   output[b][k]      = scale[k] * arena[b] + shift[k]        (parallel over b * CLASSES)
 *
 * A NaN in input[0] makes the entry return status 7, to test error reporting. */
#include <math.h>
#include <stdint.h>

#include "densenetc_abi.h"

#define BATCH 2
#define PIXELS (3 * 4 * 4)
#define CLASSES 5

static void mean_task(const void *task_ctx, int64_t begin, int64_t end) {
    const DncContext *ctx = (const DncContext *)task_ctx;
    for (int64_t b = begin; b < end; b++) {
        float sum = 0.0f;
        for (int i = 0; i < PIXELS; i++) sum += ctx->input[b * PIXELS + i];
        ctx->arena[b] = sum / (float)PIXELS;
    }
}

static void affine_task(const void *task_ctx, int64_t begin, int64_t end) {
    const DncContext *ctx = (const DncContext *)task_ctx;
    for (int64_t i = begin; i < end; i++) {
        int64_t b = i / CLASSES, k = i % CLASSES;
        ctx->output[i] = ctx->weights[k] * ctx->arena[b] + ctx->weights[CLASSES + k];
    }
}

int32_t dnc_entry(const DncContext *ctx) {
    if (isnan(ctx->input[0])) return 7;
    ctx->parallel_for(ctx->pool, mean_task, ctx, BATCH);
    ctx->parallel_for(ctx->pool, affine_task, ctx, BATCH * CLASSES);
    return 0;
}
