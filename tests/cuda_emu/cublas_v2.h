/* cublas_v2.h - the CPU emulation's stand-in: everything is in cuda_emu.h. */
#include "cuda_emu.h"
