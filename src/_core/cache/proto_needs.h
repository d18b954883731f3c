/*
 * proto_needs.h - what the protocol layer (proto_text.c, proto_meta.c)
 * needs from the engine beyond items.h / slabs.h, pending a home there.
 *
 * The three functions are declared WEAK: until the engine defines them the
 * server still links, they resolve to NULL, and the protocol answers the
 * command as unsupported (see each entry). Once an owner implements one,
 * move its declaration into items.h / slabs.h without the attribute and
 * delete it here; the protocol's NULL checks then become dead code to drop.
 *
 * ASSUMPTIONS the protocol makes about existing engine calls, checked
 * against items.c as of this writing (keep them true, or tell the
 * protocol's owner):
 *   - do_item_add_delta() does not consume the caller's reference on `it`.
 *   - do_item_link() takes the hash table's reference; the reference from
 *     item_alloc() stays the caller's.
 *   - do_item_get(..., do_update=false) neither bumps nor counts a hit;
 *     do_item_bump() is what do_update would have done.
 *   - item_store()/do_item_store() compare a nonzero it->cas for CAS,
 *     APPEND and PREPEND, and count set_cmds/cas_*; item_delete() counts
 *     delete_hits; the protocol counts the rest (items.h, WHO COUNTS WHAT).
 *   - item_release() may be called with no lock held (the protocol always
 *     drops item locks before releasing).
 *   - lru_crawler_enable(true) fails (nonzero) when the crawler already
 *     runs: memcached then answers "ERROR failed to start lru crawler
 *     thread".
 */
#ifndef PS_CACHE_PROTO_NEEDS_H
#define PS_CACHE_PROTO_NEEDS_H

#include <stddef.h>
#include <stdint.h>
#include "items.h"

/* it_flags bit: the key was given base64-encoded ("b" flag of ms, or mg/ma
 * N creating the item); meta answers then re-encode it when returning the
 * key ("k" flag) and add " b". Set by the protocol on a fresh item before it
 * is linked; the engine only has to keep the bit free and leave it alone.
 * Owner: items.h (next to ITEM_HDR). */
#ifndef ITEM_KEY_BINARY
#define ITEM_KEY_BINARY (1u << 10)
#endif

/* "stats cachedump <class> <limit>" (memcached's item_cachedump). Returns a
 * malloc'd buffer listing items of class `clsid` from the head of its LRUs
 * (HOT, WARM, COLD, TEMP), at most `limit` of them (0: as many as fit in
 * 2 MiB), one line each:
 *     "ITEM <key> [<value bytes, without \r\n> b; <exptime as unix time,
 *      0 when it never expires> s]\r\n"
 * then "END\r\n"; *len gets the length. NULL when out of memory.
 * Until defined: "CLIENT_ERROR stats cachedump not allowed" (what memcached
 * answers when dumping is disabled). Owner: items.c. */
char *item_cachedump(unsigned int clsid, unsigned int limit, size_t *len)
    __attribute__((weak));

/* "slabs automove ratio <float>": the ratio the automover compares class
 * ages with (memcached's settings.slab_automove_ratio), from now on.
 * Until defined: "ERROR". Owner: slabs.c. */
void slabs_set_automove_ratio(double ratio) __attribute__((weak));

/* "lru tune <hot_pct> <warm_pct> <hot_max_factor> <warm_max_factor>": the
 * protocol has validated them (pcts sum <= 80, factors > 0); the LRU
 * maintainer uses them from now on. Until defined: "ERROR". Owner:
 * items.c. */
void lru_set_tune(uint32_t hot_pct, uint32_t warm_pct, double hot_max_factor,
                  double warm_max_factor) __attribute__((weak));

#endif
