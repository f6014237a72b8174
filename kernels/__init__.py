"""kvlab's Triton kernels, shipped inside the package as `kvlab.kernels`.

Each kernel file holds the kernel, its plain-torch reference and the bytes it must move; its test lives in
tests/ and its benchmark in kvlab.bench. Compiled on CUDA; on a CPU they run under Triton's interpreter
(set TRITON_INTERPRET=1 before the kernels are imported). The paged-cache kernels arrive with the paged layout.
"""
