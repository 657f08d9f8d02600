/* Hot loops of the LTX v3 codec: walk the page frames of an in-memory chunk, and the page
 * index encoding.
 *
 * Why C: the Python loop in decoder.py costs about 2 us per page on top of the 2 us that
 * lz4.block.decompress itself takes, which put decoding at 2x the raw LZ4 floor
 * (bench/codec.py), and 4x for legacy LZ4-frame pages. Here the per-page bookkeeping (frame
 * header parse, page-number rules, page index entry, CRC of the frame header, the legacy
 * frame's structure and XXH32 content checksum) is done in C, while decompression and the CRC
 * of the page still go through the very same Python callables the pure path uses
 * (lz4.block.decompress and fastcrc's crc64), so both paths compute identical results.
 *
 * decode_frames never raises for a bad file: it stops *before* the first frame it cannot
 * handle (end marker, an unusual legacy frame layout, a broken rule, a frame that does not
 * fit in the chunk, a failing decompress or checksum) and returns. decoder.py then handles
 * that frame with its pure Python code, which accepts every valid layout and raises the
 * precise LTXError for an invalid one. Only errors that are not about the file (MemoryError,
 * KeyboardInterrupt, ...) propagate from here.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define FRAME_HEADER 10 /* pgno u32, flags u16, csize u32 */
#define PAGE_FLAG_LZ4_BLOCK 1

static uint64_t crc_table[256];

/* Go's crc64.Update with the ISO table (what fastcrc's go_iso computes). Used only for the
 * 10-byte frame headers; pages go through fastcrc, which is far faster on long inputs. */
static uint64_t crc64_iso_update(uint64_t crc, const unsigned char *p, Py_ssize_t n) {
    crc = ~crc;
    for (Py_ssize_t i = 0; i < n; i++) {
        crc = crc_table[(uint8_t)crc ^ p[i]] ^ (crc >> 8);
    }
    return ~crc;
}

/* XXH32 (seed 0), the content checksum of an LZ4 frame. */
#define P1 0x9E3779B1U
#define P2 0x85EBCA77U
#define P3 0xC2B2AE3DU
#define P4 0x27D4EB2FU
#define P5 0x165667B1U

static inline uint32_t rotl32(uint32_t x, int r) { return (x << r) | (x >> (32 - r)); }

static inline uint32_t le32(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static inline uint32_t xxh_round(uint32_t acc, uint32_t input) {
    acc += input * P2;
    acc = rotl32(acc, 13);
    return acc * P1;
}

static uint32_t xxh32(const unsigned char *p, size_t len) {
    const unsigned char *end = p + len;
    uint32_t h;
    if (len >= 16) {
        const unsigned char *limit = end - 16;
        uint32_t v1 = P1 + P2, v2 = P2, v3 = 0, v4 = 0 - P1;
        do {
            v1 = xxh_round(v1, le32(p));
            v2 = xxh_round(v2, le32(p + 4));
            v3 = xxh_round(v3, le32(p + 8));
            v4 = xxh_round(v4, le32(p + 12));
            p += 16;
        } while (p <= limit);
        h = rotl32(v1, 1) + rotl32(v2, 7) + rotl32(v3, 12) + rotl32(v4, 18);
    } else {
        h = P5;
    }
    h += (uint32_t)len;
    while (p + 4 <= end) {
        h += le32(p) * P3;
        h = rotl32(h, 17) * P4;
        p += 4;
    }
    while (p < end) {
        h += (*p++) * P5;
        h = rotl32(h, 11) * P1;
    }
    h ^= h >> 15;
    h *= P2;
    h ^= h >> 13;
    h *= P3;
    h ^= h >> 16;
    return h;
}

/* The one LZ4 frame layout the fast path accepts for a legacy page (what Litestream
 * 0.5.0-0.5.15 and compress_frame write): magic, FLG 0x64 (version 1, independent blocks,
 * content checksum, no block checksum, no content size, no dictionary), BD 0x40 (64 KiB
 * blocks), the header checksum byte, one data block, the end mark, the content checksum.
 * Every other layout is left to the pure decoder. */
static unsigned char legacy_head[7] = {0x04, 0x22, 0x4d, 0x18, 0x64, 0x40, 0};

static inline uint32_t be32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* True for errors that say "this input is bad" (the pure path will explain them); false
 * for errors that must propagate (out of memory, interrupts). */
static int input_error(void) {
    return PyErr_ExceptionMatches(PyExc_Exception) && !PyErr_ExceptionMatches(PyExc_MemoryError);
}

PyDoc_STRVAR(decode_frames_doc,
"decode_frames(buf, pos, page_size, commit, lock, snapshot, last, base, crc,\n"
"              decompress, crc64, max_pages, pages, entries) -> (pos, last, crc)\n"
"\n"
"Decode consecutive page frames (LZ4 block, or the usual legacy LZ4 frame) of `buf` from\n"
"`pos`: append (pgno, page) to `pages` and (pgno, base + offset, frame size) to `entries`,\n"
"fold each frame into the file\n"
"checksum `crc`, and stop before the first frame the pure decoder must handle, or after\n"
"`max_pages` pages. Returns the new position, last page number and checksum.");

static PyObject *decode_frames(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 14) {
        PyErr_SetString(PyExc_TypeError, "decode_frames takes 14 arguments");
        return NULL;
    }
    PyObject *buf = args[0];
    if (!PyBytes_Check(buf)) {
        PyErr_SetString(PyExc_TypeError, "buf must be bytes");
        return NULL;
    }
    /* Each conversion is checked at once: later ones must not run with an error set. */
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred()) return NULL;
    long page_size = PyLong_AsLong(args[2]);
    if (page_size == -1 && PyErr_Occurred()) return NULL;
    unsigned long long commit = PyLong_AsUnsignedLongLong(args[3]);
    if (commit == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    unsigned long long lock = PyLong_AsUnsignedLongLong(args[4]);
    if (lock == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    int snapshot = PyObject_IsTrue(args[5]);
    if (snapshot < 0) return NULL;
    unsigned long long last = PyLong_AsUnsignedLongLong(args[6]);
    if (last == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    unsigned long long base = PyLong_AsUnsignedLongLong(args[7]);
    if (base == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    unsigned long long crc_in0 = PyLong_AsUnsignedLongLong(args[8]);
    if (crc_in0 == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    uint64_t crc = crc_in0;
    PyObject *decompress = args[9];
    PyObject *crc64 = args[10];
    Py_ssize_t max_pages = PyLong_AsSsize_t(args[11]);
    if (max_pages == -1 && PyErr_Occurred()) return NULL;
    PyObject *pages = args[12];
    PyObject *entries = args[13];
    if (!PyList_Check(pages) || !PyList_Check(entries)) {
        PyErr_SetString(PyExc_TypeError, "pages and entries must be lists");
        return NULL;
    }
    /* LTX page sizes are 512..65536 (the header rules); the size arithmetic below relies on
     * it. */
    if (pos < 0 || page_size < 512 || page_size > 65536) {
        PyErr_SetString(PyExc_ValueError, "bad position or page size");
        return NULL;
    }
    /* On an error that propagates, the lists are cut back to what they held on entry, so
     * they never describe pages the caller's (pos, last, crc) do not include. */
    const Py_ssize_t pages_at_entry = PyList_GET_SIZE(pages);
    const Py_ssize_t entries_at_entry = PyList_GET_SIZE(entries);
    /* Payload views are slices of one view of `buf`, so a callable that keeps its argument
     * keeps `buf` alive too. */
    PyObject *whole = PyMemoryView_FromObject(buf);
    if (whole == NULL) {
        return NULL;
    }
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(buf);
    Py_ssize_t len = PyBytes_GET_SIZE(buf);
    const uint32_t max_csize = (uint32_t)(page_size + page_size / 255 + 16);
    PyObject *size_obj = PyLong_FromLong(page_size);
    if (size_obj == NULL) {
        Py_DECREF(whole);
        return NULL;
    }
    PyObject *result = NULL;
    Py_ssize_t done = 0;

    while (done < max_pages && len - pos >= FRAME_HEADER) {
        const unsigned char *frame = data + pos;
        uint32_t pgno = be32(frame);
        uint32_t flags = ((uint32_t)frame[4] << 8) | frame[5];
        uint32_t csize = be32(frame + 6);
        if (pgno == 0 || (flags != PAGE_FLAG_LZ4_BLOCK && flags != 0)) {
            break;
        }
        if (pgno <= last || pgno == lock || pgno > commit) {
            break;
        }
        if (snapshot && pgno != (last + 1 == lock ? last + 2 : last + 1)) {
            break;
        }
        /* Where the compressed block is, how long the whole frame is, and (legacy frames)
         * whether the block is stored uncompressed and its content checksum. */
        const unsigned char *block;
        uint32_t block_size, frame_size, header_size;
        int stored = 0;
        if (flags == PAGE_FLAG_LZ4_BLOCK) {
            if (csize > max_csize || (Py_ssize_t)csize > len - pos - FRAME_HEADER) {
                break;
            }
            header_size = FRAME_HEADER;
            block = frame + FRAME_HEADER;
            block_size = csize;
            frame_size = FRAME_HEADER + csize;
        } else {
            /* 6-byte page header, 7-byte LZ4 frame header, block size, block, end mark,
             * content checksum. */
            Py_ssize_t left = len - pos - 6;
            if (left < 7 + 4 || memcmp(frame + 6, legacy_head, 7) != 0) {
                break;
            }
            uint32_t bs = le32(frame + 13);
            stored = (bs & 0x80000000U) != 0;
            block_size = bs & 0x7FFFFFFFU;
            /* BD 0x40 caps a block at 64 KiB: LZ4F rejects larger ones, so does the pure path. */
            if (block_size == 0 || block_size > max_csize || block_size > 65536 ||
                left < 7 + 4 + (Py_ssize_t)block_size + 8) {
                break;
            }
            if (stored && block_size != (uint32_t)page_size) {
                break;
            }
            if (le32(frame + 17 + block_size) != 0) { /* the end mark: one block only */
                break;
            }
            header_size = 6;
            block = frame + 17;
            frame_size = 6 + 7 + 4 + block_size + 8;
        }
        PyObject *page;
        if (stored) {
            page = PyBytes_FromStringAndSize((const char *)block, block_size);
            if (page == NULL) {
                goto done;
            }
        } else {
            Py_ssize_t start = (Py_ssize_t)(block - data);
            PyObject *payload = PySequence_GetSlice(whole, start, start + (Py_ssize_t)block_size);
            if (payload == NULL) {
                goto done;
            }
            PyObject *call_args[2] = {payload, size_obj};
            page = PyObject_Vectorcall(decompress, call_args, 2, NULL);
            Py_DECREF(payload);
            if (page == NULL) {
                if (!input_error()) {
                    goto done;
                }
                PyErr_Clear();
                break;
            }
            if (!PyBytes_Check(page) || PyBytes_GET_SIZE(page) != page_size) {
                Py_DECREF(page);
                break;
            }
        }
        if (flags == 0 && xxh32((const unsigned char *)PyBytes_AS_STRING(page),
                                (size_t)PyBytes_GET_SIZE(page)) != le32(frame + frame_size - 4)) {
            Py_DECREF(page);
            break;
        }
        uint64_t head_crc = crc64_iso_update(crc, frame, header_size);
        PyObject *crc_in = PyLong_FromUnsignedLongLong(head_crc);
        if (crc_in == NULL) {
            Py_DECREF(page);
            goto done;
        }
        PyObject *crc_args[2] = {page, crc_in};
        PyObject *crc_out = PyObject_Vectorcall(crc64, crc_args, 2, NULL);
        Py_DECREF(crc_in);
        if (crc_out == NULL) {
            Py_DECREF(page);
            goto done;
        }
        uint64_t new_crc = PyLong_AsUnsignedLongLong(crc_out);
        Py_DECREF(crc_out);
        if (PyErr_Occurred()) {
            Py_DECREF(page);
            goto done;
        }
        PyObject *item = Py_BuildValue("(kN)", (unsigned long)pgno, page); /* steals page */
        if (item == NULL) {
            goto done;
        }
        int failed = PyList_Append(pages, item);
        Py_DECREF(item);
        if (failed) {
            goto done;
        }
        PyObject *entry = Py_BuildValue("(kKk)", (unsigned long)pgno,
                                        (unsigned long long)(base + (unsigned long long)pos),
                                        (unsigned long)frame_size);
        if (entry == NULL) {
            goto done;
        }
        failed = PyList_Append(entries, entry);
        Py_DECREF(entry);
        if (failed) {
            goto done;
        }
        crc = new_crc;
        pos += (Py_ssize_t)frame_size;
        last = pgno;
        done++;
    }
    result = Py_BuildValue("(nKK)", pos, last, (unsigned long long)crc);
done:
    if (result == NULL) {
        PyObject *exc_type, *exc_value, *exc_tb;
        PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
        PyList_SetSlice(pages, pages_at_entry, PY_SSIZE_T_MAX, NULL);
        PyList_SetSlice(entries, entries_at_entry, PY_SSIZE_T_MAX, NULL);
        PyErr_Restore(exc_type, exc_value, exc_tb);
    }
    Py_DECREF(size_obj);
    Py_DECREF(whole);
    return result;
}

static inline unsigned char *put_uvarint(unsigned char *out, unsigned long long v) {
    while (v >= 0x80) {
        *out++ = (unsigned char)(v | 0x80);
        v >>= 7;
    }
    *out++ = (unsigned char)v;
    return out;
}

PyDoc_STRVAR(encode_index_doc,
"encode_index(entries) -> bytes\n\nThe v3 page index: (pgno, offset, size) as unsigned LEB128\n"
"varints per entry, then a terminating 0 (same result as varint.encode_index).");

static PyObject *encode_index(PyObject *self, PyObject *entries) {
    (void)self;
    PyObject *seq = PySequence_Fast(entries, "entries must be a sequence");
    if (seq == NULL) {
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > (PY_SSIZE_T_MAX - 1) / 30) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    /* 3 varints of at most 10 bytes each per entry, plus the terminator. */
    PyObject *out = PyBytes_FromStringAndSize(NULL, n * 30 + 1);
    if (out == NULL) {
        Py_DECREF(seq);
        return NULL;
    }
    unsigned char *start = (unsigned char *)PyBytes_AS_STRING(out);
    unsigned char *w = start;
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *e = items[i];
        if (!PyTuple_Check(e) || PyTuple_GET_SIZE(e) != 3) {
            PyErr_SetString(PyExc_TypeError, "index entries must be (pgno, offset, size) tuples");
            goto fail;
        }
        for (int k = 0; k < 3; k++) {
            unsigned long long v = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(e, k));
            if (v == (unsigned long long)-1 && PyErr_Occurred()) {
                goto fail;
            }
            w = put_uvarint(w, v);
        }
    }
    *w++ = 0;
    Py_DECREF(seq);
    if (_PyBytes_Resize(&out, w - start) < 0) {
        return NULL;
    }
    return out;
fail:
    Py_DECREF(seq);
    Py_DECREF(out);
    return NULL;
}

PyDoc_STRVAR(xxh32_doc, "xxh32(data) -> int\n\nXXH32 with seed 0 (an LZ4 frame's content checksum).");

static PyObject *py_xxh32(PyObject *self, PyObject *arg) {
    (void)self;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    uint32_t h = xxh32(view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLong(h);
}

PyDoc_STRVAR(crc64_iso_doc,
"crc64_iso(data, crc=0) -> int\n\nGo's crc64.Update(crc, ISO table, data); for tests.");

static PyObject *crc64_iso(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer view;
    unsigned long long crc = 0;
    if (!PyArg_ParseTuple(args, "y*|K", &view, &crc)) {
        return NULL;
    }
    uint64_t out = crc64_iso_update(crc, view.buf, view.len);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong(out);
}

static PyMethodDef methods[] = {
    {"decode_frames", (PyCFunction)(void (*)(void))decode_frames, METH_FASTCALL,
     decode_frames_doc},
    {"encode_index", encode_index, METH_O, encode_index_doc},
    {"crc64_iso", crc64_iso, METH_VARARGS, crc64_iso_doc},
    {"xxh32", py_xxh32, METH_O, xxh32_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_frames", "Compiled hot loops of the LTX v3 codec.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__frames(void) {
    for (int i = 0; i < 256; i++) {
        uint64_t c = (uint64_t)i;
        for (int k = 0; k < 8; k++) {
            c = (c & 1) ? (c >> 1) ^ 0xD800000000000000ULL : c >> 1;
        }
        crc_table[i] = c;
    }
    legacy_head[6] = (unsigned char)(xxh32(legacy_head + 4, 2) >> 8);
    return PyModule_Create(&module);
}
