/*
 * settings.c - memcached's defaults for a ps_settings, and the running
 * server's copy (see settings.h for who writes it and when).
 */
#include "settings.h"

#include <string.h>

ps_settings settings;

void settings_init_defaults(ps_settings *s) {
    memset(s, 0, sizeof(*s));
    s->port = 11211;
    s->udpport = 0;
    s->num_listen = 0;
    s->backlog = 1024;
    s->maxconns = 1024;
    s->num_threads = 4;
    s->reqs_per_event = 20;
    s->idle_timeout = 0;
    s->read_buf_size = 16384;
    s->max_line_len = 2048;

    s->maxbytes = (size_t)64 * 1024 * 1024;
    s->item_size_max = 1024 * 1024;
    s->factor = 1.25;
    s->chunk_size = 48;
    s->slab_page_size = PS_SLAB_PAGE_SIZE;
    s->slab_chunk_max = PS_SLAB_PAGE_SIZE / 2;
    s->lock_memory = false;
    s->evict_to_free = true;
    s->use_cas = true;
    s->flush_enabled = true;
    s->hashpower_init = 16;

    s->slab_reassign = true;
    s->slab_automove = 1;
    s->slab_automove_ratio = 0.8;
    s->slab_automove_window = 30;

    s->lru_maintainer = true;
    s->lru_segmented = true;
    s->hot_lru_pct = 20;
    s->warm_lru_pct = 40;
    s->hot_max_factor = 0.2;
    s->warm_max_factor = 2.0;
    s->temp_lru = false;
    s->temporary_ttl = 61;
    s->tail_repair_time = 0;

    s->lru_crawler = true;
    s->lru_crawler_sleep = 100;
    s->lru_crawler_tocrawl = 0;

    atomic_init(&s->verbose, 0);
}
