#!/bin/sh
# gpu-check.sh - the whole GPU check in one run, sized for a short lease on a GPU machine (under
# 6 minutes on an H100): build for this GPU, check every kernel against the CPU on fresh random
# inputs, run stories260K and an int4 model teacher-forced on GPU and CPU, print one timing table.
#
#   tools/gpu-check.sh --prepare   on the machine you work on: copies what the GPU machine lacks
#                                  (stb_ds.h, and the shared models and text, which live outside the
#                                  repository) into third_party/ (git-ignored); carry that folder
#   tools/gpu-check.sh             on the GPU machine
#
# Environment: CUDA_ARCH (default 90), SHARED (default third_party/shared if present, else
# ../shared), OUT (if set, the log and the timing table are written there, and where cuobjdump is
# found the kernels' machine code, aq_cuda.sass.gz), RUNS (the parts, part:seconds, default
# "kernels:90 models:90 timing:180 gqa:90"; the parts are aq-gpu-check's: kernels, models, timing, decode
# or gqa, and short for timing --short), BUDGET (default 330: seconds from the start after which
# no part starts, and a part's time limit shrinks to what is left, so that the whole run, its
# build included, ends inside the 6 minutes the issue gives it and can be run twice in a
# 15-minute lease), PROFILE=1 (Nsight Compute on two GEMVs and one Quest step, below, within BUDGET).
set -eu
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--prepare" ]; then
    mkdir -p third_party/stb third_party/shared/models third_party/shared/text
    cp /usr/include/stb/stb_ds.h third_party/stb/
    cp ../shared/models/stories260K.gguf ../shared/models/ggml-vocab-llama-spm.gguf third_party/shared/models/
    cp ../shared/text/tinystories-valid.txt third_party/shared/text/
    du -sh third_party
    exit 0
fi

start=$(date +%s)
BUDGET=${BUDGET:-330}
RUNS=${RUNS:-"kernels:90 models:90 timing:180 gqa:90"}
if [ -z "${SHARED:-}" ]; then
    if [ -d third_party/shared ]; then SHARED=third_party/shared; else SHARED=../shared; fi
fi
STB=/usr/include/stb
[ -f $STB/stb_ds.h ] || STB=third_party/stb
LOG=${OUT:-build}/gpu-check.log
mkdir -p build "$(dirname "$LOG")"
unset OUT   # the Makefile's output folder is also called OUT
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null || true

echo "== build (CUDA_ARCH=${CUDA_ARCH:-90})"
make -s cuda CUDA_ARCH="${CUDA_ARCH:-90}" STB_INCLUDE=$STB SHARED=$SHARED -j"$(nproc)" >build/gpu-check-build.log 2>&1 ||
    { tail -40 build/gpu-check-build.log; exit 1; }
B=build/cuda
# the machine code, for reading off the device: this machine has cuobjdump, the one we edit on does not
if command -v cuobjdump >/dev/null; then
    cuobjdump --dump-sass $B/aq_cuda.o 2>/dev/null | gzip >"$(dirname "$LOG")/aq_cuda.sass.gz" || true
fi

echo "== models ($(($(date +%s) - start)) s)"
$B/tools/aq-quantize --method rtn --group 32 $SHARED/models/stories260K.gguf build/stories260K-rtn-g32.gguf \
    >>build/gpu-check-build.log 2>&1
$B/tools/aq-quantize --method olive --group 32 $SHARED/models/stories260K.gguf build/stories260K-olive-g32.gguf \
    >>build/gpu-check-build.log 2>&1
[ -f build/llama2-7b-aq4.gguf ] ||
    $B/tools/aq-synth --preset llama2-7b --type aq4_g128 --vocab $SHARED/models/ggml-vocab-llama-spm.gguf \
        -o build/llama2-7b-aq4.gguf >>build/gpu-check-build.log 2>&1
# a model with grouped KV heads, for the gqa part only: made when RUNS asks for that part
case " $RUNS " in *gqa:*)
    [ -f build/llama3-8b-aq4.gguf ] ||
        $B/tools/aq-synth --preset llama3-8b --type aq4_g128 --vocab $SHARED/models/ggml-vocab-llama-spm.gguf \
            -o build/llama3-8b-aq4.gguf >>build/gpu-check-build.log 2>&1 ;;
esac

# seconds of BUDGET left, and a time limit of at most $1 seconds within them
left() { echo $((BUDGET - ($(date +%s) - start))); }
limit_within() { l=$(left); [ "$1" -le "$l" ] && echo "$1" || echo "$l"; }

# separate processes, each with a time limit: a fault in one part (a bad address poisons the CUDA
# context) or a hang must not cost the others
status=0
: >"$LOG"
for run in $RUNS; do
    part=${run%%:*}; limit=${run#*:}
    if [ $(left) -lt 20 ]; then skipped="${skipped:-}$run "; continue; fi
    limit=$(limit_within $limit)
    tool_part=$part; extra="${no_one_grid:-}"
    [ "$part" = short ] && { tool_part=timing; extra="$extra --short"; }
    echo "== aq-gpu-check --part $tool_part $extra ($(($(date +%s) - start)) s)" | tee -a "$LOG"
    timeout "$limit" $B/tools/aq-gpu-check --part "$tool_part" $extra --shared $SHARED \
        --model build/stories260K-rtn-g32.gguf --model build/stories260K-olive-g32.gguf \
        --model-7b build/llama2-7b-aq4.gguf --model-gqa build/llama3-8b-aq4.gguf >build/gpu-check-part.log 2>&1 && rc=0 || rc=$?
    [ $rc = 0 ] || { echo "   (exit status $rc)" >>build/gpu-check-part.log; status=1; }
    cat build/gpu-check-part.log
    cat build/gpu-check-part.log >>"$LOG"
    # (a fault in Quest in one grid, each part's last section, 1b, 2b or 3b, is its own to report:
    # the sanitizer is for the rest)
    if sed '/^[0-9]b\. /,$d' build/gpu-check-part.log | grep -q "illegal\|misaligned\|unspecified launch"; then
        fault_part=${fault_part:-$tool_part}
    fi
    # Quest in one grid (an experiment, each part's last section) failed, trapped or hung (the time
    # limit): the later parts leave it out
    if [ -z "${no_one_grid:-}" ] && sed -n '/^[0-9]b\. /,$p' build/gpu-check-part.log | grep -qE "FAIL|exit status (124|137)"; then
        no_one_grid=--no-one-grid
        echo "   Quest in one grid failed: the later parts run with --no-one-grid" | tee -a "$LOG"
    fi
done
# a fault: find the kernel and the address under compute-sanitizer (a timing fault in the decode
# step at 32K)
if [ -n "${fault_part:-}" ] && command -v compute-sanitizer >/dev/null && [ $(left) -ge 60 ]; then
    echo "== compute-sanitizer, part $fault_part ($(($(date +%s) - start)) s)" | tee -a "$LOG"
    case $fault_part in
        kernels|models) args="--part $fault_part --shared $SHARED --model build/stories260K-rtn-g32.gguf" ;;
        *) args="--decode-ctx 32768 --model-7b build/llama2-7b-aq4.gguf" ;;
    esac
    timeout $(limit_within 120) compute-sanitizer --tool memcheck --print-limit 4 $B/tools/aq-gpu-check $args 2>&1 |
        tail -60 | tee -a "$LOG"
fi
# PROFILE=1: Nsight Compute on two int4 GEMVs of the timing part, 12288 x 4096 and 4096 x 11008
# (the shape that reads slower; the timing part launches 1200 4-bit GEMVs for the first shape,
# int4 then OliVe), and on the four kernels of one Quest step (32 KV heads).  Each profile runs
# the short timing part again under ncu (without the one-grid experiment), so each starts only
# with 30 s of BUDGET left, and takes at most what is left.
if [ -n "${PROFILE:-}" ] && command -v ncu >/dev/null; then
    echo "== ncu ($(($(date +%s) - start)) s)" | tee -a "$LOG"
    for k in "gemv_4bit_kernel 20 1" "gemv_4bit_kernel 1220 1" "quest_score|quest_topk|attention_kernel|attention_merge 1600 4"; do
        set -- $k
        if [ $(left) -lt 30 ]; then skipped="${skipped:-}ncu:$1 "; continue; fi
        rm -f build/ncu.txt
        timeout $(limit_within 100) ncu --clock-control none --kernel-name "regex:$1" --launch-skip "$2" --launch-count "$3" --section SpeedOfLight \
            --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy --section LaunchStats \
            --log-file build/ncu.txt $B/tools/aq-gpu-check --part timing --short --no-one-grid >/dev/null 2>&1 ||
            echo "   (ncu on $1: exit status $?)" | tee -a "$LOG"
        [ ! -f build/ncu.txt ] || tee -a "$LOG" <build/ncu.txt
    done
fi
# the lines that decide things, together at the end (the whole log is in $LOG)
echo "== summary"
grep -E "FAIL|^  +[0-9]+ x [0-9]+ |by row length|attention 32K|top-k alone|sparse attention alone|    dense \(|decode step|one step,|agreement|no activation|KV heads of|8-bit bounds|stage by stage|later parts run with --no-one-grid" "$LOG" || true
[ -z "${skipped:-}" ] || { echo "not run, out of time (BUDGET=$BUDGET): \"${skipped% }\"" | tee -a "$LOG"; status=1; }
echo "== done in $(($(date +%s) - start)) s, status $status"
exit $status
