/* tpmsniff native data-channel relay: the API Python calls through cffi (build.py). */
#ifndef TPMSNIFF_RELAY_H
#define TPMSNIFF_RELAY_H
#include <stddef.h>
#include <stdint.h>

#define TN_NONE 0
#define TN_RAW 1
#define TN_MSSIM 2
#define TN_UNFRAMED 3

typedef struct tn_relay tn_relay;

typedef struct {
    uint8_t *data;     /* length-prefixed records (pipeline/records.py) */
    size_t len;
    uint32_t frames;   /* event records in data */
    uint64_t *closed;  /* ids of the connections closed in data */
    size_t nclosed;
} tn_batch;

size_t tn_next_request(const uint8_t *b, size_t len, size_t max, int *kind, int *locality,
                       char *note, size_t notecap);
size_t tn_next_response(const uint8_t *b, size_t len, size_t max, int expect, int *kind,
                        char *note, size_t notecap);
tn_relay *tn_new(const uint8_t *codes);
int tn_notefd(tn_relay *r);
int tn_add(tn_relay *r, int cfd, int ufd, uint64_t conn, size_t max_message,
           const uint8_t *early, size_t early_len);
void tn_pause(tn_relay *r, int paused);
void tn_drain(tn_relay *r);
int tn_busy(tn_relay *r);
int tn_close_conn(tn_relay *r, uint64_t conn);
int tn_active(tn_relay *r);
uint64_t tn_lost(tn_relay *r);
void tn_close_all(tn_relay *r);
void tn_stop(tn_relay *r);
int tn_take(tn_relay *r, tn_batch *b);
void tn_batch_free(tn_batch *b);
void tn_free(tn_relay *r);
#endif
