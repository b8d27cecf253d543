"""The LLVM (CPU) backend: scheduled kernels rendered as LLVM IR through llvmlite."""
