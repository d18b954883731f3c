/*
 * hash.h - the key hash used by the cache's hash table and item locks.
 *
 * ps_murmur3_32: MurmurHash3 (x86, 32-bit variant), the algorithm memcached
 * uses by default (hash_algorithm=murmur3), so that key distribution across
 * buckets and lock stripes behaves like memcached's.
 *
 * ps_hash64: a 64-bit hash for the search index's term dictionary and key
 * map, where one hash picks both a writer shard (high bits) and a table
 * slot (low bits), so it needs more than 32 good bits.
 *
 * Pure functions: no state, safe from any thread.
 */
#ifndef PS_COMMON_HASH_H
#define PS_COMMON_HASH_H

#include <stddef.h>
#include <stdint.h>

uint32_t ps_murmur3_32(const void *key, size_t len, uint32_t seed);
uint64_t ps_hash64(const void *key, size_t len);

#endif
