/* Compiled MinHash kernels for dataforge.text.minhash (see that module for the scheme).
 *
 * Every function works on a string array as Arrow lays it out: one buffer of UTF-8 bytes and
 * int64 offsets (document d is data[offsets[d]:offsets[d + 1]]). They take and fill buffers
 * (numpy arrays) and release the GIL while they work, so the Python side runs one call per core
 * on disjoint ranges of documents. All hashing is 32-bit arithmetic that wraps, the same values
 * as the pure-Python reference in minhash.py and as datasketch's affine32 scheme.
 *
 * Token hash: FNV-1a (32 bit) of a word (a run of ASCII letters, digits, '_' and non-ASCII bytes,
 * ASCII lowercased) or of one character (whitespace runs folded into one space).
 * Shingle hash: h = (h * 0x9E3779B1) ^ token over `ngram` consecutive tokens.
 * Signature: for each permutation k, min over shingles of a[k] * fmix32(shingle) + b[k] mod 2^32.
 *
 * Besides: key_hashes, the XXH3-128 of each text (xxHash's own code, vendored), for the engine's
 * key hashes (dataforge.engine.streaming.key_hashes).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define XXH_INLINE_ALL
#include "vendor/xxhash.h" /* xxHash 0.8.4, BSD 2-Clause: see vendor/README.md */

#define FNV_OFFSET 0x811C9DC5u
#define FNV_PRIME 0x01000193u
#define COMBINE 0x9E3779B1u

/* The permutation loop is the hot spot: compile it for AVX-512 and AVX2 as well as the baseline
 * and let the loader pick the best the processor has (GCC function multi-versioning). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define HOT __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define HOT
#endif

static inline uint32_t fmix32(uint32_t h) {
    h ^= h >> 16;
    h *= 0x85EBCA6Bu;
    h ^= h >> 13;
    h *= 0xC2B2AE35u;
    h ^= h >> 16;
    return h;
}

static inline uint8_t lower(uint8_t c) { return (c >= 'A' && c <= 'Z') ? (uint8_t)(c + 32) : c; }

/* WORD[c]: the byte as it enters a word's hash (ASCII lowercased), or 0 where c ends a word. */
static uint8_t WORD[256];

static void init_word_table(void) {
    for (int c = 0; c < 256; c++) {
        int word = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c >= 128;
        WORD[c] = word ? lower((uint8_t)c) : 0;
    }
}

/* Token hashes of data[start:end] into out (room for end - start + 1); returns how many. */
static int64_t tokens(const uint8_t *data, int64_t start, int64_t end, int chars, uint32_t *out) {
    int64_t m = 0, i = start;
    if (chars) {
        int pending_space = 0;
        while (i < end) {
            uint8_t c = data[i];
            if (c == ' ' || (c >= 9 && c <= 13)) {
                pending_space = m > 0;
                i++;
                continue;
            }
            if (pending_space) {
                out[m++] = (FNV_OFFSET ^ (uint32_t)' ') * FNV_PRIME;
                pending_space = 0;
            }
            int n = c < 0xC0 ? 1 : (c < 0xE0 ? 2 : (c < 0xF0 ? 3 : 4));
            uint32_t h = FNV_OFFSET;
            for (int k = 0; k < n && i + k < end; k++) h = (h ^ lower(data[i + k])) * FNV_PRIME;
            out[m++] = h;
            i += n;
        }
        return m;
    }
    while (i < end) {
        uint8_t c = WORD[data[i]];
        if (!c) {
            i++;
            continue;
        }
        uint32_t h = FNV_OFFSET;
        do {
            h = (h ^ c) * FNV_PRIME;
            c = ++i < end ? WORD[data[i]] : 0;
        } while (c);
        out[m++] = h;
    }
    return m;
}

/* Shingle hashes of one document into out, using toks as scratch (both with room for the
 * document's length + 1); returns how many (0 for a document without tokens). */
static int64_t shingles(const uint8_t *data, int64_t start, int64_t end, int ngram, int chars, uint32_t *toks,
                        uint32_t *out) {
    int64_t t = tokens(data, start, end, chars, toks);
    if (t == 0) return 0;
    int64_t width = ngram < t ? ngram : t, count = t - width + 1;
    for (int64_t s = 0; s < count; s++) {
        uint32_t h = 0;
        for (int64_t j = 0; j < width; j++) h = (h * COMBINE) ^ toks[s + j];
        out[s] = h;
    }
    return count;
}

HOT static void minhash(const uint32_t *sh, int64_t m, const uint32_t *a, const uint32_t *b, int64_t num_perm,
                        uint32_t *sig) {
    for (int64_t k = 0; k < num_perm; k++) sig[k] = 0xFFFFFFFFu;
    for (int64_t s = 0; s < m; s++) {
        uint32_t hv = fmix32(sh[s]);
        for (int64_t k = 0; k < num_perm; k++) {
            uint32_t v = a[k] * hv + b[k];
            sig[k] = v < sig[k] ? v : sig[k];
        }
    }
}

static int64_t longest(const int64_t *offsets, int64_t first, int64_t last) {
    int64_t most = 0;
    for (int64_t d = first; d < last; d++)
        if (offsets[d + 1] - offsets[d] > most) most = offsets[d + 1] - offsets[d];
    return most;
}

/* Sort v[0:n] ascending: quicksort (median of three) down to runs of 16, then insertion sort;
 * inline comparisons, unlike qsort's callback (3x faster on documents of ~100 shingles). */
static void sort_u32(uint32_t *v, int64_t n) {
    while (n > 16) {
        uint32_t a = v[0], b = v[n / 2], c = v[n - 1];
        uint32_t pivot = a < b ? (b < c ? b : (a < c ? c : a)) : (a < c ? a : (b < c ? c : b));
        int64_t i = 0, j = n - 1;
        while (i <= j) {
            while (v[i] < pivot) i++;
            while (v[j] > pivot) j--;
            if (i <= j) {
                uint32_t t = v[i];
                v[i++] = v[j];
                v[j--] = t;
            }
        }
        if (j + 1 < n - i) { /* recurse into the smaller side, loop on the larger */
            sort_u32(v, j + 1);
            v += i;
            n -= i;
        } else {
            sort_u32(v + i, n - i);
            n = j + 1;
        }
    }
    for (int64_t i = 1; i < n; i++) {
        uint32_t x = v[i];
        int64_t j = i - 1;
        while (j >= 0 && v[j] > x) {
            v[j + 1] = v[j];
            j--;
        }
        v[j + 1] = x;
    }
}

static int64_t sorted_unique(uint32_t *v, int64_t n) {
    if (n == 0) return 0;
    sort_u32(v, n);
    int64_t u = 1;
    for (int64_t i = 1; i < n; i++)
        if (v[i] != v[u - 1]) v[u++] = v[i];
    return u;
}

/* -- Python bindings -------------------------------------------------------------------------- */

static int too_small(Py_buffer *buf, Py_ssize_t need, const char *what) {
    if (buf->len < need) {
        PyErr_Format(PyExc_ValueError, "%s: buffer of %zd bytes, %zd needed", what, buf->len, need);
        return 1;
    }
    return 0;
}

static int bad_range(Py_ssize_t first, Py_ssize_t last, const char *what) {
    if (first < 0 || first > last) {
        PyErr_Format(PyExc_ValueError, "%s: need 0 <= first <= last, not %zd, %zd", what, first, last);
        return 1;
    }
    return 0;
}

static void release(Py_buffer *bufs, int n) {
    for (int i = 0; i < n; i++)
        if (bufs[i].obj) PyBuffer_Release(&bufs[i]);
}

PyDoc_STRVAR(signatures_doc,
             "signatures(data, offsets, first, last, ngram, chars, a, b, out)\n\n"
             "Fill rows first..last-1 of out (uint32, n x num_perm) with the MinHash signatures of those "
             "documents; a, b are the uint32 permutation parameters.");

static PyObject *py_signatures(PyObject *self, PyObject *args) {
    Py_buffer bufs[5] = {{0}};
    Py_ssize_t first, last;
    int ngram, chars;
    if (!PyArg_ParseTuple(args, "y*y*nnipy*y*w*", &bufs[0], &bufs[1], &first, &last, &ngram, &chars, &bufs[2],
                          &bufs[3], &bufs[4]))
        return NULL;
    const uint8_t *data = bufs[0].buf;
    const int64_t *offsets = bufs[1].buf;
    const uint32_t *a = bufs[2].buf, *b = bufs[3].buf;
    uint32_t *out = bufs[4].buf;
    int64_t num_perm = bufs[2].len / 4;
    if (bad_range(first, last, "signatures") || too_small(&bufs[1], (last + 1) * 8, "offsets") ||
        too_small(&bufs[3], num_perm * 4, "b") ||
        too_small(&bufs[4], last * num_perm * 4, "out")) {
        release(bufs, 5);
        return NULL;
    }
    int failed = 0;
    Py_BEGIN_ALLOW_THREADS;
    int64_t room = longest(offsets, first, last) + 1;
    uint32_t *toks = malloc(2 * room * sizeof(uint32_t)), *sh = toks + room;
    if (!toks) {
        failed = 1;
    } else {
        for (int64_t d = first; d < last; d++) {
            int64_t m = shingles(data, offsets[d], offsets[d + 1], ngram, chars, toks, sh);
            minhash(sh, m, a, b, num_perm, out + d * num_perm);
        }
    }
    free(toks);
    Py_END_ALLOW_THREADS;
    release(bufs, 5);
    if (failed) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

PyDoc_STRVAR(pair_jaccard_doc,
             "pair_jaccard(data, offsets, ngram, chars, pairs, first, last, out)\n\n"
             "out[p] (float64) = exact Jaccard of the shingle-hash sets of documents pairs[p, 0] and "
             "pairs[p, 1] (int64, m x 2), for p in first..last-1; two empty documents count as 1.0.");

static PyObject *py_pair_jaccard(PyObject *self, PyObject *args) {
    Py_buffer bufs[4] = {{0}};
    int ngram, chars;
    Py_ssize_t first, last;
    if (!PyArg_ParseTuple(args, "y*y*ipy*nnw*", &bufs[0], &bufs[1], &ngram, &chars, &bufs[2], &first, &last,
                          &bufs[3]))
        return NULL;
    const uint8_t *data = bufs[0].buf;
    const int64_t *offsets = bufs[1].buf, *pairs = bufs[2].buf;
    double *out = bufs[3].buf;
    int64_t n_docs = bufs[1].len / 8 - 1;
    if (bad_range(first, last, "pair_jaccard") || too_small(&bufs[2], last * 16, "pairs") ||
        too_small(&bufs[3], last * 8, "out")) {
        release(bufs, 4);
        return NULL;
    }
    for (int64_t p = first; p < last; p++) {
        if (pairs[2 * p] < 0 || pairs[2 * p] >= n_docs || pairs[2 * p + 1] < 0 || pairs[2 * p + 1] >= n_docs) {
            release(bufs, 4);
            PyErr_SetString(PyExc_IndexError, "pair_jaccard: a pair names a document out of range");
            return NULL;
        }
    }
    int failed = 0;
    Py_BEGIN_ALLOW_THREADS;
    int64_t room = longest(offsets, 0, n_docs) + 1;
    uint32_t *toks = malloc(3 * room * sizeof(uint32_t)), *x = toks + room, *y = x + room;
    if (!toks) {
        failed = 1;
    } else {
        for (int64_t p = first; p < last; p++) {
            int64_t i = pairs[2 * p], j = pairs[2 * p + 1];
            int64_t nx = sorted_unique(x, shingles(data, offsets[i], offsets[i + 1], ngram, chars, toks, x));
            int64_t ny = sorted_unique(y, shingles(data, offsets[j], offsets[j + 1], ngram, chars, toks, y));
            int64_t u = 0, v = 0, inter = 0;
            while (u < nx && v < ny) {
                if (x[u] == y[v]) {
                    inter++;
                    u++;
                    v++;
                } else if (x[u] < y[v]) {
                    u++;
                } else {
                    v++;
                }
            }
            int64_t uni = nx + ny - inter;
            out[p] = uni ? (double)inter / (double)uni : 1.0;
        }
    }
    free(toks);
    Py_END_ALLOW_THREADS;
    release(bufs, 4);
    if (failed) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

PyDoc_STRVAR(all_shingles_doc,
             "all_shingles(data, offsets, ngram, chars, hashes, docs) -> count\n\n"
             "Every shingle hash (uint64 hashes) of every document with its document index (int64 docs); "
             "both need room for len(data) + number of documents.");

static PyObject *py_all_shingles(PyObject *self, PyObject *args) {
    Py_buffer bufs[4] = {{0}};
    int ngram, chars;
    if (!PyArg_ParseTuple(args, "y*y*ipw*w*", &bufs[0], &bufs[1], &ngram, &chars, &bufs[2], &bufs[3])) return NULL;
    const uint8_t *data = bufs[0].buf;
    const int64_t *offsets = bufs[1].buf;
    uint64_t *hashes = bufs[2].buf;
    int64_t *docs = bufs[3].buf;
    int64_t n_docs = bufs[1].len / 8 - 1, total = 0;
    if (too_small(&bufs[2], (bufs[0].len + n_docs) * 8, "hashes") ||
        too_small(&bufs[3], (bufs[0].len + n_docs) * 8, "docs")) {
        release(bufs, 4);
        return NULL;
    }
    int failed = 0;
    Py_BEGIN_ALLOW_THREADS;
    int64_t room = longest(offsets, 0, n_docs) + 1;
    uint32_t *toks = malloc(2 * room * sizeof(uint32_t)), *sh = toks + room;
    if (!toks) {
        failed = 1;
    } else {
        for (int64_t d = 0; d < n_docs; d++) {
            int64_t k = shingles(data, offsets[d], offsets[d + 1], ngram, chars, toks, sh);
            for (int64_t s = 0; s < k; s++) {
                hashes[total + s] = sh[s];
                docs[total + s] = d;
            }
            total += k;
        }
    }
    free(toks);
    Py_END_ALLOW_THREADS;
    release(bufs, 4);
    if (failed) return PyErr_NoMemory();
    return PyLong_FromLongLong(total);
}

PyDoc_STRVAR(band_keys_doc,
             "band_keys(sigs, num_perm, bands, rows, mult, out)\n\n"
             "out[d, band] (uint64) = the band's rows of signature d (uint32, n x num_perm) folded into one "
             "number: (band + sum_j sig[band * rows + j] * mult[j]) ^ band, wrapping mod 2^64.");

static PyObject *py_band_keys(PyObject *self, PyObject *args) {
    Py_buffer bufs[3] = {{0}};
    Py_ssize_t num_perm, bands, rows;
    if (!PyArg_ParseTuple(args, "y*nnny*w*", &bufs[0], &num_perm, &bands, &rows, &bufs[1], &bufs[2])) return NULL;
    const uint32_t *sigs = bufs[0].buf;
    const uint64_t *mult = bufs[1].buf;
    uint64_t *out = bufs[2].buf;
    int64_t n = bufs[0].len / 4 / num_perm;
    if (bands * rows > num_perm || too_small(&bufs[1], rows * 8, "mult") || too_small(&bufs[2], n * bands * 8, "out")) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "band_keys: bands x rows exceeds num_perm");
        release(bufs, 3);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS;
    for (int64_t d = 0; d < n; d++) {
        const uint32_t *sig = sigs + d * num_perm;
        for (int64_t band = 0; band < bands; band++) {
            uint64_t h = (uint64_t)band;
            for (int64_t j = 0; j < rows; j++) h += (uint64_t)sig[band * rows + j] * mult[j];
            out[d * bands + band] = h ^ (uint64_t)band;
        }
    }
    Py_END_ALLOW_THREADS;
    release(bufs, 3);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(band_heads_doc,
             "band_heads(keys, n, bands, rank, live, heads)\n\n"
             "LSH buckets: for each band b and live document d (live uint8), heads[d, b] (int64) = the live "
             "document of smallest rank (int64) whose band key keys[., b] (uint64, n x bands) equals d's; "
             "-1 for documents that are not live. One open-addressing hash table per band, reused.");

static PyObject *py_band_heads(PyObject *self, PyObject *args) {
    Py_buffer bufs[4] = {{0}};
    Py_ssize_t n, bands;
    if (!PyArg_ParseTuple(args, "y*nny*y*w*", &bufs[0], &n, &bands, &bufs[1], &bufs[2], &bufs[3])) return NULL;
    const uint64_t *keys = bufs[0].buf;
    const int64_t *rank = bufs[1].buf;
    const uint8_t *live = bufs[2].buf;
    int64_t *heads = bufs[3].buf;
    if (too_small(&bufs[0], n * bands * 8, "keys") || too_small(&bufs[1], n * 8, "rank") ||
        too_small(&bufs[2], n, "live") || too_small(&bufs[3], n * bands * 8, "heads")) {
        release(bufs, 4);
        return NULL;
    }
    int failed = 0;
    Py_BEGIN_ALLOW_THREADS;
    int bits = 1;
    while (((int64_t)1 << bits) < 2 * n) bits++;
    int64_t size = (int64_t)1 << bits, mask = size - 1;
    uint64_t *slot_key = malloc(size * sizeof(uint64_t));
    int64_t *slot_doc = malloc(size * sizeof(int64_t));
    if (!slot_key || !slot_doc) {
        failed = 1;
    } else {
        for (int64_t band = 0; band < bands; band++) {
            for (int64_t i = 0; i < size; i++) slot_doc[i] = -1;
            for (int64_t d = 0; d < n; d++) {  /* each key's best-ranked document */
                if (!live[d]) continue;
                uint64_t key = keys[d * bands + band];
                int64_t i = (int64_t)((key * 0x9E3779B97F4A7C15ull) >> (64 - bits));
                while (slot_doc[i] >= 0 && slot_key[i] != key) i = (i + 1) & mask;
                if (slot_doc[i] < 0 || rank[d] < rank[slot_doc[i]]) {
                    slot_key[i] = key;
                    slot_doc[i] = d;
                }
            }
            for (int64_t d = 0; d < n; d++) {
                if (!live[d]) {
                    heads[d * bands + band] = -1;
                    continue;
                }
                uint64_t key = keys[d * bands + band];
                int64_t i = (int64_t)((key * 0x9E3779B97F4A7C15ull) >> (64 - bits));
                while (slot_doc[i] < 0 || slot_key[i] != key) i = (i + 1) & mask;
                heads[d * bands + band] = slot_doc[i];
            }
        }
    }
    free(slot_key);
    free(slot_doc);
    Py_END_ALLOW_THREADS;
    release(bufs, 4);
    if (failed) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

PyDoc_STRVAR(key_hashes_doc,
             "key_hashes(data, offsets, valid, n, null_seed, out)\n\n"
             "XXH3-128 of each of n texts (data uint8, offsets int64, n + 1): out[d, 0] (uint64, n x 2) = the "
             "high 64 bits of text d's hash and out[d, 1] the low 64 (the two halves of its canonical, "
             "big-endian digest); a text with valid[d] (uint8) 0 gets the hash of the empty text under "
             "null_seed.");

static PyObject *py_key_hashes(PyObject *self, PyObject *args) {
    Py_buffer bufs[4] = {{0}};
    Py_ssize_t n;
    unsigned long long null_seed;
    if (!PyArg_ParseTuple(args, "y*y*y*nKw*", &bufs[0], &bufs[1], &bufs[2], &n, &null_seed, &bufs[3])) return NULL;
    if (too_small(&bufs[1], (n + 1) * 8, "offsets") || too_small(&bufs[2], n, "valid") ||
        too_small(&bufs[3], n * 16, "out")) {
        release(bufs, 4);
        return NULL;
    }
    const char *data = bufs[0].buf;
    const int64_t *offsets = bufs[1].buf;
    const uint8_t *valid = bufs[2].buf;
    uint64_t *out = bufs[3].buf;
    Py_BEGIN_ALLOW_THREADS;
    XXH128_hash_t null_hash = XXH3_128bits_withSeed("", 0, (XXH64_hash_t)null_seed);
    for (Py_ssize_t d = 0; d < n; d++) {
        XXH128_hash_t h = valid[d] ? XXH3_128bits(data + offsets[d], (size_t)(offsets[d + 1] - offsets[d])) : null_hash;
        out[2 * d] = h.high64;
        out[2 * d + 1] = h.low64;
    }
    Py_END_ALLOW_THREADS;
    release(bufs, 4);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"signatures", py_signatures, METH_VARARGS, signatures_doc},
    {"pair_jaccard", py_pair_jaccard, METH_VARARGS, pair_jaccard_doc},
    {"all_shingles", py_all_shingles, METH_VARARGS, all_shingles_doc},
    {"band_keys", py_band_keys, METH_VARARGS, band_keys_doc},
    {"band_heads", py_band_heads, METH_VARARGS, band_heads_doc},
    {"key_hashes", py_key_hashes, METH_VARARGS, key_hashes_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", "Compiled MinHash kernels (see minhash.py) and XXH3-128 key hashes.",
                                    -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__kernels(void) {
    init_word_table();
    return PyModule_Create(&module);
}
