"""Worker for bench_registration.py: elastix in its own process, importing only itk.

itk-elastix and SimpleITK each bundle ITK; in one process elastix segfaults, so the benchmark
runs elastix here. (itk-elastix 0.25.4 also segfaulted here when the registration was called
from inside a function or with `number_of_threads`; at module level with defaults it runs, on
all cores.)

    python bench/elastix_worker.py FIXED MOVING FIELD_OUT   -> prints seconds
"""

import sys
import time

import itk

fixed = itk.imread(sys.argv[1], itk.F)
moving = itk.imread(sys.argv[2], itk.F)
params = itk.ParameterObject.New()
for name in ("rigid", "affine", "bspline"):
    params.AddParameterMap(params.GetDefaultParameterMap(name))
start = time.perf_counter()
result, transform_params = itk.elastix_registration_method(
    fixed, moving, parameter_object=params, log_to_console=False
)
seconds = time.perf_counter() - start
field = itk.transformix_deformation_field(moving, transform_params)
itk.imwrite(field, sys.argv[3])
print(f"{seconds:.4f}")
