// Baselines for the agent benchmark, measured with no protocol in the way:
//   peer echo PATH        serve one connection on a unix socket, echoing every read back
//   peer pump PATH BYTES  serve one connection, write BYTES zero bytes as fast as possible
//   peer spawn N          fork/exec/wait `true` N times; print the median in nanoseconds
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int serve_one(const char *path) {
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
  int s = socket(AF_UNIX, SOCK_STREAM, 0);
  unlink(path);
  if (s < 0 || bind(s, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(s, 1) < 0) {
    perror(path);
    exit(1);
  }
  printf("ready\n");
  fflush(stdout);
  int c = accept(s, NULL, NULL);
  close(s);
  unlink(path);
  return c;
}

static int cmp(const void *a, const void *b) {
  long long x = *(const long long *)a, y = *(const long long *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "echo") == 0) {
    int c = serve_one(argv[2]);
    char buf[65536];
    ssize_t n;
    while ((n = read(c, buf, sizeof buf)) > 0)
      if (write(c, buf, (size_t)n) != n) break;
    return 0;
  }
  if (argc == 4 && strcmp(argv[1], "pump") == 0) {
    int c = serve_one(argv[2]);
    long long left = atoll(argv[3]);
    static char buf[65536];
    while (left > 0) {
      ssize_t n = write(c, buf, left < (long long)sizeof buf ? (size_t)left : sizeof buf);
      if (n <= 0) return 1;
      left -= n;
    }
    return 0;
  }
  if (argc == 3 && strcmp(argv[1], "spawn") == 0) {
    int n = atoi(argv[2]);
    long long *t = calloc((size_t)n, sizeof *t);
    char *args[] = {"true", NULL}, *env[] = {NULL};
    for (int i = 0; i < n; i++) {
      struct timespec a, b;
      clock_gettime(CLOCK_MONOTONIC, &a);
      pid_t p = fork();
      if (p == 0) {
        execve("/bin/true", args, env);
        _exit(127);
      }
      waitpid(p, NULL, 0);
      clock_gettime(CLOCK_MONOTONIC, &b);
      t[i] = (b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec);
    }
    qsort(t, (size_t)n, sizeof *t, cmp);
    printf("%lld\n", t[n / 2]);
    return 0;
  }
  fprintf(stderr, "usage: peer echo PATH | pump PATH BYTES | spawn N\n");
  return 2;
}
