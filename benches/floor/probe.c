/* Peak memory of one command, exactly:
 *
 *   probe PROGRAM [ARGS...] < input     prints "HWM ANON FILE": the child's VmHWM, RssAnon and
 *                                       RssFile in KiB, read from /proc/PID/status as it exits
 *
 * Why not getrusage's ru_maxrss: it also charges the parent's pre-exec memory to the child, and
 * since Linux 6.2 it reads per-CPU counters that lag by up to 32 pages per CPU and kind (a
 * 60 KiB static program reads 0 on this machine's 6.18 kernel). /proc/PID/status sums them
 * exactly. So the child runs under ptrace, stopped at its exit (PTRACE_O_TRACEEXIT) with its
 * memory still mapped, and nothing of the probe is counted: the child is a fork, and exec gives
 * it a fresh address space. The child's stdout and stderr go to /dev/null; its stdin is ours.
 * Static musl, built by scripts/bench (zig cc) for the host and for the lab's guests. */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/wait.h>
#include <unistd.h>

static long field(const char *status, const char *name) {
    const char *at = strstr(status, name);
    return at ? strtol(at + strlen(name), 0, 10) : -1;
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
    long hwm = -1, anon = -1, file = -1;
    int sig = 0;
    for (;;) {
        if (ptrace(PTRACE_CONT, pid, 0, (void *)(long)sig) != 0) return 1;
        if (waitpid(pid, &status, 0) != pid) return 1;
        if (WIFEXITED(status) || WIFSIGNALED(status)) break;
        sig = 0;
        if (status >> 8 == (SIGTRAP | (PTRACE_EVENT_EXIT << 8))) {
            char path[64], text[4096];
            snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
            int fd = open(path, O_RDONLY);
            ssize_t n = fd < 0 ? -1 : read(fd, text, sizeof text - 1);
            if (fd >= 0) close(fd);
            if (n > 0) {
                text[n] = 0;
                hwm = field(text, "VmHWM:");
                anon = field(text, "RssAnon:");
                file = field(text, "RssFile:");
            }
        } else if (WIFSTOPPED(status) && WSTOPSIG(status) != SIGTRAP) {
            sig = WSTOPSIG(status); /* a signal for the child: pass it on */
        }
    }
    if (hwm < 0) return 1;
    printf("%ld %ld %ld\n", hwm, anon, file);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 3;
}
