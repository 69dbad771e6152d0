/*
 * mdt-workload - the synthetic guest workload of mdevtest.
 *
 * Runs as the last step of the lab guest's init. It speaks a line protocol on the serial console
 * (ttyS0), draws numbered, checkable frames on the display (KMS on /dev/dri/card0, else
 * /dev/fb0), and answers commands on a second serial port (ttyS1), so that a test can tell from
 * outside the guest that it kept running, without gaps and without losing memory contents,
 * across a live migration.
 * The protocols are described in README.md beside this file; mdevtest/workloads/synthetic.py
 * parses them and must stay in step with the frame layout (FRAME LAYOUT), the UDP datagram (UDP
 * HEARTBEAT) and the disk pattern (DISK PATTERN) below.
 *
 * Structure: each activity is a task with a setup() run in this process before MDT-READY and a
 * run() loop in a child process of its own, so a slow task (drawing under TCG) never delays a
 * timely one (the heartbeats). Tasks that the control channel inspects or steers (RAM dirtier,
 * DMA reader, display) share one MAP_SHARED control block and their data regions are MAP_SHARED,
 * so the control process sees the very memory the other processes write.
 *
 * Options come from /proc/cmdline as mdt.<key>=<value>, then from argv as <key>=<value>.
 * `mdt-workload --render N WxH` writes frame N as a binary PPM to stdout and exits;
 * `mdt-workload --disk-block N` writes block N of the DMA pattern disk to stdout (both used by
 * the framework's tests to check its Python side against this one).
 *
 * C99 + Linux uapi headers, no other dependency; built with `gcc -static -O2`.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <linux/fb.h>
#include <linux/fs.h>
#include <linux/kd.h>

#define MDT_PROTOCOL_VERSION 2

/* ------------------------------------------------------------------------------------------ */
/* Options                                                                                     */

#define STR_OPT_LEN 64

struct config {
    long hb_ms;           /* serial heartbeat period in ms; 0 = no heartbeat */
    long fps;             /* frames per second; 0 = no drawing */
    long fb_wait_ms;      /* how long to wait for the framebuffer device to appear */
    long mode_w, mode_h;  /* drm: display mode to use; 0 = the output's preferred one */
    long udp_us;          /* UDP heartbeat period in microseconds */
    long dirty_mib;       /* RAM dirtier region in MiB; 0 = off */
    long dirty_pps;       /* pages the dirtier rewrites per second; 0 = as fast as it can */
    long vram_kib;        /* device-memory pattern in KiB; 0 = off */
    long dma_slots;       /* 4 KiB slots the DMA reader fills from the disk; 0 = off */
    long dma_rps;         /* DMA reads per second; 0 = as fast as it can */
    long bg_nice;         /* niceness of the RAM dirtier and the DMA reader (19: background) */
    long pause_ms;        /* how long a check waits for a worker to stop at its pause point */
    char display[STR_OPT_LEN]; /* "auto" (drm, else fbdev), "drm" or "fbdev" */
    char drm[STR_OPT_LEN];     /* DRM device */
    char fb[STR_OPT_LEN];      /* framebuffer device */
    char console[STR_OPT_LEN]; /* where console protocol lines go */
    char ctl[STR_OPT_LEN];     /* control channel device; "none" = off */
    char udp[STR_OPT_LEN];     /* UDP heartbeat destination a.b.c.d:port; empty = off */
    char dma_dev[STR_OPT_LEN]; /* the pattern disk */
};

static struct config cfg = {
    .hb_ms = 20,
    .fps = 10,
    .fb_wait_ms = 3000,
    .udp_us = 1000,
    .dirty_mib = 16,
    .dirty_pps = 4096,
    .vram_kib = 2048,
    .dma_slots = 256,
    .dma_rps = 1000,
    .bg_nice = 19,
    .pause_ms = 5000,
    .display = "auto",
    .drm = "/dev/dri/card0",
    .fb = "/dev/fb0",
    .console = "/dev/ttyS0",
    .ctl = "/dev/ttyS1",
    .udp = "",
    .dma_dev = "/dev/vda",
};

struct option_def {
    const char *key;
    long *num; /* numeric option: bounds below */
    long min, max;
    char *str; /* string option: buffer of STR_OPT_LEN */
};

static const struct option_def options[] = {
    {"hb_ms", &cfg.hb_ms, 0, 60000, NULL},
    {"fps", &cfg.fps, 0, 120, NULL},
    {"fb_wait_ms", &cfg.fb_wait_ms, 0, 60000, NULL},
    {"udp_us", &cfg.udp_us, 100, 10000000, NULL},
    {"dirty_mib", &cfg.dirty_mib, 0, 1024, NULL},
    {"dirty_pps", &cfg.dirty_pps, 0, 10000000, NULL},
    {"vram_kib", &cfg.vram_kib, 0, 65536, NULL},
    {"dma_slots", &cfg.dma_slots, 0, 65536, NULL},
    {"dma_rps", &cfg.dma_rps, 0, 1000000, NULL},
    {"bg_nice", &cfg.bg_nice, 0, 19, NULL},
    {"pause_ms", &cfg.pause_ms, 100, 600000, NULL},
    {"display", NULL, 0, 0, cfg.display},
    {"drm", NULL, 0, 0, cfg.drm},
    {"fb", NULL, 0, 0, cfg.fb},
    {"console", NULL, 0, 0, cfg.console},
    {"ctl", NULL, 0, 0, cfg.ctl},
    {"udp", NULL, 0, 0, cfg.udp},
    {"dma_dev", NULL, 0, 0, cfg.dma_dev},
};

/* mdt.* keys that belong to the init script; accepted here without a warning. */
static const char *const init_keys[] = {"ip", "gw", "net", "loglevel", "shell", NULL};

/* ------------------------------------------------------------------------------------------ */
/* Output: every protocol line is written with one write() so lines never interleave.         */

#define LINE_MAX_LEN 1024

static int out_fd = STDOUT_FILENO; /* the console (ttyS0) */
static int ctl_fd = -1;            /* the control channel (ttyS1) */

static void vemit(int fd, const char *fmt, va_list ap)
{
    char line[LINE_MAX_LEN];
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof line - 2)
        n = (int)sizeof line - 2;
    line[n++] = '\n';
    const char *p = line;
    while (n > 0) {
        ssize_t w = write(fd, p, (size_t)n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        p += w;
        n -= (int)w;
    }
}

static void emit(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void emit(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vemit(out_fd, fmt, ap);
    va_end(ap);
}

static volatile sig_atomic_t stop_requested;

static void on_stop_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Sleep until the CLOCK_MONOTONIC instant t (ns); returns early only when asked to stop. */
static void sleep_until(uint64_t t)
{
    struct timespec ts = {(time_t)(t / 1000000000ull), (long)(t % 1000000000ull)};
    while (!stop_requested && clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

/* The next deadline of a periodic loop: one period on, but when more than a period behind (the
 * guest was starved or paused) skip the missed slots instead of catching up in a burst.
 * Returns the number of slots skipped. */
static uint64_t next_slot(uint64_t *next, uint64_t period, uint64_t now)
{
    *next += period;
    if (now <= *next + period)
        return 0;
    uint64_t missed = (now - *next) / period;
    *next += missed * period;
    return missed;
}

static int set_option(const char *key, const char *val)
{
    if (strcmp(key, "mode") == 0) { /* WxH */
        long w, h;
        char tail;
        if (sscanf(val, "%ldx%ld%c", &w, &h, &tail) != 2 || w < 64 || h < 17 || w > 8192 ||
            h > 8192) {
            emit("MDT-WARN bad-option key=mode value=%s", val);
            return -1;
        }
        cfg.mode_w = w;
        cfg.mode_h = h;
        return 0;
    }
    for (size_t i = 0; i < sizeof options / sizeof options[0]; i++) {
        const struct option_def *o = &options[i];
        if (strcmp(o->key, key) != 0)
            continue;
        if (o->str) {
            if (strlen(val) >= STR_OPT_LEN || val[0] == '\0') {
                emit("MDT-WARN bad-option key=%s", key);
                return -1;
            }
            strcpy(o->str, val);
            return 0;
        }
        char *end;
        errno = 0;
        long v = strtol(val, &end, 10);
        if (errno || end == val || *end != '\0' || v < o->min || v > o->max) {
            emit("MDT-WARN bad-option key=%s value=%s min=%ld max=%ld", key, val, o->min, o->max);
            return -1;
        }
        *o->num = v;
        return 0;
    }
    for (const char *const *k = init_keys; *k; k++)
        if (strcmp(*k, key) == 0)
            return 0;
    emit("MDT-WARN unknown-option key=%s", key);
    return -1;
}

/* Applies one "key=value" token; prefix is the part to strip ("mdt." or ""). */
static void apply_token(char *tok, const char *prefix)
{
    size_t plen = strlen(prefix);
    if (strncmp(tok, prefix, plen) != 0)
        return;
    tok += plen;
    char *eq = strchr(tok, '=');
    if (!eq) {
        emit("MDT-WARN bad-option key=%s", tok);
        return;
    }
    *eq = '\0';
    set_option(tok, eq + 1);
}

static void load_cmdline(void)
{
    char buf[4096];
    int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return;
    buf[n] = '\0';
    for (char *save = NULL, *tok = strtok_r(buf, " \t\n", &save); tok;
         tok = strtok_r(NULL, " \t\n", &save))
        apply_token(tok, "mdt.");
}

/* ------------------------------------------------------------------------------------------ */
/* Shared state: what the control process reads and steers in the other tasks' processes.    */
/* Every field is accessed with the __atomic builtins (the processes run concurrently).       */

#define LOAD(p) __atomic_load_n((p), __ATOMIC_SEQ_CST)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_SEQ_CST)
#define ADD(p, v) __atomic_add_fetch((p), (v), __ATOMIC_RELAXED)

/* A worker stops at its next pause point while req is set and says so in ack. */
struct pauser {
    int req, ack;
};

static struct shared {
    struct pauser ram_pause;
    int ram_skip_req;       /* FAULT skip-page: 1 until the writer skipped a page */
    int ram_clear_req;      /* FAULT clear: 1 until the writer rewrote the skipped pages */
    int64_t ram_skipped;    /* the page skipped last (-1: none) */
    uint64_t ram_skipped_gen;
    uint64_t ram_writes;
    int ram_poisoned;

    struct pauser dma_pause;
    int dma_skip_req, dma_clear_req;
    int64_t dma_skipped_slot;
    int64_t dma_skipped_block;
    uint64_t dma_reads, dma_errors;
    int dma_last_errno;
    int dma_poisoned;

    int pixel_on;           /* FAULT pixel: corrupt (pixel_x, pixel_y) in every frame drawn */
    unsigned pixel_x, pixel_y;
    int freeze;             /* FAULT freeze: stop showing new frames */
    uint32_t frame_shown;

    uint64_t udp_sent, udp_errors, udp_stalls;
} *shm;

/* In a worker loop: hold still while the control process asks for it. */
static void pause_point(struct pauser *p)
{
    if (!LOAD(&p->req))
        return;
    STORE(&p->ack, 1);
    while (LOAD(&p->req) && !stop_requested)
        usleep(500);
    STORE(&p->ack, 0);
}

/* Waits until *flag == want; returns 0, or -1 after timeout_ms. */
static int await_value(const int *flag, int want, unsigned timeout_ms)
{
    uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000ull;
    while (LOAD(flag) != want) {
        if (now_ns() > deadline)
            return -1;
        usleep(500);
    }
    return 0;
}

/* In the control process: stop a worker at its pause point; -1 when it does not answer. */
static int pause_begin(struct pauser *p)
{
    STORE(&p->req, 1);
    if (await_value(&p->ack, 1, (unsigned)cfg.pause_ms) == 0)
        return 0;
    STORE(&p->req, 0);
    return -1;
}

static void pause_end(struct pauser *p)
{
    STORE(&p->req, 0);
}

static void *map_shared(size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_POPULATE,
                   -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

/* ------------------------------------------------------------------------------------------ */
/* Checkable patterns                                                                          */

/* splitmix64's finaliser: every pattern word below is mix64 of its coordinates. */
static inline uint64_t mix64(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static inline uint64_t xorshift(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static uint32_t crc32_ieee(const uint8_t *p, size_t len)
{
    uint32_t crc = 0xFFFFFFFFu;
    while (len--) {
        crc ^= *p++;
        for (int i = 0; i < 8; i++)
            crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
    }
    return ~crc;
}

/* DISK PATTERN (mirrored by mdevtest/workloads/synthetic.py:pattern_block)
 * Block b (4096 bytes) of the pattern disk is 512 little-endian 64-bit words: word 0 is
 * "MDTB" followed by b as a little-endian u32; word k (1..511) is mix64(b << 9 | k). */
#define BLOCK 4096u
#define WORDS_PER_BLOCK (BLOCK / 8u)
#define DISK_MAGIC 0x4254444Dull /* "MDTB" read as a little-endian u32 */

static inline uint64_t disk_word(uint64_t block, unsigned k)
{
    return k ? mix64(block << 9 | k) : DISK_MAGIC | (uint64_t)(uint32_t)block << 32;
}

/* ------------------------------------------------------------------------------------------ */
/* FRAME LAYOUT (mirrored by mdevtest/workloads/synthetic.py:render_expected_frame)           */
/*                                                                                            */
/* Frame n (n >= 1, 32 bit) is a pure function of (n, x, y) in 8-bit RGB:                    */
/*  - rows 0..15 (the header): 64 cells of width W/64; cell c is white (255,255,255) when bit */
/*    63-c of the 64-bit word  0xB2 << 56 | n << 24 | crc16(n) << 8 | 0x4D  is 1, black      */
/*    otherwise; pixels right of the 64th cell are black. crc16 is CRC-16/CCITT-FALSE (poly   */
/*    0x1021, init 0xFFFF) of n as 4 big-endian bytes.                                        */
/*  - rows 16..H-1 (the body): R = (x + 2n) & 255, G = (y + n) & 255, B = ((x ^ y) + 3n) & 255 */

#define HDR_ROWS 16
#define HDR_CELLS 64
#define HDR_SYNC 0xB2u
#define HDR_END 0x4Du

static uint16_t crc16_ccitt(const uint8_t *p, size_t len)
{
    uint16_t crc = 0xFFFF;
    while (len--) {
        crc ^= (uint16_t)(*p++ << 8);
        for (int i = 0; i < 8; i++)
            crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
    return crc;
}

static uint64_t header_word(uint32_t n)
{
    uint8_t be[4] = {(uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n};
    return (uint64_t)HDR_SYNC << 56 | (uint64_t)n << 24 | (uint64_t)crc16_ccitt(be, 4) << 8 |
           HDR_END;
}

/* How 8-bit RGB becomes a pixel in memory: the framebuffer's bitfields. */
struct pixfmt {
    unsigned bytes; /* 2, 3 or 4 */
    unsigned r_off, r_len, g_off, g_len, b_off, b_len;
};

static inline uint32_t pack(const struct pixfmt *f, uint32_t r, uint32_t g, uint32_t b)
{
    return (r >> (8 - f->r_len)) << f->r_off | (g >> (8 - f->g_len)) << f->g_off |
           (b >> (8 - f->b_len)) << f->b_off;
}

static inline void put(uint8_t *p, unsigned bytes, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    if (bytes > 2)
        p[2] = (uint8_t)(v >> 16);
    if (bytes > 3)
        p[3] = (uint8_t)(v >> 24);
}

static void draw_frame(uint8_t *base, unsigned w, unsigned h, unsigned stride,
                       const struct pixfmt *f, uint32_t n)
{
    uint64_t word = header_word(n);
    unsigned cw = w / HDR_CELLS;
    uint32_t white = pack(f, 255, 255, 255), black = pack(f, 0, 0, 0);
    int fast = f->bytes == 4 && f->r_off == 16 && f->g_off == 8 && f->b_off == 0 &&
               f->r_len == 8 && f->g_len == 8 && f->b_len == 8;

    for (unsigned y = 0; y < h; y++) {
        uint8_t *row = base + (size_t)y * stride;
        if (y < HDR_ROWS) {
            for (unsigned x = 0; x < w; x++) {
                unsigned c = cw ? x / cw : HDR_CELLS;
                uint32_t v = (c < HDR_CELLS && (word >> (63 - c)) & 1) ? white : black;
                put(row + (size_t)x * f->bytes, f->bytes, v);
            }
            continue;
        }
        uint32_t g = (y + n) & 255;
        if (fast) {
            uint32_t *p = (uint32_t *)(void *)row;
            for (unsigned x = 0; x < w; x++)
                p[x] = ((x + 2 * n) & 255) << 16 | g << 8 | (((x ^ y) + 3 * n) & 255);
        } else {
            for (unsigned x = 0; x < w; x++)
                put(row + (size_t)x * f->bytes, f->bytes,
                    pack(f, (x + 2 * n) & 255, g, ((x ^ y) + 3 * n) & 255));
        }
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Task: serial heartbeat                                                                      */

static void realtime(void)
{
    struct sched_param sp = {.sched_priority = 10};
    sched_setscheduler(0, SCHED_FIFO, &sp); /* best effort: be on time while frames draw */
}

static int hb_setup(char *ready, size_t len)
{
    snprintf(ready, len, "hb_ms=%ld", cfg.hb_ms);
    return cfg.hb_ms > 0 ? 0 : -1;
}

static void hb_run(void)
{
    realtime();
    uint64_t period = (uint64_t)cfg.hb_ms * 1000000ull;
    uint64_t next = now_ns();
    for (uint64_t seq = 1; !stop_requested; seq++) {
        sleep_until(next);
        if (stop_requested)
            break;
        uint64_t t = now_ns();
        emit("MDT-HB seq=%llu t=%llu", (unsigned long long)seq, (unsigned long long)t);
        next_slot(&next, period, t);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Task: UDP heartbeat to the controller                                                       */
/*                                                                                             */
/* UDP HEARTBEAT (mirrored by mdevtest/workloads/synthetic.py:UDP_FORMAT): every udp_us, one   */
/* 24-byte datagram, big-endian: "MDTU", u16 version (1), u16 flags, u64 seq (1, 2, 3, ... no  */
/* gaps), u64 CLOCK_MONOTONIC ns at sending. Flag bit 0: slots were skipped just before this   */
/* one (the guest was starved); seq stays consecutive, so a missing seq is a lost datagram.   */

#define UDP_VERSION 1
#define UDP_FLAG_SKIPPED 1u

static struct sockaddr_in udp_dest;
static int udp_fd = -1;

static int udp_setup(char *ready, size_t len)
{
    if (!cfg.udp[0]) {
        snprintf(ready, len, "udp=off");
        return -1;
    }
    char host[STR_OPT_LEN];
    strcpy(host, cfg.udp);
    char *colon = strrchr(host, ':');
    long port = colon ? strtol(colon + 1, NULL, 10) : 0;
    if (colon)
        *colon = '\0';
    memset(&udp_dest, 0, sizeof udp_dest);
    udp_dest.sin_family = AF_INET;
    udp_dest.sin_port = htons((uint16_t)port);
    if (port < 1 || port > 65535 || inet_pton(AF_INET, host, &udp_dest.sin_addr) != 1) {
        snprintf(ready, len, "udp=off udp_reason=bad-address");
        return -1;
    }
    udp_fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (udp_fd < 0) {
        snprintf(ready, len, "udp=off udp_reason=socket udp_errno=%d", errno);
        return -1;
    }
    snprintf(ready, len, "udp=%s udp_us=%ld", cfg.udp, cfg.udp_us);
    return 0;
}

static void udp_run(void)
{
    realtime();
    uint64_t period = (uint64_t)cfg.udp_us * 1000ull;
    uint64_t next = now_ns(), skipped = 0;
    for (uint64_t seq = 1; !stop_requested; seq++) {
        sleep_until(next);
        if (stop_requested)
            break;
        uint64_t t = now_ns();
        uint8_t pkt[24];
        uint16_t version = htons(UDP_VERSION), flags = htons(skipped ? UDP_FLAG_SKIPPED : 0);
        uint64_t seq_be = htobe64(seq), t_be = htobe64(t);
        memcpy(pkt, "MDTU", 4);
        memcpy(pkt + 4, &version, 2);
        memcpy(pkt + 6, &flags, 2);
        memcpy(pkt + 8, &seq_be, 8);
        memcpy(pkt + 16, &t_be, 8);
        if (sendto(udp_fd, pkt, sizeof pkt, 0, (const struct sockaddr *)&udp_dest,
                   sizeof udp_dest) == (ssize_t)sizeof pkt)
            ADD(&shm->udp_sent, 1);
        else
            ADD(&shm->udp_errors, 1);
        skipped = next_slot(&next, period, t);
        if (skipped)
            ADD(&shm->udp_stalls, 1);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Task: numbered frames on the display                                                        */
/*                                                                                             */
/* Preferred: KMS on /dev/dri/card0 with two dumb buffers; a frame is drawn into the hidden    */
/* one, then shown with a blocking SETCRTC, so the screen never holds a half-drawn frame.      */
/* Fallback: /dev/fb0, drawn off-screen and copied in one go (buffers=1: a capture may catch   */
/* the copy; DRM fbdev emulation ignores panning, so two fbdev pages do not help).             */

/* The few DRM uapi definitions we need (include/uapi/drm/drm.h, drm_mode.h: a stable ABI),
 * spelled out so that building needs no libdrm headers. */
struct mdt_drm_mode_card_res {
    uint64_t fb_id_ptr, crtc_id_ptr, connector_id_ptr, encoder_id_ptr;
    uint32_t count_fbs, count_crtcs, count_connectors, count_encoders;
    uint32_t min_width, max_width, min_height, max_height;
};
struct mdt_drm_mode_modeinfo {
    uint32_t clock;
    uint16_t hdisplay, hsync_start, hsync_end, htotal, hskew;
    uint16_t vdisplay, vsync_start, vsync_end, vtotal, vscan;
    uint32_t vrefresh, flags, type;
    char name[32];
};
struct mdt_drm_mode_crtc {
    uint64_t set_connectors_ptr;
    uint32_t count_connectors, crtc_id, fb_id, x, y, gamma_size, mode_valid;
    struct mdt_drm_mode_modeinfo mode;
};
struct mdt_drm_mode_get_encoder {
    uint32_t encoder_id, encoder_type, crtc_id, possible_crtcs, possible_clones;
};
struct mdt_drm_mode_get_connector {
    uint64_t encoders_ptr, modes_ptr, props_ptr, prop_values_ptr;
    uint32_t count_modes, count_props, count_encoders, encoder_id, connector_id;
    uint32_t connector_type, connector_type_id, connection, mm_width, mm_height, subpixel, pad;
};
struct mdt_drm_mode_fb_cmd {
    uint32_t fb_id, width, height, pitch, bpp, depth, handle;
};
struct mdt_drm_mode_create_dumb {
    uint32_t height, width, bpp, flags, handle, pitch;
    uint64_t size;
};
struct mdt_drm_mode_map_dumb {
    uint32_t handle, pad;
    uint64_t offset;
};
#define MDT_DRM_IOWR(nr, type) _IOWR('d', nr, type)
#define MDT_DRM_IOCTL_MODE_GETRESOURCES MDT_DRM_IOWR(0xA0, struct mdt_drm_mode_card_res)
#define MDT_DRM_IOCTL_MODE_GETCRTC MDT_DRM_IOWR(0xA1, struct mdt_drm_mode_crtc)
#define MDT_DRM_IOCTL_MODE_SETCRTC MDT_DRM_IOWR(0xA2, struct mdt_drm_mode_crtc)
#define MDT_DRM_IOCTL_MODE_GETENCODER MDT_DRM_IOWR(0xA6, struct mdt_drm_mode_get_encoder)
#define MDT_DRM_IOCTL_MODE_GETCONNECTOR MDT_DRM_IOWR(0xA7, struct mdt_drm_mode_get_connector)
#define MDT_DRM_IOCTL_MODE_ADDFB MDT_DRM_IOWR(0xAE, struct mdt_drm_mode_fb_cmd)
#define MDT_DRM_IOCTL_MODE_CREATE_DUMB MDT_DRM_IOWR(0xB2, struct mdt_drm_mode_create_dumb)
#define MDT_DRM_IOCTL_MODE_MAP_DUMB MDT_DRM_IOWR(0xB3, struct mdt_drm_mode_map_dumb)
#define MDT_DRM_MODE_CONNECTED 1
#define MDT_DRM_MODE_TYPE_PREFERRED (1 << 3)
/* C99 static checks of the layouts above (x86_64) */
typedef char mdt_check_res[sizeof(struct mdt_drm_mode_card_res) == 64 ? 1 : -1];
typedef char mdt_check_modeinfo[sizeof(struct mdt_drm_mode_modeinfo) == 68 ? 1 : -1];
typedef char mdt_check_crtc[sizeof(struct mdt_drm_mode_crtc) == 104 ? 1 : -1];
typedef char mdt_check_conn[sizeof(struct mdt_drm_mode_get_connector) == 80 ? 1 : -1];
typedef char mdt_check_dumb[sizeof(struct mdt_drm_mode_create_dumb) == 32 ? 1 : -1];

static struct display {
    const char *api; /* "drm" or "fbdev" */
    int fd, tty_fd;
    unsigned w, h, stride, bpp, buffers;
    struct pixfmt fmt;
    uint8_t *page[2];  /* drm: the two scanout buffers; fbdev: page[0] is the mapping */
    uint8_t *shadow;   /* fbdev: frames are drawn here, then copied in one go */
    uint32_t fb_id[2], crtc_id, connector_id;
    struct mdt_drm_mode_modeinfo mode;
} disp = {.fd = -1, .tty_fd = -1};

static int wait_open(const char *path, uint64_t deadline)
{
    int fd;
    while ((fd = open(path, O_RDWR | O_CLOEXEC)) < 0) {
        if (now_ns() >= deadline || (errno != ENOENT && errno != ENODEV && errno != ENXIO))
            return -1;
        usleep(50000);
    }
    return fd;
}

static int ioctl_retry(int fd, unsigned long req, void *arg)
{
    int r;
    while ((r = ioctl(fd, req, arg)) < 0 && (errno == EINTR || errno == EAGAIN))
        ;
    return r;
}

/* KMS setup; returns NULL or why it could not be used (then the fbdev path is tried). */
static const char *drm_setup(uint64_t deadline)
{
    int fd = wait_open(cfg.drm, deadline);
    if (fd < 0)
        return errno == ENOENT ? "no-drm-device" : "drm-open-failed";
    disp.fd = fd;
    struct mdt_drm_mode_card_res res;
    memset(&res, 0, sizeof res);
    if (ioctl_retry(fd, MDT_DRM_IOCTL_MODE_GETRESOURCES, &res) < 0 || !res.count_crtcs ||
        !res.count_connectors || res.count_crtcs > 16 || res.count_connectors > 16)
        return "drm-resources";
    uint32_t crtcs[16], connectors[16];
    res.count_fbs = res.count_encoders = 0;
    res.fb_id_ptr = res.encoder_id_ptr = 0;
    res.crtc_id_ptr = (uint64_t)(uintptr_t)crtcs;
    res.connector_id_ptr = (uint64_t)(uintptr_t)connectors;
    if (ioctl_retry(fd, MDT_DRM_IOCTL_MODE_GETRESOURCES, &res) < 0)
        return "drm-resources";

    for (uint32_t c = 0; c < res.count_connectors && !disp.connector_id; c++) {
        struct mdt_drm_mode_get_connector conn;
        memset(&conn, 0, sizeof conn);
        conn.connector_id = connectors[c];
        if (ioctl_retry(fd, MDT_DRM_IOCTL_MODE_GETCONNECTOR, &conn) < 0 ||
            conn.connection != MDT_DRM_MODE_CONNECTED || !conn.count_modes)
            continue;
        struct mdt_drm_mode_modeinfo *modes = calloc(conn.count_modes, sizeof *modes);
        uint32_t *encoders = calloc(conn.count_encoders + 1, sizeof *encoders);
        if (!modes || !encoders)
            return "no-memory";
        conn.count_props = 0;
        conn.props_ptr = conn.prop_values_ptr = 0;
        conn.modes_ptr = (uint64_t)(uintptr_t)modes;
        conn.encoders_ptr = (uint64_t)(uintptr_t)encoders;
        if (ioctl_retry(fd, MDT_DRM_IOCTL_MODE_GETCONNECTOR, &conn) < 0)
            return "drm-connector";
        int pick = -1;
        for (uint32_t m = 0; m < conn.count_modes; m++) {
            int wanted = cfg.mode_w ? modes[m].hdisplay == cfg.mode_w &&
                                          modes[m].vdisplay == cfg.mode_h
                                    : (modes[m].type & MDT_DRM_MODE_TYPE_PREFERRED) != 0;
            if (wanted) {
                pick = (int)m;
                break;
            }
        }
        if (pick < 0 && cfg.mode_w)
            return "no-such-mode";
        disp.mode = modes[pick < 0 ? 0 : pick];
        uint32_t crtc = 0;
        struct mdt_drm_mode_get_encoder enc;
        memset(&enc, 0, sizeof enc);
        enc.encoder_id = conn.encoder_id ? conn.encoder_id : encoders[0];
        if (ioctl_retry(fd, MDT_DRM_IOCTL_MODE_GETENCODER, &enc) == 0) {
            crtc = enc.crtc_id;
            for (uint32_t i = 0; !crtc && i < res.count_crtcs; i++)
                if (enc.possible_crtcs & (1u << i))
                    crtc = crtcs[i];
        }
        free(modes);
        free(encoders);
        if (crtc) {
            disp.crtc_id = crtc;
            disp.connector_id = connectors[c];
        }
    }
    if (!disp.connector_id)
        return "no-connected-output";

    disp.w = disp.mode.hdisplay;
    disp.h = disp.mode.vdisplay;
    disp.bpp = 32;
    disp.fmt = (struct pixfmt){4, 16, 8, 8, 8, 0, 8}; /* XRGB8888 */
    for (int i = 0; i < 2; i++) {
        struct mdt_drm_mode_create_dumb dumb = {.height = disp.h, .width = disp.w, .bpp = 32};
        if (ioctl_retry(fd, MDT_DRM_IOCTL_MODE_CREATE_DUMB, &dumb) < 0)
            return "drm-create-buffer";
        disp.stride = dumb.pitch;
        struct mdt_drm_mode_fb_cmd fb = {.width = disp.w, .height = disp.h, .pitch = dumb.pitch,
                                         .bpp = 32, .depth = 24, .handle = dumb.handle};
        if (ioctl_retry(fd, MDT_DRM_IOCTL_MODE_ADDFB, &fb) < 0)
            return "drm-add-framebuffer";
        disp.fb_id[i] = fb.fb_id;
        struct mdt_drm_mode_map_dumb map = {.handle = dumb.handle};
        if (ioctl_retry(fd, MDT_DRM_IOCTL_MODE_MAP_DUMB, &map) < 0)
            return "drm-map-buffer";
        void *mem = mmap(NULL, (size_t)dumb.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd,
                         (off_t)map.offset);
        if (mem == MAP_FAILED)
            return "drm-mmap";
        disp.page[i] = mem;
    }
    disp.api = "drm";
    disp.buffers = 2;
    return NULL;
}

/* Puts framebuffer fb_id on screen; blocking, so it is shown when this returns. */
static int drm_set_fb(uint32_t fb_id)
{
    struct mdt_drm_mode_crtc crtc;
    memset(&crtc, 0, sizeof crtc);
    crtc.crtc_id = disp.crtc_id;
    crtc.fb_id = fb_id;
    crtc.set_connectors_ptr = (uint64_t)(uintptr_t)&disp.connector_id;
    crtc.count_connectors = 1;
    crtc.mode = disp.mode;
    crtc.mode_valid = 1;
    return ioctl_retry(disp.fd, MDT_DRM_IOCTL_MODE_SETCRTC, &crtc);
}

/* Makes scanout buffer i the one on screen. */
static int drm_show(unsigned i)
{
    return drm_set_fb(disp.fb_id[i]);
}

static const char *fbdev_setup(uint64_t deadline)
{
    int fd = wait_open(cfg.fb, deadline);
    if (fd < 0)
        return errno == ENOENT ? "no-device" : "open-failed";
    disp.fd = fd;
    struct fb_fix_screeninfo fix;
    struct fb_var_screeninfo v;
    if (ioctl(fd, FBIOGET_FSCREENINFO, &fix) < 0 || ioctl(fd, FBIOGET_VSCREENINFO, &v) < 0)
        return "ioctl-failed";
    disp.w = v.xres;
    disp.h = v.yres;
    disp.bpp = v.bits_per_pixel;
    disp.stride = fix.line_length;
    if (fix.type != FB_TYPE_PACKED_PIXELS || fix.visual != FB_VISUAL_TRUECOLOR ||
        (disp.bpp != 16 && disp.bpp != 24 && disp.bpp != 32) || v.red.length > 8 ||
        v.green.length > 8 || v.blue.length > 8 || v.red.length == 0)
        return "unsupported-format";
    disp.fmt = (struct pixfmt){disp.bpp / 8, v.red.offset,  v.red.length, v.green.offset,
                               v.green.length, v.blue.offset, v.blue.length};
    size_t page = (size_t)disp.h * disp.stride;
    if (fix.smem_len < page)
        return "too-small";
    if (v.xoffset || v.yoffset) {
        v.xoffset = v.yoffset = 0;
        ioctl(fd, FBIOPAN_DISPLAY, &v);
    }
    void *mem = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (mem == MAP_FAILED)
        return "mmap-failed";
    disp.page[0] = mem;
    if (!(disp.shadow = malloc(page)))
        return "no-memory";
    ioctl(fd, FBIOBLANK, FB_BLANK_UNBLANK);
    disp.api = "fbdev";
    disp.buffers = 1;
    return NULL;
}

static int display_setup(char *ready, size_t len)
{
    if (cfg.fps <= 0) {
        snprintf(ready, len, "fb=none reason=disabled");
        return -1;
    }
    uint64_t deadline = now_ns() + (uint64_t)cfg.fb_wait_ms * 1000000ull;
    const char *why = NULL;
    if (strcmp(cfg.display, "fbdev") != 0) {
        why = drm_setup(deadline);
        if (why && strcmp(cfg.display, "drm") != 0) {
            emit("MDT-WARN display=drm reason=%s errno=%d fallback=fbdev", why, errno);
            if (disp.fd >= 0)
                close(disp.fd);
            memset(&disp, 0, sizeof disp);
            disp.fd = disp.tty_fd = -1;
            why = fbdev_setup(deadline);
        }
    } else {
        why = fbdev_setup(deadline);
    }
    if (!why && (disp.w < HDR_CELLS || disp.h <= HDR_ROWS))
        why = "too-small";
    if (why) {
        snprintf(ready, len, "fb=none reason=%s errno=%d", why, errno);
        return -1;
    }
    /* Keep the framebuffer console (text, cursor blink) off our pixels. */
    disp.tty_fd = open("/dev/tty0", O_RDWR | O_CLOEXEC);
    if (disp.tty_fd < 0 || ioctl(disp.tty_fd, KDSETMODE, KD_GRAPHICS) < 0)
        emit("MDT-WARN console-graphics-mode errno=%d", errno);
    snprintf(ready, len, "fb=%ux%ux%u stride=%u buffers=%u api=%s fps=%ld", disp.w, disp.h,
             disp.bpp, disp.stride, disp.buffers, disp.api, cfg.fps);
    return 0;
}

/* Draws frame n where it is shown next: the hidden buffer (drm), or the fbdev page. */
static void display_draw(uint32_t n)
{
    uint8_t *base = disp.buffers == 2 ? disp.page[n & 1] : disp.shadow;
    draw_frame(base, disp.w, disp.h, disp.stride, &disp.fmt, n);
    if (LOAD(&shm->pixel_on)) { /* FAULT pixel: invert every channel of one pixel */
        unsigned x = LOAD(&shm->pixel_x), y = LOAD(&shm->pixel_y);
        if (x < disp.w && y < disp.h) {
            uint8_t *p = base + (size_t)y * disp.stride + (size_t)x * disp.fmt.bytes;
            for (unsigned i = 0; i < disp.fmt.bytes; i++)
                p[i] ^= 0xFF;
        }
    }
    if (disp.buffers == 1) {
        memcpy(disp.page[0], disp.shadow, (size_t)disp.h * disp.stride);
        fsync(disp.fd); /* deferred-I/O framebuffers: start copying out now */
    }
}

/* Shows frame n, drawn before by display_draw(n). */
static void display_show(uint32_t n)
{
    if (disp.buffers == 2 && drm_show(n & 1) < 0) {
        emit("MDT-ERROR task=display reason=setcrtc-failed errno=%d", errno);
        exit(1);
    }
}

static void display_run(void)
{
    uint64_t period = 1000000000ull / (uint64_t)cfg.fps;
    unsigned late = 0;
    uint64_t next = now_ns();
    display_draw(1);
    for (uint32_t n = 1; !stop_requested;) {
        sleep_until(next);
        if (stop_requested)
            break;
        if (LOAD(&shm->freeze)) { /* FAULT freeze: the screen keeps frame n-1 */
            next_slot(&next, period, now_ns());
            continue;
        }
        display_show(n);
        STORE(&shm->frame_shown, n);
        uint64_t t = now_ns();
        if (n % (uint32_t)cfg.fps == 0)
            emit("MDT-FRAME n=%u t=%llu late=%u", n, (unsigned long long)t, late);
        display_draw(n + 1); /* ahead of time, into the hidden buffer */
        n++;
        uint64_t drawn = now_ns();
        next += period;
        if (drawn > next + period) { /* cannot keep up: count it, do not burst */
            late++;
            next = drawn;
        }
    }
}

static void display_teardown(void)
{
    if (disp.tty_fd >= 0)
        ioctl(disp.tty_fd, KDSETMODE, KD_TEXT);
}

/* ------------------------------------------------------------------------------------------ */
/* Device memory: a pattern in the display's video memory, off screen                          */
/*                                                                                             */
/* A third dumb buffer, never drawn into by the display task. Dumb buffers of the std-VGA      */
/* (bochs) driver start in system RAM and move into VRAM when first scanned out, so setup     */
/* shows it once (before MDT-READY); it then stays in VRAM (the two frame buffers and the      */
/* fbdev console fit beside it in 16 MiB at 1280x800). Setup finds where it is in the          */
/* device's BAR 0 (needs iomem=relaxed) and VERIFY-VRAM says whether it is still there.        */
/* Word w (u32, byte offset 4w) of the pattern is (u32)(mix64(0x56524D0000000000 ^ 4w) >> 16). */

static struct vram {
    volatile uint32_t *map; /* the buffer, through its DRM mapping */
    size_t bytes;           /* the part holding the pattern */
    const volatile uint8_t *bar;
    size_t bar_len;
    long bar_off; /* where the buffer is in BAR 0; -1 unknown */
    const char *bar_why;
    int fault_on;
    size_t fault_off;
    uint32_t fault_old;
} vram = {.bar_off = -1, .bar_why = "not-looked"};

static inline uint32_t vram_word(size_t off)
{
    return (uint32_t)(mix64(0x56524D0000000000ull ^ off) >> 16);
}

static void vram_locate(void)
{
    const char *card = strrchr(cfg.drm, '/');
    char path[160];
    snprintf(path, sizeof path, "/sys/class/drm/%s/device/resource0", card ? card + 1 : cfg.drm);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        vram.bar_why = "no-bar";
        return;
    }
    void *bar = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (bar == MAP_FAILED) {
        vram.bar_why = errno == EINVAL ? "bar-busy-need-iomem-relaxed" : "bar-mmap-failed";
        return;
    }
    vram.bar = bar;
    vram.bar_len = (size_t)st.st_size;
    uint32_t head[16];
    for (unsigned i = 0; i < 16; i++)
        head[i] = vram.map[i];
    for (size_t off = 0; off + vram.bytes <= vram.bar_len; off += 4096) {
        if (memcmp((const void *)(vram.bar + off), head, sizeof head) != 0)
            continue;
        size_t i = 0;
        for (; i < vram.bytes / 4; i++)
            if (((const volatile uint32_t *)(vram.bar + off))[i] != vram.map[i])
                break;
        if (i == vram.bytes / 4) {
            vram.bar_off = (long)off;
            return;
        }
    }
    vram.bar_why = "not-in-bar";
}

/* Is the buffer in VRAM right now? A word changed through the DRM mapping must show in the BAR. */
static const char *vram_where(char *buf, size_t len)
{
    if (vram.bar_off < 0)
        return "unknown";
    size_t probe = 1; /* word 1: never the FAULT word */
    uint32_t old = vram.map[probe];
    vram.map[probe] = old ^ 0xA5A5A5A5u;
    __sync_synchronize();
    int here = ((const volatile uint32_t *)(vram.bar + vram.bar_off))[probe] == (old ^ 0xA5A5A5A5u);
    vram.map[probe] = old;
    __sync_synchronize();
    if (!here)
        return "moved";
    snprintf(buf, len, "vram@0x%lx", vram.bar_off);
    return buf;
}

static int vram_setup(char *ready, size_t len)
{
    if (cfg.vram_kib <= 0) {
        snprintf(ready, len, "vram_kib=0");
        return -1;
    }
    if (!disp.api || strcmp(disp.api, "drm") != 0) {
        snprintf(ready, len, "vram_kib=0 vram_reason=no-drm");
        return -1;
    }
    /* Mode-sized: a buffer smaller than the mode cannot be scanned out (and so moved into VRAM). */
    struct mdt_drm_mode_create_dumb dumb = {.height = disp.h, .width = disp.w, .bpp = 32};
    if (ioctl_retry(disp.fd, MDT_DRM_IOCTL_MODE_CREATE_DUMB, &dumb) < 0) {
        snprintf(ready, len, "vram_kib=0 vram_reason=create-buffer vram_errno=%d", errno);
        return -1;
    }
    struct mdt_drm_mode_map_dumb map = {.handle = dumb.handle};
    void *mem = MAP_FAILED;
    if (ioctl_retry(disp.fd, MDT_DRM_IOCTL_MODE_MAP_DUMB, &map) == 0)
        mem = mmap(NULL, (size_t)dumb.size, PROT_READ | PROT_WRITE, MAP_SHARED, disp.fd,
                   (off_t)map.offset);
    if (mem == MAP_FAILED) {
        snprintf(ready, len, "vram_kib=0 vram_reason=map-buffer vram_errno=%d", errno);
        return -1;
    }
    vram.map = mem;
    vram.bytes = (size_t)cfg.vram_kib * 1024;
    if (vram.bytes > dumb.size)
        vram.bytes = (size_t)dumb.size & ~(size_t)4095;
    for (size_t i = 0; i < vram.bytes / 4; i++)
        vram.map[i] = vram_word(4 * i);
    struct mdt_drm_mode_fb_cmd fb = {.width = disp.w, .height = disp.h, .pitch = dumb.pitch,
                                     .bpp = 32, .depth = 24, .handle = dumb.handle};
    if (ioctl_retry(disp.fd, MDT_DRM_IOCTL_MODE_ADDFB, &fb) < 0 || drm_set_fb(fb.fb_id) < 0)
        vram.bar_why = "scanout-failed";
    else
        vram_locate();
    char where[48];
    if (vram.bar_off >= 0)
        snprintf(ready, len, "vram_kib=%zu vram_at=%s", vram.bytes / 1024,
                 vram_where(where, sizeof where));
    else
        snprintf(ready, len, "vram_kib=%zu vram_at=unknown vram_reason=%s", vram.bytes / 1024,
                 vram.bar_why);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Task: RAM dirtier                                                                           */
/*                                                                                             */
/* Rewrites random pages of a dirty_mib region, dirty_pps a second. Page i at generation g is */
/* 512 u64 words: w0 = "MDTP" << 32 | i, w1 = g, w2..w510 = mix64(mix64(i << 32 ^ g) + k),     */
/* w511 = a checksum of w0..w510. After each page the writer records g in a separate ledger,   */
/* so a page that misses a migration's last copy (a lost dirty bit) shows an older g than the */
/* ledger, and a torn or corrupted page fails its own checks.                                 */

#define RAM_MAGIC 0x4D445450ull /* "MDTP" */
#define MAX_POISON 16

static struct ram {
    uint64_t *mem;
    uint64_t *ledger; /* generation last written, per page (its own mapping) */
    size_t pages;
    int locked;
} ram;

static inline uint64_t ram_checksum(uint64_t c, uint64_t w)
{
    return (c ^ w) * 0x100000001B3ull;
}

static void ram_fill(size_t i, uint64_t gen)
{
    uint64_t *w = ram.mem + i * WORDS_PER_BLOCK;
    uint64_t seed = mix64((uint64_t)i << 32 ^ gen);
    w[0] = RAM_MAGIC << 32 | (uint32_t)i;
    w[1] = gen;
    uint64_t c = ram_checksum(ram_checksum(0xCBF29CE484222325ull, w[0]), w[1]);
    for (unsigned k = 2; k < WORDS_PER_BLOCK - 1; k++) {
        w[k] = mix64(seed + k);
        c = ram_checksum(c, w[k]);
    }
    w[WORDS_PER_BLOCK - 1] = c;
}

/* NULL when page i is self-consistent and at generation want; else why not. */
static const char *ram_check(size_t i, uint64_t want, uint64_t *found)
{
    const volatile uint64_t *w = ram.mem + i * WORDS_PER_BLOCK;
    uint64_t w0 = w[0], gen = w[1];
    *found = gen;
    if (w0 != (RAM_MAGIC << 32 | (uint32_t)i))
        return "header";
    uint64_t seed = mix64((uint64_t)i << 32 ^ gen);
    uint64_t c = ram_checksum(ram_checksum(0xCBF29CE484222325ull, w0), gen);
    int payload_ok = 1;
    for (unsigned k = 2; k < WORDS_PER_BLOCK - 1; k++) {
        uint64_t v = w[k];
        payload_ok &= v == mix64(seed + k);
        c = ram_checksum(c, v);
    }
    if (!payload_ok)
        return "payload";
    if (c != w[WORDS_PER_BLOCK - 1])
        return "checksum";
    if (gen < want)
        return "stale";
    if (gen > want)
        return "ahead";
    return NULL;
}

static int ram_setup(char *ready, size_t len)
{
    if (cfg.dirty_mib <= 0) {
        snprintf(ready, len, "dirty_mib=0");
        return -1;
    }
    ram.pages = (size_t)cfg.dirty_mib * 256;
    ram.mem = map_shared(ram.pages * BLOCK);
    ram.ledger = map_shared(ram.pages * sizeof *ram.ledger);
    if (!ram.mem || !ram.ledger) {
        snprintf(ready, len, "dirty_mib=0 dirty_reason=no-memory");
        ram.mem = NULL;
        return -1;
    }
    ram.locked = mlock(ram.mem, ram.pages * BLOCK) == 0 &&
                 mlock(ram.ledger, ram.pages * sizeof *ram.ledger) == 0;
    for (size_t i = 0; i < ram.pages; i++) {
        ram_fill(i, 1);
        ram.ledger[i] = 1;
    }
    shm->ram_skipped = -1;
    snprintf(ready, len, "dirty_mib=%ld dirty_pps=%ld mlock=%d", cfg.dirty_mib, cfg.dirty_pps,
             ram.locked);
    return 0;
}

static void ram_run(void)
{
    /* batches of up to 32 pages, each at most ~10 ms apart, so a pause or fault request is
     * seen soon whatever the rate */
    unsigned batch = cfg.dirty_pps >= 3200 || !cfg.dirty_pps ? 32
                                                             : (unsigned)(cfg.dirty_pps / 100 + 1);
    uint64_t period = cfg.dirty_pps ? (uint64_t)batch * 1000000000ull / (uint64_t)cfg.dirty_pps : 0;
    uint64_t rng = now_ns() | 1, next = now_ns();
    size_t poison[MAX_POISON];
    int npoison = 0;
    while (!stop_requested) {
        pause_point(&shm->ram_pause);
        if (LOAD(&shm->ram_clear_req)) { /* FAULT clear: write what was skipped */
            for (int p = 0; p < npoison; p++) {
                uint64_t gen = ram.ledger[poison[p]] + 1;
                ram_fill(poison[p], gen);
                STORE(&ram.ledger[poison[p]], gen);
            }
            npoison = 0;
            STORE(&shm->ram_poisoned, 0);
            STORE(&shm->ram_clear_req, 0);
        }
        for (unsigned b = 0; b < batch; b++) {
            size_t i = (size_t)(xorshift(&rng) % ram.pages);
            int poisoned = 0;
            for (int p = 0; p < npoison; p++)
                poisoned |= poison[p] == i;
            if (poisoned)
                continue; /* stays stale until FAULT clear */
            uint64_t gen = ram.ledger[i] + 1;
            if (LOAD(&shm->ram_skip_req) && npoison < MAX_POISON) {
                /* FAULT skip-page: the ledger moves on, the page does not (a lost write) */
                STORE(&ram.ledger[i], gen);
                poison[npoison++] = i;
                STORE(&shm->ram_poisoned, npoison);
                STORE(&shm->ram_skipped_gen, gen);
                STORE(&shm->ram_skipped, (int64_t)i);
                STORE(&shm->ram_skip_req, 0);
                continue;
            }
            ram_fill(i, gen);
            STORE(&ram.ledger[i], gen);
            ADD(&shm->ram_writes, 1);
        }
        if (period) {
            sleep_until(next);
            next_slot(&next, period, now_ns());
        }
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Task: DMA reader                                                                            */
/*                                                                                             */
/* Reads random 4 KiB blocks of the read-only pattern disk with O_DIRECT into slots of a     */
/* buffer (each slot once in order, then at random), so the virtio-blk device writes guest   */
/* RAM by DMA, dma_rps times a second. A ledger says which block each slot holds once its    */
/* read completed (-1: none yet/unknown).                                                     */

#define SLOT_EMPTY (-1)
#define SLOT_BUSY (-2)

static struct dma {
    int fd;
    uint8_t *buf;
    int64_t *ledger;
    size_t slots;
    uint64_t blocks;
    const char *why; /* why there is none */
} dma = {.fd = -1, .why = "disabled"};

/* Index of the first word of buf that differs from block b, or -1. */
static long block_mismatch(const volatile uint64_t *w, uint64_t b)
{
    for (unsigned k = 0; k < WORDS_PER_BLOCK; k++)
        if (w[k] != disk_word(b, k))
            return (long)k;
    return -1;
}

static int dma_setup(char *ready, size_t len)
{
    if (cfg.dma_slots <= 0) {
        snprintf(ready, len, "dma=none dma_reason=disabled");
        return -1;
    }
    uint64_t deadline = now_ns() + 300000000ull; /* a present disk is there once insmod returned */
    while ((dma.fd = open(cfg.dma_dev, O_RDONLY | O_DIRECT | O_CLOEXEC)) < 0 && errno == ENOENT &&
           now_ns() < deadline)
        usleep(20000);
    uint64_t bytes = 0;
    if (dma.fd < 0) {
        dma.why = errno == ENOENT || errno == ENXIO ? "no-disk" : "open-failed";
    } else if (ioctl(dma.fd, BLKGETSIZE64, &bytes) < 0 || bytes / BLOCK < 2) {
        dma.why = "too-small";
    } else {
        dma.blocks = bytes / BLOCK;
        dma.slots = (size_t)cfg.dma_slots;
        dma.buf = map_shared(dma.slots * BLOCK);
        dma.ledger = map_shared(dma.slots * sizeof *dma.ledger);
        if (!dma.buf || !dma.ledger) {
            dma.why = "no-memory";
        } else {
            mlock(dma.buf, dma.slots * BLOCK);
            uint64_t probe[2] = {0, dma.blocks - 1};
            dma.why = NULL;
            for (int i = 0; i < 2 && !dma.why; i++)
                if (pread(dma.fd, dma.buf, BLOCK, (off_t)(probe[i] * BLOCK)) != (ssize_t)BLOCK)
                    dma.why = "read-failed";
                else if (block_mismatch((const uint64_t *)(void *)dma.buf, probe[i]) >= 0)
                    dma.why = "not-a-pattern-disk";
            for (size_t s = 0; s < dma.slots; s++)
                dma.ledger[s] = SLOT_EMPTY;
        }
    }
    const char *dev = strrchr(cfg.dma_dev, '/');
    dev = dev ? dev + 1 : cfg.dma_dev;
    if (dma.why) {
        snprintf(ready, len, "dma=none dma_reason=%s dma_errno=%d", dma.why, errno);
        dma.buf = NULL;
        return -1;
    }
    shm->dma_skipped_slot = -1;
    snprintf(ready, len, "dma=%s dma_blocks=%llu dma_slots=%zu dma_rps=%ld", dev,
             (unsigned long long)dma.blocks, dma.slots, cfg.dma_rps);
    return 0;
}

static void dma_read(size_t s, uint64_t b)
{
    STORE(&dma.ledger[s], SLOT_BUSY);
    ssize_t n = pread(dma.fd, dma.buf + s * BLOCK, BLOCK, (off_t)(b * BLOCK));
    if (n == (ssize_t)BLOCK) {
        STORE(&dma.ledger[s], (int64_t)b);
        ADD(&shm->dma_reads, 1);
    } else {
        STORE(&dma.ledger[s], SLOT_EMPTY);
        STORE(&shm->dma_last_errno, n < 0 ? errno : EIO);
        ADD(&shm->dma_errors, 1);
    }
}

static void dma_run(void)
{
    uint64_t period = cfg.dma_rps ? 1000000000ull / (uint64_t)cfg.dma_rps : 0;
    uint64_t rng = now_ns() | 1, next = now_ns();
    size_t poison[MAX_POISON], first_pass = 0;
    int npoison = 0;
    while (!stop_requested) {
        pause_point(&shm->dma_pause);
        if (LOAD(&shm->dma_clear_req)) { /* FAULT clear: read what the ledger says */
            for (int p = 0; p < npoison; p++)
                dma_read(poison[p], (uint64_t)dma.ledger[poison[p]]);
            npoison = 0;
            STORE(&shm->dma_poisoned, 0);
            STORE(&shm->dma_clear_req, 0);
        }
        /* every slot once in order (all filled soon after READY), then at random */
        size_t s = first_pass < dma.slots ? first_pass++ : (size_t)(xorshift(&rng) % dma.slots);
        uint64_t b = xorshift(&rng) % dma.blocks;
        int poisoned = 0;
        for (int p = 0; p < npoison; p++)
            poisoned |= poison[p] == s;
        if (poisoned)
            continue;
        if (LOAD(&shm->dma_skip_req) && npoison < MAX_POISON) {
            /* FAULT dma-skip: the ledger names a block the slot never received (a lost DMA
             * write) */
            if ((int64_t)b == dma.ledger[s])
                b = (b + 1) % dma.blocks;
            STORE(&dma.ledger[s], (int64_t)b);
            poison[npoison++] = s;
            STORE(&shm->dma_poisoned, npoison);
            STORE(&shm->dma_skipped_block, (int64_t)b);
            STORE(&shm->dma_skipped_slot, (int64_t)s);
            STORE(&shm->dma_skip_req, 0);
            continue;
        }
        dma_read(s, b);
        if (period) {
            sleep_until(next);
            next_slot(&next, period, now_ns());
        }
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Task: control channel (ttyS1)                                                               */
/*                                                                                             */
/* One command per line; each is answered by any number of "MDT-DETAIL ..." lines and exactly */
/* one final "MDT-RESULT cmd=<CMD> status=ok|fail|skip [id=<id>] key=value ...". Empty lines   */
/* are ignored, so a controller that connects mid-line sends "\n" first. See README.md.        */

#define MAX_DETAILS 10
#define MAX_ARGS 8

struct cmd {
    const char *name;
    const char *id; /* echoed when given as id=<token> */
    int argc;
    char *argv[MAX_ARGS];
};

static void emit_to(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void emit_to(int fd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vemit(fd, fmt, ap);
    va_end(ap);
}

static void detail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void detail(const char *fmt, ...)
{
    char text[LINE_MAX_LEN - 16];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    emit_to(ctl_fd, "MDT-DETAIL %s", text);
}

static void result(const struct cmd *c, const char *status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void result(const struct cmd *c, const char *status, const char *fmt, ...)
{
    char kv[LINE_MAX_LEN - 128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(kv, sizeof kv, fmt, ap);
    va_end(ap);
    emit_to(ctl_fd, "MDT-RESULT cmd=%.32s status=%s%s%.32s%s%s", c->name, status,
            c->id ? " id=" : "", c->id ? c->id : "", kv[0] ? " " : "", kv);
}

static unsigned long long ms_since(uint64_t t0)
{
    return (unsigned long long)((now_ns() - t0) / 1000000ull);
}

static void cmd_ping(const struct cmd *c)
{
    result(c, "ok", "uptime_ms=%llu version=%d", (unsigned long long)(now_ns() / 1000000ull),
           MDT_PROTOCOL_VERSION);
}

static void cmd_verify_ram(const struct cmd *c)
{
    if (!ram.mem) {
        result(c, "skip", "reason=disabled");
        return;
    }
    uint64_t t0 = now_ns();
    if (pause_begin(&shm->ram_pause) < 0) {
        result(c, "fail", "reason=writer-not-responding pages=%zu waited_ms=%ld", ram.pages,
               cfg.pause_ms);
        return;
    }
    size_t bad = 0;
    for (size_t i = 0; i < ram.pages; i++) {
        uint64_t want = LOAD(&ram.ledger[i]), found;
        const char *why = ram_check(i, want, &found);
        if (why && ++bad <= MAX_DETAILS)
            detail("page=%zu expected_gen=%llu found_gen=%llu reason=%s", i,
                   (unsigned long long)want, (unsigned long long)found, why);
    }
    unsigned long long writes = LOAD(&shm->ram_writes);
    pause_end(&shm->ram_pause);
    result(c, bad ? "fail" : "ok", "pages=%zu writes=%llu bad=%zu poisoned=%d check_ms=%llu",
           ram.pages, writes, bad, LOAD(&shm->ram_poisoned), ms_since(t0));
}

static void cmd_verify_vram(const struct cmd *c)
{
    if (!vram.map) {
        result(c, "skip", "reason=no-vram");
        return;
    }
    uint64_t t0 = now_ns();
    size_t bad = 0;
    for (size_t i = 0; i < vram.bytes / 4; i++) {
        uint32_t want = vram_word(4 * i), found = vram.map[i];
        if (found != want && ++bad <= MAX_DETAILS)
            detail("offset=0x%zx expected=0x%08x found=0x%08x", 4 * i, want, found);
    }
    char where[48];
    result(c, bad ? "fail" : "ok", "bytes=%zu bad=%zu where=%s check_ms=%llu", vram.bytes, bad,
           vram_where(where, sizeof where), ms_since(t0));
}

static void cmd_verify_dma(const struct cmd *c)
{
    if (!dma.buf) {
        result(c, "skip", "reason=%s", dma.why);
        return;
    }
    uint64_t t0 = now_ns();
    if (pause_begin(&shm->dma_pause) < 0) {
        result(c, "fail", "reason=reader-not-responding slots=%zu", dma.slots);
        return;
    }
    size_t bad = 0, filled = 0;
    for (size_t s = 0; s < dma.slots; s++) {
        int64_t b = LOAD(&dma.ledger[s]);
        if (b < 0)
            continue;
        filled++;
        const volatile uint64_t *w = (const volatile uint64_t *)(void *)(dma.buf + s * BLOCK);
        long k = block_mismatch(w, (uint64_t)b);
        if (k < 0 || ++bad > MAX_DETAILS)
            continue;
        char found_block[24] = "none";
        if ((w[0] & 0xFFFFFFFFull) == DISK_MAGIC)
            snprintf(found_block, sizeof found_block, "%llu", (unsigned long long)(w[0] >> 32));
        detail("slot=%zu block=%lld offset=0x%lx expected=0x%016llx found=0x%016llx found_block=%s",
               s, (long long)b, (unsigned long)k * 8, (unsigned long long)disk_word((uint64_t)b,
               (unsigned)k), (unsigned long long)w[k], found_block);
    }
    unsigned long long reads = LOAD(&shm->dma_reads), errors = LOAD(&shm->dma_errors);
    pause_end(&shm->dma_pause);
    result(c, bad ? "fail" : "ok",
           "slots=%zu filled=%zu reads=%llu errors=%llu bad=%zu poisoned=%d check_ms=%llu",
           dma.slots, filled, reads, errors, bad, LOAD(&shm->dma_poisoned), ms_since(t0));
}

static int compare_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* One DETAIL line per PCI function: crc32 of its first 64 config bytes with the Status
 * register's interrupt-status bit (it follows INTx) masked, and those bytes in hex (so a
 * change can be named by register). Returns the number of functions. */
static int state_pci(void)
{
    DIR *d = opendir("/sys/bus/pci/devices");
    if (!d)
        return 0;
    char *names[64];
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) && n < 64;)
        if (e->d_name[0] != '.' && (names[n] = strdup(e->d_name)))
            n++;
    closedir(d);
    qsort(names, (size_t)n, sizeof names[0], compare_names);
    for (int i = 0; i < n; i++) {
        char path[320];
        uint8_t config[64];
        snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/config", names[i]);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        ssize_t got = fd < 0 ? -1 : pread(fd, config, sizeof config, 0);
        if (fd >= 0)
            close(fd);
        if (got != (ssize_t)sizeof config) {
            detail("pci=%s error=unreadable", names[i]);
        } else {
            config[6] &= (uint8_t)~0x08u;
            char hex[2 * sizeof config + 1];
            for (size_t b = 0; b < sizeof config; b++)
                snprintf(hex + 2 * b, 3, "%02x", config[b]);
            detail("pci=%s id=%02x%02x:%02x%02x class=%02x%02x%02x cfg_crc=0x%08x cfg=%s", names[i],
                   config[1], config[0], config[3], config[2], config[11], config[10], config[9],
                   crc32_ieee(config, sizeof config), hex);
        }
        free(names[i]);
    }
    return n;
}

/* One DETAIL line per interrupt of the serial ports, virtio devices and the local timer:
 * its total over all CPUs. Returns the number of lines. */
static int state_irqs(void)
{
    static char buf[65536];
    int fd = open("/proc/interrupts", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    size_t len = 0;
    ssize_t r;
    while (len < sizeof buf - 1 && (r = read(fd, buf + len, sizeof buf - 1 - len)) > 0)
        len += (size_t)r;
    close(fd);
    buf[len] = '\0';
    int count = 0;
    char *save = NULL;
    for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *colon = strchr(line, ':');
        if (!colon)
            continue;
        *colon = '\0';
        char *label = line;
        while (*label == ' ')
            label++;
        unsigned long long total = 0;
        char *p = colon + 1, *end;
        for (;;) {
            while (*p == ' ')
                p++;
            if (*p < '0' || *p > '9')
                break;
            total += strtoull(p, &end, 10);
            p = end;
        }
        char *name = strrchr(p, ' ');
        name = name ? name + 1 : p;
        if (strcmp(label, "LOC") == 0)
            name = label;
        else if (!strstr(name, "ttyS") && strncmp(name, "virtio", 6) != 0)
            continue;
        detail("irq=%s name=%s count=%llu", label, name, total);
        count++;
    }
    return count;
}

static void cmd_state(const struct cmd *c)
{
    char mode[32] = "none";
    if (disp.api && strcmp(disp.api, "drm") == 0) {
        struct mdt_drm_mode_crtc crtc;
        memset(&crtc, 0, sizeof crtc);
        crtc.crtc_id = disp.crtc_id;
        if (ioctl_retry(disp.fd, MDT_DRM_IOCTL_MODE_GETCRTC, &crtc) == 0 && crtc.mode_valid)
            snprintf(mode, sizeof mode, "%ux%u", crtc.mode.hdisplay, crtc.mode.vdisplay);
    } else if (disp.api) {
        struct fb_var_screeninfo v;
        if (ioctl(disp.fd, FBIOGET_VSCREENINFO, &v) == 0)
            snprintf(mode, sizeof mode, "%ux%u", v.xres, v.yres);
    }
    int pci = state_pci();
    int irqs = state_irqs();
    result(c, "ok",
           "mode=%s frame=%u pci=%d irqs=%d udp_sent=%llu udp_errors=%llu udp_stalls=%llu "
           "ram_writes=%llu dma_reads=%llu uptime_ms=%llu",
           mode, LOAD(&shm->frame_shown), pci, irqs, (unsigned long long)LOAD(&shm->udp_sent),
           (unsigned long long)LOAD(&shm->udp_errors), (unsigned long long)LOAD(&shm->udp_stalls),
           (unsigned long long)LOAD(&shm->ram_writes), (unsigned long long)LOAD(&shm->dma_reads),
           (unsigned long long)(now_ns() / 1000000ull));
}

static const char *arg_value(const struct cmd *c, const char *key)
{
    size_t n = strlen(key);
    for (int i = 1; i < c->argc; i++)
        if (strncmp(c->argv[i], key, n) == 0 && c->argv[i][n] == '=')
            return c->argv[i] + n + 1;
    return NULL;
}

static void cmd_fault(const struct cmd *c)
{
    const char *kind = c->argc ? c->argv[0] : "";
    if (strcmp(kind, "skip-page") == 0) {
        if (!ram.mem) {
            result(c, "skip", "fault=%s reason=disabled", kind);
            return;
        }
        STORE(&shm->ram_skip_req, 1);
        if (await_value(&shm->ram_skip_req, 0, 5000) < 0) {
            STORE(&shm->ram_skip_req, 0);
            result(c, "fail", "fault=%s reason=writer-not-responding", kind);
            return;
        }
        result(c, "ok", "fault=%s page=%lld expected_gen=%llu", kind,
               (long long)LOAD(&shm->ram_skipped),
               (unsigned long long)LOAD(&shm->ram_skipped_gen));
    } else if (strcmp(kind, "dma-skip") == 0) {
        if (!dma.buf) {
            result(c, "skip", "fault=%s reason=%s", kind, dma.why);
            return;
        }
        STORE(&shm->dma_skip_req, 1);
        if (await_value(&shm->dma_skip_req, 0, 5000) < 0) {
            STORE(&shm->dma_skip_req, 0);
            result(c, "fail", "fault=%s reason=reader-not-responding", kind);
            return;
        }
        result(c, "ok", "fault=%s slot=%lld block=%lld", kind,
               (long long)LOAD(&shm->dma_skipped_slot), (long long)LOAD(&shm->dma_skipped_block));
    } else if (strcmp(kind, "vram-word") == 0) {
        if (!vram.map) {
            result(c, "skip", "fault=%s reason=no-vram", kind);
            return;
        }
        if (!vram.fault_on) {
            vram.fault_off = (vram.bytes / 2 + 0x124) & ~(size_t)3;
            vram.fault_old = vram.map[vram.fault_off / 4];
            vram.map[vram.fault_off / 4] = ~vram.fault_old;
            vram.fault_on = 1;
        }
        result(c, "ok", "fault=%s offset=0x%zx expected=0x%08x found=0x%08x", kind,
               vram.fault_off, vram_word(vram.fault_off), vram.map[vram.fault_off / 4]);
    } else if (strcmp(kind, "pixel") == 0) {
        if (!disp.api) {
            result(c, "skip", "fault=%s reason=no-display", kind);
            return;
        }
        const char *xs = arg_value(c, "x"), *ys = arg_value(c, "y");
        unsigned long x = xs ? strtoul(xs, NULL, 10) : disp.w / 2 + 1;
        unsigned long y = ys ? strtoul(ys, NULL, 10) : disp.h / 2 + 1;
        if (x >= disp.w || y >= disp.h) {
            result(c, "fail", "fault=%s reason=outside x=%lu y=%lu", kind, x, y);
            return;
        }
        STORE(&shm->pixel_x, (unsigned)x);
        STORE(&shm->pixel_y, (unsigned)y);
        STORE(&shm->pixel_on, 1);
        result(c, "ok", "fault=%s x=%lu y=%lu frame=%u", kind, x, y, LOAD(&shm->frame_shown));
    } else if (strcmp(kind, "freeze") == 0) {
        if (!disp.api) {
            result(c, "skip", "fault=%s reason=no-display", kind);
            return;
        }
        STORE(&shm->freeze, 1);
        result(c, "ok", "fault=%s frame=%u", kind, LOAD(&shm->frame_shown));
    } else if (strcmp(kind, "clear") == 0) {
        STORE(&shm->pixel_on, 0);
        STORE(&shm->freeze, 0);
        if (vram.fault_on) {
            vram.map[vram.fault_off / 4] = vram.fault_old;
            vram.fault_on = 0;
        }
        int stuck = 0;
        if (ram.mem) {
            STORE(&shm->ram_clear_req, 1);
            stuck |= await_value(&shm->ram_clear_req, 0, 5000) < 0;
        }
        if (dma.buf) {
            STORE(&shm->dma_clear_req, 1);
            stuck |= await_value(&shm->dma_clear_req, 0, 5000) < 0;
        }
        if (stuck)
            result(c, "fail", "fault=clear reason=worker-not-responding");
        else
            result(c, "ok", "fault=clear frame=%u", LOAD(&shm->frame_shown));
    } else {
        result(c, "fail", "reason=unknown-fault fault=%.32s "
               "known=skip-page,dma-skip,vram-word,pixel,freeze,clear", kind);
    }
}

static const struct {
    const char *name;
    void (*run)(const struct cmd *c);
} commands[] = {
    {"PING", cmd_ping},
    {"VERIFY-RAM", cmd_verify_ram},
    {"VERIFY-VRAM", cmd_verify_vram},
    {"VERIFY-DMA", cmd_verify_dma},
    {"STATE", cmd_state},
    {"FAULT", cmd_fault},
};

static void ctl_command(char *line)
{
    struct cmd c = {.name = NULL};
    char *save = NULL;
    for (char *tok = strtok_r(line, " \t", &save); tok; tok = strtok_r(NULL, " \t", &save)) {
        if (!c.name)
            c.name = tok;
        else if (strncmp(tok, "id=", 3) == 0 && tok[3])
            c.id = tok + 3;
        else if (c.argc < MAX_ARGS)
            c.argv[c.argc++] = tok;
    }
    if (!c.name)
        return; /* an empty line */
    for (char *p = line; *p; p++)
        if (*p >= 'a' && *p <= 'z')
            *p = (char)(*p - 'a' + 'A');
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(commands[i].name, c.name) == 0) {
            commands[i].run(&c);
            return;
        }
    result(&c, "fail", "reason=unknown-command known=PING,VERIFY-RAM,VERIFY-VRAM,VERIFY-DMA,"
           "STATE,FAULT");
}

static int ctl_setup(char *ready, size_t len)
{
    if (strcmp(cfg.ctl, "none") == 0) {
        snprintf(ready, len, "ctl=none");
        return -1;
    }
    if (strncmp(cfg.ctl, "vport:", 6) == 0) {
        snprintf(ready, len, "ctl=none ctl_reason=no-such-port port=%.40s", cfg.ctl + 6);
        return -1;
    }
    const char *name = strrchr(cfg.ctl, '/');
    name = name ? name + 1 : cfg.ctl;
    ctl_fd = open(cfg.ctl, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (ctl_fd < 0) {
        snprintf(ready, len, "ctl=none ctl_reason=open-failed ctl_errno=%d", errno);
        return -1;
    }
    struct termios t;
    if (tcgetattr(ctl_fd, &t) < 0) {
        if (errno != ENOTTY) {
            snprintf(ready, len, "ctl=none ctl_reason=open-failed ctl_errno=%d", errno);
            return -1;
        }
        /* a virtio-serial port: bytes in, bytes out already */
        snprintf(ready, len, "ctl=%s ctl_kind=vport", name);
        return 0;
    }
    cfmakeraw(&t); /* no echo, no line editing: bytes in, bytes out */
    t.c_cflag |= CLOCAL | CREAD;
    t.c_cc[VMIN] = 1;
    t.c_cc[VTIME] = 0;
    cfsetispeed(&t, B115200);
    cfsetospeed(&t, B115200);
    if (tcsetattr(ctl_fd, TCSANOW, &t) < 0) {
        snprintf(ready, len, "ctl=none ctl_reason=termios ctl_errno=%d", errno);
        return -1;
    }
    snprintf(ready, len, "ctl=%s", name);
    return 0;
}

static void ctl_run(void)
{
    emit_to(ctl_fd, "MDT-CTL ready version=%d", MDT_PROTOCOL_VERSION);
    char line[256];
    size_t n = 0;
    int overlong = 0;
    while (!stop_requested) {
        char buf[256];
        ssize_t r = read(ctl_fd, buf, sizeof buf);
        if (r <= 0) {
            if (r == 0) /* a virtio-serial port reads EOF while no one is connected on the host */
                usleep(20000);
            else if (errno != EINTR && errno != EAGAIN)
                usleep(100000);
            continue;
        }
        for (ssize_t i = 0; i < r; i++) {
            char ch = buf[i];
            if (ch != '\n' && ch != '\r') {
                if (n < sizeof line - 1)
                    line[n++] = ch;
                else
                    overlong = 1;
                continue;
            }
            line[n] = '\0';
            if (overlong) {
                struct cmd c = {.name = "?"};
                result(&c, "fail", "reason=too-long max=%zu", sizeof line - 1);
            } else {
                ctl_command(line);
            }
            n = 0;
            overlong = 0;
        }
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Tasks                                                                                       */

/* The niceness slot of the background tasks (RAM, DMA): cfg.bg_nice at run time. */
#define BG_NICE 100

struct task {
    const char *name;
    /* In this process, before MDT-READY: prepare, describe yourself for the READY line in
     * ready; return <0 when disabled or unavailable (the description then says why). */
    int (*setup)(char *ready, size_t len);
    void (*run)(void);       /* in a child process; return when stop_requested is set; NULL:
                                setup only */
    void (*teardown)(void);  /* in this process, after the children ended; may be NULL */
    int nice;                /* scheduling niceness of the child */
    pid_t pid;
};

/* In setup order: vram needs the display; ctl comes last (it inspects the others). */
static struct task tasks[] = {
    {"display", display_setup, display_run, display_teardown, 10, 0},
    {"vram", vram_setup, NULL, NULL, 0, 0},
    {"hb", hb_setup, hb_run, NULL, 0, 0},
    {"udp", udp_setup, udp_run, NULL, 0, 0},
    {"ram", ram_setup, ram_run, NULL, BG_NICE, 0},
    {"dma", dma_setup, dma_run, NULL, BG_NICE, 0},
    {"ctl", ctl_setup, ctl_run, NULL, -10, 0},
};

#define NTASKS (sizeof tasks / sizeof tasks[0])

static int render_to_stdout(int argc, char **argv)
{
    unsigned long n;
    unsigned w, h;
    if (argc != 4 || sscanf(argv[2], "%lu", &n) != 1 || sscanf(argv[3], "%ux%u", &w, &h) != 2 ||
        w < HDR_CELLS || h <= HDR_ROWS || w > 8192 || h > 8192 || n > 0xFFFFFFFFul) {
        fprintf(stderr, "usage: %s --render N WxH > frame.ppm\n", argv[0]);
        return 2;
    }
    struct pixfmt f = {4, 16, 8, 8, 8, 0, 8};
    uint8_t *buf = malloc((size_t)w * h * 4), *rgb = malloc((size_t)w * h * 3);
    if (!buf || !rgb)
        return 1;
    draw_frame(buf, w, h, w * 4, &f, (uint32_t)n);
    for (size_t i = 0; i < (size_t)w * h; i++) {
        rgb[3 * i] = buf[4 * i + 2];
        rgb[3 * i + 1] = buf[4 * i + 1];
        rgb[3 * i + 2] = buf[4 * i];
    }
    printf("P6\n%u %u\n255\n", w, h);
    fwrite(rgb, 3, (size_t)w * h, stdout);
    return fflush(stdout) == 0 ? 0 : 1;
}

static int disk_block_to_stdout(int argc, char **argv)
{
    unsigned long long b;
    char tail;
    if (argc != 3 || sscanf(argv[2], "%llu%c", &b, &tail) != 1 || b > 0xFFFFFFFFull) {
        fprintf(stderr, "usage: %s --disk-block N > block.bin\n", argv[0]);
        return 2;
    }
    uint8_t out[BLOCK];
    for (unsigned k = 0; k < WORDS_PER_BLOCK; k++) {
        uint64_t le = htole64(disk_word(b, k));
        memcpy(out + 8 * k, &le, 8);
    }
    fwrite(out, 1, sizeof out, stdout);
    return fflush(stdout) == 0 ? 0 : 1;
}

/* ------------------------------------------------------------------------------------------ */
/* Device names that any Linux guest has, without udev: ctl=vport:NAME is the virtio-serial    */
/* port of that name, drm=pci:VVVV[:DDDD] the DRM card of the PCI device with those IDs (the   */
/* device under test, not card0 by index), dma_dev=serial:NAME the disk with that serial.      */

static int read_sysfs_line(const char *path, char *buf, size_t len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, len - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    buf[strcspn(buf, "\n")] = '\0';
    return 0;
}

static int resolve_vport(const char *want, char *out, size_t len)
{
    DIR *d = opendir("/sys/class/virtio-ports");
    if (!d)
        return -1;
    struct dirent *e;
    int found = -1;
    while (found < 0 && (e = readdir(d))) {
        char path[320], name[128];
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
        if (read_sysfs_line(path, name, sizeof name) == 0 && strcmp(name, want) == 0) {
            snprintf(out, len, "/dev/%.48s", e->d_name);
            found = 0;
        }
    }
    closedir(d);
    return found;
}

static int resolve_drm_pci(const char *ids, char *out, size_t len)
{
    char vendor[16] = "", device[16] = "";
    sscanf(ids, "%15[0-9a-fA-F]:%15[0-9a-fA-F]", vendor, device);
    if (!vendor[0])
        return -1;
    DIR *d = opendir("/sys/class/drm");
    if (!d)
        return -1;
    struct dirent *e;
    int found = -1;
    while (found < 0 && (e = readdir(d))) {
        char path[320], v[32], dv[32];
        if (strncmp(e->d_name, "card", 4) != 0 || strchr(e->d_name, '-'))
            continue;
        snprintf(path, sizeof path, "/sys/class/drm/%s/device/vendor", e->d_name);
        if (read_sysfs_line(path, v, sizeof v) < 0 || strcasecmp(v + 2, vendor) != 0)
            continue;
        snprintf(path, sizeof path, "/sys/class/drm/%s/device/device", e->d_name);
        if (device[0] && (read_sysfs_line(path, dv, sizeof dv) < 0 || strcasecmp(dv + 2, device) != 0))
            continue;
        snprintf(out, len, "/dev/dri/%.48s", e->d_name);
        found = 0;
    }
    closedir(d);
    return found;
}

static int resolve_block_serial(const char *want, char *out, size_t len)
{
    DIR *d = opendir("/sys/block");
    if (!d)
        return -1;
    struct dirent *e;
    int found = -1;
    while (found < 0 && (e = readdir(d))) {
        char path[320], serial[128];
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "/sys/block/%s/serial", e->d_name);
        if (read_sysfs_line(path, serial, sizeof serial) == 0 && strcmp(serial, want) == 0) {
            snprintf(out, len, "/dev/%.48s", e->d_name);
            found = 0;
        }
    }
    closedir(d);
    return found;
}

/* Waits up to fb_wait_ms for the named devices to appear (drivers may still be probing). */
static void resolve_devices(void)
{
    uint64_t deadline = now_ns() + (uint64_t)cfg.fb_wait_ms * 1000000ull;
    int want_ctl = strncmp(cfg.ctl, "vport:", 6) == 0;
    int want_drm = strncmp(cfg.drm, "pci:", 4) == 0;
    int want_dma = strncmp(cfg.dma_dev, "serial:", 7) == 0;
    char path[STR_OPT_LEN];
    for (;;) {
        if (want_dma && resolve_block_serial(cfg.dma_dev + 7, path, sizeof path) == 0) {
            snprintf(cfg.dma_dev, sizeof cfg.dma_dev, "%s", path);
            want_dma = 0;
        }
        if (want_ctl && resolve_vport(cfg.ctl + 6, path, sizeof path) == 0) {
            snprintf(cfg.ctl, sizeof cfg.ctl, "%s", path);
            want_ctl = 0;
        }
        if (want_drm && resolve_drm_pci(cfg.drm + 4, path, sizeof path) == 0) {
            snprintf(cfg.drm, sizeof cfg.drm, "%s", path);
            want_drm = 0;
        }
        if ((!want_ctl && !want_drm && !want_dma) || now_ns() > deadline)
            break;
        usleep(50000);
    }
    if (want_drm)
        emit("MDT-WARN no-drm-card pci=%s", cfg.drm + 4);
    if (want_dma)
        emit("MDT-WARN no-disk serial=%s", cfg.dma_dev + 7);
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--render") == 0)
        return render_to_stdout(argc, argv);
    if (argc > 1 && strcmp(argv[1], "--disk-block") == 0)
        return disk_block_to_stdout(argc, argv);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    load_cmdline();
    for (int i = 1; i < argc; i++)
        apply_token(argv[i], "");
    int fd = open(cfg.console, O_WRONLY | O_NOCTTY | O_CLOEXEC);
    if (fd >= 0)
        out_fd = fd;
    else
        emit("MDT-WARN console-open-failed path=%s errno=%d", cfg.console, errno);
    resolve_devices();
    if (!(shm = map_shared(sizeof *shm))) {
        emit("MDT-ERROR task=main reason=no-memory errno=%d", errno);
        return 1;
    }

    char ready[LINE_MAX_LEN - 64] = "", part[192];
    for (size_t i = 0; i < NTASKS; i++) {
        part[0] = '\0';
        tasks[i].pid = tasks[i].setup(part, sizeof part) < 0 || !tasks[i].run ? -1 : 0;
        if (part[0] && strlen(ready) + strlen(part) + 2 < sizeof ready) {
            strcat(ready, " ");
            strcat(ready, part);
        }
    }
    emit("MDT-READY%s version=%d", ready, MDT_PROTOCOL_VERSION);

    for (size_t i = 0; i < NTASKS; i++) {
        if (tasks[i].pid < 0)
            continue;
        pid_t pid = fork();
        if (pid == 0) {
            int nice = tasks[i].nice == BG_NICE ? (int)cfg.bg_nice : tasks[i].nice;
            if (nice)
                setpriority(PRIO_PROCESS, 0, nice);
            tasks[i].run();
            _exit(0);
        }
        if (pid < 0) {
            emit("MDT-ERROR task=%s reason=fork-failed errno=%d", tasks[i].name, errno);
            tasks[i].pid = -1;
        } else {
            tasks[i].pid = pid;
        }
    }

    /* Supervise: report a task that dies; on SIGTERM stop them all. */
    while (!stop_requested) {
        int status;
        pid_t pid = waitpid(-1, &status, 0);
        if (pid < 0) {
            if (errno == ECHILD)
                pause();
            continue;
        }
        for (size_t i = 0; i < NTASKS; i++) {
            if (tasks[i].pid != pid)
                continue;
            tasks[i].pid = -1;
            if (WIFSIGNALED(status))
                emit("MDT-ERROR task=%s reason=signal signal=%d", tasks[i].name,
                     WTERMSIG(status));
            else
                emit("MDT-ERROR task=%s reason=exit status=%d", tasks[i].name,
                     WEXITSTATUS(status));
        }
    }
    for (size_t i = 0; i < NTASKS; i++)
        if (tasks[i].pid > 0)
            kill(tasks[i].pid, SIGTERM);
    for (size_t i = 0; i < NTASKS; i++)
        if (tasks[i].pid > 0)
            while (waitpid(tasks[i].pid, NULL, 0) < 0 && errno == EINTR)
                ;
    for (size_t i = 0; i < NTASKS; i++)
        if (tasks[i].teardown)
            tasks[i].teardown();
    emit("MDT-EXIT reason=signal");
    return 0;
}
