#!/usr/bin/env python3
"""sass_ops.py - the machine instructions of one kernel compiled here, without a disassembler.

This machine has nvcc and ptxas but no cuobjdump or nvdisasm. A GPU run of tools/gpu-check.sh
writes the device's SASS listing (aq_cuda.sass.gz: each instruction's mnemonic next to its
encoding). The low 12 bits of an instruction's first 64-bit word are its opcode, so that listing
is a table from opcode to mnemonic, and with it the .text section of a cubin compiled here reads
as a list of mnemonics (operands are not decoded). For call 4's source the result matched call
4's own listing instruction for instruction (kernels/NOTES.md, "Eighth session").

  nvcc -std=c++17 -O3 -arch=sm_90 -cubin kernels/aq_cuda.cu -o /tmp/aq.cubin
  kernels/sass_ops.py aq_cuda.sass.gz /tmp/aq.cubin _Z20aqc_gemv_4bit_kernelILi1      # counts
  kernels/sass_ops.py --list aq_cuda.sass.gz /tmp/aq.cubin _Z20aqc_gemv_4bit_kernelILi1   # in order

Needs python3 and readelf (binutils); nothing in the build or the tests uses it.
"""
import argparse
import collections
import gzip
import re
import signal
import struct
import subprocess
import sys

LINE = re.compile(r'/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*\S*)[^/]*/\* (0x[0-9a-f]{16}) \*/')


def opcode_table(listing):
    opener = gzip.open if listing.endswith('.gz') else open
    table = collections.defaultdict(collections.Counter)
    with opener(listing, 'rt') as f:
        for line in f:
            m = LINE.search(line)
            if m:
                table[int(m.group(2), 16) & 0xfff][m.group(1)] += 1
    return table


def kernel_text(cubin, prefix):
    out = subprocess.run(['readelf', '-SW', cubin], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        fields = line.split()
        if 'PROGBITS' not in fields:
            continue
        i = fields.index('PROGBITS')
        name = fields[i - 1]
        if name.startswith('.text.' + prefix):
            found.append((name[6:], int(fields[i + 2], 16), int(fields[i + 3], 16)))
    if len(found) != 1:
        names = ', '.join(n for n, _, _ in found) or 'none'
        sys.exit(f'sass_ops: {len(found)} kernels in {cubin} start with {prefix!r} ({names}); give a longer prefix')
    name, offset, size = found[0]
    with open(cubin, 'rb') as f:
        f.seek(offset)
        return name, f.read(size)


def main():
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)   # quiet under head
    ap = argparse.ArgumentParser(description='Mnemonics of a kernel in a cubin compiled here, by the opcodes of a device SASS listing.')
    ap.add_argument('listing', help="a SASS listing from the device (cuobjdump -sass; gpu-check.sh's aq_cuda.sass.gz)")
    ap.add_argument('cubin', help='a cubin compiled here (nvcc -cubin) for the same architecture')
    ap.add_argument('kernel', help='the start of the kernel\'s mangled name, e.g. _Z20aqc_gemv_4bit_kernelILi1')
    ap.add_argument('--list', action='store_true', help='print every instruction in order (offset, mnemonic), not the counts')
    a = ap.parse_args()
    table = opcode_table(a.listing)
    if not table:
        sys.exit(f'sass_ops: no instructions with encodings in {a.listing}')
    name, text = kernel_text(a.cubin, a.kernel)
    counts, unknown = collections.Counter(), 0
    for at in range(0, len(text), 16):
        op = struct.unpack('<Q', text[at:at + 8])[0] & 0xfff
        mnemonic = table[op].most_common(1)[0][0] if op in table else '?'
        unknown += mnemonic == '?'
        if a.list:
            print(f'{at:06x} {mnemonic}')
        counts[mnemonic.split('.')[0]] += 1
    if not a.list:
        print(f'{name}: {len(text) // 16} instructions ({unknown} with an opcode the listing lacks)')
        for mnemonic, n in counts.most_common():
            print(f'  {n:6d} {mnemonic}')


if __name__ == '__main__':
    main()
