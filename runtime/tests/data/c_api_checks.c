/* Exercises the C API's error handling from C: every call below must return the documented
 * status and leave a message in dnc_last_error(). Usage: c_api_checks MODEL.dnc
 * Prints "c api checks: N passed" and exits 0, or names the first failed check and exits 1. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "densenetc.h"

static int passed = 0;

#define CHECK(cond)                                                                     \
    do {                                                                                \
        if (!(cond)) {                                                                  \
            fprintf(stderr, "line %d: check failed: %s (last error: %s)\n", __LINE__, #cond, \
                    dnc_last_error());                                                  \
            return 1;                                                                   \
        }                                                                               \
        passed++;                                                                       \
    } while (0)

#define HAS_ERROR(text) (strstr(dnc_last_error(), (text)) != NULL)

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    CHECK(dnc_version() != NULL && strncmp(dnc_version(), "densenetc-runtime ", 18) == 0);

    DncModel *model = (DncModel *)1;
    CHECK(dnc_model_load(NULL, &model) == DNC_STATUS_NULL_POINTER && model == NULL);
    CHECK(dnc_model_load("/nonexistent.dnc", &model) == DNC_STATUS_IO && model == NULL);
    CHECK(HAS_ERROR("/nonexistent.dnc"));
    CHECK(dnc_model_load(argv[0], &model) == DNC_STATUS_INVALID_ARTEFACT);
    CHECK(HAS_ERROR("bad magic"));
    CHECK(dnc_model_load(argv[1], NULL) == DNC_STATUS_NULL_POINTER);
    CHECK(dnc_model_load(argv[1], &model) == DNC_STATUS_OK && model != NULL);

    size_t dims[8], rank = 0;
    CHECK(dnc_model_input_shape(model, dims, 2, &rank) == DNC_STATUS_INVALID_ARGUMENT && rank == 4);
    CHECK(dnc_model_input_shape(model, dims, 8, &rank) == DNC_STATUS_OK && rank == 4);
    CHECK(dims[0] == 2 && dims[1] == 3 && dims[2] == 4 && dims[3] == 4);
    CHECK(dnc_model_output_shape(model, dims, 8, NULL) == DNC_STATUS_NULL_POINTER);
    CHECK(dnc_model_output_shape(model, dims, 8, &rank) == DNC_STATUS_OK && rank == 2);
    CHECK(dims[0] == 2 && dims[1] == 5);
    CHECK(dnc_model_label(model, 4) != NULL && strcmp(dnc_model_label(model, 4), "four") == 0);
    CHECK(dnc_model_label(model, 5) == NULL);
    CHECK(dnc_model_head(NULL) == NULL);
    CHECK(dnc_model_head(model) != NULL && strcmp(dnc_model_head(model), "logits") == 0);

    DncSession *session = (DncSession *)1;
    CHECK(dnc_session_create(model, 42, 1, &session) == DNC_STATUS_INVALID_ARGUMENT && session == NULL);
    CHECK(dnc_session_create(model, DNC_DEVICE_CUDA, 0, &session) == DNC_STATUS_DEVICE_UNAVAILABLE);
    CHECK(HAS_ERROR("CUDA"));
    CHECK(dnc_session_create(model, DNC_DEVICE_CPU, 100000, &session) == DNC_STATUS_INVALID_ARGUMENT);
    CHECK(dnc_session_create(NULL, DNC_DEVICE_CPU, 1, &session) == DNC_STATUS_NULL_POINTER);
    CHECK(dnc_session_create(model, DNC_DEVICE_CPU, 2, &session) == DNC_STATUS_OK && session != NULL);

    /* Sessions keep the model alive. */
    dnc_model_free(model);

    float input[96], output[10];
    for (int i = 0; i < 96; i++) input[i] = 1.0f;
    CHECK(dnc_session_run(session, input, 95, output, 10) == DNC_STATUS_SHAPE_MISMATCH);
    CHECK(HAS_ERROR("input has 95 elements, expected 96"));
    CHECK(dnc_session_run(session, input, 96, output, 11) == DNC_STATUS_SHAPE_MISMATCH);
    CHECK(dnc_session_run(session, NULL, 96, output, 10) == DNC_STATUS_NULL_POINTER);
    CHECK(dnc_session_run(session, input, 96, NULL, 10) == DNC_STATUS_NULL_POINTER);
    CHECK(dnc_session_run(NULL, input, 96, output, 10) == DNC_STATUS_NULL_POINTER);
    CHECK(dnc_session_run(session, input, 96, output, 10) == DNC_STATUS_OK);
    /* mean = 1: output[k] = scale[k] + shift[k] */
    CHECK(fabsf(output[0] - 1.0f) < 1e-6f && fabsf(output[3] - 3.5f) < 1e-6f);

    dnc_session_free(session);
    dnc_session_free(NULL);
    dnc_model_free(NULL);
    printf("c api checks: %d passed\n", passed);
    return 0;
}
