/* needlec._runtime: the runtime's symbols for the LLVM engine, the pool's thread count, and the
   native calls of compiled steps (run_step, and bind_run for a cached jitted call). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <string.h>

#include "needlec_runtime.h"

static PyObject *symbols(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return Py_BuildValue("{s:K}", "needlec_parallel_for",
                         (unsigned long long)(uintptr_t)&needlec_parallel_for);
}

static PyObject *set_num_threads(PyObject *self, PyObject *arg) {
    (void)self;
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    int got;
    Py_BEGIN_ALLOW_THREADS got = needlec_set_num_threads((int)n);
    Py_END_ALLOW_THREADS return PyLong_FromLong(got);
}

static PyObject *num_threads(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return PyLong_FromLong(needlec_num_threads());
}

/* run_step(step, table, first, arrays): write each array's data pointer (C-contiguous, by the
   buffer protocol) into the pointer table `table` from slot `first` on, then call the compiled
   `void step(void **table)` without the GIL (step 0: only the pointers). What a ctypes call and
   an `ndarray.ctypes.data` per array cost in Python, done in C. */
static PyObject *run_step(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long step_address, table_address;
    Py_ssize_t first;
    PyObject *arrays;
    if (!PyArg_ParseTuple(args, "KKnO", &step_address, &table_address, &first, &arrays))
        return NULL;
    PyObject *seq = PySequence_Fast(arrays, "run_step: arrays must be a sequence");
    if (seq == NULL) return NULL;
    void **table = (void **)(uintptr_t)table_address;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_buffer view;
        if (PyObject_GetBuffer(items[i], &view, PyBUF_C_CONTIGUOUS) != 0) {
            Py_DECREF(seq);
            return NULL;
        }
        table[first + i] = view.buf;
        PyBuffer_Release(&view); /* the caller keeps the array, so the pointer stays valid */
    }
    Py_DECREF(seq);
    if (step_address == 0) Py_RETURN_NONE; /* only the pointers */
    void (*step)(void **) = (void (*)(void **))(uintptr_t)step_address;
    Py_BEGIN_ALLOW_THREADS step(table);
    Py_END_ALLOW_THREADS Py_RETURN_NONE;
}

/* bind_run(step, table, outputs, first, objs, scratch, updated): the jit hit path's native call.
   Slot OUTPUTS (1) of `table` takes `outputs`; slot first + i points at objs[i]: a Python float
   (written as a double into scratch[i]), a Python int (an int64 there: a seed), or anything with
   a C-contiguous buffer. Each index in `updated` (inputs the step writes over) must be writeable
   and share no byte with another input. Returns False, running nothing, where an object has no
   C-contiguous buffer or an updated input fails that test: the caller takes its general path,
   which copies. Otherwise runs `void step(void **table)` without the GIL (step 0: only the
   pointers) and returns True. */
static PyObject *bind_run(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long step_address, table_address, outputs_address, scratch_address;
    Py_ssize_t first;
    PyObject *objs, *updated;
    if (!PyArg_ParseTuple(args, "KKKnO!KO!", &step_address, &table_address, &outputs_address,
                          &first, &PyList_Type, &objs, &scratch_address, &PyTuple_Type, &updated))
        return NULL;
    void **table = (void **)(uintptr_t)table_address;
    unsigned char *scratch = (unsigned char *)(uintptr_t)scratch_address;
    Py_ssize_t n = PyList_GET_SIZE(objs);
    Py_ssize_t n_updated = PyTuple_GET_SIZE(updated);
    char *start_small[32];
    Py_ssize_t len_small[32];
    char readonly_small[32];
    char **start = start_small;
    Py_ssize_t *len = len_small;
    char *readonly = readonly_small;
    void *heap = NULL;
    if (n > 32 && n_updated > 0) { /* spans are kept only to test the updated inputs */
        heap = PyMem_Malloc((size_t)n * (sizeof(char *) + sizeof(Py_ssize_t) + 1));
        if (heap == NULL) return PyErr_NoMemory();
        start = (char **)heap;
        len = (Py_ssize_t *)(start + n);
        readonly = (char *)(len + n);
    }
    int keep = n_updated > 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *obj = PyList_GET_ITEM(objs, i);
        void *at;
        Py_ssize_t nbytes = 0;
        int ro = 0;
        if (PyFloat_CheckExact(obj)) {
            double v = PyFloat_AS_DOUBLE(obj);
            at = scratch + 8 * i;
            memcpy(at, &v, sizeof v);
        } else if (PyLong_CheckExact(obj)) {
            long long v = PyLong_AsLongLong(obj);
            if (v == -1 && PyErr_Occurred()) {
                PyMem_Free(heap);
                return NULL;
            }
            at = scratch + 8 * i;
            memcpy(at, &v, sizeof v);
        } else {
            Py_buffer view;
            if (PyObject_GetBuffer(obj, &view, PyBUF_C_CONTIGUOUS) != 0) {
                PyErr_Clear();
                PyMem_Free(heap);
                Py_RETURN_FALSE;
            }
            at = view.buf;
            nbytes = view.len;
            ro = view.readonly;
            PyBuffer_Release(&view); /* the caller keeps the object, so the pointer stays valid */
        }
        table[first + i] = at;
        if (keep) {
            start[i] = (char *)at;
            len[i] = nbytes;
            readonly[i] = (char)ro;
        }
    }
    for (Py_ssize_t u = 0; u < n_updated; u++) {
        Py_ssize_t k = PyLong_AsSsize_t(PyTuple_GET_ITEM(updated, u));
        if (k < 0 || k >= n) {
            PyMem_Free(heap);
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_IndexError, "bind_run: updated index");
            return NULL;
        }
        int clash = readonly[k];
        for (Py_ssize_t j = 0; j < n && !clash; j++)
            clash = j != k && len[j] > 0 && len[k] > 0 && start[j] < start[k] + len[k] &&
                    start[k] < start[j] + len[j];
        if (clash) {
            PyMem_Free(heap);
            Py_RETURN_FALSE;
        }
    }
    PyMem_Free(heap);
    table[1] = (void *)(uintptr_t)outputs_address;
    if (step_address == 0) Py_RETURN_TRUE; /* only the pointers */
    void (*step)(void **) = (void (*)(void **))(uintptr_t)step_address;
    Py_BEGIN_ALLOW_THREADS step(table);
    Py_END_ALLOW_THREADS Py_RETURN_TRUE;
}

static PyMethodDef methods[] = {
    {"run_step", run_step, METH_VARARGS,
     "run_step(step, table, first, arrays): point the table at the arrays and run the step."},
    {"bind_run", bind_run, METH_VARARGS,
     "bind_run(step, table, outputs, first, objs, scratch, updated): bind and run, or False."},
    {"symbols", symbols, METH_NOARGS, "Addresses of the functions compiled code calls."},
    {"set_num_threads", set_num_threads, METH_O, "(Re)start the pool with n threads."},
    {"num_threads", num_threads, METH_NOARGS, "Threads the pool runs, the caller's included."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_runtime",
                                    "needlec's native runtime (a thread pool).", -1, methods};

PyMODINIT_FUNC PyInit__runtime(void) { return PyModule_Create(&module); }
