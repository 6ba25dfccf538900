/*
 * Counts the calls to memcpy and memmove a process makes and the bytes
 * they copy, and prints both when the process exits: how BENCHMARKS.md
 * counts what a delivery copies ("Fewer and smaller copies per delivery").
 *
 *   gcc -O1 -fno-builtin -shared -fPIC -o /tmp/memcpy-count.so benches/tools/memcpy-count.c
 *   cargo bench -p clink-webhooks-benches --bench receiver --no-run   # prints the binary
 *   LD_PRELOAD=/tmp/memcpy-count.so target/release/deps/receiver-... --profile layer 1000 1024
 *   LD_PRELOAD=/tmp/memcpy-count.so target/release/deps/receiver-... --profile layer 4000 1024
 *
 * The difference of the two runs over 3,000 is what one delivery copies
 * (the request built for it included). It copies byte by byte, so time
 * nothing under it.
 */
#include <stddef.h>
#include <stdio.h>

static unsigned long long calls, bytes;

void *memcpy(void *dst, const void *src, size_t n) {
  unsigned char *d = dst;
  const unsigned char *s = src;
  calls++;
  bytes += n;
  while (n--) *d++ = *s++;
  return dst;
}

void *memmove(void *dst, const void *src, size_t n) {
  unsigned char *d = dst;
  const unsigned char *s = src;
  calls++;
  bytes += n;
  if (d < s) {
    while (n--) *d++ = *s++;
  } else {
    d += n;
    s += n;
    while (n--) *--d = *--s;
  }
  return dst;
}

__attribute__((destructor)) static void report(void) {
  fprintf(stderr, "memcpy and memmove: %llu calls, %llu bytes\n", calls, bytes);
}
