/* sockdoctor._fast: the two hot loops of a scan, in C.
 *
 *   feed(parser, data)      one recv() worth of a sock_diag dump -> Socket objects
 *   tcp_info(blob)          struct tcp_info -> TcpInfo
 *   walk(proc, pids, n)     readlink over /proc/PID/fd in n threads -> socket holders
 *   by_inode(...), join()   those holders as Owner lists, given to their sockets
 *   tcp_records(...)        iter/tcp records -> Socket objects
 *   table(...)              the common columns of ls's table -> its text
 *   json_records(...)       ls --json's records, for sockets without tcp_info
 *
 * This file is optional. linux/sockdiag.py and linux/procfs.py hold the
 * reference implementation in Python, which documents every rule followed
 * here and is used when this extension is missing or SOCKDOCTOR_PURE=1. Both
 * must give identical results, errors included (tests/unit/test_fast_*.py
 * compare them on recorded, generated and hostile input and on live /proc).
 * So this parser keeps the Python parser's state in the Python parser
 * object itself (its learned attribute layouts, in the same dicts), and
 * raises NetlinkParseError with the same messages at the same bytes.
 *
 * Every read from the netlink buffer is bounds-checked against the buffer's
 * length before it happens; the CI runs the unit tests with this file built
 * under AddressSanitizer.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

/* What the Python side expects of this build (linux/native.py ABI); raise it
 * whenever a change here must not run with older Python code or the reverse.
 * 2: replies of type TCPDIAG_GETSOCK are parsed (sockdiag.dump's single walk).
 * 4: table() renders ls's table, json_records() its JSON records. */
#define FAST_ABI 4

/* Netlink and inet_diag constants (see sockdiag.py for their sources). */
enum {
    NLMSG_HDRLEN_ = 16, DIAG_MSG_LEN = 72, HDR_DIAG_MSG = NLMSG_HDRLEN_ + DIAG_MSG_LEN,
    MSG_SOCK_DIAG = 20, MSG_TCPDIAG = 18, MSG_ERROR = 2, MSG_DONE = 3, F_DUMP_INTR = 0x10,
    A_INFO = 2, A_VEGAS = 3, A_CONG = 4, A_DCTCP = 9, A_BBR = 16, A_SKMEMINFO = 7, A_SHUTDOWN = 8, A_MARK = 15, A_CGROUP_ID = 21,
    LAST_ACK_RECV = 56, AGE_IN_ATTR = 4 + LAST_ACK_RECV, SKMEM_LEN = 36,
};
/* Parser modes, mirroring DumpOptions (sockdiag.DumpParser._fast_mode). */
enum { M_ONLY_AGE = 1, M_INFO = 2, M_LAZY_INFO = 4 };

/* The model's types, bound once by linux/native.py; NetlinkParseError is
 * taken from sockdiag.py when the first dump is fed. */
static PyObject *Socket_T, *SkMemInfo_T, *TcpInfo_T, *ParseError;
static PyObject *s_out, *s_netns, *s_layouts, *s_age_at, *s_cong, *s_mode, *s_wanted,
    *s_aged, *s_done, *s_interrupted, *s_age_ms, *s_info, *s_info_blob, *s_cong_attr, *s_cc_info,
    *s_shutdown, *s_cgroup_id, *s_mark, *s_mem, *s_inode, *s_owners, *s_pid, *s_fd, *s_family,
    *s_state, *s_recv_q, *s_send_q, *s_local_addr, *s_local_port, *s_peer_addr, *s_peer_port,
    *s_cookie, *s_uid, *s_timer, *s_expires_ms, *s_retrans;

static inline uint16_t rd16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

static PyObject *parse_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    PyObject *msg = PyUnicode_FromFormatV(fmt, ap);
    va_end(ap);
    if (msg) {
        PyErr_SetObject(ParseError, msg);
        Py_DECREF(msg);
    }
    return NULL;
}

/* --- addresses: text form of a raw 16-byte field, cached ---------------------
 * A direct-mapped cache: a host has few distinct addresses, and a miss costs
 * one inet_ntop. Only ever touched with the GIL held. */
#define NAME_SLOTS 1024
static struct { uint8_t family; uint8_t raw[16]; PyObject *text; } names[NAME_SLOTS];

static PyObject *address(int family, const uint8_t *raw) {
    uint32_t h = (uint32_t)family;
    for (int i = 0; i < 16; i += 4)
        h = (h ^ rd32(raw + i)) * 0x9E3779B1u;
    unsigned slot = (h >> 16) % NAME_SLOTS;
    if (names[slot].text && names[slot].family == family && !memcmp(names[slot].raw, raw, 16))
        return Py_NewRef(names[slot].text);
    char buf[INET6_ADDRSTRLEN];
    if (!inet_ntop(family, raw, buf, sizeof buf)) {
        PyErr_SetFromErrno(PyExc_OSError);
        return NULL;
    }
    PyObject *text = PyUnicode_FromString(buf);
    if (!text)
        return NULL;
    Py_XSETREF(names[slot].text, Py_NewRef(text));
    names[slot].family = (uint8_t)family;
    memcpy(names[slot].raw, raw, 16);
    return text;
}

/* --- struct tcp_info ----------------------------------------------------------
 * Field sizes in kernel order, as tcpinfo._FIELDS (a test holds the two
 * together). A blob is decoded up to the last field that fits; the three
 * bit-field bytes are split into the seven named fields TcpInfo ends with. */
static const char TCPI_SIZES[] =
    "11111111" "444444444" "4444" "44444444444" "88" "88" "44" "4444" "8" "888" "44" "88"
    "444" "444" "224" "4" "444444" "4";
#define TCPI_FIELDS ((int)sizeof TCPI_SIZES - 1) /* 67 */
#define TCPI_ALL (TCPI_FIELDS + 7)
enum { WSCALE_BITS = 6, RATE_FLAGS = 7, ECN_BITS = TCPI_FIELDS - 1 };

static PyObject *decode_tcp_info(const uint8_t *blob, Py_ssize_t len) {
    PyObject *args[TCPI_ALL];
    uint64_t raw[TCPI_FIELDS];
    int n = 0;
    Py_ssize_t at = 0;
    for (; n < TCPI_FIELDS; n++) {
        int size = TCPI_SIZES[n] - '0';
        if (at + size > len)
            break;
        raw[n] = size == 1 ? blob[at] : size == 2 ? rd16(blob + at)
               : size == 4 ? rd32(blob + at) : rd64(blob + at);
        at += size;
    }
    uint64_t derived[7];
    int have[7] = {n > WSCALE_BITS, n > WSCALE_BITS, n > RATE_FLAGS, n > RATE_FLAGS,
                   n > ECN_BITS, n > ECN_BITS, n > ECN_BITS};
    uint64_t w = n > WSCALE_BITS ? raw[WSCALE_BITS] : 0, r = n > RATE_FLAGS ? raw[RATE_FLAGS] : 0;
    uint64_t e = n > ECN_BITS ? raw[ECN_BITS] : 0;
    derived[0] = w & 0x0F; derived[1] = w >> 4;
    derived[2] = r & 1; derived[3] = (r >> 1) & 3;
    derived[4] = e & 3; derived[5] = (e >> 2) & 3; derived[6] = (e >> 4) & 0xF;
    int made = 0;
    PyObject *result = NULL;
    for (; made < TCPI_ALL; made++) {
        int i = made;
        if (i < TCPI_FIELDS)
            args[i] = (i < n && i != WSCALE_BITS && i != RATE_FLAGS && i != ECN_BITS)
                      ? PyLong_FromUnsignedLongLong(raw[i]) : Py_NewRef(Py_None);
        else
            args[i] = have[i - TCPI_FIELDS] ? PyLong_FromUnsignedLongLong(derived[i - TCPI_FIELDS])
                                            : Py_NewRef(Py_None);
        if (!args[i])
            goto done;
    }
    result = PyObject_Vectorcall(TcpInfo_T, args, n ? TCPI_ALL : 0, NULL);
done:
    for (int i = 0; i < made; i++)
        Py_DECREF(args[i]);
    return result;
}

static PyObject *fast_tcp_info(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (!TcpInfo_T)
        return PyErr_Format(PyExc_TypeError, "tcp_info(blob) after bind()");
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *info = decode_tcp_info(view.buf, view.len);
    PyBuffer_Release(&view);
    return info;
}

/* --- attributes: learned layouts, as DumpParser._attributes/_learn ------------ */

/* What one feed() needs from the Python parser (borrowed references). */
typedef struct {
    PyObject *parser, *out, *netns, *layouts, *age_at, *cong;
    long mode, wanted, aged;  /* wanted: bit per attribute type; aged: bit per state */
    const uint8_t *d;
    Py_ssize_t end;
} Feed;

static int entry(PyObject *layout, Py_ssize_t i, long *kind, long *off, long *len) {
    PyObject *t = PyTuple_GET_ITEM(layout, i);
    *kind = PyLong_AsLong(PyTuple_GET_ITEM(t, 0));
    *off = PyLong_AsLong(PyTuple_GET_ITEM(t, 1));
    *len = PyLong_AsLong(PyTuple_GET_ITEM(t, 2));
    return PyErr_Occurred() ? -1 : 0;
}

/* A new layout tuple from a full walk of one message's attributes. */
static PyObject *learn(Feed *f, Py_ssize_t start, Py_ssize_t end) {
    PyObject *list = PyList_New(0);
    for (Py_ssize_t at = start + DIAG_MSG_LEN; list && at + 4 <= end;) {
        uint16_t len = rd16(f->d + at), kind = rd16(f->d + at + 2);
        if (len < 4 || at + len > end) {
            Py_DECREF(list);
            return parse_error("attribute length %d at byte %zd is out of bounds", len, at);
        }
        if ((kind & 0x3FFF) < 64 && (f->wanted >> (kind & 0x3FFF)) & 1) {
            PyObject *t = Py_BuildValue("(inn)", kind, at - start, (Py_ssize_t)len);
            if (!t || PyList_Append(list, t) < 0)
                Py_CLEAR(list);
            Py_XDECREF(t);
        }
        at += (len + 3) & ~3;
    }
    PyObject *layout = list ? PyList_AsTuple(list) : NULL;
    Py_XDECREF(list);
    return layout;
}

/* The layout for this message size, re-learned unless every header still matches. */
static PyObject *layout_for(Feed *f, Py_ssize_t start, Py_ssize_t end) {
    PyObject *size = PyLong_FromSsize_t(end - start);
    if (!size)
        return NULL;
    PyObject *layout = PyDict_GetItemWithError(f->layouts, size);
    int same = layout != NULL && PyTuple_Check(layout);
    for (Py_ssize_t i = 0; same && i < PyTuple_GET_SIZE(layout); i++) {
        long kind, off, len;
        if (entry(layout, i, &kind, &off, &len) < 0 || off < 0 || start + off + 4 > end)
            same = 0;  /* not a layout this parser wrote: learn it again */
        else
            same = rd16(f->d + start + off) == len && rd16(f->d + start + off + 2) == kind;
    }
    PyErr_Clear();
    if (same) {
        Py_DECREF(size);
        return Py_NewRef(layout);
    }
    layout = learn(f, start, end);
    if (layout && PyDict_SetItem(f->layouts, size, layout) < 0)
        Py_CLEAR(layout);
    Py_DECREF(size);
    return layout;
}

static int set_new(PyObject *sk, PyObject *name, PyObject *value) {
    if (!value)
        return -1;
    int rc = PyObject_SetAttr(sk, name, value);
    Py_DECREF(value);
    return rc;
}

static PyObject *cong_name(Feed *f, const uint8_t *p, Py_ssize_t n) {
    PyObject *raw = PyBytes_FromStringAndSize((const char *)p, n);
    if (!raw)
        return NULL;
    PyObject *name = PyDict_GetItemWithError(f->cong, raw);
    if (name) {
        Py_DECREF(raw);
        return Py_NewRef(name);
    }
    const uint8_t *nul = memchr(p, 0, n);
    name = PyErr_Occurred() ? NULL
         : PyUnicode_DecodeASCII((const char *)p, nul ? nul - p : n, "replace");
    if (name && PyDict_SetItem(f->cong, raw, name) < 0)
        Py_CLEAR(name);
    Py_DECREF(raw);
    return name;
}

/* Whether the state has an age (sockdiag.AGED_STATES). */
static inline int aged(Feed *f, int state) { return state < 64 && (f->aged >> state) & 1; }

/* One wanted attribute onto the socket, with the size checks of _attributes. */
static int attribute(Feed *f, PyObject *sk, int state, long kind, const uint8_t *body, long size) {
    switch (kind & 0x3FFF) {
    case A_INFO: {
        int rc = 0;
        if (f->mode & M_LAZY_INFO)
            rc = set_new(sk, s_info_blob, PyBytes_FromStringAndSize((const char *)body, size));
        else if (f->mode & M_INFO)
            rc = set_new(sk, s_info, decode_tcp_info(body, size));
        if (rc == 0 && aged(f, state) && size >= LAST_ACK_RECV + 4)
            rc = set_new(sk, s_age_ms, PyLong_FromUnsignedLong(rd32(body + LAST_ACK_RECV)));
        return rc;
    }
    case A_CONG:
        return set_new(sk, s_cong_attr, cong_name(f, body, size));
    case A_VEGAS:
    case A_DCTCP:
    case A_BBR: {  /* the congestion control's own info, kept raw: kind byte + body */
        PyObject *raw = PyBytes_FromStringAndSize(NULL, size + 1);
        if (raw) {
            PyBytes_AS_STRING(raw)[0] = (char)(kind & 0x3FFF);
            memcpy(PyBytes_AS_STRING(raw) + 1, body, size);
        }
        return set_new(sk, s_cc_info, raw);
    }
    case A_SHUTDOWN:
        return size >= 1 ? set_new(sk, s_shutdown, PyLong_FromLong(body[0])) : 0;
    case A_CGROUP_ID:
        return size >= 8 ? set_new(sk, s_cgroup_id, PyLong_FromUnsignedLongLong(rd64(body))) : 0;
    case A_MARK:
        return size >= 4 ? set_new(sk, s_mark, PyLong_FromUnsignedLong(rd32(body))) : 0;
    case A_SKMEMINFO: {
        if (size < SKMEM_LEN)
            return 0;
        PyObject *v[9];
        int made = 0;
        for (; made < 9; made++)
            if (!(v[made] = PyLong_FromUnsignedLong(rd32(body + 4 * made))))
                break;
        PyObject *mem = made == 9 ? PyObject_Vectorcall(SkMemInfo_T, v, 9, NULL) : NULL;
        for (int i = 0; i < made; i++)
            Py_DECREF(v[i]);
        return set_new(sk, s_mem, mem);
    }
    }
    return 0;
}

static int attributes(Feed *f, PyObject *sk, int state, Py_ssize_t start, Py_ssize_t end) {
    PyObject *layout = layout_for(f, start, end);
    if (!layout)
        return -1;
    int rc = 0;
    for (Py_ssize_t i = 0; rc == 0 && i < PyTuple_GET_SIZE(layout); i++) {
        long kind, off, len;
        rc = entry(layout, i, &kind, &off, &len);
        if (rc == 0)
            rc = attribute(f, sk, state, kind, f->d + start + off + 4, len - 4);
    }
    Py_DECREF(layout);
    return rc;
}

/* The age alone (the common `ls` case), as the only_age branch of feed and
 * _learn_age: age_at[length] = (offset of tcp_info, (its length, its type)). */
static int age_only(Feed *f, PyObject *sk, int state, Py_ssize_t off, Py_ssize_t len) {
    PyObject *key = PyLong_FromSsize_t(len);
    if (!key)
        return -1;
    PyObject *known = PyDict_GetItemWithError(f->age_at, key);
    long at, alen, akind;
    if (known && PyArg_ParseTuple(known, "l(ll)", &at, &alen, &akind)
        && at >= 0 && at + AGE_IN_ATTR + 4 <= len
        && rd16(f->d + off + at) == alen && rd16(f->d + off + at + 2) == akind) {
        Py_DECREF(key);
        return set_new(sk, s_age_ms, PyLong_FromUnsignedLong(rd32(f->d + off + at + AGE_IN_ATTR)));
    }
    PyErr_Clear();
    int rc = attributes(f, sk, state, off + NLMSG_HDRLEN_, off + len);
    PyObject *size = rc == 0 ? PyLong_FromSsize_t(len - NLMSG_HDRLEN_) : NULL;
    PyObject *layout = size ? PyDict_GetItemWithError(f->layouts, size) : NULL;
    for (Py_ssize_t i = 0; rc == 0 && layout && i < PyTuple_GET_SIZE(layout); i++) {
        long kind, aoff, alen2;
        rc = entry(layout, i, &kind, &aoff, &alen2);
        if (rc == 0 && (kind & 0x3FFF) == A_INFO && alen2 >= AGE_IN_ATTR + 4) {
            PyObject *v = Py_BuildValue("(n(ll))", NLMSG_HDRLEN_ + aoff, alen2, kind);
            rc = v ? PyDict_SetItem(f->age_at, key, v) : -1;
            Py_XDECREF(v);
        }
    }
    Py_XDECREF(size);
    Py_DECREF(key);
    return rc;
}

/* --- messages --------------------------------------------------------------- */

/* Where a record keeps the fields of a Socket (byte offsets): sock_diag's
 * inet_diag_msg (ports in network order) or an iter/tcp record (host order). */
typedef struct {
    int state, timer, retrans;                      /* one byte each */
    int src, sport, dst, dport, swapped;            /* addresses, 16-bit ports */
    int inode, cookie, uid, recv_q, send_q, expires, ifindex;  /* 32-bit; cookie 64 */
} Layout;

static const Layout DIAG_MSG = {
    .state = 17, .timer = 18, .retrans = 19, .src = 24, .sport = 20, .dst = 40, .dport = 22,
    .swapped = 1, .inode = 84, .cookie = 60, .uid = 80, .recv_q = 72, .send_q = 76,
    .expires = 68, .ifindex = 56};
static const Layout ITER_TCP = {
    .state = 1, .timer = 2, .retrans = 3, .src = 8, .sport = 4, .dst = 24, .dport = 6,
    .swapped = 0, .inode = 48, .cookie = 40, .uid = 52, .recv_q = 56, .send_q = 60,
    .expires = 64, .ifindex = 72};

static long port_at(const uint8_t *p, int swapped) {
    uint16_t v = rd16(p);
    return swapped ? ((v & 0xFF) << 8) | (v >> 8) : v;
}

/* The Socket a record describes, in the order of model.Socket's first 16 fields. */
static PyObject *new_socket(const uint8_t *m, const Layout *at, int family, PyObject *netns) {
    PyObject *a[16];
    a[0] = Py_NewRef(netns);
    a[1] = PyLong_FromLong(family);
    a[2] = PyLong_FromLong(m[at->state]);
    a[3] = address(family, m + at->src);
    a[4] = PyLong_FromLong(port_at(m + at->sport, at->swapped));
    a[5] = address(family, m + at->dst);
    a[6] = PyLong_FromLong(port_at(m + at->dport, at->swapped));
    a[7] = PyLong_FromUnsignedLong(rd32(m + at->inode));
    a[8] = PyLong_FromUnsignedLongLong(rd64(m + at->cookie));
    a[9] = PyLong_FromUnsignedLong(rd32(m + at->uid));
    a[10] = PyLong_FromUnsignedLong(rd32(m + at->recv_q));
    a[11] = PyLong_FromUnsignedLong(rd32(m + at->send_q));
    a[12] = PyLong_FromLong(m[at->timer]);
    a[13] = PyLong_FromUnsignedLong(rd32(m + at->expires));  /* expires_ms */
    a[14] = PyLong_FromLong(m[at->retrans]);
    a[15] = PyLong_FromUnsignedLong(rd32(m + at->ifindex));
    PyObject *sk = NULL;
    int ok = 1;
    for (int i = 0; i < 16; i++)
        ok &= a[i] != NULL;
    if (ok)
        sk = PyObject_Vectorcall(Socket_T, a, 16, NULL);
    for (int i = 0; i < 16; i++)
        Py_XDECREF(a[i]);
    return sk;
}

static PyObject *socket_of(Feed *f, Py_ssize_t o) {
    const uint8_t *m = f->d + o;
    int family = m[16];
    if (family != AF_INET && family != AF_INET6)
        return parse_error("unknown address family %d at byte %zd", family, o);
    return new_socket(m, &DIAG_MSG, family, f->netns);
}

static int raise_if_error(Feed *f, Py_ssize_t o, uint32_t len) {
    if (len < NLMSG_HDRLEN_ + 4)
        return 0;
    int32_t code;
    memcpy(&code, f->d + o + NLMSG_HDRLEN_, 4);
    if (code >= 0)
        return 0;
    if (code < -4095)  /* the kernel's MAX_ERRNO */
        return parse_error("netlink error code %d at byte %zd is not an errno", code, o), -1;
    PyObject *exc = PyObject_CallFunction(PyExc_OSError, "is", -code, strerror(-code));
    if (exc) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return -1;
}

static int diag_message(Feed *f, Py_ssize_t o, uint32_t len) {
    if (len < HDR_DIAG_MSG)
        return parse_error("inet_diag_msg of %u bytes is too short", len - NLMSG_HDRLEN_), -1;
    PyObject *sk = socket_of(f, o);
    if (!sk)
        return -1;
    int state = f->d[o + 17], rc = 0;
    if (!f->wanted || len <= HDR_DIAG_MSG)
        ;
    else if (f->mode & M_ONLY_AGE)
        rc = aged(f, state) ? age_only(f, sk, state, o, len) : 0;
    else
        rc = attributes(f, sk, state, o + NLMSG_HDRLEN_, o + len);
    if (rc == 0)
        rc = PyList_Append(f->out, sk);
    Py_DECREF(sk);
    return rc;
}

static int feed_messages(Feed *f) {
    for (Py_ssize_t o = 0; o < f->end;) {
        if (f->end - o < NLMSG_HDRLEN_)
            return parse_error("truncated netlink header at byte %zd", o), -1;
        uint32_t len = rd32(f->d + o);
        uint16_t type = rd16(f->d + o + 4), flags = rd16(f->d + o + 6);
        if (len < NLMSG_HDRLEN_ || (uint64_t)o + len > (uint64_t)f->end)
            return parse_error("netlink message length %u at byte %zd is out of bounds", len, o),
                   -1;
        if ((flags & F_DUMP_INTR) && PyObject_SetAttr(f->parser, s_interrupted, Py_True) < 0)
            return -1;
        if (type == MSG_SOCK_DIAG || type == MSG_TCPDIAG) {  /* dump(): either request */
            if (diag_message(f, o, len) < 0)
                return -1;
        } else if (type == MSG_DONE) {
            if (PyObject_SetAttr(f->parser, s_done, Py_True) < 0)
                return -1;
            return raise_if_error(f, o, len);
        } else if (type == MSG_ERROR && raise_if_error(f, o, len) < 0) {
            return -1;
        }
        o += ((Py_ssize_t)len + 3) & ~(Py_ssize_t)3;
    }
    return 0;
}

/* feed(parser, data): DumpParser.feed. */
static PyObject *fast_feed(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !Socket_T)
        return PyErr_Format(PyExc_TypeError, "feed(parser, data) after bind()");
    if (!ParseError) {
        PyObject *mod = PyImport_ImportModule("sockdoctor.linux.sockdiag");
        ParseError = mod ? PyObject_GetAttrString(mod, "NetlinkParseError") : NULL;
        Py_XDECREF(mod);
        if (!ParseError)
            return NULL;
    }
    Feed f = {.parser = args[0]};
    PyObject *got[9] = {NULL};
    PyObject *names[9] = {s_out, s_netns, s_layouts, s_age_at, s_cong, s_mode, s_wanted, s_aged,
                          NULL};
    PyObject *result = NULL;
    for (int i = 0; names[i]; i++)
        if (!(got[i] = PyObject_GetAttr(f.parser, names[i])))
            goto done;
    f.out = got[0], f.netns = got[1], f.layouts = got[2], f.age_at = got[3], f.cong = got[4];
    f.mode = PyLong_AsLong(got[5]), f.wanted = PyLong_AsLong(got[6]);
    f.aged = PyLong_AsLong(got[7]);
    if (PyErr_Occurred() || !PyList_Check(f.out) || !PyDict_Check(f.layouts)
        || !PyDict_Check(f.age_at) || !PyDict_Check(f.cong)) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "feed: not a DumpParser");
        goto done;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0)
        goto done;
    f.d = view.buf, f.end = view.len;
    if (feed_messages(&f) == 0)
        result = Py_NewRef(Py_None);
    PyBuffer_Release(&view);
done:
    for (int i = 0; i < 9; i++)
        Py_XDECREF(got[i]);
    return result;
}

/* --- the owner walk, as procfs._walk ------------------------------------------
 * Threads take processes from a shared counter, heaviest first (stat() of
 * /proc/PID/fd gives the descriptor count since Linux 6.2); each process's
 * findings go into its own slot, and the slots are joined in the caller's
 * order, so the result is the one the Python walk gives. No Python object
 * is touched while the threads run: the GIL is released. */

enum { P_GONE, P_COUNTED, P_DENIED, P_COUNTED_DENIED };

typedef struct {
    long pid;
    int status;
    long fd_count;
    size_t n, cap;
    uint64_t *inodes;
    long *fds;
} Proc;

typedef struct {
    const char *root;
    Proc *procs;
    size_t *order, count, next;
    int error;  /* first unexpected errno, raised as OSError afterwards */
} Walk;

static int push(Proc *p, uint64_t inode, long fd) {
    if (p->n == p->cap) {
        size_t cap = p->cap ? 2 * p->cap : 64;
        uint64_t *i = realloc(p->inodes, cap * sizeof *i);
        if (i)
            p->inodes = i;
        long *fds = i ? realloc(p->fds, cap * sizeof *fds) : NULL;
        if (!fds)
            return -1;
        p->fds = fds, p->cap = cap;
    }
    p->inodes[p->n] = inode, p->fds[p->n++] = fd;
    return 0;
}

/* Every descriptor of one process: count them all and readlink each. A
 * readdir error discards everything (Python's listdir failed); a readlink
 * error keeps the count and nothing else (Python's readlink loop failed). */
static void walk_one(Walk *w, Proc *p) {
    char path[PATH_MAX], link[64];  /* a socket's link is "socket:[N]": 64 is plenty */
    snprintf(path, sizeof path, "%s/%ld/fd", w->root, p->pid);
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *dir = fd < 0 ? NULL : fdopendir(fd);
    if (!dir) {
        int err = errno;
        p->status = err == EACCES || err == EPERM ? P_DENIED : P_GONE;
        if (fd >= 0)
            close(fd);
        else if (err != EACCES && err != EPERM && err != ENOENT && err != ESRCH && err != ENOTDIR)
            __atomic_store_n(&w->error, err, __ATOMIC_RELAXED);
        return;
    }
    int link_err = 0, list_err;
    struct dirent *e;
    for (errno = 0; (e = readdir(dir)); errno = 0) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        p->fd_count++;
        if (link_err)
            continue;
        ssize_t n = readlinkat(dirfd(dir), e->d_name, link, sizeof link - 1);
        if (n < 0) {
            link_err = errno == ENOENT ? 0 : errno;  /* ENOENT: closed meanwhile */
            continue;
        }
        link[n] = 0;
        if (n > 9 && !memcmp(link, "socket:[", 8)
            && push(p, strtoull(link + 8, NULL, 10), atol(e->d_name)) < 0)
            link_err = ENOMEM;
    }
    list_err = errno;
    closedir(dir);
    if (list_err || link_err)
        p->n = 0;
    if (list_err)
        p->status = list_err == EACCES || list_err == EPERM ? P_DENIED : P_GONE;
    else
        p->status = link_err == EACCES || link_err == EPERM ? P_COUNTED_DENIED : P_COUNTED;
    if (link_err == ENOMEM)
        __atomic_store_n(&w->error, ENOMEM, __ATOMIC_RELAXED);
}

static void *walker(void *arg) {
    Walk *w = arg;
    size_t i;
    while ((i = __atomic_fetch_add(&w->next, 1, __ATOMIC_RELAXED)) < w->count)
        walk_one(w, &w->procs[w->order[i]]);
    return NULL;
}

typedef struct { long weight; size_t index; } Weighted;
static int heavier(const void *a, const void *b) {
    long wa = ((const Weighted *)a)->weight, wb = ((const Weighted *)b)->weight;
    return (wa < wb) - (wa > wb);
}

static void run_walk(Walk *w, int threads) {
    Weighted *by_weight = threads > 1 ? calloc(w->count + 1, sizeof *by_weight) : NULL;
    for (size_t i = 0; i < w->count; i++) {
        w->order[i] = i;
        if (by_weight) {  /* heaviest first, so that no thread ends long after the others */
            char path[PATH_MAX];
            struct stat st;
            snprintf(path, sizeof path, "%s/%ld/fd", w->root, w->procs[i].pid);
            by_weight[i] = (Weighted){stat(path, &st) == 0 ? (long)st.st_size : 0, i};
        }
    }
    if (by_weight) {
        qsort(by_weight, w->count, sizeof *by_weight, heavier);
        for (size_t i = 0; i < w->count; i++)
            w->order[i] = by_weight[i].index;
        free(by_weight);
    }
    pthread_t tids[16];
    int started = 0;
    for (; started < threads - 1 && started < 16; started++)
        if (pthread_create(&tids[started], NULL, walker, w) != 0)
            break;
    walker(w);
    for (int i = 0; i < started; i++)
        pthread_join(tids[i], NULL);
}

static PyObject *walk_result(Walk *w) {
    size_t sockets = 0, counted = 0;
    long denied = 0;
    for (size_t i = 0; i < w->count; i++) {
        Proc *p = &w->procs[i];
        sockets += p->n;
        counted += p->status == P_COUNTED || p->status == P_COUNTED_DENIED;
        denied += p->status == P_DENIED || p->status == P_COUNTED_DENIED;
    }
    PyObject *bufs[5];
    int64_t *arr[5];
    size_t lens[5] = {sockets, sockets, sockets, counted, counted};
    for (int k = 0; k < 5; k++) {
        bufs[k] = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(lens[k] * 8));
        if (!bufs[k]) {
            while (k--)
                Py_DECREF(bufs[k]);
            return NULL;
        }
        arr[k] = (int64_t *)PyBytes_AS_STRING(bufs[k]);
    }
    size_t s = 0, c = 0;
    for (size_t i = 0; i < w->count; i++) {
        Proc *p = &w->procs[i];
        for (size_t j = 0; j < p->n; j++, s++)
            arr[0][s] = (int64_t)p->inodes[j], arr[1][s] = p->pid, arr[2][s] = p->fds[j];
        if (p->status == P_COUNTED || p->status == P_COUNTED_DENIED)
            arr[3][c] = p->pid, arr[4][c++] = p->fd_count;
    }
    return Py_BuildValue("(NNNNNl)", bufs[0], bufs[1], bufs[2], bufs[3], bufs[4], denied);
}

/* walk(proc_root, pids, threads) -> (inodes, pids, fds, count_pids, counts) as
 * native 8-byte arrays in bytes objects, and the number of processes denied. */
static PyObject *fast_walk(PyObject *self, PyObject *args) {
    const char *root;
    PyObject *pids;
    int threads;
    if (!PyArg_ParseTuple(args, "sOi", &root, &pids, &threads))
        return NULL;
    PyObject *seq = PySequence_Fast(pids, "pids must be a sequence");
    if (!seq)
        return NULL;
    Walk w = {.root = root, .count = (size_t)PySequence_Fast_GET_SIZE(seq)};
    w.procs = calloc(w.count + 1, sizeof *w.procs);
    w.order = calloc(w.count + 1, sizeof *w.order);
    PyObject *result = NULL;
    if (!w.procs || !w.order) {
        PyErr_NoMemory();
        goto done;
    }
    for (size_t i = 0; i < w.count; i++)
        if ((w.procs[i].pid = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i))) == -1
            && PyErr_Occurred())
            goto done;
    Py_BEGIN_ALLOW_THREADS
    run_walk(&w, threads < 1 ? 1 : threads);
    Py_END_ALLOW_THREADS
    if (w.error)
        PyErr_SetFromErrno(w.error == ENOMEM ? PyExc_MemoryError : PyExc_OSError);
    else
        result = walk_result(&w);
done:
    for (size_t i = 0; w.procs && i < w.count; i++)
        free(w.procs[i].inodes), free(w.procs[i].fds);
    free(w.procs);
    free(w.order);
    Py_DECREF(seq);
    return result;
}

/* --- joining owners to sockets, as procfs._Walk.to_map and OwnerMap.attach ---- */

/* by_inode(Owner, inodes, pids, fds) -> {inode: [Owner(pid, fd), ...]}, walk order. */
static PyObject *fast_by_inode(PyObject *self, PyObject *args) {
    PyObject *owner_type, *arrays[3];
    if (!PyArg_ParseTuple(args, "OOOO", &owner_type, &arrays[0], &arrays[1], &arrays[2]))
        return NULL;
    Py_buffer v[3];
    int got = 0;
    for (; got < 3; got++)
        if (PyObject_GetBuffer(arrays[got], &v[got], PyBUF_SIMPLE) < 0)
            break;
    PyObject *map = got == 3 && v[0].len == v[1].len && v[1].len == v[2].len ? PyDict_New()
                  : (got == 3 ? PyErr_Format(PyExc_ValueError, "arrays differ in length") : NULL);
    for (Py_ssize_t i = 0; map && i < (got == 3 ? v[0].len / 8 : 0); i++) {
        int64_t pid, fd;
        uint64_t inode;
        memcpy(&inode, (char *)v[0].buf + 8 * i, 8);
        memcpy(&pid, (char *)v[1].buf + 8 * i, 8);
        memcpy(&fd, (char *)v[2].buf + 8 * i, 8);
        PyObject *pair[2] = {PyLong_FromLongLong(pid), PyLong_FromLongLong(fd)};
        PyObject *key = PyLong_FromUnsignedLongLong(inode);
        PyObject *owner = pair[0] && pair[1] ? PyObject_Vectorcall(owner_type, pair, 2, NULL) : NULL;
        PyObject *holders = key && owner ? PyDict_GetItemWithError(map, key) : NULL;
        int rc = -1;
        if (holders)
            rc = PyList_Append(holders, owner);
        else if (key && owner && !PyErr_Occurred() && (holders = PyList_New(1))) {
            PyList_SET_ITEM(holders, 0, Py_NewRef(owner));
            rc = PyDict_SetItem(map, key, holders);
            Py_DECREF(holders);
        }
        Py_XDECREF(pair[0]), Py_XDECREF(pair[1]), Py_XDECREF(key), Py_XDECREF(owner);
        if (rc < 0)
            Py_CLEAR(map);
    }
    while (got--)
        PyBuffer_Release(&v[got]);
    return map;
}

/* join(sockets, by_inode) -> (pids of the holders given out, sockets left without) */
static PyObject *fast_join(PyObject *self, PyObject *args) {
    PyObject *sockets, *by_inode;
    if (!PyArg_ParseTuple(args, "O!O!", &PyList_Type, &sockets, &PyDict_Type, &by_inode))
        return NULL;
    PyObject *pids = PySet_New(NULL);
    Py_ssize_t unowned = 0;
    for (Py_ssize_t i = 0; pids && i < PyList_GET_SIZE(sockets); i++) {
        PyObject *inode = PyObject_GetAttr(PyList_GET_ITEM(sockets, i), s_inode);
        int some = inode ? PyObject_IsTrue(inode) : -1;
        PyObject *holders = some == 1 ? PyDict_GetItemWithError(by_inode, inode) : NULL;
        int rc = some < 0 || PyErr_Occurred() ? -1 : 0;
        if (some == 1 && rc == 0 && (!holders || !PyList_Check(holders) || !PyList_GET_SIZE(holders)))
            unowned++;
        else if (some == 1 && rc == 0) {
            rc = PyObject_SetAttr(PyList_GET_ITEM(sockets, i), s_owners, holders);
            for (Py_ssize_t j = 0; rc == 0 && j < PyList_GET_SIZE(holders); j++) {
                PyObject *pid = PyObject_GetAttr(PyList_GET_ITEM(holders, j), s_pid);
                rc = pid ? PySet_Add(pids, pid) : -1;
                Py_XDECREF(pid);
            }
        }
        Py_XDECREF(inode);
        if (rc < 0)
            Py_CLEAR(pids);
    }
    return pids ? Py_BuildValue("(Nn)", pids, unowned) : NULL;
}

/* --- iter/tcp records (linux/bpf/sockets.py, struct record in sockets.bpf.c) ---
 * Fixed 80-byte records, ports already in host order; decode_python() is the
 * reference. age_ms is set only when asked, for aged states, and present. */
enum { REC_LEN = 80, REC_NO_AGE = -1 };

static PyObject *record_socket(const uint8_t *r, PyObject *netns) {
    int family = r[0];
    if (family != AF_INET && family != AF_INET6)
        return PyErr_Format(PyExc_ValueError, "unknown address family %d in an iter/tcp record",
                            family);
    return new_socket(r, &ITER_TCP, family, netns);
}

/* tcp_records(data, netns, age, aged_bits) -> [Socket]: sockets.decode_python in C. */
static PyObject *fast_tcp_records(PyObject *self, PyObject *args) {
    Py_buffer buf;
    PyObject *netns;
    int age;
    unsigned long long aged;
    if (!Socket_T)
        return PyErr_Format(PyExc_RuntimeError, "_fast.bind() was not called");
    if (!PyArg_ParseTuple(args, "y*OpK", &buf, &netns, &age, &aged))
        return NULL;
    Py_ssize_t n = buf.len / REC_LEN;
    PyObject *out = PyList_New(n);
    const uint8_t *d = buf.buf;
    for (Py_ssize_t i = 0; out && i < n; i++) {
        const uint8_t *r = d + i * REC_LEN;
        PyObject *sk = record_socket(r, netns);
        if (!sk) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, i, sk);
        uint32_t age_ms = rd32(r + 68);
        if (age && r[1] < 64 && (aged >> r[1]) & 1 && age_ms != (uint32_t)REC_NO_AGE
            && set_new(sk, s_age_ms, PyLong_FromUnsignedLong(age_ms)) < 0)
            Py_CLEAR(out);
    }
    PyBuffer_Release(&buf);
    return out;
}

/* --- fields of the model's objects, read from their slots -----------------------
 * Socket and Owner are msgspec Structs: every field is a member descriptor over
 * an object slot. The writers below read a few hundred thousand fields, where
 * PyObject_GetAttr's lookup costs more than the writing; field() finds the
 * slot's offset once per (type, name) and reads it directly, like the
 * descriptor would. Anything else (another type, an unset slot) goes through
 * PyObject_GetAttr. */
typedef struct { PyTypeObject *type; PyObject *name; Py_ssize_t off; } Slot;
enum { SLOTS = 128 };
static Slot slots[SLOTS];

static Py_ssize_t slot_offset(PyTypeObject *type, PyObject *name) {
    PyObject *d = _PyType_Lookup(type, name);  /* borrowed */
    if (!d || !Py_IS_TYPE(d, &PyMemberDescr_Type))
        return -1;
    PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
    return m->type == T_OBJECT_EX && !(m->flags & READ_RESTRICTED) ? m->offset : -1;
}

/* A new reference to o.name (name interned), or NULL with an exception set. */
static PyObject *field(PyObject *o, PyObject *name) {
    PyTypeObject *type = Py_TYPE(o);
    size_t h = (((uintptr_t)type >> 4) ^ ((uintptr_t)name >> 4) * 31) % SLOTS;
    for (size_t probe = 0; probe < 8; probe++) {
        Slot *sl = &slots[(h + probe) % SLOTS];
        if (!sl->type) {  /* kept alive: its address must never name another type */
            sl->type = (PyTypeObject *)Py_NewRef((PyObject *)type);
            sl->name = name;
            sl->off = slot_offset(type, name);
        }
        if (sl->type == type && sl->name == name) {
            PyObject *v = sl->off >= 0 ? *(PyObject **)((char *)o + sl->off) : NULL;
            return v ? Py_NewRef(v) : PyObject_GetAttr(o, name);
        }
    }
    return PyObject_GetAttr(o, name);
}

/* --- the ls table (render/table.py render(), the common columns) ------------
 * table(sockets, states, names, age, comms, header, show_header) -> str, or None when a cell
 * is not plain printable ASCII (render() then escapes it in Python, the
 * reference). states: the 16 state names; names: netns -> shown name, or None
 * for no Netns column; comms: pid -> shown name, or None for no Process
 * column; header: the titles (they count in the widths even when not shown). Every cell goes into one arena; the
 * widths come from a first pass, the lines from a second. */
typedef struct { char *buf; size_t len, cap; int bad; } Arena;
enum { T_COLS = 8 };
typedef struct { uint32_t off[T_COLS], len[T_COLS]; } Row;

static inline int grow(Arena *a, size_t n) {
    if (a->len + n <= a->cap)
        return 0;
    size_t cap = a->cap ? a->cap : 1 << 16;
    while (cap < a->len + n)
        cap *= 2;
    char *b = realloc(a->buf, cap);
    if (!b) {
        PyErr_NoMemory();
        return -1;
    }
    a->buf = b;
    a->cap = cap;
    return 0;
}

static inline int put(Arena *a, const char *s, size_t n) {
    if (grow(a, n) < 0)
        return -1;
    memcpy(a->buf + a->len, s, n);
    a->len += n;
    return 0;
}

/* Text as it is printed, or bad: anything but printable ASCII goes to Python. */
static inline int put_text(Arena *a, PyObject *text) {
    if (!PyUnicode_Check(text) || !PyUnicode_IS_ASCII(text)) {
        a->bad = 1;
        return 0;
    }
    const char *s = (const char *)PyUnicode_1BYTE_DATA(text);
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    for (Py_ssize_t i = 0; i < n; i++)
        if (s[i] < 0x20 || s[i] > 0x7e) {
            a->bad = 1;
            return 0;
        }
    return put(a, s, n);
}

/* A decimal number (vsnprintf costs more than the rest of a cell). */
static inline int put_ll(Arena *a, long long v) {
    char tmp[24];
    int i = sizeof tmp;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do
        tmp[--i] = (char)('0' + u % 10);
    while (u /= 10);
    if (v < 0)
        tmp[--i] = '-';
    return put(a, tmp + i, sizeof tmp - (size_t)i);
}

/* v as two digits, then the unit: the "05" of 7m05s */
static int put_02(Arena *a, long long v, char unit) {
    char tmp[3] = {(char)('0' + v / 10), (char)('0' + v % 10), unit};
    return put(a, tmp, 3);
}

static long long attr_ll(PyObject *o, PyObject *name, int *none) {
    PyObject *v = field(o, name);
    if (!v)
        return -1;
    *none = v == Py_None;
    long long out = *none ? 0 : PyLong_AsLongLong(v);
    Py_DECREF(v);
    return out;
}

/* fmt.duration */
static int put_duration(Arena *a, PyObject *sk) {
    int none = 0;
    long long ms = attr_ll(sk, s_age_ms, &none);
    if (PyErr_Occurred())
        return -1;
    if (none)
        return put(a, "-", 1);
    if (ms < 1000)
        return put_ll(a, ms) || put(a, "ms", 2) ? -1 : 0;
    long long sec = ms / 1000, m = sec / 60, h = m / 60, d = h / 24;
    if (sec < 60)
        return put_ll(a, sec) || put(a, "s", 1) ? -1 : 0;
    if (m < 60)
        return put_ll(a, m) || put(a, "m", 1) || put_02(a, sec % 60, 's') ? -1 : 0;
    if (h < 24)
        return put_ll(a, h) || put(a, "h", 1) || put_02(a, m % 60, 'm') ? -1 : 0;
    return put_ll(a, d) || put(a, "d", 1) || put_02(a, h % 24, 'h') ? -1 : 0;
}

/* words.endpoint */
static int put_endpoint(Arena *a, PyObject *sk, PyObject *addr_name, PyObject *port_name,
                        int family, int peer) {
    PyObject *addr = field(sk, addr_name);
    int none = 0;
    long long port = addr ? attr_ll(sk, port_name, &none) : 0;
    int rc = addr && !PyErr_Occurred() ? 0 : -1;
    if (!rc && family == AF_INET6)
        rc = put(a, "[", 1);
    if (!rc)
        rc = put_text(a, addr);
    if (!rc)
        rc = family == AF_INET6 ? put(a, "]:", 2) : put(a, ":", 1);
    if (!rc)
        rc = port == 0 && peer ? put(a, "*", 1) : put_ll(a, port);
    Py_XDECREF(addr);
    return rc;
}

/* The socket's owners (a new reference, NULL on error) and, in *n, how many:
   `not_a_list` when the field holds something else. */
static PyObject *owners_of(PyObject *sk, Py_ssize_t *n, Py_ssize_t not_a_list) {
    PyObject *owners = field(sk, s_owners);
    if (owners)
        *n = PyList_Check(owners) ? PyList_GET_SIZE(owners) : not_a_list;
    return owners;
}

/* fmt.users, or "(owner_note)" for a socket without owners */
static int put_users(Arena *a, PyObject *sk, PyObject *comms) {
    int rc = 0;
    Py_ssize_t n = 0;
    PyObject *owners = owners_of(sk, &n, -1);
    if (!owners)
        return -1;
    if (n < 0) {
        a->bad = 1;
    } else if (n == 0) {
        PyObject *note = PyObject_CallMethod(sk, "owner_note", NULL);
        rc = !note ? -1 : put(a, "(", 1) || put_text(a, note) || put(a, ")", 1) ? -1 : 0;
        Py_XDECREF(note);
    } else {
        rc = put(a, "users:(", 7);
        for (Py_ssize_t i = 0; !rc && i < n; i++) {
            PyObject *o = PyList_GET_ITEM(owners, i);
            PyObject *pid = field(o, s_pid);
            PyObject *comm = pid ? PyDict_GetItemWithError(comms, pid) : NULL;
            int none = 0;
            long long fd = pid && !PyErr_Occurred() ? attr_ll(o, s_fd, &none) : 0;
            if (!pid || PyErr_Occurred()) {
                Py_XDECREF(pid);
                rc = -1;
                break;
            }
            long long pid_v = PyLong_AsLongLong(pid);
            Py_DECREF(pid);
            rc = put(a, i ? ",(\"" : "(\"", i ? 3 : 2) || (comm ? put_text(a, comm) : put(a, "?", 1))
                 || put(a, "\",pid=", 6) || put_ll(a, pid_v) || put(a, ",fd=", 4)
                 || put_ll(a, fd) || put(a, ")", 1) ? -1 : 0;
        }
        if (!rc)
            rc = put(a, ")", 1);
    }
    Py_DECREF(owners);
    return rc;
}

static int put_netns(Arena *a, PyObject *sk, PyObject *names) {
    PyObject *netns = field(sk, s_netns);
    PyObject *name = netns ? PyDict_GetItemWithError(names, netns) : NULL;
    int rc = !netns || (!name && PyErr_Occurred()) ? -1 : 0;
    if (!rc && name)
        rc = put_text(a, name);
    else if (!rc) {
        PyObject *text = PyObject_Str(netns);
        rc = text ? put_text(a, text) : -1;
        Py_XDECREF(text);
    }
    Py_XDECREF(netns);
    return rc;
}

/* One socket's cells into the arena; returns the number of columns, -1 on error. */
static int table_row(Arena *a, Row *row, PyObject *sk, PyObject *states, PyObject *names,
                     int age, PyObject *comms) {
    int none = 0, col = 0;
    long long family = attr_ll(sk, s_family, &none);
    long long state = attr_ll(sk, s_state, &none);
    long long rq = attr_ll(sk, s_recv_q, &none), sq = attr_ll(sk, s_send_q, &none);
    if (PyErr_Occurred())
        return -1;
#define CELL(expr) do { row->off[col] = (uint32_t)a->len; if ((expr) < 0) return -1; \
        row->len[col] = (uint32_t)(a->len - row->off[col]); col++; } while (0)
    if (state >= 0 && state < PyList_GET_SIZE(states))
        CELL(put_text(a, PyList_GET_ITEM(states, state)));
    else
        CELL(put(a, "?", 1));
    CELL(put_ll(a, rq));
    CELL(put_ll(a, sq));
    CELL(put_endpoint(a, sk, s_local_addr, s_local_port, (int)family, 0));
    CELL(put_endpoint(a, sk, s_peer_addr, s_peer_port, (int)family, 1));
    if (names != Py_None)
        CELL(put_netns(a, sk, names));
    if (age)
        CELL(put_duration(a, sk));
    if (comms != Py_None)
        CELL(put_users(a, sk, comms));
#undef CELL
    return col;
}

/* The %-template of table._template: cols 1-3 right-aligned, the last unpadded,
 * then the line's trailing spaces dropped (.rstrip(); cells are printable ASCII). */
static void table_line(Arena *out, const char *base, const Row *row, int ncols,
                       const size_t *width) {
    size_t start = out->len;
    for (int c = 0; c < ncols; c++) {
        const char *s = base + row->off[c];
        size_t n = row->len[c], pad = c == ncols - 1 ? 0 : width[c] - n;
        if (c)
            out->buf[out->len++] = ' ';
        if (c >= 1 && c <= 3) {
            memset(out->buf + out->len, ' ', pad);
            out->len += pad;
        }
        memcpy(out->buf + out->len, s, n);
        out->len += n;
        if (!(c >= 1 && c <= 3)) {
            memset(out->buf + out->len, ' ', pad);
            out->len += pad;
        }
    }
    while (out->len > start && out->buf[out->len - 1] == ' ')
        out->len--;
    out->buf[out->len++] = '\n';
}

static PyObject *table_text(Arena *cells, Row *rows, Py_ssize_t n, int ncols, int header) {
    size_t width[T_COLS] = {0}, line = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        for (int c = 0; c < ncols; c++)
            if (rows[i].len[c] > width[c])
                width[c] = rows[i].len[c];
    for (int c = 0; c < ncols; c++)
        line += width[c] + 1;
    Arena out = {0};
    PyObject *text = NULL;
    if (grow(&out, line * (size_t)n + 1) == 0) {
        for (Py_ssize_t i = header ? 0 : 1; i < n; i++)
            table_line(&out, cells->buf, &rows[i], ncols, width);
        text = PyUnicode_DecodeASCII(out.buf ? out.buf : "", (Py_ssize_t)out.len, NULL);
    }
    free(out.buf);
    return text;
}

static PyObject *fast_table(PyObject *self, PyObject *args) {
    PyObject *socks, *states, *names, *comms, *header;
    int age, show_header;
    if (!PyArg_ParseTuple(args, "O!O!OpOO!p", &PyList_Type, &socks, &PyList_Type, &states,
                          &names, &age, &comms, &PyList_Type, &header, &show_header))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(socks) + 1;  /* row 0: the header */
    Row *rows = calloc((size_t)n, sizeof *rows);
    Arena cells = {0};
    if (rows && grow(&cells, (size_t)n * 96) < 0) {  /* cells of a row with an owner: ~90 bytes */
        free(rows);
        rows = NULL;
    }
    PyObject *out = NULL;
    int ncols = (int)PyList_GET_SIZE(header), ok = rows != NULL && ncols <= T_COLS;
    if (!rows)
        PyErr_NoMemory();
    for (int c = 0; ok && c < ncols; c++) {
        rows[0].off[c] = (uint32_t)cells.len;
        ok = put_text(&cells, PyList_GET_ITEM(header, c)) == 0;
        rows[0].len[c] = (uint32_t)(cells.len - rows[0].off[c]);
    }
    for (Py_ssize_t i = 1; ok && !cells.bad && i < n; i++)
        ok = table_row(&cells, &rows[i], PyList_GET_ITEM(socks, i - 1), states, names, age,
                       comms) == ncols || (!PyErr_Occurred() && cells.bad);
    if (ok && ncols > 0 && (size_t)cells.len < UINT32_MAX)
        out = cells.bad ? Py_NewRef(Py_None) : table_text(&cells, rows, n, ncols, show_header);
    else if (ok)
        out = Py_NewRef(Py_None);
    free(rows);
    free(cells.buf);
    return out;
}

/* --- ls --json records (render/jsonout.py records(), the common fields) --------
 * json_records(sockets, clients, names, states, timers, comms, sep) -> bytes or
 * None: each socket's SocketRecord as msgspec encodes it, each followed by sep.
 * None (records() and msgspec then do the chunk) when a socket carries what
 * only they write (tcp_info, memory, a congestion name) or a text that is not
 * printable ASCII without quotes or backslashes (JSON escapes, bytes arrays).
 * comms: pid -> name, or None when owners were not scanned. */
static inline int put_str(Arena *a, const char *key, PyObject *text) {
    if (put(a, key, strlen(key)) < 0 || put(a, "\"", 1) < 0)
        return -1;
    if (PyUnicode_Check(text) && PyUnicode_IS_ASCII(text)) {
        const char *t = (const char *)PyUnicode_1BYTE_DATA(text);
        for (Py_ssize_t i = 0, n = PyUnicode_GET_LENGTH(text); i < n; i++)
            if (t[i] < 0x20 || t[i] > 0x7e || t[i] == '"' || t[i] == '\\')
                a->bad = 1;
    } else {
        a->bad = 1;
    }
    return a->bad ? 0 : put_text(a, text) || put(a, "\"", 1) ? -1 : 0;
}

static inline int put_int(Arena *a, const char *key, PyObject *v) {
    int over = 0;
    long long x = PyLong_Check(v) ? PyLong_AsLongLongAndOverflow(v, &over) : 0;
    if (!PyLong_Check(v) || over < 0) {
        a->bad = 1;
        return 0;
    }
    if (PyErr_Occurred() || put(a, key, strlen(key)) < 0)
        return -1;
    if (!over)
        return put_ll(a, x);
    unsigned long long u = PyLong_AsUnsignedLongLong(v);
    if (PyErr_Occurred())
        return -1;
    char tmp[24];
    int i = sizeof tmp;
    do
        tmp[--i] = (char)('0' + u % 10);
    while (u /= 10);
    return put(a, tmp + i, sizeof tmp - (size_t)i);
}

/* sk.<name> as "key":value; optional: None writes nothing. */
static inline int put_field(Arena *a, PyObject *sk, const char *key, PyObject *name, int optional) {
    PyObject *v = field(sk, name);
    if (!v)
        return -1;
    int rc = optional && v == Py_None ? 0 : put_int(a, key, v);
    Py_DECREF(v);
    return rc;
}

static int put_named(Arena *a, const char *key, PyObject *table, PyObject *sk, PyObject *name) {
    PyObject *v = field(sk, name);
    PyObject *text = v ? PyDict_GetItemWithError(table, v) : NULL;
    Py_XDECREF(v);
    if (!v || PyErr_Occurred())
        return -1;
    if (text)
        return put_str(a, key, text);
    PyObject *unknown = PyUnicode_FromString("?");
    int rc = unknown ? put_str(a, key, unknown) : -1;
    Py_XDECREF(unknown);
    return rc;
}

static int json_owners(Arena *a, PyObject *sk, PyObject *comms) {
    Py_ssize_t n = 0;
    PyObject *owners = owners_of(sk, &n, 0);
    if (!owners)
        return -1;
    int rc = put(a, ",\"owners\":[", 11);
    for (Py_ssize_t i = 0; !rc && i < n; i++) {
        PyObject *o = PyList_GET_ITEM(owners, i), *pid = field(o, s_pid);
        PyObject *comm = pid ? PyDict_GetItemWithError(comms, pid) : NULL;
        rc = !pid || PyErr_Occurred() ? -1
             : put(a, i ? ",{" : "{", i ? 2 : 1) || put_int(a, "\"pid\":", pid)
               || put_field(a, o, ",\"fd\":", s_fd, 0) ? -1 : 0;
        if (!rc && comm)
            rc = put_str(a, ",\"comm\":", comm);
        else if (!rc)
            rc = put(a, ",\"comm\":\"\"", 10);
        if (!rc)
            rc = put(a, "}", 1);
        Py_XDECREF(pid);
    }
    if (!rc)
        rc = put(a, "]", 1);
    if (!rc && n == 0) {
        PyObject *note = PyObject_CallMethod(sk, "owner_note", NULL);
        rc = note ? put_str(a, ",\"owner_note\":", note) : -1;
        Py_XDECREF(note);
    }
    Py_DECREF(owners);
    return rc;
}

/* Whether the record has a part only msgspec writes (tcp_info, memory, congestion). */
static int json_only_python(PyObject *sk) {
    PyObject *names[] = {s_info, s_info_blob, s_mem, s_cong_attr};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        PyObject *v = field(sk, names[i]);
        if (!v)
            return -1;
        int set = v != Py_None;
        Py_DECREF(v);
        if (set)
            return 1;
    }
    return 0;
}

static int json_record(Arena *a, PyObject *sk, int client, PyObject *names, PyObject *states,
                       PyObject *timers, PyObject *comms) {
    PyObject *netns = field(sk, s_netns);
    PyObject *name = netns ? PyDict_GetItemWithError(names, netns) : NULL;
    int rc = !netns || PyErr_Occurred() ? -1 : 0;
    if (!rc && name && PyObject_IsTrue(name))
        rc = put_str(a, "{\"netns\":", name);
    else if (!rc) {
        PyObject *text = PyObject_Str(netns);
        rc = text ? put_str(a, "{\"netns\":", text) : -1;
        Py_XDECREF(text);
    }
    Py_XDECREF(netns);
    if (rc)
        return rc;
    PyObject *fam = field(sk, s_family);
    long family = fam ? PyLong_AsLong(fam) : -1;
    Py_XDECREF(fam);
    if (PyErr_Occurred())
        return -1;
    const char *fname = family == AF_INET ? "ipv4" : family == AF_INET6 ? "ipv6" : "?";
    PyObject *lport = field(sk, client ? s_peer_port : s_local_port);
    rc = !lport || put(a, ",\"family\":\"", 11) || put(a, fname, strlen(fname))
         || put(a, "\"", 1) || put_named(a, ",\"state\":", states, sk, s_state) ? -1 : 0;
    PyObject *addr = rc ? NULL : field(sk, s_local_addr);
    rc = !addr || put_str(a, ",\"local_addr\":", addr) ? -1 : 0;
    Py_XDECREF(addr);
    rc = rc || put_field(a, sk, ",\"local_port\":", s_local_port, 0) ? -1 : 0;
    addr = rc ? NULL : field(sk, s_peer_addr);
    rc = !addr || put_str(a, ",\"peer_addr\":", addr) ? -1 : 0;
    Py_XDECREF(addr);
    rc = rc || put_field(a, sk, ",\"peer_port\":", s_peer_port, 0)
         || put_field(a, sk, ",\"recv_q\":", s_recv_q, 0)
         || put_field(a, sk, ",\"send_q\":", s_send_q, 0)
         || put_field(a, sk, ",\"inode\":", s_inode, 0)
         || put_field(a, sk, ",\"cookie\":", s_cookie, 0)
         || put_field(a, sk, ",\"uid\":", s_uid, 0)
         || put_named(a, ",\"timer\":", timers, sk, s_timer)
         || put_field(a, sk, ",\"expires_ms\":", s_expires_ms, 0)
         || put_field(a, sk, ",\"retrans\":", s_retrans, 0)
         || put(a, client ? ",\"side\":\"client\"" : ",\"side\":\"server\"", client ? 16 : 16)
         || put_int(a, ",\"service\":", lport)
         || put_field(a, sk, ",\"age_ms\":", s_age_ms, 1)
         || (comms != Py_None && json_owners(a, sk, comms))
         || put_field(a, sk, ",\"shutdown\":", s_shutdown, 1)
         || put_field(a, sk, ",\"cgroup_id\":", s_cgroup_id, 1)
         || put(a, "}", 1) ? -1 : 0;
    Py_XDECREF(lport);
    return rc;
}

static PyObject *fast_json_records(PyObject *self, PyObject *args) {
    PyObject *socks, *clients, *names, *states, *timers, *comms;
    const char *sep;
    Py_ssize_t sep_len;
    if (!PyArg_ParseTuple(args, "O!O!O!O!O!Os#", &PyList_Type, &socks, &PyList_Type, &clients,
                          &PyDict_Type, &names, &PyDict_Type, &states, &PyDict_Type, &timers,
                          &comms, &sep, &sep_len))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(socks);
    if (PyList_GET_SIZE(clients) != n)
        return PyErr_Format(PyExc_ValueError, "one side per socket");
    /* One buffer kept from call to call (a document is written a chunk per call): a
     * fresh one would be fresh pages, every one of them a page fault. Taken, not
     * shared: owner_note() runs Python code, during which another thread may call. */
    static Arena kept;
    Arena a = kept;
    kept = (Arena){0};
    a.len = 0;
    a.bad = 0;
    int rc = grow(&a, (size_t)n * 400);  /* a record with one owner: ~370 bytes */
    for (Py_ssize_t i = 0; !rc && !a.bad && i < n; i++) {
        PyObject *sk = PyList_GET_ITEM(socks, i);
        int only = json_only_python(sk);
        if (only)
            a.bad = only > 0;
        rc = only < 0 ? -1 : only ? 0 : json_record(&a, sk, PyList_GET_ITEM(clients, i) == Py_True,
                                                    names, states, timers, comms)
                                         || put(&a, sep, (size_t)sep_len);
    }
    PyObject *out = rc ? NULL : a.bad ? Py_NewRef(Py_None)
                    : PyBytes_FromStringAndSize(a.buf ? a.buf : "", (Py_ssize_t)a.len);
    if (a.cap > (64u << 20) || kept.buf)  /* not a huge one, nor a second */
        free(a.buf);
    else
        kept = a;
    return out;
}

/* --- module ----------------------------------------------------------------- */

/* bind(Socket, SkMemInfo, TcpInfo): the model's types, built positionally. */
static PyObject *fast_bind(PyObject *self, PyObject *args) {
    PyObject *sock, *mem, *info;
    if (!PyArg_ParseTuple(args, "OOO", &sock, &mem, &info))
        return NULL;
    Py_XSETREF(Socket_T, Py_NewRef(sock));
    Py_XSETREF(SkMemInfo_T, Py_NewRef(mem));
    Py_XSETREF(TcpInfo_T, Py_NewRef(info));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"bind", fast_bind, METH_VARARGS, "bind(Socket, SkMemInfo, TcpInfo)"},
    {"feed", (PyCFunction)(void (*)(void))fast_feed, METH_FASTCALL,
     "feed(parser, data): sockdiag.DumpParser.feed in C"},
    {"tcp_info", fast_tcp_info, METH_O, "tcp_info(blob) -> TcpInfo: tcpinfo.decode_struct"},
    {"walk", fast_walk, METH_VARARGS,
     "walk(proc_root, pids, threads): procfs._walk in C, as flat 8-byte arrays"},
    {"by_inode", fast_by_inode, METH_VARARGS,
     "by_inode(Owner, inodes, pids, fds): the holder lists of procfs._Walk.to_map"},
    {"join", fast_join, METH_VARARGS, "join(sockets, by_inode): procfs.OwnerMap.attach"},
    {"tcp_records", fast_tcp_records, METH_VARARGS,
     "tcp_records(data, netns, age, aged_bits): linux/bpf/sockets.decode_python in C"},
    {"table", fast_table, METH_VARARGS,
     "table(sockets, states, names, age, comms, header, show_header) -> str | None: "
     "render/table.render"},
    {"json_records", fast_json_records, METH_VARARGS,
     "json_records(sockets, clients, names, states, timers, comms, sep) -> bytes | None: "
     "render/jsonout.records encoded"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "_fast", .m_size = -1, .m_methods = methods};

PyMODINIT_FUNC PyInit__fast(void) {
    struct { PyObject **slot; const char *text; } strings[] = {
        {&s_out, "out"}, {&s_netns, "netns"}, {&s_layouts, "_layouts"}, {&s_age_at, "_age_at"},
        {&s_cong, "_cong"}, {&s_mode, "_fast_mode"}, {&s_wanted, "_wanted_bits"},
        {&s_aged, "_aged_bits"}, {&s_done, "done"}, {&s_interrupted, "interrupted"},
        {&s_age_ms, "age_ms"}, {&s_info, "info"}, {&s_info_blob, "info_blob"},
        {&s_cong_attr, "cong"}, {&s_cc_info, "cc_info"}, {&s_shutdown, "shutdown"}, {&s_cgroup_id, "cgroup_id"},
        {&s_mark, "mark"}, {&s_mem, "mem"}, {&s_inode, "inode"}, {&s_owners, "owners"},
        {&s_pid, "pid"}, {&s_fd, "fd"}, {&s_family, "family"}, {&s_state, "state"},
        {&s_recv_q, "recv_q"}, {&s_send_q, "send_q"}, {&s_local_addr, "local_addr"},
        {&s_local_port, "local_port"}, {&s_peer_addr, "peer_addr"}, {&s_peer_port, "peer_port"},
        {&s_cookie, "cookie"}, {&s_uid, "uid"}, {&s_timer, "timer"}, {&s_expires_ms, "expires_ms"},
        {&s_retrans, "retrans"},
    };
    for (size_t i = 0; i < sizeof strings / sizeof *strings; i++)
        if (!(*strings[i].slot = PyUnicode_InternFromString(strings[i].text)))
            return NULL;
    PyObject *m = PyModule_Create(&module);
    /* native.ABI must match: a build older than the Python code is not used */
    if (m && PyModule_AddIntConstant(m, "ABI", FAST_ABI) < 0)
        Py_CLEAR(m);
    return m;
}
