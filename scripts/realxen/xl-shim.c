/*
 * Host-side `xl`: runs `xl ARGS` in the emulated dom0 and gives back its stdout, stderr and exit
 * status, so that the xl backend runs unchanged on the host (--xl-path names this program).
 *
 * Installed as <run dir>/xl beside the machine's control socket <run dir>/xlctl.sock, a QEMU
 * virtio-serial port that dom0's /init serves (dom0-init.sh has the protocol). One command at a
 * time: QEMU's socket takes one client and dom0 answers in order, so concurrent callers (the
 * server's workers, its poll thread, a test) queue on a lock file. File arguments need no
 * shipping: the host directories the backend uses are shared into dom0 over 9p at the same paths.
 *
 * Written in C because every backend action costs several xl calls: a Python shim spent a third
 * of each call (~0.1 s) starting its interpreter.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static const char SAVE_FIFO[] = "/run/realxen-save.fifo";

/* Append ARG to OUT as one shell word. */
static void quote(FILE *out, const char *arg)
{
    fputc('\'', out);
    for (const char *p = arg; *p; p++) {
        if (*p == '\'')
            fputs("'\\''", out);
        else if (*p == '\n')
            fputc(' ', out); /* the protocol is line-based; xl takes no argument with a newline */
        else
            fputc(*p, out);
    }
    fputc('\'', out);
}

static void quote_argv(FILE *out, int argc, char **argv, int replace, const char *with)
{
    fputs("xl", out);
    for (int i = 1; i < argc; i++) {
        fputc(' ', out);
        quote(out, i == replace ? with : argv[i]);
    }
}

/*
 * The dom0 shell line for `xl ARGS`. `xl save` writes guest memory straight from its mapping of
 * the guest's pages, which 9p cannot take (its zero-copy path fails with EFAULT on foreign
 * mappings): the image goes through a FIFO that a `cat` copies to the shared path named, as it is
 * written (4x faster than writing it to dom0's tmpfs first, and no 128 MiB in dom0's memory).
 */
static char *remote_command(int argc, char **argv)
{
    char *line = NULL;
    size_t size = 0;
    FILE *out = open_memstream(&line, &size);
    int target = 0, positional = 0;
    if (argc > 1 && strcmp(argv[1], "save") == 0)
        for (int i = 2; i < argc && !target; i++)
            if (argv[i][0] != '-' && ++positional == 2)
                target = i;
    if (!target) {
        quote_argv(out, argc, argv, 0, NULL);
    } else {
        fprintf(out, "rm -f %s; mkfifo %s || exit 1; cat %s > ", SAVE_FIFO, SAVE_FIFO, SAVE_FIFO);
        quote(out, argv[target]);
        fputs(" & copy=$!; ", out);
        quote_argv(out, argc, argv, target, SAVE_FIFO);
        /* a save that fails before opening the FIFO leaves cat waiting for a writer: stop it */
        fputs("; rc=$?; [ $rc = 0 ] || kill $copy 2>/dev/null; wait $copy 2>/dev/null || rc=1; ", out);
        fprintf(out, "rm -f %s; [ $rc = 0 ] || rm -f ", SAVE_FIFO);
        quote(out, argv[target]);
        fputs("; exit $rc", out);
    }
    fclose(out);
    return line;
}

static int connect_machine(const char *path)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof addr.sun_path) {
        fprintf(stderr, "xl shim: socket path too long: %s\n", path);
        return -1;
    }
    strcpy(addr.sun_path, path);
    struct timespec pause = {0, 50 * 1000 * 1000};
    for (int tries = 0; tries < 200; tries++) { /* QEMU may still be starting: 10 s */
        int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (s < 0)
            break;
        if (connect(s, (struct sockaddr *)&addr, sizeof addr) == 0)
            return s;
        int err = errno;
        close(s);
        if (err != ECONNREFUSED && err != ENOENT && err != EAGAIN)
            break;
        nanosleep(&pause, NULL);
    }
    fprintf(stderr, "xl shim: cannot reach the Xen machine at %s (is QEMU running?)\n", path);
    return -1;
}

int main(int argc, char **argv)
{
    char exe[PATH_MAX], sock[PATH_MAX], lock[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n < 0) {
        perror("xl shim: /proc/self/exe");
        return 255;
    }
    exe[n] = '\0';
    const char *dir = dirname(exe);
    snprintf(sock, sizeof sock, "%s/xlctl.sock", dir);
    snprintf(lock, sizeof lock, "%s/xl.lock", dir);
    const char *limit = getenv("XEND_REALXEN_XL_TIMEOUT");
    int timeout = limit ? atoi(limit) : 120;

    int lockfd = open(lock, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (lockfd < 0 || flock(lockfd, LOCK_EX) < 0) {
        perror("xl shim: lock");
        return 255;
    }
    int s = connect_machine(sock);
    if (s < 0)
        return 255;
    struct timeval tv = {.tv_sec = timeout};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);

    /* a token of ours: the late answer of a client that gave up is skipped by it */
    char token[64];
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    snprintf(token, sizeof token, "%d.%ld%09ld", (int)getpid(), (long)now.tv_sec, now.tv_nsec);
    char *command = remote_command(argc, argv);
    FILE *io = fdopen(s, "r+");
    fprintf(io, "%s %s\n", token, command);
    fflush(io);

    char *out = NULL, *err = NULL, *line = NULL;
    size_t out_size = 0, err_size = 0, line_size = 0;
    FILE *out_f = open_memstream(&out, &out_size), *err_f = open_memstream(&err, &err_size);
    size_t tlen = strlen(token);
    while ((errno = 0, getline(&line, &line_size, io)) >= 0) {
        if (strncmp(line, "@@RC ", 5) == 0) {
            if (strncmp(line + 5, token, tlen) != 0 || line[5 + tlen] != ' ') {
                rewind(out_f); /* not our answer: forget what came before it */
                rewind(err_f);
                continue;
            }
            long out_len = ftell(out_f), err_len = ftell(err_f);
            fflush(out_f);
            fflush(err_f);
            fwrite(out, 1, out_len, stdout);
            fwrite(err, 1, err_len, stderr);
            return atoi(line + 5 + tlen + 1);
        }
        if (strncmp(line, "O ", 2) == 0)
            fputs(line + 2, out_f);
        else if (strncmp(line, "E ", 2) == 0)
            fputs(line + 2, err_f);
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK)
        fprintf(stderr, "xl shim: no answer from the Xen machine within %d s\n", timeout);
    else
        fprintf(stderr, "xl shim: the Xen machine closed the channel without an exit status\n");
    return 255;
}
