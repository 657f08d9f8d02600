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

static uint64_t crc_table[8][256];

/* Go's crc64.Update with the ISO table (what fastcrc's go_iso computes), eight bytes per step
 * ("slicing by 8"). Used for headers, index and trailer, which are short; pages go through
 * fastcrc, which is faster on long inputs. */
static uint64_t crc64_iso_update(uint64_t crc, const unsigned char *p, Py_ssize_t n) {
    crc = ~crc;
    while (n >= 8) {
        uint64_t v = crc ^ ((uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 |
                            (uint64_t)p[3] << 24 | (uint64_t)p[4] << 32 | (uint64_t)p[5] << 40 |
                            (uint64_t)p[6] << 48 | (uint64_t)p[7] << 56);
        crc = crc_table[7][v & 0xff] ^ crc_table[6][(v >> 8) & 0xff] ^
              crc_table[5][(v >> 16) & 0xff] ^ crc_table[4][(v >> 24) & 0xff] ^
              crc_table[3][(v >> 32) & 0xff] ^ crc_table[2][(v >> 40) & 0xff] ^
              crc_table[1][(v >> 48) & 0xff] ^ crc_table[0][v >> 56];
        p += 8;
        n -= 8;
    }
    while (n-- > 0) {
        crc = crc_table[0][(uint8_t)crc ^ *p++] ^ (crc >> 8);
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

/* crc64(page, crc) through the given callable (fastcrc: far faster than the table on pages). */
static int fold_crc(PyObject *crc64, PyObject *page, uint64_t crc, uint64_t *out) {
    PyObject *crc_in = PyLong_FromUnsignedLongLong(crc);
    if (crc_in == NULL) {
        return -1;
    }
    PyObject *crc_args[2] = {page, crc_in};
    PyObject *crc_out = PyObject_Vectorcall(crc64, crc_args, 2, NULL);
    Py_DECREF(crc_in);
    if (crc_out == NULL) {
        return -1;
    }
    *out = PyLong_AsUnsignedLongLong(crc_out);
    Py_DECREF(crc_out);
    return PyErr_Occurred() ? -1 : 0;
}

/* (a, b) from two new references, both stolen (also when either is NULL). */
static PyObject *pair(PyObject *a, PyObject *b) {
    PyObject *t = (a != NULL && b != NULL) ? PyTuple_New(2) : NULL;
    if (t == NULL) {
        Py_XDECREF(a);
        Py_XDECREF(b);
        return NULL;
    }
    PyTuple_SET_ITEM(t, 0, a);
    PyTuple_SET_ITEM(t, 1, b);
    return t;
}

/* Cut two lists back to their lengths on entry, keeping the pending exception. */
static void cut_back(PyObject *a, Py_ssize_t a_len, PyObject *b, Py_ssize_t b_len) {
    PyObject *exc_type, *exc_value, *exc_tb;
    PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
    PyList_SetSlice(a, a_len, PY_SSIZE_T_MAX, NULL);
    PyList_SetSlice(b, b_len, PY_SSIZE_T_MAX, NULL);
    PyErr_Restore(exc_type, exc_value, exc_tb);
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

static inline unsigned char *put_uvarint(unsigned char *out, unsigned long long v) {
    while (v >= 0x80) {
        *out++ = (unsigned char)(v | 0x80);
        v >>= 7;
    }
    *out++ = (unsigned char)v;
    return out;
}

/* A growing output buffer. */
typedef struct {
    unsigned char *p;
    size_t len, cap;
} wbuf;

static unsigned char *wb_room(wbuf *b, size_t extra) {
    if (extra > (size_t)PY_SSIZE_T_MAX / 2 - b->len) {
        PyErr_NoMemory();
        return NULL;
    }
    if (b->len + extra > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + extra) {
            cap *= 2;
        }
        unsigned char *p = PyMem_Realloc(b->p, cap);
        if (p == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        b->p = p;
        b->cap = cap;
    }
    return b->p + b->len;
}

/* The frame loop shared by decode_frames and decode_file. Walks frames of data[0:len] from
 * *pos until a frame the pure decoder must handle, or max_pages pages; appends to pages and
 * entries and advances *pos, *last and *crc past every frame it accepted. Returns 0 when it
 * stopped for one of those reasons, -1 with an exception set for errors that must propagate
 * (the lists may then hold extra items; callers cut them back). */
typedef struct {
    /* memoryview of the bytes object holding data; payloads are slices of it, so a callable
     * that keeps its argument keeps the data alive. */
    PyObject *whole;
    const unsigned char *data;
    Py_ssize_t len;
    long page_size;
    unsigned long long commit, lock, base;
    int snapshot;
    PyObject *decompress, *crc64, *size_obj;
    wbuf *index; /* entries == NULL: the page index varints go here instead */
} frame_input;

static int frames_loop(const frame_input *in, Py_ssize_t *pos_io, unsigned long long *last_io,
                       uint64_t *crc_io, Py_ssize_t max_pages, PyObject *pages,
                       PyObject *entries) {
    const unsigned char *data = in->data;
    const Py_ssize_t len = in->len;
    const long page_size = in->page_size;
    const unsigned long long commit = in->commit, lock = in->lock;
    const uint32_t max_csize = (uint32_t)(page_size + page_size / 255 + 16);
    Py_ssize_t pos = *pos_io;
    unsigned long long last = *last_io;
    uint64_t crc = *crc_io;
    Py_ssize_t done = 0;
    int status = 0;

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
        if (in->snapshot && pgno != (last + 1 == lock ? last + 2 : last + 1)) {
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
                status = -1;
                break;
            }
        } else {
            Py_ssize_t start = (Py_ssize_t)(block - data);
            PyObject *payload =
                PySequence_GetSlice(in->whole, start, start + (Py_ssize_t)block_size);
            if (payload == NULL) {
                status = -1;
                break;
            }
            PyObject *call_args[2] = {payload, in->size_obj};
            page = PyObject_Vectorcall(in->decompress, call_args, 2, NULL);
            Py_DECREF(payload);
            if (page == NULL) {
                if (!input_error()) {
                    status = -1;
                    break;
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
        uint64_t new_crc;
        if (fold_crc(in->crc64, page, crc64_iso_update(crc, frame, header_size), &new_crc) < 0) {
            Py_DECREF(page);
            status = -1;
            break;
        }
        PyObject *item = pair(PyLong_FromUnsignedLong(pgno), page); /* steals page */
        if (item == NULL) {
            status = -1;
            break;
        }
        int failed = PyList_Append(pages, item);
        Py_DECREF(item);
        if (failed) {
            status = -1;
            break;
        }
        if (entries == NULL) {
            unsigned char *w = wb_room(in->index, 30);
            if (w == NULL) {
                status = -1;
                break;
            }
            w = put_uvarint(w, pgno);
            w = put_uvarint(w, in->base + (unsigned long long)pos);
            w = put_uvarint(w, frame_size);
            in->index->len = (size_t)(w - in->index->p);
        } else {
            PyObject *entry = PyTuple_New(3);
            if (entry != NULL) {
                PyObject *a = PyLong_FromUnsignedLong(pgno);
                PyObject *b = PyLong_FromUnsignedLongLong(in->base + (unsigned long long)pos);
                PyObject *c = PyLong_FromUnsignedLong(frame_size);
                if (a == NULL || b == NULL || c == NULL) {
                    Py_XDECREF(a);
                    Py_XDECREF(b);
                    Py_XDECREF(c);
                    Py_CLEAR(entry);
                } else {
                    PyTuple_SET_ITEM(entry, 0, a);
                    PyTuple_SET_ITEM(entry, 1, b);
                    PyTuple_SET_ITEM(entry, 2, c);
                }
            }
            if (entry == NULL) {
                status = -1;
                break;
            }
            failed = PyList_Append(entries, entry);
            Py_DECREF(entry);
            if (failed) {
                status = -1;
                break;
            }
        }
        crc = new_crc;
        pos += (Py_ssize_t)frame_size;
        last = pgno;
        done++;
    }
    *pos_io = pos;
    *last_io = last;
    *crc_io = crc;
    return status;
}

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
    Py_ssize_t max_pages = PyLong_AsSsize_t(args[11]);
    if (max_pages == -1 && PyErr_Occurred()) return NULL;
    PyObject *pages = args[12];
    PyObject *entries = args[13];
    if (!PyList_Check(pages) || !PyList_Check(entries)) {
        PyErr_SetString(PyExc_TypeError, "pages and entries must be lists");
        return NULL;
    }
    /* LTX page sizes are 512..65536 (the header rules); the size arithmetic relies on it. */
    if (pos < 0 || page_size < 512 || page_size > 65536) {
        PyErr_SetString(PyExc_ValueError, "bad position or page size");
        return NULL;
    }
    /* On an error that propagates, the lists are cut back to what they held on entry, so
     * they never describe pages the caller's (pos, last, crc) do not include. */
    const Py_ssize_t pages_at_entry = PyList_GET_SIZE(pages);
    const Py_ssize_t entries_at_entry = PyList_GET_SIZE(entries);
    frame_input in = {
        .data = (const unsigned char *)PyBytes_AS_STRING(buf),
        .len = PyBytes_GET_SIZE(buf),
        .page_size = page_size, .commit = commit, .lock = lock, .base = base,
        .snapshot = snapshot, .decompress = args[9], .crc64 = args[10],
    };
    /* Payload views are slices of one view of `buf`, so a callable that keeps its argument
     * keeps `buf` alive too. */
    in.whole = PyMemoryView_FromObject(buf);
    if (in.whole == NULL) {
        return NULL;
    }
    in.size_obj = PyLong_FromLong(page_size);
    if (in.size_obj == NULL) {
        Py_DECREF(in.whole);
        return NULL;
    }
    PyObject *result = NULL;
    if (frames_loop(&in, &pos, &last, &crc, max_pages, pages, entries) == 0) {
        result = Py_BuildValue("(nKK)", pos, last, (unsigned long long)crc);
    }
    if (result == NULL) {
        cut_back(pages, pages_at_entry, entries, entries_at_entry);
    }
    Py_DECREF(in.size_obj);
    Py_DECREF(in.whole);
    return result;
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


static inline uint64_t be64(const unsigned char *p) {
    return ((uint64_t)be32(p) << 32) | be32(p + 4);
}

static inline unsigned char *put_be32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
    return p + 4;
}

static inline unsigned char *put_le32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
    return p + 4;
}

static inline unsigned char *put_be64(unsigned char *p, uint64_t v) {
    return put_be32(put_be32(p, (uint32_t)(v >> 32)), (uint32_t)v);
}

#define CHECKSUM_FLAG 0x8000000000000000ULL
#define NO_CHECKSUM_FLAG 0x2U
#define HEADER_SIZE 100
#define TRAILER_SIZE 16

/* True if `type` is a tuple subclass whose instances are plain tuples (a NamedTuple): its
 * instances can then be built like tuple.__new__ builds them. */
static int plain_tuple_type(PyObject *type) {
    return PyType_Check(type) && PyType_IsSubtype((PyTypeObject *)type, &PyTuple_Type) &&
           ((PyTypeObject *)type)->tp_basicsize == PyTuple_Type.tp_basicsize &&
           ((PyTypeObject *)type)->tp_itemsize == PyTuple_Type.tp_itemsize;
}

/* An instance of a plain tuple subclass from n new references (all stolen, also on error),
 * exactly what tuple.__new__(type, items) gives; a NamedTuple's Python __new__ does only
 * that, at about 0.5 us per call. */
static PyObject *new_tuple_of(PyObject *type, PyObject **items, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) {
        if (items[i] == NULL) {
            for (Py_ssize_t k = 0; k < n; k++) {
                Py_XDECREF(items[k]);
            }
            return NULL;
        }
    }
    PyTypeObject *t = (PyTypeObject *)type;
    PyObject *obj = t->tp_alloc(t, n);
    if (obj == NULL) {
        for (Py_ssize_t k = 0; k < n; k++) {
            Py_DECREF(items[k]);
        }
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyTuple_SET_ITEM(obj, i, items[i]);
    }
    return obj;
}

/* The 100-byte LTX header's fields (header.py: Header, in file order). */
typedef struct {
    uint32_t flags, page_size, commit;
    uint64_t min_txid, max_txid;
    int64_t timestamp;
    uint64_t pre;
    int64_t wal_offset, wal_size;
    uint32_t salt1, salt2;
    uint64_t node_id;
} ltx_header;

static void parse_header(const unsigned char *d, ltx_header *h) {
    h->flags = be32(d + 4);
    h->page_size = be32(d + 8);
    h->commit = be32(d + 12);
    h->min_txid = be64(d + 16);
    h->max_txid = be64(d + 24);
    h->timestamp = (int64_t)be64(d + 32);
    h->pre = be64(d + 40);
    h->wal_offset = (int64_t)be64(d + 48);
    h->wal_size = (int64_t)be64(d + 56);
    h->salt1 = be32(d + 64);
    h->salt2 = be32(d + 68);
    h->node_id = be64(d + 72);
}

static void pack_header(const ltx_header *h, unsigned char *d) {
    memcpy(d, "LTX1", 4);
    put_be32(d + 4, h->flags);
    put_be32(d + 8, h->page_size);
    put_be32(d + 12, h->commit);
    put_be64(d + 16, h->min_txid);
    put_be64(d + 24, h->max_txid);
    put_be64(d + 32, (uint64_t)h->timestamp);
    put_be64(d + 40, h->pre);
    put_be64(d + 48, (uint64_t)h->wal_offset);
    put_be64(d + 56, (uint64_t)h->wal_size);
    put_be32(d + 64, h->salt1);
    put_be32(d + 68, h->salt2);
    put_be64(d + 72, h->node_id);
    memset(d + 80, 0, 20);
}

/* Every rule of Header.validate for v3; the Python code says which one a header breaks. */
static int header_ok(const ltx_header *h) {
    if ((h->flags & ~NO_CHECKSUM_FLAG) || h->page_size < 512 || h->page_size > 65536 ||
        (h->page_size & (h->page_size - 1)) || h->min_txid == 0 || h->max_txid == 0 ||
        h->min_txid > h->max_txid || h->wal_offset < 0 || h->wal_size < 0 ||
        ((h->salt1 || h->salt2) && h->wal_offset == 0) ||
        (h->wal_offset == 0 && h->wal_size != 0)) {
        return 0;
    }
    if (h->min_txid == 1 || (h->flags & NO_CHECKSUM_FLAG)) {
        return h->pre == 0;
    }
    return h->pre != 0 && (h->pre & CHECKSUM_FLAG);
}

/* Fields of a Header tuple: 1 if they fit the file's field widths, 0 if not (or not ints;
 * the caller leaves that to the Python code), -1 for an error that must propagate. */
static int header_from_tuple(PyObject *t, ltx_header *h) {
    if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 12) {
        return 0;
    }
    unsigned long long u[12];
    long long sgn[12];
    /* Signed fields: timestamp (4), WAL offset (7) and size (8). */
    static const unsigned long long u32_fields = (1 << 0) | (1 << 1) | (1 << 6) | (1 << 9) |
                                                 (1 << 10);
    for (int i = 0; i < 12; i++) {
        PyObject *v = PyTuple_GET_ITEM(t, i);
        if (!PyLong_Check(v)) {
            return 0;
        }
        if (i == 4 || i == 7 || i == 8) {
            sgn[i] = PyLong_AsLongLong(v);
            if (sgn[i] == -1 && PyErr_Occurred()) {
                goto bad;
            }
        } else {
            u[i] = PyLong_AsUnsignedLongLong(v);
            if (u[i] == (unsigned long long)-1 && PyErr_Occurred()) {
                goto bad;
            }
            if (((u32_fields >> i) & 1) && u[i] > 0xFFFFFFFFULL) {
                return 0;
            }
        }
    }
    h->page_size = (uint32_t)u[0];
    h->commit = (uint32_t)u[1];
    h->min_txid = u[2];
    h->max_txid = u[3];
    h->timestamp = sgn[4];
    h->pre = u[5];
    h->flags = (uint32_t)u[6];
    h->wal_offset = sgn[7];
    h->wal_size = sgn[8];
    h->salt1 = (uint32_t)u[9];
    h->salt2 = (uint32_t)u[10];
    h->node_id = u[11];
    return 1;
bad:
    if (!input_error()) {
        return -1;
    }
    PyErr_Clear();
    return 0;
}

/* What decode_file, decode_bytes and encode_file call and build, set once by configure(). */
static PyObject *cfg_decompress, *cfg_compress, *cfg_crc64, *cfg_header, *cfg_trailer,
    *cfg_result, *cfg_fallback;

/* The page sizes 512..65536 as ints (decompress's second argument), made once. */
static PyObject *page_size_ints[17];

PyDoc_STRVAR(configure_doc,
"configure(decompress, compress, crc64, header_type, trailer_type, result_type, fallback)\n"
"\n"
"Set what decode_file, decode_bytes and encode_file use: lz4.block.decompress and compress\n"
"(callables that must not keep their arguments), fastcrc's crc64, the Header, Trailer and\n"
"DecodedFile NamedTuple classes, and the Python decoder decode_bytes hands unusual files\n"
"to, fallback(data, name). compiled.py calls it at import. Only the first call counts\n"
"(True); later ones change nothing and return False.");

static PyObject *configure(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "configure takes 7 arguments");
        return NULL;
    }
    if (!plain_tuple_type(args[3]) || !plain_tuple_type(args[4]) || !plain_tuple_type(args[5])) {
        PyErr_SetString(PyExc_TypeError, "result types must be NamedTuple classes");
        return NULL;
    }
    /* Once only, later calls change nothing (False): the functions use these as borrowed
     * references while Python code runs. */
    if (cfg_result != NULL) {
        Py_RETURN_FALSE;
    }
    PyObject **slots[7] = {&cfg_decompress, &cfg_compress, &cfg_crc64, &cfg_header,
                           &cfg_trailer, &cfg_result, &cfg_fallback};
    for (int i = 0; i < 7; i++) {
        *slots[i] = Py_NewRef(args[i]);
    }
    Py_RETURN_TRUE;
}

static int configured(void) {
    if (cfg_result == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_frames.configure() was not called");
        return 0;
    }
    return 1;
}

PyDoc_STRVAR(decode_file_doc,
"decode_file(data) -> DecodedFile(header, pages, trailer) | None\n"
"\n"
"Decode a whole in-memory LTX v3 file whose every part is usual and valid: header rules,\n"
"page frames, end marker, page index, trailer rules, file checksum, nothing after it.\n"
"Returns None for anything else (a bad file, an unusual frame layout); the pure decoder then\n"
"decodes the file again and raises the precise error.");

static PyObject *decode_file(PyObject *self, PyObject *buf) {
    (void)self;
    if (!configured()) {
        return NULL;
    }
    if (!PyBytes_Check(buf)) {
        Py_RETURN_NONE;
    }
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(buf);
    const Py_ssize_t len = PyBytes_GET_SIZE(buf);
    if (len < HEADER_SIZE + 6 + 1 + 8 + TRAILER_SIZE || memcmp(data, "LTX1", 4) != 0) {
        Py_RETURN_NONE;
    }
    /* The header and its rules (header.py: Header.decode and validate for v3). */
    ltx_header hd;
    parse_header(data, &hd);
    if (!header_ok(&hd)) {
        Py_RETURN_NONE;
    }
    const uint32_t page_size = hd.page_size, commit = hd.commit;
    const int no_checksum = (hd.flags & NO_CHECKSUM_FLAG) != 0;
    const int snapshot = hd.min_txid == 1;
    frame_input in = {
        .data = data, .len = len, .page_size = (long)page_size, .commit = commit,
        .lock = 0x40000000U / page_size + 1, .base = 0, .snapshot = snapshot,
        .decompress = cfg_decompress, .crc64 = cfg_crc64,
    };
    PyObject *pages = NULL, *result = NULL;
    wbuf index = {0};
    in.index = &index;
    in.size_obj = page_size_ints[__builtin_ctz(page_size)]; /* borrowed */
    in.whole = PyMemoryView_FromObject(buf);
    pages = PyList_New(0);
    if (in.whole == NULL || pages == NULL) {
        goto done;
    }
    Py_ssize_t pos = HEADER_SIZE;
    unsigned long long last = 0;
    uint64_t crc = crc64_iso_update(0, data, HEADER_SIZE);
    if (frames_loop(&in, &pos, &last, &crc, PY_SSIZE_T_MAX, pages, NULL) < 0) {
        goto done;
    }
    static const unsigned char end_of_pages[6] = {0};
    const unsigned long long needed = commit == in.lock ? commit - 1 : commit;
    if (len - pos < 6 || memcmp(data + pos, end_of_pages, 6) != 0 ||
        (snapshot && last != needed)) {
        goto usual_no;
    }
    crc = crc64_iso_update(crc, data + pos, 6);
    pos += 6;
    /* The page index must be exactly the one the frames give. */
    unsigned char *w = wb_room(&index, 1);
    if (w == NULL) {
        goto done;
    }
    *w = 0;
    const Py_ssize_t index_len = (Py_ssize_t)++index.len;
    if (len - pos != index_len + 8 + TRAILER_SIZE ||
        memcmp(data + pos, index.p, (size_t)index_len) != 0 ||
        be64(data + pos + index_len) != (uint64_t)index_len) {
        goto usual_no;
    }
    crc = crc64_iso_update(crc, data + pos, index_len + 8);
    pos += index_len + 8;
    const uint64_t post = be64(data + pos), file_checksum = be64(data + pos + 8);
    if (no_checksum ? post != 0 : (post == 0 || !(post & CHECKSUM_FLAG))) {
        goto usual_no;
    }
    if (file_checksum != (CHECKSUM_FLAG | crc64_iso_update(crc, data + pos, 8))) {
        goto usual_no;
    }
    PyObject *h[12] = {
        PyLong_FromUnsignedLong(page_size), PyLong_FromUnsignedLong(commit),
        PyLong_FromUnsignedLongLong(hd.min_txid), PyLong_FromUnsignedLongLong(hd.max_txid),
        PyLong_FromLongLong(hd.timestamp), PyLong_FromUnsignedLongLong(hd.pre),
        PyLong_FromUnsignedLong(hd.flags), PyLong_FromLongLong(hd.wal_offset),
        PyLong_FromLongLong(hd.wal_size), PyLong_FromUnsignedLong(hd.salt1),
        PyLong_FromUnsignedLong(hd.salt2), PyLong_FromUnsignedLongLong(hd.node_id),
    };
    PyObject *t[2] = {PyLong_FromUnsignedLongLong(post),
                      PyLong_FromUnsignedLongLong(file_checksum)};
    PyObject *parts[3] = {new_tuple_of(cfg_header, h, 12), NULL, new_tuple_of(cfg_trailer, t, 2)};
    Py_INCREF(pages);
    parts[1] = pages;
    result = new_tuple_of(cfg_result, parts, 3);
    goto done;
usual_no:
    result = Py_NewRef(Py_None);
done:
    PyMem_Free(index.p);
    Py_XDECREF(pages);
    Py_XDECREF(in.whole);
    return result;
}

PyDoc_STRVAR(decode_bytes_doc,
"decode_bytes(data, *, name='<ltx>') -> DecodedFile(header, pages, trailer)\n"
"\n"
"Decode and check a whole LTX v3 file held in memory, in one call: the same checks, result\n"
"and errors as the streaming Decoder reading every page, but much cheaper per file. The\n"
"usual valid file is decoded here (decode_file); anything else goes to the streaming\n"
"decoder, which raises the precise LTXError naming `name`.");

static PyObject *decode_bytes(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames) {
    PyObject *name = NULL;
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    if (nargs != 1 || nkw > 1 ||
        (nkw == 1 &&
         PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "name") != 0)) {
        PyErr_SetString(PyExc_TypeError, "decode_bytes(data, *, name='<ltx>')");
        return NULL;
    }
    if (nkw == 1) {
        name = args[1];
    }
    PyObject *done = decode_file(self, args[0]);
    if (done != Py_None) {
        return done;
    }
    Py_DECREF(done);
    PyObject *call_args[2] = {args[0], name};
    return PyObject_Vectorcall(cfg_fallback, call_args, name == NULL ? 1 : 2, NULL);
}

static PyObject *store_size_kwnames;

/* What encode_loop needs to know about the file being written. */
typedef struct {
    uint32_t page_size, commit, lock;
    int snapshot, legacy, track;
} page_rules;

/* Encode the (pgno, page) items of `list` as page frames appended to `out`, whose byte 0 is at
 * file offset `base`; index entries go to `index` as varints, or to the list `entries` as
 * (pgno, offset, size) tuples when `index` is NULL. *last, *crc and *pages_xor (the XOR of
 * the page checksums, with `track`) advance past every page encoded. Stops before the first
 * item that is not a usual page: not a (pgno, page) pair, wrong size, or a page number that
 * breaks the order, lock-page, commit or snapshot rules. Returns the number of pages encoded,
 * or -1 for an error that must propagate. */
static Py_ssize_t encode_loop(const page_rules *r, PyObject *list, uint64_t base, wbuf *out,
                              wbuf *index, PyObject *entries, uint32_t *last_io,
                              uint64_t *crc_io, uint64_t *xor_io) {
    const uint32_t page_size = r->page_size, commit = r->commit, lock = r->lock;
    const int legacy = r->legacy;
    uint32_t last = *last_io;
    uint64_t crc = *crc_io, pages_xor = *xor_io;
    Py_ssize_t i = 0;
    int failed = 0;
    for (; i < PyList_GET_SIZE(list); i++) {
        PyObject *item = PyList_GET_ITEM(list, i);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
            break;
        }
        unsigned long long pgno_ll = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(item, 0));
        if (pgno_ll == (unsigned long long)-1 && PyErr_Occurred()) {
            if (!input_error()) {
                failed = 1;
                break;
            }
            PyErr_Clear();
            break;
        }
        if (pgno_ll <= last || pgno_ll == lock || pgno_ll > commit ||
            (r->snapshot && pgno_ll != (last + 1 == lock ? last + 2 : last + 1))) {
            break;
        }
        const uint32_t pgno = (uint32_t)pgno_ll;
        PyObject *page = PyTuple_GET_ITEM(item, 1);
        Py_INCREF(page); /* held across the calls below, whatever happens to the list */
        Py_buffer view;
        if (PyObject_GetBuffer(page, &view, PyBUF_ND) < 0) {
            Py_DECREF(page);
            if (!input_error()) {
                failed = 1;
                break;
            }
            PyErr_Clear();
            break;
        }
        /* len(page) is what the Encoder checks: byte-sized items only (not array('I')). */
        if (view.len != (Py_ssize_t)page_size || view.itemsize != 1 || view.ndim > 1) {
            PyBuffer_Release(&view);
            Py_DECREF(page);
            break;
        }
        const unsigned char *page_bytes = view.buf;
        PyObject *call_args[2] = {page, Py_False};
        PyObject *block = PyObject_Vectorcall(cfg_compress, call_args, 1, store_size_kwnames);
        if (block == NULL || !PyBytes_Check(block)) {
            if (block != NULL) {
                Py_DECREF(block);
                PyErr_SetString(PyExc_TypeError, "compress must return bytes");
            }
            PyBuffer_Release(&view);
            Py_DECREF(page);
            failed = 1;
            break;
        }
        const size_t bsize = (size_t)PyBytes_GET_SIZE(block);
        /* LZ4F stores a block that does not shrink as it is (page_encoding.compress_frame). */
        const int stored = legacy && bsize >= (size_t)page_size;
        const size_t payload = stored ? (size_t)page_size : bsize;
        const size_t frame_head = legacy ? 6 : FRAME_HEADER;
        const size_t frame_size = frame_head + (legacy ? 7 + 4 + payload + 8 : payload);
        const uint64_t offset = base + out->len;
        unsigned char *w = wb_room(out, frame_size);
        if (w != NULL && index != NULL && wb_room(index, 30) == NULL) {
            w = NULL;
        }
        if (w == NULL) {
            Py_DECREF(block);
            PyBuffer_Release(&view);
            Py_DECREF(page);
            failed = 1;
            break;
        }
        unsigned char *frame = w;
        w = put_be32(w, pgno);
        *w++ = 0;
        *w++ = legacy ? 0 : PAGE_FLAG_LZ4_BLOCK;
        if (legacy) {
            memcpy(w, legacy_head, 7);
            w += 7;
            w = put_le32(w, stored ? (page_size | 0x80000000U) : (uint32_t)bsize);
        } else {
            w = put_be32(w, (uint32_t)bsize);
        }
        memcpy(w, stored ? page_bytes : (const unsigned char *)PyBytes_AS_STRING(block), payload);
        w += payload;
        Py_DECREF(block);
        if (legacy) {
            w = put_le32(w, 0);
            w = put_le32(w, xxh32(page_bytes, (size_t)page_size));
        }
        out->len += frame_size;
        PyBuffer_Release(&view);
        /* The file checksum covers frame headers and *uncompressed* pages (docs/formats.md §3). */
        uint64_t new_crc, page_crc = 0;
        if (fold_crc(cfg_crc64, page, crc64_iso_update(crc, frame, frame_head), &new_crc) < 0 ||
            (r->track &&
             fold_crc(cfg_crc64, page, crc64_iso_update(0, frame, 4), &page_crc) < 0)) {
            out->len -= frame_size;
            Py_DECREF(page);
            failed = 1;
            break;
        }
        Py_DECREF(page);
        if (index != NULL) {
            unsigned char *iw = index->p + index->len;
            iw = put_uvarint(put_uvarint(put_uvarint(iw, pgno), offset), frame_size);
            index->len = (size_t)(iw - index->p);
        } else {
            PyObject *entry = Py_BuildValue("(kKk)", (unsigned long)pgno,
                                            (unsigned long long)offset, (unsigned long)frame_size);
            if (entry == NULL || PyList_Append(entries, entry) < 0) {
                Py_XDECREF(entry);
                out->len -= frame_size;
                failed = 1;
                break;
            }
            Py_DECREF(entry);
        }
        crc = new_crc;
        pages_xor ^= page_crc;
        last = pgno;
    }
    *last_io = last;
    *crc_io = crc;
    *xor_io = pages_xor;
    return failed ? -1 : i;
}

PyDoc_STRVAR(encode_frames_doc,
"encode_frames(pages, offset, page_size, commit, snapshot, last, crc, legacy, track,\n"
"              pages_xor, entries) -> (frames, count, last, crc, pages_xor)\n"
"\n"
"The Encoder's page loop: encode the usual (pgno, page) items of the list `pages` as page\n"
"frames starting at file offset `offset`, after page `last`; append their index entries to\n"
"`entries`, fold them into the file checksum `crc` and (with `track`) into the XOR of page\n"
"checksums. Stops before the first item that breaks a rule (the Encoder then raises the\n"
"precise error for it); `count` says how many were encoded.");

static PyObject *encode_frames(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 11) {
        PyErr_SetString(PyExc_TypeError, "encode_frames takes 11 arguments");
        return NULL;
    }
    if (!configured()) {
        return NULL;
    }
    PyObject *list = args[0], *entries = args[10];
    if (!PyList_Check(list) || !PyList_Check(entries)) {
        PyErr_SetString(PyExc_TypeError, "pages and entries must be lists");
        return NULL;
    }
    unsigned long long offset = PyLong_AsUnsignedLongLong(args[1]);
    if (offset == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    unsigned long page_size = PyLong_AsUnsignedLong(args[2]);
    if (page_size == (unsigned long)-1 && PyErr_Occurred()) return NULL;
    unsigned long commit = PyLong_AsUnsignedLong(args[3]);
    if (commit == (unsigned long)-1 && PyErr_Occurred()) return NULL;
    int snapshot = PyObject_IsTrue(args[4]);
    if (snapshot < 0) return NULL;
    unsigned long last_in = PyLong_AsUnsignedLong(args[5]);
    if (last_in == (unsigned long)-1 && PyErr_Occurred()) return NULL;
    unsigned long long crc_in = PyLong_AsUnsignedLongLong(args[6]);
    if (crc_in == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    int legacy = PyObject_IsTrue(args[7]);
    if (legacy < 0) return NULL;
    int track = PyObject_IsTrue(args[8]);
    if (track < 0) return NULL;
    unsigned long long xor_in = PyLong_AsUnsignedLongLong(args[9]);
    if (xor_in == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    if (page_size < 512 || page_size > 65536 || commit > 0xFFFFFFFFUL ||
        last_in > 0xFFFFFFFFUL) {
        PyErr_SetString(PyExc_ValueError, "page size, commit or last page out of range");
        return NULL;
    }
    const page_rules rules = {(uint32_t)page_size, (uint32_t)commit,
                              0x40000000U / (uint32_t)page_size + 1, snapshot, legacy, track};
    uint32_t last = (uint32_t)last_in;
    uint64_t crc = crc_in, pages_xor = xor_in;
    const Py_ssize_t entries_at_entry = PyList_GET_SIZE(entries);
    wbuf out = {0};
    PyObject *result = NULL;
    /* Room for the usual case at once (pages rarely compress to more than half), for up to
     * 64 pages; more grows as needed. */
    const Py_ssize_t n_pages = PyList_GET_SIZE(list);
    if (wb_room(&out, (size_t)(n_pages < 64 ? n_pages : 64) * (page_size / 2 + 64) + 64) ==
        NULL) {
        return NULL;
    }
    Py_ssize_t n = encode_loop(&rules, list, offset, &out, NULL, entries, &last, &crc,
                               &pages_xor);
    if (n >= 0) {
        result = Py_BuildValue("(y#nkKK)", out.p ? (const char *)out.p : "",
                               (Py_ssize_t)out.len, n, (unsigned long)last,
                               (unsigned long long)crc, (unsigned long long)pages_xor);
    }
    if (result == NULL) {
        PyObject *exc_type, *exc_value, *exc_tb;
        PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
        PyList_SetSlice(entries, entries_at_entry, PY_SSIZE_T_MAX, NULL);
        PyErr_Restore(exc_type, exc_value, exc_tb);
    }
    PyMem_Free(out.p);
    return result;
}

PyDoc_STRVAR(encode_file_doc,
"encode_file(header, pages, post, legacy, track) -> bytes | None\n"
"\n"
"Encode a whole LTX v3 file in memory: `header` is a Header (a tuple of its 12 fields),\n"
"`pages` a list of (pgno, page). `post` is the post-apply checksum, or None for the XOR of\n"
"the page checksums (`track` must then be true). Returns None if the header, a page or the\n"
"trailer breaks a rule; the streaming Encoder then raises the precise error.");

static PyObject *encode_file(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "encode_file takes 5 arguments");
        return NULL;
    }
    if (!configured()) {
        return NULL;
    }
    PyObject *list = args[1];
    if (!PyList_Check(list)) {
        PyErr_SetString(PyExc_TypeError, "pages must be a list");
        return NULL;
    }
    ltx_header hd;
    int usual = header_from_tuple(args[0], &hd);
    if (usual <= 0) {
        return usual < 0 ? NULL : Py_NewRef(Py_None);
    }
    if (!header_ok(&hd)) {
        Py_RETURN_NONE;
    }
    unsigned char hdr[HEADER_SIZE];
    pack_header(&hd, hdr);
    const uint32_t page_size = hd.page_size, commit = hd.commit;
    const int snapshot = hd.min_txid == 1, no_checksum = (hd.flags & NO_CHECKSUM_FLAG) != 0;
    const uint32_t lock = 0x40000000U / page_size + 1;
    uint64_t post = 0;
    const int tracked_post = args[2] == Py_None;
    if (!tracked_post) {
        post = PyLong_AsUnsignedLongLong(args[2]);
        if (post == (uint64_t)-1 && PyErr_Occurred()) {
            /* Not a u64: the Encoder says what is wrong, after checking the pages first. */
            if (!input_error()) return NULL;
            PyErr_Clear();
            Py_RETURN_NONE;
        }
    }
    const int legacy = PyObject_IsTrue(args[3]);
    if (legacy < 0) return NULL;
    const int track = PyObject_IsTrue(args[4]);
    if (track < 0) return NULL;
    const Py_ssize_t n = PyList_GET_SIZE(list);

    wbuf out = {0}, index = {0};
    PyObject *result = NULL;
    /* Room for the usual case at once (pages rarely compress to more than half), for up to
     * 64 pages; more grows as needed. */
    unsigned char *w = wb_room(&out, HEADER_SIZE + (size_t)(n < 64 ? n : 64) *
                                                       (page_size / 2 + 64) + 64);
    if (w == NULL) goto done;
    memcpy(w, hdr, HEADER_SIZE);
    out.len = HEADER_SIZE;
    uint64_t crc = crc64_iso_update(0, hdr, HEADER_SIZE), pages_xor = 0;
    uint32_t last = 0;
    const page_rules rules = {page_size, commit, lock, snapshot, legacy, track};
    Py_ssize_t done_pages = encode_loop(&rules, list, 0, &out, &index, NULL, &last, &crc,
                                        &pages_xor);
    if (done_pages < 0) {
        goto done;
    }
    if (done_pages != n) {
        goto usual_no;
    }
    if (snapshot && last != (commit == lock ? commit - 1 : commit)) {
        goto usual_no;
    }
    if (tracked_post) {
        if (!track) goto usual_no;
        post = CHECKSUM_FLAG | pages_xor;
    }
    if (no_checksum ? post != 0 : (post == 0 || !(post & CHECKSUM_FLAG))) {
        goto usual_no;
    }
    w = wb_room(&index, 1);
    if (w == NULL) goto done;
    *w = 0;
    index.len++;
    w = wb_room(&out, 6 + index.len + 8 + TRAILER_SIZE);
    if (w == NULL) goto done;
    unsigned char *tail = w;
    memset(w, 0, 6);
    w += 6;
    memcpy(w, index.p, index.len);
    w += index.len;
    w = put_be64(w, (uint64_t)index.len);
    w = put_be64(w, post);
    crc = CHECKSUM_FLAG | crc64_iso_update(crc, tail, w - tail);
    w = put_be64(w, crc);
    out.len = (size_t)(w - out.p);
    result = PyBytes_FromStringAndSize((const char *)out.p, (Py_ssize_t)out.len);
    goto done;
usual_no:
    result = Py_NewRef(Py_None);
done:
    PyMem_Free(out.p);
    PyMem_Free(index.p);
    return result;
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
    {"configure", (PyCFunction)(void (*)(void))configure, METH_FASTCALL, configure_doc},
    {"decode_file", decode_file, METH_O, decode_file_doc},
    {"decode_bytes", (PyCFunction)(void (*)(void))decode_bytes, METH_FASTCALL | METH_KEYWORDS,
     decode_bytes_doc},
    {"encode_file", (PyCFunction)(void (*)(void))encode_file, METH_FASTCALL, encode_file_doc},
    {"encode_frames", (PyCFunction)(void (*)(void))encode_frames, METH_FASTCALL,
     encode_frames_doc},
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
        crc_table[0][i] = c;
    }
    for (int i = 0; i < 256; i++) {
        for (int k = 1; k < 8; k++) {
            uint64_t prev = crc_table[k - 1][i];
            crc_table[k][i] = (prev >> 8) ^ crc_table[0][prev & 0xff];
        }
    }
    legacy_head[6] = (unsigned char)(xxh32(legacy_head + 4, 2) >> 8);
    if (store_size_kwnames != NULL) { /* initialised before (a second import) */
        return PyModule_Create(&module);
    }
    store_size_kwnames = Py_BuildValue("(s)", "store_size");
    if (store_size_kwnames == NULL) {
        return NULL;
    }
    for (int shift = 9; shift <= 16; shift++) {
        page_size_ints[shift] = PyLong_FromLong(1L << shift);
        if (page_size_ints[shift] == NULL) {
            return NULL;
        }
    }
    return PyModule_Create(&module);
}
