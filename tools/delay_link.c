// A link with the latency and rate you choose, in user space, for kernels
// without the netem qdisc (tools/netns_hosts.py routes the hosts' data
// traffic through it). Every IPv4 packet the kernel routes into the TUN
// device DEV is held until it has crossed a link of RATE_GBIT (0: unlimited)
// and then DELAY_US microseconds, and written back into DEV, from where the
// kernel routes it on to its destination.
//
//   delay_link DEV DELAY_US[,DELAY_US...] RATE_GBIT
//
// With several delays, the first holds until SIGUSR1 moves on to the next
// (after the last, back to the first): a benchmark then measures the same job
// at each latency in turn, round by round. Packets leave in arrival order. It
// runs until SIGTERM, then prints how many packets it forwarded and how many
// it had to drop because its queue was full (TCP then resends them).

#define _GNU_SOURCE  // ppoll
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

enum { kSlots = 1 << 15, kMaxPacket = 2048, kMaxDelays = 16 };  // the TUN MTU stays at 1500

struct Packet {
  long long due_ns;
  int length;
  unsigned char bytes[kMaxPacket];
};

static struct Packet queue[kSlots];  // a ring: [head, tail) are waiting
static volatile sig_atomic_t stopping = 0, delay_index = 0;
static int delay_count = 0;

static void Stop(int signo) {
  (void)signo;
  stopping = 1;
}

static void NextDelay(int signo) {
  (void)signo;
  delay_index = (delay_index + 1) % delay_count;
}

static long long NowNs(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int OpenTun(const char* name) {
  int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK);
  if (fd < 0) {
    perror("delay_link: open /dev/net/tun");
    exit(1);
  }
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
  strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
    perror("delay_link: TUNSETIFF");
    exit(1);
  }
  return fd;
}

int main(int argc, char** argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: delay_link DEV DELAY_US[,DELAY_US...] RATE_GBIT\n");
    return 2;
  }
  long long delays_ns[kMaxDelays];
  for (char* item = strtok(argv[2], ","); item && delay_count < kMaxDelays;
       item = strtok(NULL, ","))
    delays_ns[delay_count++] = (long long)(atof(item) * 1e3);
  const double rate_gbit = atof(argv[3]);
  // A sleeping process is woken up to 50 us late by default (timer slack):
  // as large as the latencies this is meant to inject.
  prctl(PR_SET_TIMERSLACK, 1UL);
  signal(SIGTERM, Stop);
  signal(SIGINT, Stop);
  signal(SIGUSR1, NextDelay);
  const int fd = OpenTun(argv[1]);
  printf("delay_link: %s up, %d delay(s) from %.1f us, %g Gbit/s\n", argv[1], delay_count,
         delays_ns[0] / 1e3, rate_gbit);
  fflush(stdout);

  long head = 0, tail = 0, forwarded = 0, dropped = 0;
  long long link_free_ns = 0;  // when the link has sent what it already holds
  while (!stopping) {
    const long long now = NowNs();
    while (head < tail && queue[head % kSlots].due_ns <= now) {
      const struct Packet* p = &queue[head % kSlots];
      if (write(fd, p->bytes, p->length) < 0 && errno != EAGAIN) perror("delay_link: write");
      ++head;
      ++forwarded;
    }
    struct timespec wait = {1, 0}, *timeout = &wait;
    if (head < tail) {
      const long long left = queue[head % kSlots].due_ns - now;
      wait.tv_sec = left / 1000000000LL;
      wait.tv_nsec = left % 1000000000LL;
    }
    struct pollfd readable = {fd, POLLIN, 0};
    if (ppoll(&readable, 1, timeout, NULL) <= 0) continue;
    for (;;) {  // take everything that has arrived
      static unsigned char overflow[kMaxPacket];
      const int full = tail - head == kSlots;
      struct Packet* p = &queue[tail % kSlots];
      const ssize_t n = read(fd, full ? overflow : p->bytes, kMaxPacket);
      if (n <= 0) break;
      if (full) {
        ++dropped;
        continue;
      }
      const long long arrived = NowNs();
      long long sent = arrived;
      if (rate_gbit > 0) {  // serialise onto a link of that rate
        if (link_free_ns > sent) sent = link_free_ns;
        sent += (long long)(n * 8 / rate_gbit);  // bits / (Gbit/s) = ns
        link_free_ns = sent;
      }
      p->due_ns = sent + delays_ns[delay_index];
      p->length = (int)n;
      ++tail;
    }
  }
  printf("delay_link: %ld packets forwarded, %ld dropped (queue full)\n", forwarded, dropped);
  return 0;
}
