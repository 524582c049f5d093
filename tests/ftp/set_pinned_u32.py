"""Writes a u32 into element 0 of a pinned BPF array map: set_pinned_u32.py PIN_PATH VALUE

(What a different gateway version would have left in its LAYOUT map.) Uses bpf(2) directly:
BPF_OBJ_GET, then BPF_MAP_UPDATE_ELEM.
"""
import ctypes
import struct
import sys

SYS_BPF = 321  # x86_64
BPF_MAP_UPDATE_ELEM = 2
BPF_OBJ_GET = 7
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def bpf(command, attr):
    buffer = ctypes.create_string_buffer(attr + b"\0" * (128 - len(attr)), 128)
    result = libc.syscall(SYS_BPF, command, buffer, 128)
    if result < 0:
        raise OSError(ctypes.get_errno(), f"bpf({command})")
    return result


path = ctypes.create_string_buffer(sys.argv[1].encode())
fd = bpf(BPF_OBJ_GET, struct.pack("=QII", ctypes.addressof(path), 0, 0))
key = ctypes.c_uint32(0)
value = ctypes.c_uint32(int(sys.argv[2]))
bpf(BPF_MAP_UPDATE_ELEM, struct.pack("=IIQQQ", fd, 0, ctypes.addressof(key), ctypes.addressof(value), 0))
