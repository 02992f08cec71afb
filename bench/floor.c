/*
 * The floor for the agent's CPU per sample: a program that does only what
 * no collector can avoid, on the same schedule as the agent.
 *
 * Every INTERVAL_MS (a fixed schedule, clock_nanosleep to absolute times,
 * like the agent's start + n x interval) it re-reads each FILE from offset
 * 0 with pread into a buffer kept between ticks (one pread when the read is
 * shorter than the buffer, the way the agent reads files the kernel
 * produces whole; until pread returns 0 for the others) and statvfs()es
 * each PATH given with -s. Nothing is parsed, nothing is sent. Runs COUNT
 * ticks (0: until killed), then exits 0.
 *
 * bench/cpu-per-sample.sh (from bench/run.sh) compiles it with cc -O2 and
 * runs it beside the agent; the
 * agent's CPU per sample divided by this program's, in the same window, is
 * the ratio BENCHMARKS.md reports.
 *
 * With -n BYTES it is the floor of collecting AND sending: after the reads
 * it write()s BYTES bytes to a TCP connection on loopback (TCP_NODELAY, as
 * the agent's), whose other end is a child process that only reads them.
 * On loopback the kernel runs the receiver's TCP path (and the wake-up of
 * the reader) in the writer's context, as it does for the agent's batches
 * to the server, so this row is what one send per tick costs the kernel
 * with no user-space protocol at all. The child's CPU is not the floor's
 * (cpu-per-sample.sh counts the threads of the floor's own PID).
 *
 * Usage: floor INTERVAL_MS COUNT [-w FILE | -r FILE | -s PATH | -n BYTES]...
 *   -w FILE  a file produced whole (one pread)
 *   -r FILE  a file of records (pread until 0)
 *   -s PATH  a file system to statvfs
 *   -n BYTES one write of BYTES to a loopback TCP connection per tick
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#define MAX_ITEMS 64
#define BUFFER_BYTES 65536

struct item {
    char kind; /* 'w', 'r' or 's' */
    const char *path;
    int fd;
};

static char buffer[BUFFER_BYTES];
static char out_bytes[BUFFER_BYTES];

/* A TCP connection on loopback whose other end is a child that reads and
 * discards until the connection closes (this process exits): returns the
 * writing end, or -1. */
static int loopback_sink(void) {
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listener < 0)
        return -1;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = 0};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (bind(listener, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(listener, 1) < 0 ||
        getsockname(listener, (struct sockaddr *)&addr, &len) < 0)
        return -1;
    pid_t child = fork();
    if (child < 0)
        return -1;
    if (child == 0) {
        /* Gone with the floor, whatever kills it. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int conn = accept(listener, NULL, NULL);
        if (conn < 0)
            _exit(1);
        while (read(conn, buffer, sizeof buffer) > 0) {
        }
        _exit(0);
    }
    close(listener);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0 ||
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0)
        return -1;
    return fd;
}

static void read_item(const struct item *it) {
    if (it->kind == 's') {
        struct statvfs s;
        (void)statvfs(it->path, &s);
        return;
    }
    off_t offset = 0;
    for (;;) {
        ssize_t n = pread(it->fd, buffer, sizeof buffer, offset);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        offset += n;
        if (it->kind == 'w' && (size_t)n < sizeof buffer)
            return;
    }
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: floor INTERVAL_MS COUNT [-w FILE | -r FILE | -s PATH]...\n");
        return 2;
    }
    long interval_ms = strtol(argv[1], NULL, 10);
    long count = strtol(argv[2], NULL, 10);
    if (interval_ms <= 0 || count < 0) {
        fprintf(stderr, "floor: bad INTERVAL_MS or COUNT\n");
        return 2;
    }
    struct item items[MAX_ITEMS];
    int n_items = 0;
    long net_bytes = 0;
    for (int i = 3; i + 1 < argc && n_items < MAX_ITEMS; i += 2) {
        char kind = argv[i][0] == '-' ? argv[i][1] : 0;
        if (kind == 'n') {
            net_bytes = strtol(argv[i + 1], NULL, 10);
            if (net_bytes <= 0 || net_bytes > BUFFER_BYTES) {
                fprintf(stderr, "floor: -n expects 1 to %d bytes\n", BUFFER_BYTES);
                return 2;
            }
            continue;
        }
        if (kind != 'w' && kind != 'r' && kind != 's') {
            fprintf(stderr, "floor: unknown option %s\n", argv[i]);
            return 2;
        }
        items[n_items].kind = kind;
        items[n_items].path = argv[i + 1];
        items[n_items].fd = -1;
        if (kind != 's') {
            items[n_items].fd = open(argv[i + 1], O_RDONLY | O_CLOEXEC);
            if (items[n_items].fd < 0) {
                fprintf(stderr, "floor: cannot open %s: %s\n", argv[i + 1], strerror(errno));
                return 1;
            }
        }
        n_items++;
    }
    int sink = -1;
    if (net_bytes > 0) {
        sink = loopback_sink();
        if (sink < 0) {
            fprintf(stderr, "floor: loopback connection: %s\n", strerror(errno));
            return 1;
        }
        memset(out_bytes, 'x', sizeof out_bytes);
    }
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    for (long tick = 0; count == 0 || tick < count; tick++) {
        for (int i = 0; i < n_items; i++)
            read_item(&items[i]);
        if (sink >= 0 && write(sink, out_bytes, (size_t)net_bytes) < 0 && errno != EINTR) {
            fprintf(stderr, "floor: write: %s\n", strerror(errno));
            return 1;
        }
        next.tv_nsec += (interval_ms % 1000) * 1000000L;
        next.tv_sec += interval_ms / 1000 + next.tv_nsec / 1000000000L;
        next.tv_nsec %= 1000000000L;
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) == EINTR) {
        }
    }
    return 0;
}
