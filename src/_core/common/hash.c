/*
 * hash.c - MurmurHash3 x86_32 (Austin Appleby's public-domain algorithm),
 * written from its published description.
 *
 * The input is consumed in little-endian 32-bit blocks (read with memcpy,
 * so unaligned keys are fine and UBSan stays quiet), the 0-3 byte tail is
 * folded in, and the result is finalised with the fmix avalanche.
 * No state; callable from any thread.
 */
#include "hash.h"

#include <string.h>

static inline uint32_t rotl32(uint32_t x, int r) {
    return (x << r) | (x >> (32 - r));
}

static inline uint32_t fmix32(uint32_t h) {
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h;
}

uint32_t ps_murmur3_32(const void *key, size_t len, uint32_t seed) {
    const uint8_t *p = key;
    const uint32_t c1 = 0xcc9e2d51u, c2 = 0x1b873593u;
    uint32_t h = seed;
    size_t nblocks = len / 4;

    for (size_t i = 0; i < nblocks; i++) {
        uint32_t k;
        memcpy(&k, p + i * 4, 4);   /* x86/arm64 little-endian */
        k *= c1;
        k = rotl32(k, 15);
        k *= c2;
        h ^= k;
        h = rotl32(h, 13);
        h = h * 5 + 0xe6546b64u;
    }

    const uint8_t *tail = p + nblocks * 4;
    uint32_t k = 0;
    switch (len & 3) {
    case 3: k ^= (uint32_t)tail[2] << 16; /* fall through */
    case 2: k ^= (uint32_t)tail[1] << 8;  /* fall through */
    case 1:
        k ^= tail[0];
        k *= c1;
        k = rotl32(k, 15);
        k *= c2;
        h ^= k;
    }

    h ^= (uint32_t)len;
    return fmix32(h);
}

/*
 * ps_hash64: 8-byte little-endian blocks, each scrambled by a multiply and
 * rotate (the constants of MurmurHash3's x64 variant) and folded into the
 * state with another multiply; the 0-7 byte tail is one more zero-padded
 * block; the length is mixed in at the start so that "a" and "a\0" differ;
 * the result goes through the 64-bit fmix avalanche so every input bit
 * affects the high bits (shard choice) and the low bits (slot choice).
 */
static inline uint64_t rotl64(uint64_t x, int r) {
    return (x << r) | (x >> (64 - r));
}

static inline uint64_t fmix64(uint64_t h) {
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

static inline uint64_t scramble64(uint64_t k) {
    k *= 0x87c37b91114253d5ull;
    k = rotl64(k, 31);
    return k * 0x4cf5ad432745937full;
}

uint64_t ps_hash64(const void *key, size_t len) {
    const uint8_t *p = key;
    uint64_t h = 0x9e3779b97f4a7c15ull ^ ((uint64_t)len * 0xff51afd7ed558ccdull);
    while (len >= 8) {
        uint64_t k;
        memcpy(&k, p, 8);
        h ^= scramble64(k);
        h = rotl64(h, 27) * 5 + 0x52dce729;
        p += 8;
        len -= 8;
    }
    if (len > 0) {
        uint64_t k = 0;
        memcpy(&k, p, len);
        h ^= scramble64(k);
    }
    return fmix64(h);
}
