/* needlec._runtime: the runtime's symbols for the LLVM engine, and the pool's thread count. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

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

static PyMethodDef methods[] = {
    {"run_step", run_step, METH_VARARGS,
     "run_step(step, table, first, arrays): point the table at the arrays and run the step."},
    {"symbols", symbols, METH_NOARGS, "Addresses of the functions compiled code calls."},
    {"set_num_threads", set_num_threads, METH_O, "(Re)start the pool with n threads."},
    {"num_threads", num_threads, METH_NOARGS, "Threads the pool runs, the caller's included."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_runtime",
                                    "needlec's native runtime (a thread pool).", -1, methods};

PyMODINIT_FUNC PyInit__runtime(void) { return PyModule_Create(&module); }
