/*
 * hash.h - the key hash used by the cache's hash table and item locks.
 *
 * MurmurHash3 (x86, 32-bit variant), the algorithm memcached uses by
 * default (hash_algorithm=murmur3), so that key distribution across
 * buckets and lock stripes behaves like memcached's. Pure function: no
 * state, safe from any thread.
 */
#ifndef PS_COMMON_HASH_H
#define PS_COMMON_HASH_H

#include <stddef.h>
#include <stdint.h>

uint32_t ps_murmur3_32(const void *key, size_t len, uint32_t seed);

#endif
