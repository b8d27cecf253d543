"""The native runtime (runtime/) is a C extension built by the package install itself.

It is optional: where it cannot be built (no C compiler, no Python headers) the install still
succeeds and compiled code runs its loops on one thread (`needlec.codegen.llvm.runtime`)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "needlec._runtime",
            sources=["runtime/pool.c", "runtime/module.c"],
            include_dirs=["runtime"],
            extra_compile_args=["-O2", "-std=c11", "-pthread"],
            extra_link_args=["-pthread"],
            optional=True,
        )
    ]
)
