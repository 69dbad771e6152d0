/*
 * mdt-workload - the synthetic guest workload of mdevtest.
 *
 * Runs as the last step of the lab guest's init. It speaks a line protocol on the serial console
 * and draws numbered, checkable frames on the display (KMS on /dev/dri/card0, else /dev/fb0), so
 * that a test can tell from outside the guest that it kept running, without gaps, across a live
 * migration.
 * The protocol is described in README.md beside this file; mdevtest/workloads/synthetic.py
 * parses it and must stay in step with the frame layout below (FRAME LAYOUT).
 *
 * Structure: each activity is a task with a setup() run in this process before MDT-READY and a
 * run() loop in a child process of its own, so a slow task (drawing under TCG) never delays a
 * timely one (the heartbeat). A new activity (UDP heartbeat, RAM dirtier, device-memory filler)
 * is a new entry in tasks[] plus its options in options[].
 *
 * Options come from /proc/cmdline as mdt.<key>=<value>, then from argv as <key>=<value>.
 * `mdt-workload --render N WxH` writes frame N as a binary PPM to stdout and exits (used by the
 * framework's tests to check its Python renderer against this one).
 *
 * C99 + Linux uapi headers, no other dependency; built with `gcc -static -O2`.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <linux/fb.h>
#include <linux/kd.h>

#define MDT_PROTOCOL_VERSION 1

/* ------------------------------------------------------------------------------------------ */
/* Options                                                                                     */

struct config {
    long hb_ms;           /* serial heartbeat period in ms; 0 = no heartbeat */
    long fps;             /* frames per second; 0 = no drawing */
    long fb_wait_ms;      /* how long to wait for the framebuffer device to appear */
    long mode_w, mode_h;  /* drm: display mode to use; 0 = the output's preferred one */
    char display[64];     /* "auto" (drm, else fbdev), "drm" or "fbdev" */
    char drm[64];         /* DRM device */
    char fb[64];          /* framebuffer device */
    char console[64];     /* where protocol lines go */
};

static struct config cfg = {20, 10, 3000, 0, 0, "auto", "/dev/dri/card0", "/dev/fb0",
                            "/dev/ttyS0"};

struct option_def {
    const char *key;
    long *num; /* numeric option: bounds below */
    long min, max;
    char *str; /* string option: buffer of STR_OPT_LEN */
};

#define STR_OPT_LEN 64

static const struct option_def options[] = {
    {"hb_ms", &cfg.hb_ms, 0, 60000, NULL},
    {"fps", &cfg.fps, 0, 120, NULL},
    {"fb_wait_ms", &cfg.fb_wait_ms, 0, 60000, NULL},
    {"display", NULL, 0, 0, cfg.display},
    {"drm", NULL, 0, 0, cfg.drm},
    {"fb", NULL, 0, 0, cfg.fb},
    {"console", NULL, 0, 0, cfg.console},
};

/* mdt.* keys that belong to the init script; accepted here without a warning. */
static const char *const init_keys[] = {"ip", "gw", "net", "loglevel", "shell", NULL};

/* ------------------------------------------------------------------------------------------ */
/* Output: every protocol line is written with one write() so lines never interleave.         */

static int out_fd = STDOUT_FILENO;

static void emit(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void emit(const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof line - 2)
        n = (int)sizeof line - 2;
    line[n++] = '\n';
    const char *p = line;
    while (n > 0) {
        ssize_t w = write(out_fd, p, (size_t)n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        p += w;
        n -= (int)w;
    }
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

static int hb_setup(char *ready, size_t len)
{
    snprintf(ready, len, "hb_ms=%ld", cfg.hb_ms);
    return cfg.hb_ms > 0 ? 0 : -1;
}

static void hb_run(void)
{
    struct sched_param sp = {.sched_priority = 10};
    sched_setscheduler(0, SCHED_FIFO, &sp); /* best effort: be on time while frames draw */
    uint64_t period = (uint64_t)cfg.hb_ms * 1000000ull;
    uint64_t next = now_ns();
    for (uint64_t seq = 1; !stop_requested; seq++) {
        sleep_until(next);
        if (stop_requested)
            break;
        uint64_t t = now_ns();
        emit("MDT-HB seq=%llu t=%llu", (unsigned long long)seq, (unsigned long long)t);
        next += period;
        if (t > next + period) /* far behind (guest starved): resume, do not burst */
            next = t + period;
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

/* Makes frame buffer i the one on screen; blocking, so it is shown when this returns. */
static int drm_show(unsigned i)
{
    struct mdt_drm_mode_crtc crtc;
    memset(&crtc, 0, sizeof crtc);
    crtc.crtc_id = disp.crtc_id;
    crtc.fb_id = disp.fb_id[i];
    crtc.set_connectors_ptr = (uint64_t)(uintptr_t)&disp.connector_id;
    crtc.count_connectors = 1;
    crtc.mode = disp.mode;
    crtc.mode_valid = 1;
    return ioctl_retry(disp.fd, MDT_DRM_IOCTL_MODE_SETCRTC, &crtc);
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
    if (disp.buffers == 2) {
        draw_frame(disp.page[n & 1], disp.w, disp.h, disp.stride, &disp.fmt, n);
        return;
    }
    draw_frame(disp.shadow, disp.w, disp.h, disp.stride, &disp.fmt, n);
    memcpy(disp.page[0], disp.shadow, (size_t)disp.h * disp.stride);
    fsync(disp.fd); /* deferred-I/O framebuffers: start copying out now */
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
    for (uint32_t n = 1; !stop_requested; n++) {
        sleep_until(next);
        if (stop_requested)
            break;
        display_show(n);
        uint64_t t = now_ns();
        if (n % (uint32_t)cfg.fps == 0)
            emit("MDT-FRAME n=%u t=%llu late=%u", n, (unsigned long long)t, late);
        display_draw(n + 1); /* ahead of time, into the hidden buffer */
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
/* Tasks                                                                                       */

struct task {
    const char *name;
    /* In this process, before MDT-READY: prepare, describe yourself for the READY line in
     * ready; return <0 when disabled or unavailable (the description then says why). */
    int (*setup)(char *ready, size_t len);
    void (*run)(void);       /* in a child process; return when stop_requested is set */
    void (*teardown)(void);  /* in this process, after the children ended; may be NULL */
    int nice;                /* scheduling niceness of the child */
    pid_t pid;
};

static struct task tasks[] = {
    {"display", display_setup, display_run, display_teardown, 10, 0},
    {"hb", hb_setup, hb_run, NULL, 0, 0},
    /* to come: "udp" heartbeat to the controller, "ram" dirtier, "vram" filler */
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

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--render") == 0)
        return render_to_stdout(argc, argv);

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

    char ready[512] = "", part[160];
    for (size_t i = 0; i < NTASKS; i++) {
        part[0] = '\0';
        tasks[i].pid = tasks[i].setup(part, sizeof part) < 0 ? -1 : 0;
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
            if (tasks[i].nice)
                setpriority(PRIO_PROCESS, 0, tasks[i].nice);
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
