/* A stateful HTTP/1.1 server for checkpoint tests: the counter lives only in
 * memory, so a restored process that answers with the next number proves its
 * memory came back. Usage: counter_server ADDR PORT MEM_MIB [rand|zero|mixed]
 * ADDR may be IPv4 or IPv6 ("0.0.0.0", "::", "198.18.1.2", ...). Keep-alive
 * connections serve many requests, so an established connection can be
 * checkpointed mid-conversation. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAXC 64

static unsigned long counter;
static char buf[MAXC][4096];
static size_t fill[MAXC];

static void ballast(size_t mib, const char *mode) {
    size_t n = mib << 20;
    unsigned char *p = malloc(n ? n : 1);
    uint64_t x = 88172645463325252ULL;
    if (!p) { perror("malloc"); exit(1); }
    for (size_t i = 0; i < n; i += 8) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        int random_half = strcmp(mode, "rand") == 0 ||
                          (strcmp(mode, "mixed") == 0 && (i & 4095) < 2048);
        uint64_t v = random_half ? x : (strcmp(mode, "zero") == 0 ? 0 : i);
        memcpy(p + i, &v, n - i < 8 ? n - i : 8);
    }
}

static int listener(const char *addr, int port) {
    struct sockaddr_storage ss;
    socklen_t len;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, addr, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET; a4->sin_port = htons(port); len = sizeof *a4;
    } else if (inet_pton(AF_INET6, addr, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6; a6->sin6_port = htons(port); len = sizeof *a6;
    } else {
        fprintf(stderr, "bad address %s\n", addr); exit(2);
    }
    int fd = socket(ss.ss_family, SOCK_STREAM, 0), one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    /* The address may not be configured yet when the pod starts. */
    for (int i = 0; bind(fd, (struct sockaddr *)&ss, len) != 0; i++) {
        if (i > 100) { perror("bind"); exit(1); }
        usleep(50000);
    }
    if (listen(fd, 64) != 0) { perror("listen"); exit(1); }
    return fd;
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: %s ADDR PORT MEM_MIB [mode]\n", argv[0]); return 2; }
    ballast((size_t)atol(argv[3]), argc > 4 ? argv[4] : "mixed");
    struct pollfd pf[MAXC + 1];
    pf[0].fd = listener(argv[1], atoi(argv[2]));
    pf[0].events = POLLIN;
    for (int i = 1; i <= MAXC; i++) pf[i].fd = -1;
    for (;;) {
        for (int i = 1; i <= MAXC; i++) pf[i].events = POLLIN;
        if (poll(pf, MAXC + 1, -1) < 0) { if (errno == EINTR) continue; return 1; }
        if (pf[0].revents & POLLIN) {
            int c = accept(pf[0].fd, NULL, NULL);
            for (int i = 1; c >= 0 && i <= MAXC; i++)
                if (pf[i].fd < 0) { pf[i].fd = c; fill[i - 1] = 0; c = -1; }
            if (c >= 0) close(c);
        }
        for (int i = 1; i <= MAXC; i++) {
            if (pf[i].fd < 0 || !(pf[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            char *b = buf[i - 1];
            ssize_t r = read(pf[i].fd, b + fill[i - 1], sizeof buf[0] - 1 - fill[i - 1]);
            if (r <= 0) { close(pf[i].fd); pf[i].fd = -1; continue; }
            fill[i - 1] += r; b[fill[i - 1]] = 0;
            char *end;
            while ((end = strstr(b, "\r\n\r\n")) != NULL) {
                char body[32], out[128];
                int bl = snprintf(body, sizeof body, "%lu\n", ++counter);
                int ol = snprintf(out, sizeof out,
                    "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Type: text/plain\r\n\r\n%s",
                    bl, body);
                if (write(pf[i].fd, out, ol) != ol) break;
                size_t used = end + 4 - b;
                memmove(b, end + 4, fill[i - 1] - used + 1);
                fill[i - 1] -= used;
            }
            if (fill[i - 1] >= sizeof buf[0] - 1) { close(pf[i].fd); pf[i].fd = -1; }
        }
    }
}
