/* One pass over a site's recorded activations and outgoing weights per optimizer step (cbp_rl.cbp).

Eager torch needs an `abs` temporary and a separate reduction for each of these tensors, and each op finds them
cold in cache right after the optimizer; here every tensor is read once, nothing else is written.
Raw float32 pointers: the caller checks dtype, device and contiguity. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>

#define BLOCK_ROWS 64 /* rows summed in float before they join the double total */

#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__)
#define WITH_AVX2 __attribute__((target_clones("avx2", "default"))) /* chosen at load time by the CPU */
#else
#define WITH_AVX2
#endif

WITH_AVX2 static void add_column_sums(const float *x, Py_ssize_t rows, Py_ssize_t cols, double *total, float *block)
{
    for (Py_ssize_t start = 0; start < rows; start += BLOCK_ROWS) {
        Py_ssize_t end = start + BLOCK_ROWS < rows ? start + BLOCK_ROWS : rows;
        memcpy(block, x + start * cols, (size_t)cols * sizeof(float));
        for (Py_ssize_t r = start + 1; r < end; r++) {
            const float *row = x + r * cols;
            for (Py_ssize_t j = 0; j < cols; j++)
                block[j] += row[j];
        }
        for (Py_ssize_t j = 0; j < cols; j++)
            total[j] += block[j];
    }
}

WITH_AVX2 static void add_abs_column_sums(const float *x, Py_ssize_t rows, Py_ssize_t cols, double *total, float *block)
{
    for (Py_ssize_t start = 0; start < rows; start += BLOCK_ROWS) {
        Py_ssize_t end = start + BLOCK_ROWS < rows ? start + BLOCK_ROWS : rows;
        for (Py_ssize_t j = 0; j < cols; j++)
            block[j] = fabsf(x[start * cols + j]);
        for (Py_ssize_t r = start + 1; r < end; r++) {
            const float *row = x + r * cols;
            for (Py_ssize_t j = 0; j < cols; j++)
                block[j] += fabsf(row[j]);
        }
        for (Py_ssize_t j = 0; j < cols; j++)
            total[j] += block[j];
    }
}

typedef struct {
    const float *weight;
    Py_ssize_t rows;
} Consumer;

static void update_member(const float *h, Py_ssize_t batch, Py_ssize_t units, int nonnegative, const Consumer *consumers,
                          Py_ssize_t n_consumers, Py_ssize_t member, Py_ssize_t rows, double decay, float *utility,
                          float *mean, double *scratch, float *block)
{
    double *sum_h = scratch, *sum_abs_h = scratch + units, *magnitude = scratch + 2 * units;
    memset(scratch, 0, 3 * (size_t)units * sizeof(double));
    add_column_sums(h, batch, units, sum_h, block);
    if (nonnegative)
        sum_abs_h = sum_h;
    else
        add_abs_column_sums(h, batch, units, sum_abs_h, block);
    for (Py_ssize_t c = 0; c < n_consumers; c++)
        add_abs_column_sums(consumers[c].weight + member * consumers[c].rows * units, consumers[c].rows, units, magnitude,
                            block);
    double rate = 1.0 - decay, utility_scale = rate / ((double)rows * (double)batch), mean_scale = rate / (double)batch;
    for (Py_ssize_t j = 0; j < units; j++) {
        utility[j] = (float)(decay * utility[j] + utility_scale * magnitude[j] * sum_abs_h[j]);
        mean[j] = (float)(decay * mean[j] + mean_scale * sum_h[j]);
    }
}

static int read_pointer(PyObject *arg, void **out)
{
    *out = PyLong_AsVoidPtr(arg);
    return *out == NULL && PyErr_Occurred() ? -1 : 0;
}

#define SITE_FIELDS 8 /* h, members, batch, units, nonnegative, utility, mean, consumers; then (weight, rows) each */

static int update_site(PyObject *const *args, Py_ssize_t nargs, double decay, Py_ssize_t *used)
{
    void *h, *utility, *mean;
    if (nargs < SITE_FIELDS || read_pointer(args[0], &h) || read_pointer(args[5], &utility) || read_pointer(args[6], &mean))
        return -1;
    Py_ssize_t members = PyLong_AsSsize_t(args[1]), batch = PyLong_AsSsize_t(args[2]), units = PyLong_AsSsize_t(args[3]);
    int nonnegative = PyObject_IsTrue(args[4]);
    Py_ssize_t n_consumers = PyLong_AsSsize_t(args[7]);
    if (PyErr_Occurred())
        return -1;
    *used = SITE_FIELDS + 2 * n_consumers;
    if (members < 0 || batch < 1 || units < 1 || n_consumers < 1 || *used > nargs) {
        PyErr_SetString(PyExc_ValueError, "update: malformed site arguments");
        return -1;
    }
    Consumer *consumers = PyMem_Malloc((size_t)n_consumers * sizeof(Consumer));
    double *scratch = PyMem_Malloc(3 * (size_t)units * sizeof(double));
    float *block = PyMem_Malloc((size_t)units * sizeof(float));
    int status = consumers == NULL || scratch == NULL || block == NULL ? (PyErr_NoMemory(), -1) : 0;
    Py_ssize_t rows = 0;
    for (Py_ssize_t c = 0; c < n_consumers && status == 0; c++) {
        void *weight;
        if (read_pointer(args[SITE_FIELDS + 2 * c], &weight) || (consumers[c].rows = PyLong_AsSsize_t(args[SITE_FIELDS + 1 + 2 * c])) < 0)
            status = -1;
        else {
            consumers[c].weight = weight;
            rows += consumers[c].rows;
        }
    }
    if (status == 0) {
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t m = 0; m < members; m++)
            update_member((const float *)h + m * batch * units, batch, units, nonnegative, consumers, n_consumers, m, rows,
                          decay, (float *)utility + m * units, (float *)mean + m * units, scratch, block);
        Py_END_ALLOW_THREADS
    }
    PyMem_Free(consumers), PyMem_Free(scratch), PyMem_Free(block);
    return status;
}

PyDoc_STRVAR(update_doc,
             "update(decay, *sites)\n\n"
             "Fold one step of each site into its running averages, per member: mean = decay*mean + (1-decay)*mean_batch(h),\n"
             "utility = decay*utility + (1-decay)*mean_out|W_out|*mean_batch|h|. A site is given as\n"
             "h, members, batch, units, nonnegative, utility, mean, consumers, then weight, rows for each consumer:\n"
             "pointers (ints) to contiguous float32 h [members, batch, units], utility and mean [members, units],\n"
             "weight [members, rows, units]. nonnegative: h >= 0, so |h| is h.");

static PyObject *update(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs < 1)
        return PyErr_Format(PyExc_TypeError, "update expects the decay rate and the sites' arguments");
    double decay = PyFloat_AsDouble(args[0]);
    if (decay == -1.0 && PyErr_Occurred())
        return NULL;
    for (Py_ssize_t at = 1, used; at < nargs; at += used)
        if (update_site(args + at, nargs - at, decay, &used))
            return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"update", (PyCFunction)(void (*)(void))update, METH_FASTCALL, update_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", "Fused CBP kernels (see cbp_rl.kernels).", -1, methods,
                                     NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }
