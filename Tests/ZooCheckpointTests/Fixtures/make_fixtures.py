#!/usr/bin/env python3
"""Writes safetensors fixtures with nothing but struct and json, following the format's
specification (an independent writer for zoo's reader and writer tests):

  8 bytes   N, unsigned 64-bit little-endian
  N bytes   JSON header: {"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets"}}
            padded with spaces so that 8 + N is a multiple of 8
  rest      the data buffer; data_offsets are [begin, end) within it; F32 little-endian

canonical.safetensors   laid out as zoo writes: tensors sorted by name and packed in that order,
                        compact JSON, "__metadata__" first, keys sorted
loose.safetensors       the same tensors and metadata, written the way other writers may:
                        pretty JSON in another key order, data in a different order than the
                        header, no padding; a reader must not depend on any of that

Run: python3 make_fixtures.py (writes both files beside itself); see official() below for the
third fixture, written by the reference implementation.
"""
import json, os, struct, sys

HERE = os.path.dirname(os.path.abspath(__file__))

# Values with exact F32 representations, plus special values, so a test can compare bit for bit.
TENSORS = {
    "embedding.weight": ([3, 4], [i * 0.25 - 1.0 for i in range(12)]),
    "layers.0.mixer.bias": ([5], [0.0, -0.0, 1.5, -2.75, 3.0e-38]),
    "layers.0.norm.scale": ([], [7.0]),
    "empty": ([0, 3], []),
    "layers.1.big": ([2, 2, 2], [float(2 ** k) for k in range(-4, 4)]),
}
METADATA = {"step": "1234", "rng": "18446744073709551557", "note": "quote \" backslash \\ newline \n é"}


def data_bytes(values):
    return struct.pack("<%df" % len(values), *values)


def write(path, header, blobs, pad):
    text = json.dumps(header, **({"separators": (",", ":")} if pad else {"indent": 2}),
                      ensure_ascii=False).encode("utf-8")
    if pad:
        text += b" " * ((8 - (8 + len(text)) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def canonical():
    header = {"__metadata__": {k: METADATA[k] for k in sorted(METADATA)}}
    blobs, offset = [], 0
    for name in sorted(TENSORS):
        shape, values = TENSORS[name]
        blob = data_bytes(values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    write(os.path.join(HERE, "canonical.safetensors"), header, blobs, pad=True)


def loose():
    # Data in reverse name order; header keys in yet another order, metadata last.
    order = sorted(TENSORS, reverse=True)
    offsets, blobs, offset = {}, [], 0
    for name in order:
        blob = data_bytes(TENSORS[name][1])
        offsets[name] = [offset, offset + len(blob)]
        blobs.append(blob)
        offset += len(blob)
    header = {}
    for name in sorted(TENSORS, key=lambda n: (len(n), n)):
        header[name] = {"data_offsets": offsets[name], "shape": TENSORS[name][0], "dtype": "F32"}
    header["__metadata__"] = METADATA
    write(os.path.join(HERE, "loose.safetensors"), header, blobs, pad=False)


if __name__ == "__main__":
    canonical()
    loose()


# official.safetensors was written once by the reference implementation (Python package
# `safetensors` 0.8.0, `safetensors.numpy.save`) from the same tensors with metadata
# {"step": "1234"}; zoo's writer must reproduce it byte for byte. To regenerate it:
#   pip install safetensors && python3 make_fixtures.py --official
def official():
    import numpy as np
    from safetensors.numpy import save
    tensors = {name: np.array(values, dtype="<f4").reshape(shape) for name, (shape, values) in TENSORS.items()}
    with open(os.path.join(HERE, "official.safetensors"), "wb") as f:
        f.write(save(tensors, {"step": "1234"}))


if __name__ == "__main__" and "--official" in sys.argv:
    official()
