/* rng.h: the project's one pseudo-random generator, xoshiro256** seeded
 * through splitmix64 (Blackman & Vigna). Integer-only, so the same seed gives
 * the same stream on every machine and compiler: the sampler's draws and
 * gen-model's weights depend on that.
 */
#ifndef SPUD_RNG_H
#define SPUD_RNG_H

#include <stdint.h>

typedef struct {
    uint64_t s[4];
} spud_rng;

/* splitmix64's finaliser: a bijective 64-bit mix, also a good hash. */
static inline uint64_t spud_mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint64_t spud_splitmix64_next(uint64_t *x) {
    *x += 0x9e3779b97f4a7c15ull;
    return spud_mix64(*x);
}

static inline uint64_t spud_rotl64(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static inline void spud_rng_seed(spud_rng *r, uint64_t seed) {
    for (int i = 0; i < 4; i++) r->s[i] = spud_splitmix64_next(&seed);
}

static inline uint64_t spud_rng_next(spud_rng *r) {
    uint64_t *s = r->s;
    const uint64_t result = spud_rotl64(s[1] * 5, 7) * 9;
    const uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = spud_rotl64(s[3], 45);
    return result;
}

#endif
