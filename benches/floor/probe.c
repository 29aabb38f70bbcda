/* Peak memory of one command, exactly:
 *
 *   probe PROGRAM [ARGS...] < input     prints "PEAK ANON FILE" in KiB: the child's resident
 *                                       memory as it exits, all of it, anonymous and file-backed
 *
 * Why not getrusage's ru_maxrss: it also charges the parent's pre-exec memory to the child, and
 * since Linux 6.2 it reads per-CPU counters that lag by up to 32 pages per CPU and kind (a
 * 60 KiB static program reads 0 on this machine's 6.18 kernel). Before 6.2 the counters behind
 * /proc/PID/status (VmRSS, VmHWM, RssAnon, RssFile) lag too: each thread keeps its own and adds
 * them to the process's every 64 page faults, and with fault-around mapping 16 pages per fault
 * a whole program can be read short (the lab's Linux 6.1 guests: a helper read 1940 kB there
 * and 2212 kB for an idle daemon whose page tables held 3560). /proc/PID/smaps_rollup walks the
 * page tables: exact. So the child runs under ptrace, stopped at its exit (PTRACE_O_TRACEEXIT)
 * with its memory still mapped, and the probe reads smaps_rollup's Rss and Anonymous there;
 * PEAK is the larger of that Rss and VmHWM (a program that unmapped memory before exiting).
 * Nothing of the probe is counted: the child is a fork, and exec gives it a fresh address space.
 * The child's stdout and stderr go to /dev/null; its stdin is ours.
 * Static musl, built by scripts/bench (zig cc) for the host and for the lab's guests. */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/wait.h>
#include <unistd.h>

static long field(const char *text, const char *name) {
    const char *at = strstr(text, name);
    return at ? strtol(at + strlen(name), 0, 10) : -1;
}

/* Reads /proc/PID/NAME into text (NUL-terminated); 0 on failure. */
static int slurp(pid_t pid, const char *name, char *text, size_t size) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/%s", (int)pid, name);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return 0;
    size_t len = 0;
    ssize_t n;
    while (len < size - 1 && (n = read(fd, text + len, size - 1 - len)) > 0) len += (size_t)n;
    close(fd);
    text[len] = 0;
    return len > 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fputs("usage: probe PROGRAM [ARGS...]\n", stderr);
        return 2;
    }
    pid_t pid = fork();
    if (pid < 0) return 1;
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        if (null < 0 || dup2(null, 1) < 0 || dup2(null, 2) < 0) _exit(126);
        if (ptrace(PTRACE_TRACEME, 0, 0, 0) != 0) _exit(126);
        execv(argv[1], argv + 1);
        _exit(127);
    }
    int status;
    /* Stopped by SIGTRAP at exec: from here on the stop at its exit. */
    if (waitpid(pid, &status, 0) != pid || !WIFSTOPPED(status)) return 1;
    if (ptrace(PTRACE_SETOPTIONS, pid, 0, (void *)PTRACE_O_TRACEEXIT) != 0) return 1;
    long peak = -1, anon = -1, file = -1;
    int sig = 0;
    for (;;) {
        if (ptrace(PTRACE_CONT, pid, 0, (void *)(long)sig) != 0) return 1;
        if (waitpid(pid, &status, 0) != pid) return 1;
        if (WIFEXITED(status) || WIFSIGNALED(status)) break;
        sig = 0;
        if (status >> 8 == (SIGTRAP | (PTRACE_EVENT_EXIT << 8))) {
            char text[4096];
            long hwm = slurp(pid, "status", text, sizeof text) ? field(text, "VmHWM:") : -1;
            if (slurp(pid, "smaps_rollup", text, sizeof text)) {
                long rss = field(text, "\nRss:");
                anon = field(text, "\nAnonymous:");
                if (rss >= 0 && anon >= 0) {
                    file = rss - anon;
                    peak = rss > hwm ? rss : hwm;
                }
            }
        } else if (WIFSTOPPED(status) && WSTOPSIG(status) != SIGTRAP) {
            sig = WSTOPSIG(status); /* a signal for the child: pass it on */
        }
    }
    if (peak < 0) return 1;
    printf("%ld %ld %ld\n", peak, anon, file);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 3;
}
