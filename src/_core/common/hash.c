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
