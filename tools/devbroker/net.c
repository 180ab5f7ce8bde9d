/* Loopback TCP helpers: address parsing, listening and connecting sockets. */
#include "net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int net_parse_addr(const char *text, struct sockaddr_in *addr)
{
    char host[64];
    const char *colon = strrchr(text, ':');
    char *end;
    long port;
    size_t hlen;

    if (colon == NULL)
        return -1;
    hlen = (size_t)(colon - text);
    if (hlen == 0 || hlen >= sizeof(host))
        return -1;
    memcpy(host, text, hlen);
    host[hlen] = '\0';
    errno = 0;
    port = strtol(colon + 1, &end, 10);
    if (errno != 0 || *end != '\0' || end == colon + 1 || port < 0 || port > 65535)
        return -1;
    memset(addr, 0, sizeof(*addr));
    addr->sin_family = AF_INET;
    addr->sin_port = htons((unsigned short)port);
    if (strcmp(host, "localhost") == 0)
        strcpy(host, "127.0.0.1");
    return inet_pton(AF_INET, host, &addr->sin_addr) == 1 ? 0 : -1;
}

int net_set_nonblock(int fd)
{
    int flags = fcntl(fd, F_GETFL);

    if (flags < 0)
        return -1;
    return fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

static int net_socket(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    if (fd < 0)
        return -1;
    if (net_set_nonblock(fd) < 0 || fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

int net_listen(struct sockaddr_in *addr, int backlog)
{
    socklen_t len = sizeof(*addr);
    int one = 1;
    int fd = net_socket();

    if (fd < 0)
        return -1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0
        || bind(fd, (const struct sockaddr *)addr, sizeof(*addr)) < 0
        || listen(fd, backlog) < 0
        || getsockname(fd, (struct sockaddr *)addr, &len) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

int net_accepted(int fd)
{
    int one = 1;

    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return net_set_nonblock(fd);
}

int net_connect_start(const struct sockaddr_in *addr)
{
    int one = 1;
    int fd = net_socket();

    if (fd < 0)
        return -1;
    /* Kafka requests are small and latency-bound: do not let Nagle hold them back. */
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, (const struct sockaddr *)addr, sizeof(*addr)) < 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

void net_format_addr(const struct sockaddr_in *addr, char *buf, size_t size)
{
    char host[INET_ADDRSTRLEN];

    if (inet_ntop(AF_INET, &addr->sin_addr, host, sizeof(host)) == NULL)
        strcpy(host, "?");
    snprintf(buf, size, "%s:%u", host, (unsigned)ntohs(addr->sin_port));
}
