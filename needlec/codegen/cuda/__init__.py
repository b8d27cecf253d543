"""The CUDA backend: scheduled kernels rendered as CUDA C (`render`), the device runtime (`runtime`)."""
