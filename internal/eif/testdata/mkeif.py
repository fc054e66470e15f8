#!/usr/bin/env python3
"""Write an EIF v4 from the layout in shared/notes/eif-format.md, independently
of our Go code, and print its PCRs. Usage: mkeif.py OUT KERNEL CMDLINE METADATA RAMDISK..."""
import hashlib, struct, sys, zlib

out, kernel, cmdline, metadata, *ramdisks = sys.argv[1:]
read = lambda p: open(p, "rb").read()
secs = [(1, read(kernel)), (2, read(cmdline)), (5, read(metadata))] + [(3, read(r)) for r in ramdisks]
offsets, sizes, off = [], [], 548
for _, data in secs:
    offsets.append(off); sizes.append(len(data)); off += 12 + len(data)
pad = lambda l: l + [0] * (32 - len(l))
hdr = b".eif" + struct.pack(">HHQQHH32Q32QI", 4, 0, 1 << 30, 2, 0, len(secs), *pad(offsets), *pad(sizes), 0)
crc = zlib.crc32(hdr)
body = b""
for typ, data in secs:
    sh = struct.pack(">HHQ", typ, 0, len(data))
    crc = zlib.crc32(sh + data, crc)
    body += sh + data
open(out, "wb").write(hdr + struct.pack(">I", crc) + body)

def pcr(data):
    return hashlib.sha384(b"\0" * 48 + hashlib.sha384(data).digest()).hexdigest()
k, c, rd = read(kernel), read(cmdline), [read(r) for r in ramdisks]
print("crc ", "%08x" % crc)
print("PCR0", pcr(k + c + b"".join(rd)))
print("PCR1", pcr(k + c + rd[0]))
print("PCR2", pcr(b"".join(rd[1:])))
