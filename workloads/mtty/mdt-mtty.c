/*
 * mdt-mtty - the mtty workload of mdevtest's nested lab.
 *
 * Runs as the last step of the L2 guest's init. The guest has an mtty mediated device: the kernel's
 * vfio-mdev sample (samples/vfio-mdev/mtty.c), which the guest sees as a PCI 16550 UART
 * (4348:3253) with one or two ports that loop every byte written back to the receiver. This
 * program keeps each of those ports busy for as long as the guest runs, so that a live migration
 * of the device happens with bytes in flight and a test can tell, from the console log alone,
 * that the device kept working across it:
 *
 *   - it writes a numbered byte stream (PATTERN below) through the kernel's 8250 driver and reads
 *     the loopback, checking every byte: lost, duplicated, corrupted or unexpected bytes are
 *     counted (and the first ones described) instead of being hidden by a retry;
 *   - once a report period it lets the bytes in flight drain, then reads the UART registers the
 *     guest can see (through /dev/port) and prints them with the counters, so the same line
 *     before and after a migration can be compared; it also writes a new value to the scratch
 *     register each time and checks that the previous one is still there;
 *   - a separate process prints a heartbeat on the console, so a stalled loopback is never
 *     mistaken for a stalled guest.
 *
 * The protocol is described in README.md beside this file.
 *
 * Options come from /proc/cmdline as mdt.<key>=<value>, then from argv as <key>=<value>.
 * `mdt-mtty --pattern PORT INDEX COUNT` prints COUNT bytes of port PORT's stream from INDEX, in
 * hex, and exits (used by the framework's tests).
 *
 * C99 + Linux uapi headers, no other dependency; built with `gcc -static -O2`.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <linux/serial.h>

#define MDT_MTTY_VERSION 1
#define MAX_PORTS 8
#define MAX_ERROR_DETAILS 20 /* MDT-MTTY-ERR lines per port; the counters go on counting */
#define STR_OPT_LEN 64
#define LINE_MAX_LEN 1024

/* ------------------------------------------------------------------------------------------ */
/* Options                                                                                     */

static struct config {
    long hb_ms;     /* console heartbeat period; 0 = none */
    long report_ms; /* MDT-MTTY period */
    long wait_ms;   /* how long to wait for the mtty ports to appear */
    long baud;
    long stop;      /* stop bits: 1 or 2 */
    long window;    /* bytes in flight per port at most */
    long chunk;     /* bytes per write() */
    long stall_ms;  /* bytes in flight with nothing received for this long: given up as lost */
    long quiet_ms;  /* how long a report waits for the bytes in flight to come back */
    long regs;      /* 1: read the UART registers (through /dev/port) in reports */
    char ports[STR_OPT_LEN];   /* "auto" (by PCI id) or a comma-separated list of devices */
    char pci[STR_OPT_LEN];     /* vendor:device of the mtty function */
    char parity[STR_OPT_LEN];  /* n, e or o */
    char console[STR_OPT_LEN]; /* where protocol lines go; "-" = stdout */
} cfg = {
    .hb_ms = 100,
    .report_ms = 1000,
    .wait_ms = 10000,
    .baud = 9600,
    .stop = 2,
    .window = 8, /* see port_write() */
    .chunk = 8,
    .stall_ms = 5000,
    .quiet_ms = 2000,
    .regs = 1,
    .ports = "auto",
    .pci = "4348:3253",
    .parity = "e",
    .console = "-",
};

struct option_def {
    const char *key;
    long *num; /* numeric option: bounds below */
    long min, max;
    char *str; /* string option: buffer of STR_OPT_LEN */
};

static const struct option_def options[] = {
    {"hb_ms", &cfg.hb_ms, 0, 60000, NULL},
    {"report_ms", &cfg.report_ms, 10, 600000, NULL},
    {"wait_ms", &cfg.wait_ms, 0, 600000, NULL},
    {"baud", &cfg.baud, 50, 4000000, NULL},
    {"stop", &cfg.stop, 1, 2, NULL},
    {"window", &cfg.window, 1, 4096, NULL},
    {"chunk", &cfg.chunk, 1, 4096, NULL},
    {"stall_ms", &cfg.stall_ms, 10, 3600000, NULL},
    {"quiet_ms", &cfg.quiet_ms, 0, 600000, NULL},
    {"regs", &cfg.regs, 0, 1, NULL},
    {"ports", NULL, 0, 0, cfg.ports},
    {"pci", NULL, 0, 0, cfg.pci},
    {"parity", NULL, 0, 0, cfg.parity},
    {"console", NULL, 0, 0, cfg.console},
};

/* mdt.* keys that belong to the init script, or that the framework gives every guest (udp: the
 * synthetic workload's heartbeat target); accepted here without a warning. */
static const char *const init_keys[] = {"loglevel", "shell", "udp", NULL};

/* ------------------------------------------------------------------------------------------ */
/* Output: every protocol line is written with one write() so lines never interleave.         */

static int out_fd = STDOUT_FILENO;

static void emit(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void emit(const char *fmt, ...)
{
    char line[LINE_MAX_LEN];
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

static int set_option(const char *key, const char *val)
{
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
/* PATTERN: byte i (from 0) of port k's stream. A pure function of (k, i), so a lost,         */
/* duplicated or corrupted byte shows at the first place it happens, and no short period lets  */
/* a shifted stream match by chance.                                                          */

static uint8_t pattern(unsigned k, uint64_t i)
{
    uint64_t x = (i + 1) * 0x9E3779B97F4A7C15ull ^ ((uint64_t)k << 56);
    x ^= x >> 31;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 29;
    return (uint8_t)(x >> 56);
}

/* ------------------------------------------------------------------------------------------ */
/* Heartbeat (own process, so a slow loopback never delays it)                                  */

static void hb_run(void)
{
    struct sched_param sp = {.sched_priority = 10};
    sched_setscheduler(0, SCHED_FIFO, &sp); /* best effort */
    uint64_t period = (uint64_t)cfg.hb_ms * 1000000ull;
    uint64_t next = now_ns();
    for (uint64_t seq = 1; !stop_requested; seq++) {
        struct timespec ts = {(time_t)(next / 1000000000ull), (long)(next % 1000000000ull)};
        while (!stop_requested &&
               clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
            ;
        if (stop_requested)
            break;
        uint64_t t = now_ns();
        emit("MDT-HB seq=%llu t=%llu", (unsigned long long)seq, (unsigned long long)t);
        /* one period on; when more than a period behind (guest paused), skip without a burst */
        next += period;
        if (t > next + period)
            next += (t - next) / period * period;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Ports                                                                                        */

enum { REG_RX, REG_IER, REG_IIR, REG_LCR, REG_MCR, REG_LSR, REG_MSR, REG_SCR };

struct port {
    unsigned k; /* index: picks the stream */
    char name[32];
    char dev[STR_OPT_LEN + 8];
    char pci[32];
    int fd;
    /* stream */
    uint64_t tx;      /* bytes written */
    uint64_t next_rx; /* index of the next byte expected back */
    uint64_t rx;      /* bytes received as expected */
    uint64_t bad, lost, dup, extra, stalls;
    uint64_t details;
    uint64_t last_progress;
    /* what the kernel says about the UART */
    int type, irq, baud_base;
    unsigned io;
    long divisor;
    /* registers */
    int regs;      /* 1 when they can be read */
    const char *regs_reason;
    int have_base; /* LCR/IER/MCR of the first report, which later ones must equal */
    uint8_t base_lcr, base_ier, base_mcr;
    uint64_t reg_changes;
    int scr_set;
    uint8_t scr;
    uint64_t scr_err;
    uint64_t reports;
};

static struct port ports[MAX_PORTS];
static unsigned nports;
static int devport_fd = -1;

static const char *uart_type_name(int type)
{
    switch (type) {
    case PORT_UNKNOWN: return "unknown";
    case PORT_8250: return "8250";
    case PORT_16450: return "16450";
    case PORT_16550: return "16550";
    case PORT_16550A: return "16550A";
    default: return "other";
    }
}

static int read_hex_file(const char *path, unsigned *out)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return -1;
    int ok = fscanf(f, "%x", out) == 1;
    fclose(f);
    return ok ? 0 : -1;
}

/* The PCI function above a tty in sysfs whose id is want_v:want_d; writes its address. */
static int tty_pci_match(const char *tty, unsigned want_v, unsigned want_d, char *bdf, size_t len)
{
    char path[PATH_MAX], real[PATH_MAX];
    snprintf(path, sizeof path, "/sys/class/tty/%s", tty);
    if (!realpath(path, real))
        return 0;
    /* walk up: .../0000:00:04.0/0000:00:04.0:0/0000:00:04.0:0.0/tty/ttyS4 */
    for (char *slash = strrchr(real, '/'); slash && slash != real; slash = strrchr(real, '/')) {
        *slash = '\0';
        unsigned v, d;
        char file[PATH_MAX + 16];
        snprintf(file, sizeof file, "%s/vendor", real);
        if (read_hex_file(file, &v) < 0)
            continue;
        snprintf(file, sizeof file, "%s/device", real);
        if (read_hex_file(file, &d) < 0)
            continue;
        if (v != want_v || d != want_d)
            return 0;
        const char *base = strrchr(real, '/');
        snprintf(bdf, len, "%.*s", (int)len - 1, base ? base + 1 : real);
        return 1;
    }
    return 0;
}

static int tty_number(const char *name)
{
    return atoi(name + 4); /* "ttyS" */
}

static int cmp_port(const void *a, const void *b)
{
    return tty_number(((const struct port *)a)->name) - tty_number(((const struct port *)b)->name);
}

/* The ttyS ports of the mtty function(s), by PCI id; returns how many. */
static unsigned find_ports_by_pci(void)
{
    unsigned v, d;
    if (sscanf(cfg.pci, "%x:%x", &v, &d) != 2) {
        emit("MDT-WARN bad-option key=pci value=%s", cfg.pci);
        return 0;
    }
    DIR *dir = opendir("/sys/class/tty");
    if (!dir)
        return 0;
    unsigned n = 0;
    struct dirent *e;
    while ((e = readdir(dir)) && n < MAX_PORTS) {
        if (strncmp(e->d_name, "ttyS", 4) != 0)
            continue;
        char bdf[32];
        if (!tty_pci_match(e->d_name, v, d, bdf, sizeof bdf))
            continue;
        struct port *p = &ports[n++];
        snprintf(p->name, sizeof p->name, "%.31s", e->d_name);
        snprintf(p->dev, sizeof p->dev, "/dev/%.31s", e->d_name);
        snprintf(p->pci, sizeof p->pci, "%s", bdf);
    }
    closedir(dir);
    qsort(ports, n, sizeof ports[0], cmp_port);
    return n;
}

static unsigned find_ports_by_list(void)
{
    char list[STR_OPT_LEN];
    snprintf(list, sizeof list, "%s", cfg.ports);
    unsigned n = 0;
    for (char *save = NULL, *tok = strtok_r(list, ",", &save); tok && n < MAX_PORTS;
         tok = strtok_r(NULL, ",", &save)) {
        struct port *p = &ports[n++];
        snprintf(p->dev, sizeof p->dev, "%s%s", tok[0] == '/' ? "" : "/dev/", tok);
        const char *base = strrchr(p->dev, '/');
        snprintf(p->name, sizeof p->name, "%s", base + 1);
        snprintf(p->pci, sizeof p->pci, "-");
    }
    return n;
}

static int setup_port(struct port *p)
{
    p->fd = open(p->dev, O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
    if (p->fd < 0)
        return -errno;
    struct termios t;
    if (tcgetattr(p->fd, &t) < 0)
        return -errno;
    cfmakeraw(&t);
    t.c_cflag &= ~(tcflag_t)(CSIZE | PARENB | PARODD | CSTOPB | CRTSCTS);
    t.c_cflag |= CS8 | CREAD | CLOCAL; /* CLOCAL: no modem-status interrupts */
    if (cfg.parity[0] == 'e')
        t.c_cflag |= PARENB;
    else if (cfg.parity[0] == 'o')
        t.c_cflag |= PARENB | PARODD;
    if (cfg.stop == 2)
        t.c_cflag |= CSTOPB;
    t.c_iflag &= ~(tcflag_t)(INPCK | PARMRK | ISTRIP | IXON | IXOFF);
    t.c_cc[VMIN] = 0;
    t.c_cc[VTIME] = 0;
    speed_t speed;
    switch (cfg.baud) {
    case 1200: speed = B1200; break;
    case 2400: speed = B2400; break;
    case 4800: speed = B4800; break;
    case 9600: speed = B9600; break;
    case 19200: speed = B19200; break;
    case 38400: speed = B38400; break;
    case 57600: speed = B57600; break;
    case 115200: speed = B115200; break;
    default: speed = B9600; cfg.baud = 9600; emit("MDT-WARN bad-option key=baud"); break;
    }
    cfsetispeed(&t, speed);
    cfsetospeed(&t, speed);
    if (tcsetattr(p->fd, TCSANOW, &t) < 0)
        return -errno;
    tcflush(p->fd, TCIOFLUSH);

    p->type = -1;
    p->regs_reason = "off";
    struct serial_struct ss;
    if (ioctl(p->fd, TIOCGSERIAL, &ss) == 0) {
        p->type = ss.type;
        p->irq = ss.irq;
        p->baud_base = ss.baud_base;
        p->io = ss.port;
        p->divisor = ss.baud_base > 0 ? (ss.baud_base + cfg.baud / 2) / cfg.baud : 0;
        if (!cfg.regs)
            p->regs_reason = "off";
        else if (ss.io_type != SERIAL_IO_PORT || ss.port == 0)
            p->regs_reason = "not-io-port";
        else if (devport_fd < 0)
            p->regs_reason = "no-dev-port";
        else {
            p->regs = 1;
            p->regs_reason = "";
        }
    } else {
        p->regs_reason = "no-serial-info";
    }
    p->last_progress = now_ns();
    return 0;
}

static int reg_read(const struct port *p, unsigned off, uint8_t *v)
{
    return pread(devport_fd, v, 1, (off_t)(p->io + off)) == 1 ? 0 : -1;
}

static int reg_write(const struct port *p, unsigned off, uint8_t v)
{
    return pwrite(devport_fd, &v, 1, (off_t)(p->io + off)) == 1 ? 0 : -1;
}

/* ------------------------------------------------------------------------------------------ */
/* The stream                                                                                   */

static void detail(struct port *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void detail(struct port *p, const char *fmt, ...)
{
    if (p->details++ >= MAX_ERROR_DETAILS)
        return;
    char what[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    emit("MDT-MTTY-ERR port=%s %s", p->name, what);
}

static uint64_t errors(const struct port *p)
{
    return p->bad + p->lost + p->dup + p->extra;
}

/* Checks one received byte against the stream; classifies what went wrong. */
static void receive(struct port *p, uint8_t b)
{
    if (p->next_rx >= p->tx) {
        p->extra++;
        detail(p, "kind=extra index=%llu got=0x%02x", (unsigned long long)p->next_rx, b);
        return;
    }
    uint64_t i = p->next_rx;
    if (b == pattern(p->k, i)) {
        p->rx++;
        p->next_rx++;
        return;
    }
    if (i > 0 && b == pattern(p->k, i - 1)) { /* the previous byte again */
        p->dup++;
        detail(p, "kind=dup index=%llu got=0x%02x", (unsigned long long)(i - 1), b);
        return;
    }
    uint64_t inflight = p->tx - i;
    for (uint64_t skip = 1; skip < inflight && skip <= 16; skip++) {
        if (b == pattern(p->k, i + skip)) { /* bytes i .. i+skip-1 never came back */
            p->lost += skip;
            p->rx++;
            p->next_rx = i + skip + 1;
            detail(p, "kind=lost index=%llu count=%llu", (unsigned long long)i,
                   (unsigned long long)skip);
            return;
        }
    }
    p->bad++;
    p->next_rx++;
    detail(p, "kind=bad index=%llu expected=0x%02x got=0x%02x", (unsigned long long)i,
           pattern(p->k, i), b);
}

static void port_read(struct port *p, uint64_t now)
{
    uint8_t buf[512];
    for (;;) {
        ssize_t n = read(p->fd, buf, sizeof buf);
        if (n > 0) {
            for (ssize_t j = 0; j < n; j++)
                receive(p, buf[j]);
            p->last_progress = now;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        return; /* EAGAIN or nothing */
    }
}

static uint64_t inflight(const struct port *p)
{
    return p->tx > p->next_rx ? p->tx - p->next_rx : 0;
}

/*
 * Whole chunks only, into a window with room for them. mtty's loopback FIFO (16 bytes) raises
 * its receive interrupt only when its fill level becomes exactly the trigger level (8 with the
 * FIFO setting Linux uses for a 16550A), and a full FIFO reads as empty (head == tail: no DR in
 * LSR, so the driver never drains it). With window = chunk = 8 every write fills an empty FIFO
 * to exactly 8: one interrupt, drained at once, never full.
 */
static void port_write(struct port *p, uint64_t now)
{
    if (inflight(p) >= (uint64_t)cfg.window)
        return;
    uint64_t room = (uint64_t)cfg.window - inflight(p);
    if (room < (uint64_t)cfg.chunk)
        return;
    size_t n = (size_t)cfg.chunk;
    uint8_t buf[4096];
    for (size_t j = 0; j < n; j++)
        buf[j] = pattern(p->k, p->tx + j);
    if (inflight(p) == 0)
        p->last_progress = now; /* the stall clock starts with the first byte in flight */
    ssize_t w = write(p->fd, buf, n);
    if (w > 0)
        p->tx += (uint64_t)w;
}

static void check_stall(struct port *p, uint64_t now)
{
    uint64_t n = inflight(p);
    if (n == 0 || now - p->last_progress < (uint64_t)cfg.stall_ms * 1000000ull)
        return;
    /* Give the bytes in flight up, so the stream goes on; late ones then count as extra. */
    p->stalls++;
    p->lost += n;
    detail(p, "kind=stall index=%llu count=%llu ms=%llu", (unsigned long long)p->next_rx,
           (unsigned long long)n, (unsigned long long)((now - p->last_progress) / 1000000ull));
    p->next_rx = p->tx;
    p->last_progress = now;
}

/* ------------------------------------------------------------------------------------------ */
/* Reports                                                                                      */

static void report(struct port *p, int quiet)
{
    char regs[384] = "";
    p->reports++;
    if (p->regs) {
        uint8_t ier, iir, lcr, mcr, lsr, msr, scr;
        if (reg_read(p, REG_IER, &ier) || reg_read(p, REG_IIR, &iir) ||
            reg_read(p, REG_LCR, &lcr) || reg_read(p, REG_MCR, &mcr) ||
            reg_read(p, REG_LSR, &lsr) || reg_read(p, REG_MSR, &msr) ||
            reg_read(p, REG_SCR, &scr)) {
            snprintf(regs, sizeof regs, " regs=none reason=read-errno-%d", errno);
        } else {
            if (!p->have_base) {
                p->have_base = 1;
                p->base_lcr = lcr;
                p->base_ier = ier;
                p->base_mcr = mcr;
            } else if (lcr != p->base_lcr || ier != p->base_ier || mcr != p->base_mcr) {
                p->reg_changes++;
                detail(p, "kind=register lcr=0x%02x/0x%02x ier=0x%02x/0x%02x mcr=0x%02x/0x%02x",
                       lcr, p->base_lcr, ier, p->base_ier, mcr, p->base_mcr);
            }
            /* The scratch register keeps what was written last: check it, then move it on. */
            if (p->scr_set && scr != p->scr) {
                p->scr_err++;
                detail(p, "kind=scratch expected=0x%02x got=0x%02x", p->scr, scr);
            }
            uint8_t next = (uint8_t)(p->reports * 37u + p->k * 101u + 1u);
            if (next == 0)
                next = 0xa5; /* never the reset value: a register that was lost must show */
            uint8_t back = 0;
            if (reg_write(p, REG_SCR, next) == 0 && reg_read(p, REG_SCR, &back) == 0 &&
                back == next) {
                p->scr_set = 1;
                p->scr = next;
            } else {
                p->scr_set = 0;
                p->scr_err++;
                detail(p, "kind=scratch-write wrote=0x%02x got=0x%02x", next, back);
            }
            snprintf(regs, sizeof regs,
                     " lcr=0x%02x ier=0x%02x iir=0x%02x mcr=0x%02x lsr=0x%02x msr=0x%02x"
                     " scr=0x%02x scr_next=0x%02x scr_err=%llu reg_changes=%llu",
                     lcr, ier, iir, mcr, lsr, msr, scr, p->scr, (unsigned long long)p->scr_err,
                     (unsigned long long)p->reg_changes);
        }
    } else {
        snprintf(regs, sizeof regs, " regs=none reason=%s", p->regs_reason);
    }
    emit("MDT-MTTY n=%llu port=%s pci=%s tx=%llu rx=%llu err=%llu bad=%llu lost=%llu dup=%llu"
         " extra=%llu stalls=%llu inflight=%llu quiet=%d%s div=%ld baud=%ld t=%llu",
         (unsigned long long)p->reports, p->name, p->pci, (unsigned long long)p->tx,
         (unsigned long long)p->rx, (unsigned long long)(errors(p) + p->scr_err + p->reg_changes),
         (unsigned long long)p->bad, (unsigned long long)p->lost, (unsigned long long)p->dup,
         (unsigned long long)p->extra, (unsigned long long)p->stalls,
         (unsigned long long)inflight(p), quiet, regs, p->divisor, cfg.baud,
         (unsigned long long)now_ns());
}

/* ------------------------------------------------------------------------------------------ */

static int print_pattern(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: %s --pattern PORT INDEX COUNT\n", argv[0]);
        return 2;
    }
    unsigned k = (unsigned)strtoul(argv[2], NULL, 10);
    unsigned long long start = strtoull(argv[3], NULL, 10), count = strtoull(argv[4], NULL, 10);
    for (unsigned long long i = 0; i < count; i++)
        printf("%02x", pattern(k, start + i));
    printf("\n");
    return 0;
}

static pid_t start_heartbeat(void)
{
    if (cfg.hb_ms <= 0)
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() == 1)
            _exit(0);
        hb_run();
        _exit(0);
    }
    return pid;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--pattern") == 0)
        return print_pattern(argc, argv);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    load_cmdline();
    for (int i = 1; i < argc; i++)
        apply_token(argv[i], "");
    if (strcmp(cfg.console, "-") != 0) {
        int fd = open(cfg.console, O_WRONLY | O_NOCTTY | O_CLOEXEC);
        if (fd >= 0)
            out_fd = fd;
        else
            emit("MDT-WARN console-open-failed path=%s errno=%d", cfg.console, errno);
    }
    if (cfg.chunk > cfg.window)
        cfg.chunk = cfg.window;
    if (cfg.regs)
        devport_fd = open("/dev/port", O_RDWR | O_CLOEXEC);

    pid_t hb = start_heartbeat();

    int by_pci = strcmp(cfg.ports, "auto") == 0;
    uint64_t deadline = now_ns() + (uint64_t)cfg.wait_ms * 1000000ull;
    for (;;) {
        nports = by_pci ? find_ports_by_pci() : find_ports_by_list();
        if (nports > 0 || !by_pci || now_ns() >= deadline || stop_requested)
            break;
        usleep(100000);
    }

    char names[256] = "";
    unsigned usable = 0;
    for (unsigned i = 0; i < nports; i++) {
        struct port *p = &ports[i];
        p->k = i;
        int rc = setup_port(p);
        if (rc < 0) {
            emit("MDT-WARN port-setup-failed port=%s errno=%d", p->name, -rc);
            if (p->fd >= 0)
                close(p->fd);
            p->fd = -1;
            continue;
        }
        usable++;
        if (strlen(names) + strlen(p->name) + 2 < sizeof names) {
            if (names[0])
                strcat(names, ",");
            strcat(names, p->name);
        }
    }
    emit("MDT-READY ports=%s%s hb_ms=%ld report_ms=%ld baud=%ld parity=%c stop=%ld window=%ld"
         " chunk=%ld stall_ms=%ld version=%d",
         usable ? names : "none", usable ? "" : (by_pci ? " reason=no-mtty-port" : " reason=open"),
         cfg.hb_ms, cfg.report_ms, cfg.baud, cfg.parity[0], cfg.stop, cfg.window, cfg.chunk,
         cfg.stall_ms, MDT_MTTY_VERSION);
    for (unsigned i = 0; i < nports; i++) {
        struct port *p = &ports[i];
        if (p->fd < 0)
            continue;
        emit("MDT-MTTY-PORT port=%s pci=%s type=%s io=0x%x irq=%d baud_base=%d div=%ld regs=%s",
             p->name, p->pci, uart_type_name(p->type), p->io, p->irq, p->baud_base, p->divisor,
             p->regs ? "1" : p->regs_reason);
    }

    uint64_t period = (uint64_t)cfg.report_ms * 1000000ull;
    uint64_t next_report = now_ns() + period, quiet_since = 0;
    int quiescing = 0;
    while (!stop_requested && usable > 0) {
        uint64_t now = now_ns();
        if (!quiescing && now >= next_report) {
            quiescing = 1; /* stop writing; report once the bytes in flight are back */
            quiet_since = now;
        }
        if (quiescing) {
            int idle = 1;
            for (unsigned i = 0; i < nports; i++)
                if (ports[i].fd >= 0 && inflight(&ports[i]) > 0)
                    idle = 0;
            if (idle || now - quiet_since >= (uint64_t)cfg.quiet_ms * 1000000ull) {
                for (unsigned i = 0; i < nports; i++)
                    if (ports[i].fd >= 0)
                        report(&ports[i], idle);
                quiescing = 0;
                next_report += period;
                if (now > next_report)
                    next_report = now + period;
            }
        }

        struct pollfd pfd[MAX_PORTS];
        for (unsigned i = 0; i < nports; i++) {
            pfd[i].fd = ports[i].fd;
            pfd[i].events = POLLIN;
            if (!quiescing && inflight(&ports[i]) < (uint64_t)cfg.window)
                pfd[i].events |= POLLOUT;
            pfd[i].revents = 0;
        }
        int timeout = 20;
        if (!quiescing) {
            uint64_t left = next_report > now ? (next_report - now) / 1000000ull : 0;
            timeout = left < 100 ? (int)left : 100;
        }
        if (poll(pfd, nports, timeout) < 0 && errno != EINTR)
            break;
        now = now_ns();
        for (unsigned i = 0; i < nports; i++) {
            struct port *p = &ports[i];
            if (p->fd < 0)
                continue;
            if (pfd[i].revents & (POLLIN | POLLERR | POLLHUP))
                port_read(p, now);
            if (pfd[i].revents & POLLOUT)
                port_write(p, now);
            check_stall(p, now);
        }
    }

    if (usable == 0)
        while (!stop_requested)
            pause(); /* keep the heartbeat: the guest is alive, it just has no mtty port */
    if (hb > 0) { /* first, so that the last lines are the final counters and MDT-EXIT */
        kill(hb, SIGTERM);
        waitpid(hb, NULL, 0);
    }
    for (unsigned i = 0; i < nports; i++)
        if (ports[i].fd >= 0)
            report(&ports[i], inflight(&ports[i]) == 0);
    emit("MDT-EXIT reason=%s", stop_requested ? "signal" : "error");
    return 0;
}
