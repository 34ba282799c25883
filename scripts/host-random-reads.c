/*
 * What a random read of a big array costs on this host when it is
 * prefetched long before it is needed: the probe behind BENCHMARKS.md's
 * "Four cheaper duplicate sets ..." section.
 *
 *   gcc -O2 -o /tmp/host-random-reads scripts/host-random-reads.c
 *   /tmp/host-random-reads MIB HUGE WORK AHEAD
 *
 * MIB: the array's size; HUGE: 1 to ask for 2 MiB pages (MADV_HUGEPAGE),
 * 0 to refuse them; WORK: rounds of a multiply chain between two reads
 * (100 is ~110 ns here); AHEAD: how many reads ahead each is prefetched
 * (0: not at all). Prints ns per read, work included: compare a size with
 * the 1 MiB array at the same WORK and AHEAD.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s MIB HUGE WORK AHEAD\n", argv[0]);
        return 2;
    }
    size_t mib = strtoul(argv[1], 0, 10);
    int huge = atoi(argv[2]), work = atoi(argv[3]), ahead = atoi(argv[4]);
    size_t n = mib * 1024 * 1024 / 8;
    uint64_t *a = mmap(0, n * 8, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (a == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    madvise(a, n * 8, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
    for (size_t i = 0; i < n; i++) a[i] = i * 7;
    /* The read order, drawn up front (xorshift64), so drawing costs nothing. */
    size_t reads = 4000000;
    uint64_t *at = malloc(reads * sizeof *at), x = 88172645463325252ull;
    for (size_t i = 0; i < reads; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        at[i] = x % n;
    }
    uint64_t sum = 0, w = 1;
    double t0 = now();
    for (size_t i = 0; i < reads; i++) {
        if (ahead) __builtin_prefetch(&a[at[(i + ahead) % reads]], 0, 3);
        sum += a[at[i]];
        for (int k = 0; k < work; k++) w = w * 6364136223846793005ull + 1442695040888963407ull;
    }
    double t1 = now();
    printf("%zu MiB huge=%d work=%d ahead=%d: %.1f ns/read (%llu)\n", mib, huge, work, ahead,
           (t1 - t0) / reads * 1e9, (unsigned long long)(sum + w));
    return 0;
}
