/* Classifies one input with a compiled DenseNet artefact, through the runtime's C API.
 *
 *   classify MODEL.dnc [INPUT.f32] [--device cpu|cuda[:N]] [--threads N] [--top K]
 *
 * INPUT.f32 holds the model's input tensor as raw little-endian f32 (NCHW, preprocessed);
 * without it a fixed synthetic input is used. Prints the top K classes of each batch item,
 * with names when the artefact carries labels: the same lines as examples/rust/classify.rs.
 * `--device cuda` (device 0) or `cuda:N` runs on a GPU when the artefact has CUDA code and the
 * machine has a driver; otherwise the runtime's error is printed.
 *
 * Build against the runtime's C library, libdensenetc (`cargo build --release -p densenetc-capi`
 * writes target/release/libdensenetc.so and libdensenetc.a), e.g.:
 *   cc -I runtime/include examples/c/classify.c -L target/release -ldensenetc \
 *      -Wl,-rpath,"$PWD/target/release" -o classify
 * or statically (the system libraries are those of `rustc --print native-static-libs`):
 *   cc -I runtime/include examples/c/classify.c target/release/libdensenetc.a \
 *      -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc -o classify
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "densenetc.h"

#define MAX_RANK 8

static int fail(const char *what) {
    fprintf(stderr, "classify: %s: %s\n", what, dnc_last_error());
    return 1;
}

static size_t product(const size_t *dims, size_t rank) {
    size_t n = 1;
    for (size_t i = 0; i < rank; i++) n *= dims[i];
    return n;
}

static int read_input(const char *path, float *input, size_t len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return 1;
    }
    size_t got = fread(input, sizeof(float), len, f);
    int extra = fgetc(f) != EOF;
    fclose(f);
    if (got != len || extra) {
        fprintf(stderr, "classify: %s: expected exactly %zu floats\n", path, len);
        return 1;
    }
    return 0;
}

/* `cpu`, `cuda` or `cuda:N` → device kind and ordinal; 0 on success. */
static int parse_device(const char *spec, int *kind, size_t *ordinal) {
    char *end = NULL;
    if (strcmp(spec, "cpu") == 0) {
        *kind = DNC_DEVICE_CPU;
        return 0;
    }
    if (strcmp(spec, "cuda") == 0) {
        *kind = DNC_DEVICE_CUDA;
        *ordinal = 0;
        return 0;
    }
    if (strncmp(spec, "cuda:", 5) == 0 && spec[5] >= '0' && spec[5] <= '9') {
        *ordinal = strtoul(spec + 5, &end, 10);
        if (*end == '\0') {
            *kind = DNC_DEVICE_CUDA;
            return 0;
        }
    }
    fprintf(stderr, "classify: unknown device '%s': expected cpu, cuda or cuda:N\n", spec);
    return 1;
}

int main(int argc, char **argv) {
    const char *model_path = NULL, *input_path = NULL;
    size_t threads = 1, top = 5, ordinal = 0;
    int device = DNC_DEVICE_CPU;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) threads = strtoul(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--device") == 0 && i + 1 < argc) {
            if (parse_device(argv[++i], &device, &ordinal)) return 2;
        }
        else if (strcmp(argv[i], "--top") == 0 && i + 1 < argc) top = strtoul(argv[++i], NULL, 10);
        else if (!model_path) model_path = argv[i];
        else input_path = argv[i];
    }
    if (!model_path) {
        fprintf(stderr,
                "usage: classify MODEL.dnc [INPUT.f32] [--device cpu|cuda[:N]] [--threads N] [--top K]\n");
        return 2;
    }

    DncModel *model = NULL;
    if (dnc_model_load(model_path, &model) != DNC_STATUS_OK) return fail(model_path);

    size_t in_dims[MAX_RANK], out_dims[MAX_RANK], in_rank = 0, out_rank = 0;
    if (dnc_model_input_shape(model, in_dims, MAX_RANK, &in_rank) != DNC_STATUS_OK ||
        dnc_model_output_shape(model, out_dims, MAX_RANK, &out_rank) != DNC_STATUS_OK) {
        int rc = fail("shape");
        dnc_model_free(model);
        return rc;
    }
    size_t in_len = product(in_dims, in_rank), out_len = product(out_dims, out_rank);
    size_t classes = out_dims[out_rank - 1];

    float *input = malloc(in_len * sizeof(float));
    float *output = malloc(out_len * sizeof(float));
    if (!input || !output) {
        fprintf(stderr, "classify: out of memory\n");
        return 1;
    }
    if (input_path) {
        if (read_input(input_path, input, in_len)) return 1;
    } else {
        /* The synthetic input shared with the Rust example. */
        for (size_t i = 0; i < in_len; i++) input[i] = (float)((i * 7919) % 1000) / 1000.0f - 0.5f;
    }

    DncSession *session = NULL;
    int rc = 0;
    size_t threads_or_ordinal = device == DNC_DEVICE_CPU ? threads : ordinal;
    if (dnc_session_create(model, device, threads_or_ordinal, &session) != DNC_STATUS_OK) {
        rc = fail("session");
    } else if (dnc_session_run(session, input, in_len, output, out_len) != DNC_STATUS_OK) {
        rc = fail("run");
    } else {
        for (size_t item = 0; item * classes < out_len; item++) {
            const float *row = output + item * classes;
            char *taken = calloc(classes, 1);
            if (!taken) return 1;
            /* Selection of the top K: highest score first, ties by class index. */
            for (size_t rank = 0; rank < top && rank < classes; rank++) {
                size_t best = classes;
                for (size_t c = 0; c < classes; c++)
                    if (!taken[c] && (best == classes || row[c] > row[best])) best = c;
                taken[best] = 1;
                const char *label = dnc_model_label(model, best);
                printf("item %zu: #%zu class %zu score %.6f", item, rank + 1, best, row[best]);
                if (label) printf(" (%s)", label);
                printf("\n");
            }
            free(taken);
        }
    }

    dnc_session_free(session);
    dnc_model_free(model);
    free(input);
    free(output);
    return rc;
}
