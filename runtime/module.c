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

static PyMethodDef methods[] = {
    {"symbols", symbols, METH_NOARGS, "Addresses of the functions compiled code calls."},
    {"set_num_threads", set_num_threads, METH_O, "(Re)start the pool with n threads."},
    {"num_threads", num_threads, METH_NOARGS, "Threads the pool runs, the caller's included."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_runtime",
                                    "needlec's native runtime (a thread pool).", -1, methods};

PyMODINIT_FUNC PyInit__runtime(void) { return PyModule_Create(&module); }
