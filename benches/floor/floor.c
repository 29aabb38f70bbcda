/* The floor of a cached `get`: the least any credential helper can do, and nothing more.
 *
 *   floor ENTRY < registry       reads stdin (the registry's host), reads ENTRY (a token cache
 *                                entry: src/store/cache.rs), writes one Docker helper JSON line
 *   floor                        exits at once: the smallest static program (the probe's floor)
 *
 * Built static against musl with `zig cc -O2` by scripts/bench, like the shipping binary. No
 * checks a real helper must make (expiry, ownership, the daemon): it is a lower bound, not a
 * helper. benches/compare.rs times it beside `get` and reads its peak RSS with probe.c. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    char host[512], entry[4096], line[5120];
    if (argc < 2) return 0;
    ssize_t n = read(0, host, sizeof host - 1);
    if (n <= 0) return 1;
    while (n > 0 && (host[n - 1] == '\n' || host[n - 1] == '\r')) n--;
    host[n] = 0;
    int fd = open(argv[1], O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 1;
    ssize_t m = read(fd, entry, sizeof entry - 1);
    close(fd);
    if (m <= 0) return 1;
    entry[m] = 0;
    char *secret = strstr(entry, "\"password\":");
    if (!secret) return 1;
    secret += strlen("\"password\":");
    while (*secret == ' ') secret++;
    if (*secret++ != '"') return 1;
    char *end = strchr(secret, '"');
    if (!end) return 1;
    int len = snprintf(line, sizeof line,
                       "{\"ServerURL\":\"%s\",\"Username\":\"AWS\",\"Secret\":\"%.*s\"}\n", host,
                       (int)(end - secret), secret);
    if (len < 0 || (size_t)len >= sizeof line) return 1;
    return write(1, line, (size_t)len) == len ? 0 : 1;
}
