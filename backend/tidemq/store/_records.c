/* tidemq.store._records: the commit log's per-record loops, in C.
 *
 * Why this exists: profiling the broker under W1 with batches of 100 x 1 KiB showed the
 * store spending ~2 us per record in interpreted loops (check each draft's header, stamp
 * its store fields, CRC it, pack its consume-queue entry): half of the broker's CPU, and
 * the wall once batching removed every per-request cost (docs/performance.md). Merging and
 * tightening the Python loops bought 7%. These functions do the same work over the same
 * bytes; ``commit_log.py`` keeps the pure-Python version, which is the reference (the
 * tests compare the two) and what runs when this module is not built.
 *
 * Record layout (protocol/record.py, little-endian): total_size u32 @0, magic u32 @4,
 * crc u32 @8 (CRC32C of bytes [12, size)), flags u32 @12, store stamp @16 (queue_id u32,
 * leader_epoch u32, queue_offset u64, commit_offset u64, store_timestamp_ms u64,
 * store_host 16s, store_port u16), tag_hash u64 @96, body_length u32 @104,
 * properties_length u32 @108, topic_length u16 @112; header 116 bytes, then topic,
 * properties, body. A consume-queue entry is commit_offset u64, size u32, tag_hash u64.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define HEADER_SIZE 116
#define RECORD_MAGIC 0x54494445u
#define FLAG_INDEXED (1u << 8)
#define CRC_OFFSET 8
#define CRC_START 12
#define STAMP_OFFSET 16
#define TAG_HASH_OFFSET 96
#define LENGTHS_OFFSET 104
#define QUEUE_ENTRY_SIZE 20
#define HOST_SIZE 16

static uint32_t get_u32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint16_t get_u16(const unsigned char *p) {
    return (uint16_t)(p[0] | p[1] << 8);
}

static uint64_t get_u64(const unsigned char *p) {
    return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32;
}

static void put_u16(unsigned char *p, uint16_t v) {
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}

static void put_u32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static void put_u64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

/* -- CRC32C (Castagnoli), the same values as the ``crc32c`` package ------------------- */

static uint32_t crc_table[8][256];

static void crc_init_table(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++)
        for (int t = 1; t < 8; t++)
            crc_table[t][n] = (crc_table[t - 1][n] >> 8) ^ crc_table[0][crc_table[t - 1][n] & 0xFF];
}

static uint32_t crc_portable(uint32_t value, const unsigned char *p, size_t n) {
    uint32_t c = ~value;
    while (n >= 8) {
        c ^= get_u32(p);
        uint32_t high = get_u32(p + 4);
        c = crc_table[7][c & 0xFF] ^ crc_table[6][(c >> 8) & 0xFF] ^
            crc_table[5][(c >> 16) & 0xFF] ^ crc_table[4][c >> 24] ^
            crc_table[3][high & 0xFF] ^ crc_table[2][(high >> 8) & 0xFF] ^
            crc_table[1][(high >> 16) & 0xFF] ^ crc_table[0][high >> 24];
        p += 8;
        n -= 8;
    }
    while (n--) c = crc_table[0][(c ^ *p++) & 0xFF] ^ (c >> 8);
    return ~c;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_CRC_SSE42 1
__attribute__((target("sse4.2")))
static uint32_t crc_sse42(uint32_t value, const unsigned char *p, size_t n) {
    uint64_t c = ~value;
    while (n >= 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        c = __builtin_ia32_crc32di(c, word);
        p += 8;
        n -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (n--) c32 = __builtin_ia32_crc32qi(c32, *p++);
    return ~c32;
}
#endif

/* crc32c(value, data, n): the CRC continued from ``value`` (0 to start), as
 * ``crc32c.crc32c(data, value)`` computes it. */
static uint32_t (*crc32c)(uint32_t, const unsigned char *, size_t) = crc_portable;

/* -- validate_packed ------------------------------------------------------------------ */

PyDoc_STRVAR(validate_packed_doc,
"validate_packed(records, topic, max_size) -> (count, indexed) | None\n\n"
"Check drafts packed back to back as ``CommitLog.validate_packed`` does. Returns the number\n"
"of drafts and, for each draft with FLAG_INDEXED, (its number, where its properties start,\n"
"their length); or None when the batch is bad (the caller finds out why in Python).");

static PyObject *validate_packed(PyObject *self, PyObject *args) {
    Py_buffer records, topic;
    Py_ssize_t max_size;
    if (!PyArg_ParseTuple(args, "y*y*n", &records, &topic, &max_size)) return NULL;
    const unsigned char *data = records.buf;
    Py_ssize_t end = records.len, position = 0, count = 0;
    PyObject *indexed = PyList_New(0);
    PyObject *result = NULL;
    int bad = end == 0;
    if (indexed == NULL) goto done;
    while (!bad && position < end) {
        const unsigned char *record = data + position;
        if (end - position < HEADER_SIZE) { bad = 1; break; }
        Py_ssize_t size = get_u32(record);
        uint32_t flags = get_u32(record + 12);
        Py_ssize_t body = get_u32(record + LENGTHS_OFFSET);
        Py_ssize_t properties = get_u32(record + LENGTHS_OFFSET + 4);
        Py_ssize_t topic_length = get_u16(record + LENGTHS_OFFSET + 8);
        if (get_u32(record + 4) != RECORD_MAGIC || size > max_size || size < HEADER_SIZE ||
                size > end - position || HEADER_SIZE + body + properties + topic_length != size ||
                topic_length != topic.len ||
                memcmp(record + HEADER_SIZE, topic.buf, (size_t)topic.len) != 0) {
            bad = 1;
            break;
        }
        if (flags & FLAG_INDEXED) {
            PyObject *entry = Py_BuildValue("(nnn)", count,
                                            position + HEADER_SIZE + topic_length, properties);
            if (entry == NULL) goto done;
            int failed = PyList_Append(indexed, entry);
            Py_DECREF(entry);
            if (failed) goto done;
        }
        position += size;
        count++;
    }
    if (bad) {
        result = Py_NewRef(Py_None);
    } else {
        result = Py_BuildValue("(nO)", count, indexed);
    }
done:
    Py_XDECREF(indexed);
    PyBuffer_Release(&records);
    PyBuffer_Release(&topic);
    return result;
}

/* -- stamp_packed ----------------------------------------------------------------------- */

PyDoc_STRVAR(stamp_packed_doc,
"stamp_packed(target, position, length, count, queue_id, leader_epoch, first_queue_offset,\n"
"             base, now_ms, host, port) -> (commit_offsets, queue_entries)\n\n"
"Stamp and seal, in place, the ``count`` validated records that fill\n"
"``target[position:position + length]`` (a segment's map; ``base`` is the segment's start\n"
"offset), as ``CommitLog.append_packed`` does. Returns each record's commit offset and the\n"
"batch's consume-queue entries packed. Raises ValueError when the records do not fill the\n"
"range exactly (nothing validated would).");

static PyObject *stamp_packed(PyObject *self, PyObject *args) {
    Py_buffer target, host;
    Py_ssize_t position, length, count;
    unsigned int queue_id, leader_epoch, port;
    unsigned long long first_queue_offset, base, now_ms;
    if (!PyArg_ParseTuple(args, "w*nnnIIKKKy*I", &target, &position, &length, &count,
                          &queue_id, &leader_epoch, &first_queue_offset, &base, &now_ms,
                          &host, &port))
        return NULL;
    PyObject *offsets = NULL, *entries = NULL, *result = NULL;
    if (host.len != HOST_SIZE || port > 0xFFFF || count < 0 || position < 0 || length < 0 ||
            position > target.len || length > target.len - position) {
        PyErr_SetString(PyExc_ValueError, "stamp_packed: bad arguments");
        goto done;
    }
    if (count > length / HEADER_SIZE) {  /* more records than could fit: never allocate */
        PyErr_SetString(PyExc_ValueError, "stamp_packed: records do not fill the range");
        goto done;
    }
    offsets = PyList_New(count);
    entries = PyBytes_FromStringAndSize(NULL, count * QUEUE_ENTRY_SIZE);
    if (offsets == NULL || entries == NULL) goto done;
    unsigned char *map = target.buf;
    unsigned char *entry = (unsigned char *)PyBytes_AS_STRING(entries);
    unsigned char stamp[HOST_SIZE + 2];
    memcpy(stamp, host.buf, HOST_SIZE);
    put_u16(stamp + HOST_SIZE, (uint16_t)port);
    Py_ssize_t at = position, end = position + length;
    for (Py_ssize_t number = 0; number < count; number++) {
        unsigned char *record = map + at;
        Py_ssize_t size = end - at >= HEADER_SIZE ? (Py_ssize_t)get_u32(record) : 0;
        if (size < HEADER_SIZE || size > end - at) {
            PyErr_SetString(PyExc_ValueError, "stamp_packed: records do not fill the range");
            goto done;
        }
        uint64_t commit_offset = base + (uint64_t)at;
        put_u32(record + STAMP_OFFSET, queue_id);
        put_u32(record + STAMP_OFFSET + 4, leader_epoch);
        put_u64(record + STAMP_OFFSET + 8, first_queue_offset + (uint64_t)number);
        put_u64(record + STAMP_OFFSET + 16, commit_offset);
        put_u64(record + STAMP_OFFSET + 24, now_ms);
        memcpy(record + STAMP_OFFSET + 32, stamp, sizeof stamp);
        put_u32(record + CRC_OFFSET, crc32c(0, record + CRC_START, (size_t)(size - CRC_START)));
        PyObject *offset = PyLong_FromUnsignedLongLong(commit_offset);
        if (offset == NULL) goto done;
        PyList_SET_ITEM(offsets, number, offset);
        put_u64(entry, commit_offset);
        put_u32(entry + 8, (uint32_t)size);
        put_u64(entry + 12, get_u64(record + TAG_HASH_OFFSET));
        entry += QUEUE_ENTRY_SIZE;
        at += size;
    }
    if (at != end) {
        PyErr_SetString(PyExc_ValueError, "stamp_packed: records do not fill the range");
        goto done;
    }
    result = Py_BuildValue("(OO)", offsets, entries);
done:
    Py_XDECREF(offsets);
    Py_XDECREF(entries);
    PyBuffer_Release(&target);
    PyBuffer_Release(&host);
    return result;
}


/* -- key_hashes -------------------------------------------------------------------------- */

#define SHAPE_UNIQUE_ID_BYTES 32

PyDoc_STRVAR(key_hashes_doc,
"key_hashes(data, blocks, shapes, seed) -> list[(number, hash)] | None\n\n"
"``KeyReader.read_batch`` for batches whose every block has a learnt shape (see\n"
"record_keys.py): per block (record number, start, length) whose ``shapes[length]`` is\n"
"(bytes before the id, user keys) and whose bytes start so, the user keys then the\n"
"32-byte ASCII id, each as (number, crc32c(key, seed)). None as soon as one block does not\n"
"fit a shape: the caller reads the batch in Python.");

static PyObject *key_hashes(PyObject *self, PyObject *args) {
    Py_buffer data;
    PyObject *blocks, *shapes;
    unsigned int seed;
    if (!PyArg_ParseTuple(args, "y*O!O!I", &data, &PyList_Type, &blocks, &PyDict_Type,
                          &shapes, &seed))
        return NULL;
    const unsigned char *bytes = data.buf;
    PyObject *keys = PyList_New(0);
    PyObject *result = NULL;
    if (keys == NULL) goto done;
    Py_ssize_t count = PyList_GET_SIZE(blocks);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *block = PyList_GET_ITEM(blocks, i);
        if (!PyTuple_Check(block) || PyTuple_GET_SIZE(block) != 3) goto unfit;
        PyObject *number = PyTuple_GET_ITEM(block, 0);
        PyObject *length_object = PyTuple_GET_ITEM(block, 2);
        Py_ssize_t start = PyLong_AsSsize_t(PyTuple_GET_ITEM(block, 1));
        Py_ssize_t length = PyLong_AsSsize_t(length_object);
        if (PyErr_Occurred()) goto done;
        PyObject *shape = PyDict_GetItemWithError(shapes, length_object);
        if (shape == NULL) {
            if (PyErr_Occurred()) goto done;
            goto unfit;
        }
        if (!PyTuple_Check(shape) || PyTuple_GET_SIZE(shape) != 2) goto unfit;
        PyObject *prefix = PyTuple_GET_ITEM(shape, 0);
        PyObject *user_keys = PyTuple_GET_ITEM(shape, 1);
        if (!PyBytes_Check(prefix) || !PyList_Check(user_keys)) goto unfit;
        Py_ssize_t prefix_length = PyBytes_GET_SIZE(prefix);
        if (start < 0 || length < SHAPE_UNIQUE_ID_BYTES || start > data.len - length ||
                prefix_length != length - SHAPE_UNIQUE_ID_BYTES ||
                memcmp(bytes + start, PyBytes_AS_STRING(prefix), (size_t)prefix_length) != 0)
            goto unfit;
        const unsigned char *id = bytes + start + prefix_length;
        for (int k = 0; k < SHAPE_UNIQUE_ID_BYTES; k++)
            if (id[k] & 0x80) goto unfit;
        Py_ssize_t user_key_count = PyList_GET_SIZE(user_keys);
        for (Py_ssize_t k = 0; k <= user_key_count; k++) {
            uint32_t hashed;
            if (k < user_key_count) {
                PyObject *key = PyList_GET_ITEM(user_keys, k);
                if (!PyBytes_Check(key)) goto unfit;
                hashed = crc32c(seed, (const unsigned char *)PyBytes_AS_STRING(key),
                                (size_t)PyBytes_GET_SIZE(key));
            } else {
                hashed = crc32c(seed, id, SHAPE_UNIQUE_ID_BYTES);
            }
            PyObject *pair = Py_BuildValue("(Ok)", number, (unsigned long)hashed);
            if (pair == NULL) goto done;
            int failed = PyList_Append(keys, pair);
            Py_DECREF(pair);
            if (failed) goto done;
        }
    }
    result = Py_NewRef(keys);
    goto done;
unfit:
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(keys);
    PyBuffer_Release(&data);
    return result;
}


/* -- index_put ------------------------------------------------------------------------- */

#define INDEX_ENTRY_SIZE 20

PyDoc_STRVAR(index_put_doc,
"index_put(map, table_at, entries_at, entry_count, slots, items, delta_s) -> entry_count\n\n"
"``IndexFile.put_hashes``'s loop: for each (key hash u32, commit offset) of ``items``, write\n"
"the entry after the last one (key_hash u32, commit_offset u64, delta_s u32, previous\n"
"entry u32) and point the key's slot (u32 at ``table_at + 4 * (hash % slots)``) at it.\n"
"The caller made room for every item. Returns the new entry count.");

static PyObject *index_put(PyObject *self, PyObject *args) {
    Py_buffer target;
    Py_ssize_t table_at, entries_at, count, slots;
    PyObject *items;
    unsigned int delta_s;
    if (!PyArg_ParseTuple(args, "w*nnnnO!I", &target, &table_at, &entries_at, &count, &slots,
                          &PyList_Type, &items, &delta_s))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = PyList_GET_SIZE(items);
    if (slots <= 0 || slots > target.len / 4 || table_at < 0 || table_at > target.len ||
            count < 0 || entries_at < table_at + 4 * slots ||
            entries_at > target.len || (target.len - entries_at) / INDEX_ENTRY_SIZE < count + n) {
        PyErr_SetString(PyExc_ValueError, "index_put: no room for the entries");
        goto done;
    }
    unsigned char *map = target.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(items, i);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
            PyErr_SetString(PyExc_TypeError, "index_put: items are (hash, commit offset)");
            goto done;
        }
        unsigned long hashed = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(item, 0));
        unsigned long long commit_offset =
            PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(item, 1));
        if (PyErr_Occurred()) goto done;
        unsigned char *slot = map + table_at + 4 * (Py_ssize_t)(hashed % (unsigned long)slots);
        unsigned char *entry = map + entries_at + count * INDEX_ENTRY_SIZE;
        put_u32(entry, (uint32_t)hashed);
        put_u64(entry + 4, commit_offset);
        put_u32(entry + 12, delta_s);
        memcpy(entry + 16, slot, 4);
        count++;
        put_u32(slot, (uint32_t)count);
    }
    result = PyLong_FromSsize_t(count);
done:
    PyBuffer_Release(&target);
    return result;
}

/* -- crc32c (exposed for the tests) ----------------------------------------------------- */

PyDoc_STRVAR(crc32c_doc, "crc32c(data, value=0) -> int: the CRC32C this module seals records\n"
"with, continued from ``value``.");

static PyObject *py_crc32c(PyObject *self, PyObject *args) {
    Py_buffer data;
    unsigned int start = 0;
    if (!PyArg_ParseTuple(args, "y*|I", &data, &start)) return NULL;
    uint32_t value = crc32c(start, data.buf, (size_t)data.len);
    PyBuffer_Release(&data);
    return PyLong_FromUnsignedLong(value);
}

static PyMethodDef methods[] = {
    {"validate_packed", validate_packed, METH_VARARGS, validate_packed_doc},
    {"stamp_packed", stamp_packed, METH_VARARGS, stamp_packed_doc},
    {"key_hashes", key_hashes, METH_VARARGS, key_hashes_doc},
    {"index_put", index_put, METH_VARARGS, index_put_doc},
    {"crc32c", py_crc32c, METH_VARARGS, crc32c_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "tidemq.store._records",
    "The commit log's per-record loops in C (see _records.c).", -1, methods,
};

PyMODINIT_FUNC PyInit__records(void) {
    crc_init_table();
#ifdef HAVE_CRC_SSE42
    __builtin_cpu_init();
    if (__builtin_cpu_supports("sse4.2")) crc32c = crc_sse42;
#endif
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddStringConstant(m, "CRC_IMPLEMENTATION",
                                   crc32c == crc_portable ? "portable" : "sse4.2") < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
