// connect_loop — times connect() to a local non-target TCP port.
//
//   connect_loop serve ADDR PORT         accept and close connections forever
//   connect_loop ADDR PORT ITERATIONS    the timed client
//
// The client, ITERATIONS times: socket(), connect() (timed alone,
// CLOCK_MONOTONIC), close() with SO_LINGER 0 (a reset: no TIME_WAIT, no port
// exhaustion). Prints the median and mean nanoseconds of connect():
//   median_ns=<n> mean_ns=<n> iterations=<n>
// scripts/bench runs the server outside any agent cgroup and the client once
// in an attached agent cgroup and once outside: the difference is what the
// cgroup/connect4 and sockops programs add to an agent's connection that is
// not to a target. On loopback the three-way handshake completes inside
// connect(), so the client-side sockops callbacks are inside the timed span.
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int listener;

static void acceptor(void) {
  for (;;) {
    int c = accept(listener, NULL, NULL);
    if (c < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      return;
    }
    close(c);
  }
}

static int cmp(const void* a, const void* b) {
  uint64_t x = *(const uint64_t*)a, y = *(const uint64_t*)b;
  return x < y ? -1 : x > y;
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int main(int argc, char** argv) {
  int serve = argc == 4 && strcmp(argv[1], "serve") == 0;
  if (argc != 4) {
    fprintf(stderr, "usage: %s serve ADDR PORT | %s ADDR PORT ITERATIONS\n", argv[0], argv[0]);
    return 2;
  }
  if (serve) {
    argv++;
  }
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)atoi(argv[2]));
  if (inet_pton(AF_INET, argv[1], &sa.sin_addr) != 1) {
    fprintf(stderr, "bad address %s\n", argv[1]);
    return 2;
  }
  if (serve) {
    listener = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(listener, (struct sockaddr*)&sa, sizeof sa) != 0 || listen(listener, 4096) != 0) {
      perror("listen");
      return 1;
    }
    printf("listening\n");
    fflush(stdout);
    acceptor();
    return 1;
  }
  long n = atol(argv[3]);
  if (n <= 0) return 2;

  uint64_t* samples = calloc((size_t)n, sizeof *samples);
  if (!samples) return 1;
  struct linger lg = {1, 0};
  uint64_t total = 0;
  for (long i = 0; i < n; ++i) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0) {
      perror("socket");
      return 1;
    }
    uint64_t t0 = now_ns();
    int rc = connect(s, (struct sockaddr*)&sa, sizeof sa);
    uint64_t t1 = now_ns();
    if (rc != 0) {
      perror("connect");
      return 1;
    }
    setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(s);
    samples[i] = t1 - t0;
    total += t1 - t0;
  }
  qsort(samples, (size_t)n, sizeof *samples, cmp);
  printf("median_ns=%llu mean_ns=%llu iterations=%ld\n", (unsigned long long)samples[n / 2],
         (unsigned long long)(total / (uint64_t)n), n);
  return 0;
}
