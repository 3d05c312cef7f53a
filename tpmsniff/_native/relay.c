/* tpmsniff native data-channel relay: one epoll thread owns the read/write hot path of
 * TPM data-channel pairs (client <-> swtpm) and the 10-byte header framing; it makes
 * records already encoded in the worker's record format (tpmsniff/pipeline/records.py)
 * and Python takes them in batches (tn_take swaps the buffer out: the lock is held for
 * the swap only). Python keeps accepting, role detection, the control channels (QEMU's
 * fd passing), and everything after the relay.
 *
 * The relay rules (docs/protocols.md §4-§6) mirror tpmsniff/codec/channels.py
 * DataChannel exactly: each whole request goes upstream in one write, one framed request
 * outstanding at a time (the next is not even read from the client until the response is
 * complete: the kernel's socket buffer is the queue), each upstream read is forwarded to
 * the client at once and unsplit, and the end of stream is handled as docs/protocols.md
 * "End of stream" says (the same policy as transport/conn.py). Nothing is dropped: while
 * the record buffer is above its high-water mark (or Python says the worker is
 * congested) clients are not read; a record that cannot be made is counted (tn_lost)
 * and its pair closed.
 *
 * Framing decisions are the pure functions tn_next_request / tn_next_response, which the
 * unit tests fuzz against the Python framers (tests/unit/_native/test_relay.py). */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "relay.h"

#define HEADER 10
#define MSSIM_SEND_COMMAND 8
#define MSSIM_PREFIX 9
#define MSSIM_RSP_PREFIX 4
#define READ_CHUNK 65536
#define FLUSH_NS 20000000LL         /* records reach Python within 20 ms ... */
#define FLUSH_BYTES (256u << 10)    /* ... or at once when a batch is this big */
#define OUT_HIGH (1u << 20)         /* above this, clients are not read */

static uint32_t be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static int valid_tag(unsigned tag) {
    return tag == 0x8001 || tag == 0x8002 || (tag >= 0x00C1 && tag <= 0x00C6);
}

size_t tn_next_request(const uint8_t *b, size_t len, size_t max, int *kind, int *locality,
                       char *note, size_t notecap) {
    *locality = -1;
    note[0] = 0;
    if (len < 2)
        return 0;
    unsigned tag = ((unsigned)b[0] << 8) | b[1];
    if (valid_tag(tag)) {
        if (len < 6)
            return 0;
        uint32_t size = be32(b + 2);
        if (size < HEADER || size > max) {
            snprintf(note, notecap, "TPM size field %u out of range", size);
            *kind = TN_UNFRAMED;
            return len;
        }
        if (len < size)
            return 0;
        *kind = TN_RAW;
        return size;
    }
    if (tag == 0 && len >= 4) {
        if (be32(b) != MSSIM_SEND_COMMAND) {
            snprintf(note, notecap, "not a TPM message");
            *kind = TN_UNFRAMED;
            return len;
        }
        if (len < MSSIM_PREFIX)
            return 0;
        uint32_t size = be32(b + 5);
        if (size < HEADER || size > max) {
            snprintf(note, notecap, "MS-sim length %u out of range", size);
            *kind = TN_UNFRAMED;
            return len;
        }
        if (len < MSSIM_PREFIX + (size_t)size)
            return 0;
        *kind = TN_MSSIM;
        *locality = b[4];
        return MSSIM_PREFIX + (size_t)size;
    }
    if (tag == 0)
        return 0;
    snprintf(note, notecap, "not a TPM message");
    *kind = TN_UNFRAMED;
    return len;
}

size_t tn_next_response(const uint8_t *b, size_t len, size_t max, int expect, int *kind,
                        char *note, size_t notecap) {
    note[0] = 0;
    int mssim = expect == TN_MSSIM;
    size_t off = mssim ? MSSIM_RSP_PREFIX : 0;
    if (len < off + 6)
        return 0;
    uint32_t size = be32(b + off + 2);
    if (mssim && be32(b) != size) {
        snprintf(note, notecap, "MS-sim length does not match TPM size");
        *kind = TN_UNFRAMED;
        return len;
    }
    if (size < HEADER || size > max) {
        snprintf(note, notecap, "TPM size field %u out of range", size);
        *kind = TN_UNFRAMED;
        return len;
    }
    size_t total = (size_t)size + (mssim ? 2 * MSSIM_RSP_PREFIX : 0);
    if (len < total)
        return 0;
    *kind = mssim ? TN_MSSIM : TN_RAW;
    return total;
}

/* -- the relay ------------------------------------------------------------------- */

/* Fault injection for the tests (a build with -DTN_FAULTS only, see build.py): the Nth
 * allocation (TPMSNIFF_FAULT_MALLOC=N) or epoll_ctl (TPMSNIFF_FAULT_EPOLL=N) of the
 * process fails, once, so that every failure path runs under the sanitizers. */
#ifdef TN_FAULTS
static long fault_at[2] = {-1, -1};
static long fault_count[2];
static int faulty(int which) {
    return __atomic_add_fetch(&fault_count[which], 1, __ATOMIC_SEQ_CST) == fault_at[which];
}
static void faults_init(void) {
    const char *m = getenv("TPMSNIFF_FAULT_MALLOC"), *e = getenv("TPMSNIFF_FAULT_EPOLL");
    fault_at[0] = m ? atol(m) : -1;
    fault_at[1] = e ? atol(e) : -1;
}
#define FAULT(which) faulty(which)
#else
static void faults_init(void) {}
#define FAULT(which) 0
#endif

static void *xmalloc(size_t n) {
    return FAULT(0) ? NULL : malloc(n);
}
static void *xcalloc(size_t n, size_t m) {
    return FAULT(0) ? NULL : calloc(n, m);
}
static void *xrealloc(void *p, size_t n) {
    return FAULT(0) ? NULL : realloc(p, n);
}
static int xepoll_ctl(int epfd, int op, int fd, struct epoll_event *ev) {
    if (FAULT(1)) {
        errno = ENOMEM;
        return -1;
    }
    return epoll_ctl(epfd, op, fd, ev);
}

struct buf {
    uint8_t *p;
    size_t len, cap;
};

static int buf_reserve(struct buf *b, size_t extra) {
    if (b->len + extra <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra)
        cap *= 2;
    uint8_t *p = xrealloc(b->p, cap);
    if (!p)
        return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

static void buf_consume(struct buf *b, size_t n) {
    memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
}

struct pair;
struct side {
    struct pair *pair;
    int up; /* 0 client, 1 upstream */
};

/* End of stream (docs/protocols.md, "End of stream"; the same in codec/channels.py and
 * transport/conn.py): the client's EOF drops nothing, its requests still go one at a
 * time and their responses to it, then swtpm's write side is shut and swtpm closes; a
 * client that is gone (a reset, or a response it cannot take) has swtpm's connection
 * closed at once; when swtpm closes, the client gets every byte it sent, then EOF. */
struct pair {
    int cfd, ufd; /* ufd is -1 once swtpm closed */
    uint64_t conn;
    size_t max;
    struct buf rq;  /* client bytes not yet framed (at most max + MSSIM_PREFIX) */
    struct buf rs;  /* copy of the response stream, not yet framed */
    struct buf cw;  /* response bytes the client has not accepted yet */
    struct buf uw;  /* request bytes swtpm has not accepted yet */
    int expect;     /* framing of the outstanding request, or TN_NONE */
    int waiting;    /* a framed request is outstanding */
    int done;       /* closed: freed at the end of the loop iteration */
    int eof;        /* the client's read returned 0: its queued requests still go */
    int hup;        /* the client hung up (EPOLLHUP): out of epoll, read directly */
    int shut;       /* nothing left to send after EOF: swtpm's write side is shut */
    int upgone;     /* swtpm closed: the client gets the last bytes, then is closed */
    int fail;       /* an allocation or epoll_ctl failed: the pair is closed */
    int creg;       /* cfd is registered in epoll */
    int busy;       /* counted in nbusy (pair_busy) */
    uint32_t cmask, umask;
    struct side cs, us;
    struct pair *next;
};

struct tn_relay {
    int epfd, evfd, notefd; /* evfd wakes the thread; notefd tells Python records wait */
    pthread_t thread;
    int started;
    pthread_mutex_t mu;
    struct pair *pending; /* added by Python, not yet registered (under mu) */
    struct pair *active;  /* owned by the thread */
    /* under mu: set by Python */
    int stop, close_all, paused;
    uint64_t drain_gen; /* bumped by tn_drain */
    struct buf closing; /* u64 ids Python asked to close (tn_close_conn) */
    /* the thread's copies, taken at the end of each loop iteration */
    int cur_paused, cur_draining;
    uint64_t drain_ack; /* atomic: the drain_gen the thread has acted on */
    int nactive;        /* atomic */
    int nbusy;          /* atomic: pairs with a request outstanding (pair_busy) */
    uint64_t lost;      /* atomic: records that could not be made */
    /* under omu: the records not yet taken by Python (tn_take swaps the buffers out,
     * so the lock is held only to append a record or to swap: never while Python runs) */
    pthread_mutex_t omu;
    struct buf out;      /* length-prefixed records */
    uint32_t out_frames; /* event records in `out` */
    struct buf closed;   /* u64 ids of the connections closed in `out` (Python logs them) */
    int notified;        /* Python was told (notefd) and has not taken since */
    struct timespec first;
    uint8_t ch_tpm, dir_cmd, dir_rsp, fr[4];
    struct side evside;
    uint8_t chunk[READ_CHUNK]; /* the thread's read buffer (one per relay, not shared) */
};

static void lose(struct tn_relay *r, uint64_t n) {
    __atomic_add_fetch(&r->lost, n, __ATOMIC_SEQ_CST);
}

static int64_t ns_since(const struct timespec *t) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)(now.tv_sec - t->tv_sec) * 1000000000LL + (now.tv_nsec - t->tv_nsec);
}

static void put_le(uint8_t *p, uint64_t v, int n) {
    for (int i = 0; i < n; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static double now_real(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void out_mark(struct tn_relay *r) {
    if (r->out.len == 0)
        clock_gettime(CLOCK_MONOTONIC, &r->first);
}

/* one record: u32 length | 'E' conn ts ch dir framing prefix locality ctrl_cmd number
 * rawlen notelen | note | raw  (struct "<cQdBBBIhqqII", records.py _EVENT). A record
 * that cannot be made is counted (tn_lost: the daemon exits 4) and its pair closed. */
#define EVENT_HEAD 50
static void emit_event(struct tn_relay *r, struct pair *p, int dir, int kind, uint32_t prefix,
                       int locality, const char *note, const uint8_t *raw, size_t rawlen) {
    size_t notelen = strlen(note);
    size_t body = EVENT_HEAD + notelen + rawlen;
    pthread_mutex_lock(&r->omu);
    if (buf_reserve(&r->out, 4 + body) < 0) {
        pthread_mutex_unlock(&r->omu);
        lose(r, 1);
        p->fail = 1;
        return;
    }
    out_mark(r);
    uint8_t *q = r->out.p + r->out.len;
    double ts = now_real();
    uint64_t tsbits;
    memcpy(&tsbits, &ts, 8);
    put_le(q, body, 4);
    q[4] = 'E';
    put_le(q + 5, p->conn, 8);
    put_le(q + 13, tsbits, 8);
    q[21] = r->ch_tpm;
    q[22] = dir ? r->dir_rsp : r->dir_cmd;
    q[23] = r->fr[kind];
    put_le(q + 24, prefix, 4);
    put_le(q + 28, (uint64_t)(int64_t)locality, 2);
    put_le(q + 30, (uint64_t)(int64_t)-1, 8);
    put_le(q + 38, (uint64_t)(int64_t)-1, 8);
    put_le(q + 46, rawlen, 4);
    put_le(q + 50, notelen, 4);
    memcpy(q + 4 + EVENT_HEAD, note, notelen);
    memcpy(q + 4 + EVENT_HEAD + notelen, raw, rawlen);
    r->out.len += 4 + body;
    r->out_frames++;
    pthread_mutex_unlock(&r->omu);
}

static void emit_close(struct tn_relay *r, struct pair *p) {
    pthread_mutex_lock(&r->omu);
    if (buf_reserve(&r->out, 4 + 17) < 0) {
        pthread_mutex_unlock(&r->omu);
        lose(r, 1);
        return;
    }
    out_mark(r);
    uint8_t *q = r->out.p + r->out.len;
    double ts = now_real();
    uint64_t tsbits;
    memcpy(&tsbits, &ts, 8);
    put_le(q, 17, 4);
    q[4] = 'C';
    put_le(q + 5, p->conn, 8);
    put_le(q + 13, tsbits, 8);
    r->out.len += 21;
    if (buf_reserve(&r->closed, 8) == 0) { /* else only its log line is missing */
        put_le(r->closed.p + r->closed.len, p->conn, 8);
        r->closed.len += 8;
    }
    pthread_mutex_unlock(&r->omu);
}

/* Tell Python records wait (once, until it takes them): every FLUSH_NS, or at once when
 * FLUSH_BYTES are waiting or the relay stops, so Python handles a batch at a time. */
static void notify_python(struct tn_relay *r, int now) {
    pthread_mutex_lock(&r->omu);
    if (r->out.len && !r->notified &&
        (now || r->out.len >= FLUSH_BYTES || ns_since(&r->first) >= FLUSH_NS)) {
        uint64_t one = 1;
        if (write(r->notefd, &one, sizeof one) == sizeof one || errno == EAGAIN)
            r->notified = 1; /* EAGAIN: the counter is full, so Python is told already */
    }
    pthread_mutex_unlock(&r->omu);
}

/* ms until Python should be told, or -1 */
static int notify_timeout(struct tn_relay *r) {
    int timeout = -1;
    pthread_mutex_lock(&r->omu);
    if (r->out.len && !r->notified) {
        int64_t left = FLUSH_NS - ns_since(&r->first);
        timeout = left <= 0 ? 0 : (int)((left + 999999) / 1000000);
    }
    pthread_mutex_unlock(&r->omu);
    return timeout;
}

/* the thread reads the record buffer's length without the lock (Python may take it) */
static size_t out_len(struct tn_relay *r) {
    return __atomic_load_n(&r->out.len, __ATOMIC_RELAXED);
}

/* room to read the client now (whether or not a request is outstanding) */
static int may_read(struct tn_relay *r, struct pair *p) {
    return !p->eof && !p->upgone && !r->cur_paused && !r->cur_draining &&
           out_len(r) < OUT_HIGH && p->rq.len < p->rq.cap;
}

static int client_readable(struct tn_relay *r, struct pair *p) {
    return !p->waiting && p->uw.len == 0 && may_read(r, p);
}

static void finish(struct tn_relay *r, struct pair *p);

/* "Busy" (tn_busy: what a stop waits for) is a request outstanding: forwarded to swtpm
 * (or still to go after the client's EOF) and its response not yet all written to the
 * client. A connection that is merely open (QEMU's always is) is not busy. */
static int pair_busy(const struct pair *p) {
    return !p->done && (p->waiting || p->uw.len || p->cw.len ||
                        (p->eof && !p->shut && !p->upgone && p->rq.len));
}

static void busy_update(struct tn_relay *r, struct pair *p) {
    int b = pair_busy(p);
    if (b != p->busy) {
        p->busy = b;
        __atomic_add_fetch(&r->nbusy, b ? 1 : -1, __ATOMIC_SEQ_CST);
    }
}

static void set_mask(struct tn_relay *r, struct pair *p) {
    if (p->done)
        return;
    if (p->creg) {
        uint32_t c = (client_readable(r, p) ? EPOLLIN : 0) | (p->cw.len ? EPOLLOUT : 0);
        if (c != p->cmask) {
            struct epoll_event ev = {.events = c, .data.ptr = &p->cs};
            if (xepoll_ctl(r->epfd, EPOLL_CTL_MOD, p->cfd, &ev) < 0) {
                finish(r, p); /* it would wait for ever: closed instead */
                return;
            }
            p->cmask = c;
        }
    }
    if (p->ufd >= 0) {
        uint32_t u = (p->cw.len ? 0 : EPOLLIN) | (p->uw.len ? EPOLLOUT : 0);
        if (u != p->umask) {
            struct epoll_event ev = {.events = u, .data.ptr = &p->us};
            if (xepoll_ctl(r->epfd, EPOLL_CTL_MOD, p->ufd, &ev) < 0) {
                finish(r, p);
                return;
            }
            p->umask = u;
        }
    }
}

/* write to swtpm: in one write whenever the socket takes it (it always does for a
 * message of at most --max-message bytes on a drained socket) */
static int up_write(struct pair *p, const uint8_t *data, size_t len) {
    if (p->uw.len == 0) {
        ssize_t n;
        do
            n = send(p->ufd, data, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        while (n < 0 && errno == EINTR);
        if (n < 0 && errno != EAGAIN)
            return -1;
        if (n < 0)
            n = 0;
        data += n;
        len -= (size_t)n;
    }
    if (len) {
        if (buf_reserve(&p->uw, len) < 0) {
            p->fail = 1;
            return -1;
        }
        memcpy(p->uw.p + p->uw.len, data, len);
        p->uw.len += len;
    }
    return 0;
}

/* forward response bytes to the client, unsplit: -1 when the client is gone */
static int client_send(struct pair *p, const uint8_t *d, size_t n) {
    size_t off = 0;
    if (p->cw.len == 0) {
        ssize_t w;
        do
            w = send(p->cfd, d, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        while (w < 0 && errno == EINTR);
        if (w < 0 && errno != EAGAIN)
            return -1;
        off = w > 0 ? (size_t)w : 0;
    }
    if (off < n) {
        if (p->hup) /* out of epoll (a hung-up socket takes nothing more anyway) */
            return -1;
        if (buf_reserve(&p->cw, n - off) < 0) {
            p->fail = 1;
            return 0;
        }
        memcpy(p->cw.p + p->cw.len, d + off, n - off);
        p->cw.len += n - off;
    }
    return 0;
}

static void send_request(struct tn_relay *r, struct pair *p, size_t n, int kind, int locality,
                         const char *note, int track) {
    int rc = up_write(p, p->rq.p, n);
    emit_event(r, p, 0, kind, kind == TN_MSSIM ? MSSIM_PREFIX : 0, locality, note, p->rq.p, n);
    buf_consume(&p->rq, n);
    if (rc < 0) {
        finish(r, p);
        return;
    }
    if (track && kind != TN_UNFRAMED) {
        p->expect = kind;
        p->waiting = 1;
    }
}

/* read what the client sent: more bytes, EOF (read returned 0: nothing is dropped), or a
 * reset (the pair is closed at once, as swtpm's own connection would be) */
static void client_read(struct tn_relay *r, struct pair *p) {
    ssize_t n = read(p->cfd, p->rq.p + p->rq.len, p->rq.cap - p->rq.len);
    if (n > 0)
        p->rq.len += (size_t)n;
    else if (n == 0)
        p->eof = 1;
    else if (errno != EAGAIN && errno != EINTR)
        finish(r, p);
}

static void pump(struct tn_relay *r, struct pair *p) {
    char note[64];
    for (;;) {
        while (!p->done && !p->fail && !p->waiting && p->uw.len == 0 && p->rq.len > 0) {
            int kind, loc;
            size_t n =
                tn_next_request(p->rq.p, p->rq.len, p->max, &kind, &loc, note, sizeof note);
            if (n == 0)
                break;
            send_request(r, p, n, kind, loc, note, 1);
        }
        if (p->done || p->fail)
            break;
        /* a hung-up client is not in epoll: it is read here, when there is room */
        if (p->hup && client_readable(r, p)) {
            size_t before = p->rq.len;
            client_read(r, p);
            if (!p->done && (p->rq.len > before || p->eof))
                continue;
        }
        break;
    }
    if (p->fail && !p->done)
        finish(r, p);
    if (p->done || !p->eof || p->waiting || p->uw.len || p->shut || p->upgone)
        return;
    if (p->rq.len) { /* a partial request: forwarded as is */
        send_request(r, p, p->rq.len, TN_UNFRAMED, -1, "truncated at end of stream", 0);
        if (p->fail && !p->done)
            finish(r, p);
        if (p->done || p->uw.len)
            return; /* once it is written, on_upstream pumps again */
    }
    shutdown(p->ufd, SHUT_WR); /* EOF passed on: swtpm answers what it has, then closes */
    p->shut = 1;
}

static void responses(struct tn_relay *r, struct pair *p, const uint8_t *data, size_t len) {
    char note[64];
    int any = 0;
    if (p->rs.len == 0 && p->expect != TN_MSSIM && len >= HEADER && be32(data + 2) == len &&
        valid_tag(((unsigned)data[0] << 8) | data[1]) && len <= p->max) {
        emit_event(r, p, 1, TN_RAW, 0, -1, "", data, len); /* the usual case */
        p->expect = TN_NONE;
        any = 1;
    } else {
        if (buf_reserve(&p->rs, len) < 0) {
            lose(r, 1); /* forwarded, but not recorded */
            p->fail = 1;
            return;
        }
        memcpy(p->rs.p + p->rs.len, data, len);
        p->rs.len += len;
        while (p->rs.len > 0) {
            int kind;
            size_t n = tn_next_response(p->rs.p, p->rs.len, p->max, p->expect, &kind, note,
                                        sizeof note);
            if (n == 0)
                break;
            emit_event(r, p, 1, kind, kind == TN_MSSIM ? MSSIM_RSP_PREFIX : 0, -1, note,
                       p->rs.p, n);
            buf_consume(&p->rs, n);
            p->expect = TN_NONE;
            any = 1;
        }
    }
    if (any && p->expect == TN_NONE)
        p->waiting = 0;
}

static void free_pair(struct pair *p) {
    free(p->rq.p);
    free(p->rs.p);
    free(p->cw.p);
    free(p->uw.p);
    free(p);
}

/* Close both sides: what swtpm sent and nobody framed yet is recorded, then the close. */
static void finish(struct tn_relay *r, struct pair *p) {
    if (p->done)
        return;
    p->done = 1;
    if (p->rs.len) {
        emit_event(r, p, 1, TN_UNFRAMED, 0, -1, "truncated at end of stream", p->rs.p,
                   p->rs.len);
        p->rs.len = 0;
    }
    emit_close(r, p);
    if (p->creg)
        epoll_ctl(r->epfd, EPOLL_CTL_DEL, p->cfd, NULL);
    if (p->ufd >= 0) {
        epoll_ctl(r->epfd, EPOLL_CTL_DEL, p->ufd, NULL);
        close(p->ufd);
        p->ufd = -1;
    }
    close(p->cfd);
    p->creg = 0;
    busy_update(r, p);
    __atomic_sub_fetch(&r->nactive, 1, __ATOMIC_SEQ_CST);
}

/* swtpm closed: every byte it sent before still goes to the client (unsplit, in the
 * pieces it came in), then the client is closed; requests not yet sent are dropped */
static void upstream_closed(struct tn_relay *r, struct pair *p) {
    int gone = 0;
    for (;;) { /* what the kernel still holds from swtpm (bounded by its buffer) */
        ssize_t n = read(p->ufd, r->chunk, sizeof r->chunk);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        if (!gone && client_send(p, r->chunk, (size_t)n) < 0)
            gone = 1;
        responses(r, p, r->chunk, (size_t)n);
        if (p->fail)
            break;
    }
    epoll_ctl(r->epfd, EPOLL_CTL_DEL, p->ufd, NULL);
    close(p->ufd);
    p->ufd = -1;
    p->upgone = 1;
    p->rq.len = 0;
    p->waiting = 0;
    if (gone || p->fail || p->cw.len == 0)
        finish(r, p);
}

static void on_client(struct tn_relay *r, struct pair *p, uint32_t ev) {
    if (ev & EPOLLERR) {
        /* a reset: what arrived before it still goes if it may (swtpm, reading the same
         * socket directly, would have it too: the Python relay reads it first as well),
         * then swtpm's connection is closed at once */
        if ((ev & EPOLLIN) && client_readable(r, p)) {
            client_read(r, p);
            if (!p->done)
                pump(r, p);
        }
        finish(r, p);
        return;
    }
    if ((ev & EPOLLOUT) && p->cw.len) {
        ssize_t n = send(p->cfd, p->cw.p, p->cw.len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno != EAGAIN && errno != EINTR) {
            finish(r, p); /* the client is gone */
            return;
        }
        if (n > 0)
            buf_consume(&p->cw, (size_t)n);
        if (p->cw.len == 0 && p->upgone) {
            finish(r, p);
            return;
        }
    }
    if ((ev & EPOLLIN) && client_readable(r, p)) {
        client_read(r, p);
        if (p->done)
            return;
        pump(r, p);
        if (p->done)
            return;
    }
    if ((ev & EPOLLHUP) && !p->hup) {
        /* the peer closed (a Unix socket's, fully): level-triggered, so out of epoll; what
         * it sent is still read, a request at a time, and the next response written to
         * it says it is gone */
        epoll_ctl(r->epfd, EPOLL_CTL_DEL, p->cfd, NULL);
        p->creg = 0;
        p->hup = 1;
        if (p->cw.len || p->upgone) {
            finish(r, p);
            return;
        }
        pump(r, p);
    }
}

static void on_upstream(struct tn_relay *r, struct pair *p, uint32_t ev) {
    if ((ev & EPOLLOUT) && p->uw.len) {
        ssize_t n = send(p->ufd, p->uw.p, p->uw.len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno != EAGAIN && errno != EINTR) {
            upstream_closed(r, p);
            return;
        }
        if (n > 0)
            buf_consume(&p->uw, (size_t)n);
        if (p->uw.len == 0)
            pump(r, p);
        if (p->done)
            return;
    }
    if (ev & (EPOLLHUP | EPOLLERR)) {
        upstream_closed(r, p);
        return;
    }
    if ((ev & EPOLLIN) && p->cw.len == 0) {
        ssize_t n = read(p->ufd, r->chunk, sizeof r->chunk);
        if (n > 0) {
            int gone = client_send(p, r->chunk, (size_t)n) < 0; /* forward first */
            responses(r, p, r->chunk, (size_t)n);
            if (gone || p->fail) { /* gone: swtpm's connection is closed at once */
                finish(r, p);
                return;
            }
            pump(r, p);
        } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
            upstream_closed(r, p);
        }
    }
}

static void add_pending(struct tn_relay *r) {
    pthread_mutex_lock(&r->mu);
    struct pair *list = r->pending;
    r->pending = NULL;
    pthread_mutex_unlock(&r->mu);
    while (list) {
        struct pair *p = list;
        list = p->next;
        p->next = r->active;
        r->active = p;
        struct epoll_event ce = {.events = 0, .data.ptr = &p->cs};
        struct epoll_event ue = {.events = EPOLLIN, .data.ptr = &p->us};
        p->cmask = 0;
        p->umask = EPOLLIN;
        if (xepoll_ctl(r->epfd, EPOLL_CTL_ADD, p->cfd, &ce) < 0) {
            finish(r, p);
            continue;
        }
        p->creg = 1;
        if (xepoll_ctl(r->epfd, EPOLL_CTL_ADD, p->ufd, &ue) < 0) {
            finish(r, p);
            continue;
        }
        pump(r, p); /* the bytes role detection read */
    }
}

static int closing_wanted(const struct buf *ids, uint64_t conn) {
    for (size_t i = 0; i + 8 <= ids->len; i += 8) {
        uint64_t v = 0;
        for (int k = 0; k < 8; k++)
            v |= (uint64_t)ids->p[i + k] << (8 * k);
        if (v == conn)
            return 1;
    }
    return 0;
}

static void *run(void *arg) {
    struct tn_relay *r = arg;
    struct epoll_event evs[64];
    struct buf closing = {0};
    for (;;) {
        int n = epoll_wait(r->epfd, evs, 64, notify_timeout(r));
        if (n < 0 && errno != EINTR)
            break;
        for (int i = 0; i < n; i++) {
            struct side *s = evs[i].data.ptr;
            if (s == &r->evside) {
                uint64_t v;
                if (read(r->evfd, &v, sizeof v) < 0 && errno != EAGAIN)
                    continue;
                continue;
            }
            struct pair *p = s->pair;
            if (p->done || (s->up && p->ufd < 0) || (!s->up && !p->creg))
                continue; /* an event from before this iteration changed the pair */
            if (s->up)
                on_upstream(r, p, evs[i].events);
            else
                on_client(r, p, evs[i].events);
            busy_update(r, p);
        }
        pthread_mutex_lock(&r->mu);
        int stop = r->stop, close_all = r->close_all, paused = r->paused;
        uint64_t drain = r->drain_gen;
        r->close_all = 0;
        struct buf swap = r->closing; /* the ids to close, taken whole */
        r->closing = closing;
        closing = swap;
        pthread_mutex_unlock(&r->mu);
        add_pending(r);
        r->cur_paused = paused;
        r->cur_draining = drain != 0;
        struct pair **pp = &r->active;
        while (*pp) {
            struct pair *p = *pp;
            if (!p->done && (close_all || stop || p->fail))
                finish(r, p); /* shutdown: drop every connection now; a failure: this one */
            if (!p->done && closing.len && closing_wanted(&closing, p->conn))
                finish(r, p); /* Python closed it (QEMU replaced or refused its data fd) */
            if (!p->done && p->hup)
                pump(r, p); /* read without epoll: perhaps there is room now */
            if (p->done) {
                *pp = p->next;
                free_pair(p);
                continue;
            }
            set_mask(r, p); /* a no-op unless what the pair waits for changed */
            busy_update(r, p);
            pp = &p->next;
        }
        closing.len = 0;
        /* from here on no client is read while draining: what is busy only ends */
        __atomic_store_n(&r->drain_ack, drain, __ATOMIC_SEQ_CST);
        notify_python(r, close_all || stop);
        if (stop)
            break;
    }
    free(closing.p);
    return NULL;
}

/* -- API for Python (cffi releases the GIL around each call) ------------------------- */

tn_relay *tn_new(const uint8_t *codes) {
    faults_init();
    tn_relay *r = xcalloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->ch_tpm = codes[0];
    r->dir_cmd = codes[1];
    r->dir_rsp = codes[2];
    r->fr[TN_RAW] = codes[3];
    r->fr[TN_MSSIM] = codes[4];
    r->fr[TN_UNFRAMED] = codes[5];
    r->evside.pair = NULL;
    r->epfd = r->evfd = r->notefd = -1;
    pthread_mutex_init(&r->mu, NULL);
    pthread_mutex_init(&r->omu, NULL);
    r->epfd = epoll_create1(EPOLL_CLOEXEC);
    r->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    r->notefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (r->epfd < 0 || r->evfd < 0 || r->notefd < 0) {
        tn_free(r);
        return NULL;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &r->evside};
    if (xepoll_ctl(r->epfd, EPOLL_CTL_ADD, r->evfd, &ev) < 0) {
        tn_free(r);
        return NULL;
    }
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old); /* signals stay with Python's thread */
    int rc = pthread_create(&r->thread, NULL, run, r);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        tn_free(r);
        return NULL;
    }
    r->started = 1;
    return r;
}

int tn_notefd(tn_relay *r) {
    return r->notefd;
}

static void wake(tn_relay *r) {
    uint64_t one = 1;
    ssize_t n = write(r->evfd, &one, sizeof one);
    (void)n;
}

int tn_add(tn_relay *r, int cfd, int ufd, uint64_t conn, size_t max_message,
           const uint8_t *early, size_t early_len) {
    struct pair *p = xcalloc(1, sizeof *p);
    if (!p)
        return -1;
    p->cfd = cfd;
    p->ufd = ufd;
    p->conn = conn;
    p->max = max_message;
    p->cs.pair = p;
    p->us.pair = p;
    p->us.up = 1;
    p->expect = TN_NONE;
    /* one maximal request: what is read ahead of swtpm stays small (a client that sends
     * and never reads leaves the rest in the kernel, and it goes away with it) */
    size_t cap = max_message + MSSIM_PREFIX;
    if (early_len > cap)
        cap = early_len;
    p->rq.p = xmalloc(cap);
    if (!p->rq.p) {
        free(p);
        return -1;
    }
    p->rq.cap = cap;
    if (early_len)
        memcpy(p->rq.p, early, early_len);
    p->rq.len = early_len;
    __atomic_add_fetch(&r->nactive, 1, __ATOMIC_SEQ_CST);
    pthread_mutex_lock(&r->mu);
    p->next = r->pending;
    r->pending = p;
    pthread_mutex_unlock(&r->mu);
    wake(r);
    return 0;
}

void tn_pause(tn_relay *r, int paused) {
    pthread_mutex_lock(&r->mu);
    r->paused = paused;
    pthread_mutex_unlock(&r->mu);
    wake(r);
}

/* A stop begins: no client is read from now on (requests already forwarded still get
 * their responses). tn_busy says when none is left. */
void tn_drain(tn_relay *r) {
    pthread_mutex_lock(&r->mu);
    r->drain_gen++;
    pthread_mutex_unlock(&r->mu);
    wake(r);
}

/* Requests outstanding (pair_busy). While a tn_drain is not yet acted on by the thread
 * this says 1: the thread may be forwarding a request at this moment. */
int tn_busy(tn_relay *r) {
    pthread_mutex_lock(&r->mu);
    uint64_t want = r->drain_gen;
    pthread_mutex_unlock(&r->mu);
    if (want && __atomic_load_n(&r->drain_ack, __ATOMIC_SEQ_CST) != want)
        return 1;
    int n = __atomic_load_n(&r->nbusy, __ATOMIC_SEQ_CST);
    return n > 0 ? n : 0;
}

/* Close connection `conn` at once (both sides), if the thread still relays it. */
int tn_close_conn(tn_relay *r, uint64_t conn) {
    pthread_mutex_lock(&r->mu);
    int rc = buf_reserve(&r->closing, 8);
    if (rc == 0) {
        put_le(r->closing.p + r->closing.len, conn, 8);
        r->closing.len += 8;
    }
    pthread_mutex_unlock(&r->mu);
    wake(r);
    return rc;
}

uint64_t tn_lost(tn_relay *r) {
    return __atomic_load_n(&r->lost, __ATOMIC_SEQ_CST);
}

int tn_active(tn_relay *r) {
    return __atomic_load_n(&r->nactive, __ATOMIC_SEQ_CST);
}

void tn_close_all(tn_relay *r) {
    pthread_mutex_lock(&r->mu);
    r->close_all = 1;
    pthread_mutex_unlock(&r->mu);
    wake(r);
}

void tn_stop(tn_relay *r) {
    if (!r->started)
        return;
    pthread_mutex_lock(&r->mu);
    r->stop = 1;
    pthread_mutex_unlock(&r->mu);
    wake(r);
    pthread_join(r->thread, NULL);
    r->started = 0;
    add_pending(r); /* pairs added after the thread's last look */
    for (struct pair *p = r->active; p; p = p->next)
        if (!p->done)
            finish(r, p);
}

/* Every record made so far, moved into `b` (Python copies it out, then tn_batch_free):
 * the lock is held for the swap only, never while Python runs. 0: nothing waits. */
int tn_take(tn_relay *r, tn_batch *b) {
    pthread_mutex_lock(&r->omu);
    b->data = r->out.p;
    b->len = r->out.len;
    b->frames = r->out_frames;
    b->closed = (uint64_t *)(void *)r->closed.p;
    b->nclosed = r->closed.len / 8;
    int any = r->out.len > 0 || r->closed.len > 0;
    r->out.p = NULL;
    r->out.cap = 0;
    __atomic_store_n(&r->out.len, 0, __ATOMIC_RELAXED); /* the thread reads it unlocked */
    memset(&r->closed, 0, sizeof r->closed);
    r->out_frames = 0;
    r->notified = 0;
    pthread_mutex_unlock(&r->omu);
    if (b->len >= OUT_HIGH)
        wake(r); /* the thread stopped reading clients at OUT_HIGH: it re-arms them now */
    if (!any) {
        tn_batch_free(b);
        return 0;
    }
    return 1;
}

void tn_batch_free(tn_batch *b) {
    free(b->data);
    free(b->closed);
    b->data = NULL;
    b->closed = NULL;
    b->len = b->nclosed = 0;
    b->frames = 0;
}

void tn_free(tn_relay *r) {
    if (!r)
        return;
    tn_stop(r);
    while (r->active) {
        struct pair *p = r->active;
        r->active = p->next;
        free_pair(p);
    }
    if (r->epfd >= 0)
        close(r->epfd);
    if (r->evfd >= 0)
        close(r->evfd);
    if (r->notefd >= 0)
        close(r->notefd);
    free(r->out.p);
    free(r->closed.p);
    free(r->closing.p);
    pthread_mutex_destroy(&r->mu);
    pthread_mutex_destroy(&r->omu);
    free(r);
}
